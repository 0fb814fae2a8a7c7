//! A typed client of the control socket: one method per request. Each sends the request
//! with this build's protocol version and returns the daemon's reply, or the daemon's
//! refusal as [`DaemonError::Refused`] (or [`DaemonError::NotServed`]) carrying the sentence
//! the daemon wrote for the user.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::control::{envelope, LvChange, Reply, Request, VERSION};
use crate::error::{DaemonError, Result};

/// A connection to a running daemon.
pub struct Client {
    stream: BufReader<UnixStream>,
    path: PathBuf,
}

impl Client {
    /// Connects to the daemon at `path`; `Ok(None)` when none is running there (no socket,
    /// or a socket left behind by a daemon that died).
    pub fn connect(path: &Path) -> Result<Option<Client>> {
        match UnixStream::connect(path) {
            Ok(stream) => Ok(Some(Client {
                stream: BufReader::new(stream),
                path: path.to_path_buf(),
            })),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(source) => Err(DaemonError::Io {
                what: format!("cannot reach the daemon at {}", path.display()),
                source,
            }),
        }
    }

    /// The control socket this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and reads the reply, whether the daemon did what was asked or
    /// refused (`ok` false, with its `error` and maybe a `code`).
    pub fn call(&mut self, request: &Request) -> Result<Reply> {
        self.call_raw(&envelope(request, VERSION))
    }

    /// Sends a request line as it is (tests use it to speak other versions).
    pub fn call_raw(&mut self, line: &str) -> Result<Reply> {
        let io = |path: &Path| {
            let what = format!("control socket {}", path.display());
            move |source| DaemonError::Io { what, source }
        };
        let stream = self.stream.get_mut();
        stream
            .write_all(line.as_bytes())
            .and_then(|()| stream.write_all(b"\n"))
            .map_err(io(&self.path))?;
        let mut answer = String::new();
        self.stream.read_line(&mut answer).map_err(io(&self.path))?;
        if answer.is_empty() {
            return Err(DaemonError::Closed {
                path: self.path.clone(),
            });
        }
        serde_json::from_str(&answer).map_err(|error| DaemonError::BadReply {
            path: self.path.clone(),
            error,
        })
    }

    /// Sends `request`; a refusal is an error.
    fn ask(&mut self, request: Request) -> Result<Reply> {
        self.call(&request)?.into_result()
    }

    /// The daemon's tessera and protocol versions: `data` is
    /// `{"tessera": "0.1.0", "protocol": [1, 3, 0]}`.
    pub fn version(&mut self) -> Result<Reply> {
        self.ask(Request::Version)
    }

    /// Every mapped device, as `dmsetup ls`: `data` lists `name`, `size_sectors`, `state`
    /// (`live` or `suspended`) and `export` of each.
    pub fn dm_ls(&mut self) -> Result<Reply> {
        self.ask(Request::DmLs)
    }

    /// Creates mapped device `name` with `table` (dmsetup's syntax) live, exported over NBD
    /// under its name; `data` holds `name` and `size_sectors`.
    pub fn dm_create(&mut self, name: &str, table: &str) -> Result<Reply> {
        self.ask(Request::DmCreate {
            name: name.into(),
            table: table.into(),
        })
    }

    /// Loads `table` into the inactive slot of `name`; [`Client::dm_resume`] makes it live.
    pub fn dm_load(&mut self, name: &str, table: &str) -> Result<Reply> {
        self.ask(Request::DmLoad {
            name: name.into(),
            table: table.into(),
        })
    }

    /// Holds new I/O to `name` and waits for the I/O in flight.
    pub fn dm_suspend(&mut self, name: &str) -> Result<Reply> {
        self.ask(Request::DmSuspend { name: name.into() })
    }

    /// Makes a loaded table of `name` live and lets I/O run; `data` holds `size_sectors`.
    pub fn dm_resume(&mut self, name: &str) -> Result<Reply> {
        self.ask(Request::DmResume { name: name.into() })
    }

    /// Removes mapped device `name` and its export.
    pub fn dm_remove(&mut self, name: &str) -> Result<Reply> {
        self.ask(Request::DmRemove { name: name.into() })
    }

    /// The live table of `name` (or the inactive one), as text in `output` and `data`.
    pub fn dm_table(&mut self, name: &str, inactive: bool) -> Result<Reply> {
        self.ask(Request::DmTable {
            name: name.into(),
            inactive,
        })
    }

    /// Each row's target status of `name`, as text in `output` and `data`.
    pub fn dm_status(&mut self, name: &str) -> Result<Reply> {
        self.ask(Request::DmStatus { name: name.into() })
    }

    /// Sends message `args` to the target of `name` at `sector`; the target's answer is in
    /// `output` and `data`.
    pub fn dm_message<S: AsRef<str>>(
        &mut self,
        name: &str,
        sector: u64,
        args: &[S],
    ) -> Result<Reply> {
        self.ask(Request::DmMessage {
            name: name.into(),
            sector,
            message: args.iter().map(|a| a.as_ref().to_string()).collect(),
        })
    }

    /// Has the daemon make an LV change and follow it with the LV's mapped device; what was
    /// done is in `output`. A VG the daemon does not serve is [`DaemonError::NotServed`].
    pub fn lv_change(&mut self, change: &LvChange) -> Result<Reply> {
        self.ask(Request::Lv(change.clone()))
    }

    /// Moves PV `source` (None: resumes the move in progress) while the daemon serves its
    /// LVs; answers when the move has finished, `data` holding its figures. The copy keeps
    /// to md's speed limits `min_rate_kib` and `max_rate_kib` (KiB/s; md's defaults when
    /// None). Follow it from another client with [`Client::pv_move_status`].
    pub fn pv_move(
        &mut self,
        source: Option<&str>,
        dests: &[String],
        lv: Option<&str>,
        min_rate_kib: Option<u64>,
        max_rate_kib: Option<u64>,
    ) -> Result<Reply> {
        self.ask(Request::PvMove {
            source: source.map(str::to_string),
            dests: dests.to_vec(),
            lv: lv.map(str::to_string),
            min_rate_kib,
            max_rate_kib,
        })
    }

    /// Where the daemon's moves are, by VG (`done_extents`, `total_extents`,
    /// `extent_bytes`, `finished`, `error`).
    pub fn pv_move_status(&mut self, vg: Option<&str>) -> Result<Reply> {
        self.ask(Request::PvMoveStatus {
            vg: vg.map(str::to_string),
        })
    }

    /// Whether the daemon serves LVs of VG `vg`.
    pub fn serves(&mut self, vg: &str) -> Result<bool> {
        let reply = self.ask(Request::Serves { vg: vg.into() })?;
        Ok(reply.data == serde_json::Value::Bool(true))
    }

    /// Starts MD array `name` found on the daemon's devices (a degraded one only with
    /// `degraded`), exported as `md/NAME`, with the LVs on it; `data` holds `name`,
    /// `size_sectors` and the `lvs` now served.
    pub fn md_assemble(&mut self, name: &str, degraded: bool) -> Result<Reply> {
        self.md_assemble_forced(name, degraded, false)
    }

    /// As [`Client::md_assemble`]; with `force`, an array that would not start is put
    /// together from the members `mdadm --assemble --force` would take (recorded in their
    /// superblocks unless the daemon serves read-only).
    pub fn md_assemble_forced(&mut self, name: &str, degraded: bool, force: bool) -> Result<Reply> {
        self.ask(Request::MdAssemble {
            name: name.into(),
            degraded,
            force,
        })
    }

    /// Stops running MD array `name`: its export goes and its members are flushed.
    pub fn md_stop(&mut self, name: &str) -> Result<Reply> {
        self.ask(Request::MdStop { name: name.into() })
    }

    /// Loads running MD array `name` anew from its superblocks (after members were added or
    /// removed). Since protocol 1.1.
    pub fn md_reload(&mut self, name: &str) -> Result<Reply> {
        self.ask(Request::MdReload { name: name.into() })
    }

    /// Unlocks LUKS device `device` in the daemon and serves its plaintext as `name`, with
    /// the LVs on it. Since protocol 1.2.
    pub fn luks_open(
        &mut self,
        device: &str,
        name: &str,
        passphrase: &[u8],
        key_slot: Option<u32>,
        read_only: bool,
    ) -> Result<Reply> {
        let passphrase_hex = passphrase.iter().map(|b| format!("{b:02x}")).collect();
        self.ask(Request::LuksOpen {
            device: device.into(),
            name: name.into(),
            passphrase_hex,
            key_slot,
            read_only,
        })
    }

    /// Closes open LUKS volume `name` in the daemon. Since protocol 1.2.
    pub fn luks_close(&mut self, name: &str) -> Result<Reply> {
        self.ask(Request::LuksClose { name: name.into() })
    }

    /// The stack as the daemon sees it (`data` is `tessera show --json`'s report). Since
    /// protocol 1.2.
    pub fn show(&mut self) -> Result<Reply> {
        self.ask(Request::Show)
    }
}
