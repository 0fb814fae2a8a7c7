//! The daemon's control protocol: JSON over a Unix socket, one request per line and one
//! reply per line. Every request carries the three-part version its sender speaks; the
//! daemon serves any request whose major version equals its own and whose minor version is
//! not newer (as device-mapper's ioctls do), and refuses the rest with an error that names
//! both versions, so old and new tools can tell what went wrong.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tessera_engine::units::SizeArg;
use tessera_engine::LvCreateOptions;

use crate::error::{DaemonError, Result};

/// The protocol version this build speaks.
pub const VERSION: [u32; 3] = [1, 4, 0];

/// The longest request line the daemon reads; a longer one closes the connection.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// The file name of the control socket in the state directory.
pub const SOCKET_NAME: &str = "control.sock";

/// What a client asks of the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// The daemon's version and what it serves.
    Version,
    /// Every mapped device, as `dmsetup ls`.
    DmLs,
    /// A new mapped device with `table` live, exported over NBD under its name.
    DmCreate {
        name: String,
        table: String,
    },
    /// Fills the device's inactive table; `dm resume` makes it live.
    DmLoad {
        name: String,
        table: String,
    },
    DmSuspend {
        name: String,
    },
    DmResume {
        name: String,
    },
    DmRemove {
        name: String,
    },
    DmTable {
        name: String,
        #[serde(default)]
        inactive: bool,
    },
    DmStatus {
        name: String,
    },
    DmMessage {
        name: String,
        sector: u64,
        message: Vec<String>,
    },
    /// A change to an LV; the daemon commits it and updates the LV's mapped device.
    Lv(LvChange),
    /// Whether the daemon serves LVs of VG `vg` (`data` is true or false).
    Serves {
        vg: String,
    },
    /// Starts an MD array found on the daemon's devices and exports it as `md/NAME`.
    MdAssemble {
        name: String,
        #[serde(default)]
        degraded: bool,
        /// Put it together as `mdadm --assemble --force` would.
        #[serde(default)]
        force: bool,
    },
    /// Stops a running MD array: its export goes, its members are flushed.
    MdStop {
        name: String,
    },
    /// Loads a running MD array anew from its superblocks (after `md add` or `md remove`).
    /// Since 1.1.
    MdReload {
        name: String,
    },
    /// Unlocks LUKS device `device` and exports its plaintext as `name`; the LVs on a PV
    /// inside come up with it. The passphrase travels as hex over the (owner-only) control
    /// socket. Since 1.2.
    LuksOpen {
        device: String,
        name: String,
        passphrase_hex: String,
        #[serde(default)]
        key_slot: Option<u32>,
        #[serde(default)]
        read_only: bool,
    },
    /// Closes an open LUKS volume (and stops the LVs served from it); its key is forgotten.
    /// Since 1.2.
    LuksClose {
        name: String,
    },
    /// The whole stack as the daemon sees it (with the LUKS volumes it opened), as
    /// `tessera show --json` prints it. Since 1.2.
    Show,
    /// Moves PV `source` of a VG the daemon serves to `dests` (every other allocatable PV
    /// when empty), of LV `lv` or of all, while the LVs stay served (lvm2's pvmove); with
    /// no source, resumes the move in progress. Answers when the move has finished. The
    /// copy keeps to md's speed limits, KiB/s (md's defaults when None). Since 1.4.
    PvMove {
        #[serde(default)]
        source: Option<String>,
        #[serde(default)]
        dests: Vec<String>,
        #[serde(default)]
        lv: Option<String>,
        #[serde(default)]
        min_rate_kib: Option<u64>,
        #[serde(default)]
        max_rate_kib: Option<u64>,
    },
    /// Where the moves run by the daemon are (of VG `vg`, or all), by VG: extents done of
    /// the total, finished, the error that stopped one. Since 1.4.
    PvMoveStatus {
        #[serde(default)]
        vg: Option<String>,
    },
}

/// The LV changes that the daemon performs itself, so that a served LV follows them online.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum LvChange {
    Create {
        vg: String,
        lv: String,
        options: LvCreateOptions,
    },
    Extend {
        vg: String,
        lv: String,
        options: LvCreateOptions,
    },
    Reduce {
        vg: String,
        lv: String,
        size: SizeArg,
    },
    /// A snapshot of `origin` named `lv` (lvm2's `lvcreate -s`). Since 1.2.
    Snapshot {
        vg: String,
        origin: String,
        lv: String,
        size: SizeArg,
        #[serde(default)]
        chunk_bytes: Option<u64>,
    },
    /// Snapshot `lv` marked merging (lvm2's `lvconvert --merge`); a daemon serving the
    /// origin starts the merge at once. Since 1.2.
    Merge {
        vg: String,
        lv: String,
    },
    /// Merges of VG `vg` that finished leave the metadata (the origin then plain). Since 1.2.
    FinishMerges {
        vg: String,
    },
    /// A thin pool of data `size` (lvm2's `lvcreate --type thin-pool`); `discards` is
    /// ignore, nopassdown or passdown. Since 1.3.
    ThinPool {
        vg: String,
        lv: String,
        size: SizeArg,
        chunk_bytes: Option<u64>,
        metadata_bytes: Option<u64>,
        zero: bool,
        discards: String,
        pvs: Vec<String>,
    },
    /// A thin LV of virtual size `size` in pool `pool`. Since 1.3.
    Thin {
        vg: String,
        pool: String,
        lv: String,
        size: SizeArg,
    },
    /// A thin snapshot `lv` of thin LV `origin`. Since 1.3.
    ThinSnapshot {
        vg: String,
        origin: String,
        lv: String,
    },
    /// Pool `lv`'s metadata grown to `size` (lvm2's `lvextend --poolmetadatasize`).
    /// Since 1.3.
    PoolMetadataExtend {
        vg: String,
        lv: String,
        size: SizeArg,
        pvs: Vec<String>,
    },
    /// What pool `lv` does when it runs out of data space: fail writes (`error`) or hold
    /// them until it grows (lvm2's `lvchange --errorwhenfull`). Since 1.3.
    WhenFull {
        vg: String,
        lv: String,
        error: bool,
    },
    Remove {
        vg: String,
        lv: String,
    },
    Rename {
        vg: String,
        lv: String,
        new: String,
    },
}

impl LvChange {
    pub fn vg(&self) -> &str {
        match self {
            LvChange::Create { vg, .. }
            | LvChange::Extend { vg, .. }
            | LvChange::Reduce { vg, .. }
            | LvChange::Snapshot { vg, .. }
            | LvChange::Merge { vg, .. }
            | LvChange::FinishMerges { vg }
            | LvChange::ThinPool { vg, .. }
            | LvChange::Thin { vg, .. }
            | LvChange::ThinSnapshot { vg, .. }
            | LvChange::PoolMetadataExtend { vg, .. }
            | LvChange::WhenFull { vg, .. }
            | LvChange::Remove { vg, .. }
            | LvChange::Rename { vg, .. } => vg,
        }
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub version: [u32; 3],
    pub ok: bool,
    /// Text for the user (the same a local run prints).
    #[serde(default)]
    pub output: String,
    /// Structured result, for `--json`.
    #[serde(default)]
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A machine-readable reason for some errors: `not-served` means the daemon does not
    /// serve that VG, so the client should make the change itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl Reply {
    pub fn ok(output: impl Into<String>, data: Value) -> Reply {
        Reply {
            version: VERSION,
            ok: true,
            output: output.into(),
            data,
            ..Reply::default()
        }
    }

    pub fn error(error: impl Into<String>) -> Reply {
        Reply {
            version: VERSION,
            ok: false,
            error: Some(error.into()),
            ..Reply::default()
        }
    }

    /// The reply when the daemon did what was asked; its refusal as an error otherwise:
    /// [`DaemonError::NotServed`] for code `not-served`, else [`DaemonError::Refused`] with
    /// the daemon's sentence.
    pub fn into_result(self) -> Result<Reply> {
        if self.ok {
            return Ok(self);
        }
        let error = self
            .error
            .unwrap_or_else(|| "the daemon refused".to_string());
        Err(match self.code.as_deref() {
            Some(NOT_SERVED) => DaemonError::NotServed(error),
            _ => DaemonError::Refused(error),
        })
    }
}

/// The reply code of an LV change to a VG the daemon does not serve.
pub const NOT_SERVED: &str = "not-served";

pub fn version_string(v: [u32; 3]) -> String {
    format!("{}.{}.{}", v[0], v[1], v[2])
}

/// Whether a daemon speaking `VERSION` serves a request of version `v`.
pub fn version_supported(v: [u32; 3]) -> bool {
    v[0] == VERSION[0] && v[1] <= VERSION[1]
}

/// Decodes one request line: first its version (so that a newer client's unknown command
/// is refused for its version, not as garbage), then the request.
pub fn decode(line: &str) -> Result<Request> {
    let value: Value = serde_json::from_str(line).map_err(DaemonError::NotJson)?;
    let version = value.get("version").ok_or(DaemonError::NoVersion)?;
    let version: [u32; 3] = serde_json::from_value(version.clone())
        .map_err(|_| DaemonError::BadVersion(version.clone()))?;
    if !version_supported(version) {
        return Err(DaemonError::version_refused(version));
    }
    serde_json::from_value(value).map_err(DaemonError::BadRequest)
}

/// The socket a client talks to: `--control`, else the state directory's.
pub fn socket_path(explicit: Option<&Path>, state_dir: &Path) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(|| state_dir.join(SOCKET_NAME))
}

/// A request as a JSON line with `version` beside the command.
pub fn envelope(request: &Request, version: [u32; 3]) -> String {
    let mut value = serde_json::to_value(request).expect("requests serialize");
    if let Value::Object(map) = &mut value {
        map.insert("version".into(), serde_json::json!(version));
    }
    value.to_string()
}

/// Listens on `path` and answers each request line with `handle`, one thread per client.
/// A socket file left by a daemon that died is replaced; a live daemon there is an error.
pub fn listen(
    path: &Path,
    handle: Arc<dyn Fn(Request) -> Reply + Send + Sync>,
) -> Result<ControlSocket> {
    let io = |what: String| move |source| DaemonError::Io { what, source };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(DaemonError::SocketInUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io(format!(
            "cannot remove the stale socket {}",
            path.display()
        )))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io(format!("cannot listen on {}", path.display())))?;
    // Whoever may talk to the socket may change volumes: its owner only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("cannot set the mode of {}", path.display())))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let handle = handle.clone();
                let _ = std::thread::Builder::new()
                    .name("control-client".into())
                    .spawn(move || serve_client(stream, &*handle));
            }
        })
        .map_err(io("cannot start the control thread".into()))?;
    Ok(ControlSocket {
        path: path.to_path_buf(),
    })
}

/// The listening control socket; its file is removed when this is dropped.
pub struct ControlSocket {
    path: PathBuf,
}

impl ControlSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_client(stream: UnixStream, handle: &(dyn Fn(Request) -> Reply + Send + Sync)) {
    // A client that stops mid-line must not hold a thread for ever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(600)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_REQUEST_BYTES).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') {
            let reply = Reply::error(DaemonError::RequestTooLong.to_string());
            let _ = writeln!(
                writer,
                "{}",
                serde_json::to_string(&reply).unwrap_or_default()
            );
            return;
        }
        let reply = match decode(line.trim_end()) {
            Ok(request) => handle(request),
            Err(e) => Reply::error(e.to_string()),
        };
        let text = serde_json::to_string(&reply).unwrap_or_else(|e| {
            serde_json::to_string(&Reply::error(DaemonError::Encode(e).to_string()))
                .unwrap_or_default()
        });
        if writeln!(writer, "{text}").is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_of_a_newer_minor_or_another_major_are_refused_naming_both_versions() {
        let line = envelope(&Request::DmLs, [1, 0, 0]);
        assert!(matches!(decode(&line), Ok(Request::DmLs)));
        let line = envelope(&Request::DmLs, [1, 0, 7]);
        assert!(decode(&line).is_ok(), "a newer patch level is served");
        let line = envelope(&Request::DmLs, [1, 4, 0]);
        assert!(decode(&line).is_ok(), "this minor is served");
        for v in [[2, 0, 0], [1, 5, 0], [0, 9, 0]] {
            let err = decode(&envelope(&Request::DmLs, v))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&version_string(v)), "{err}");
            assert!(err.contains(&version_string(VERSION)), "{err}");
        }
        // A newer client's unknown command is refused for its version, not as garbage.
        let err = decode(r#"{"version":[3,0,0],"command":"teleport"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("3.0.0"), "{err}");
        // The sentence old and new tools print, word for word.
        let err = decode(&envelope(&Request::DmLs, [1, 5, 0])).unwrap_err();
        assert!(
            matches!(
                err,
                DaemonError::VersionRefused {
                    request: [1, 5, 0],
                    daemon: VERSION
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "request speaks control protocol 1.5.0, this tessera daemon speaks 1.4.0 (it serves \
             major version 1 up to minor 4): use a tessera of the daemon's version"
        );
    }

    #[test]
    fn malformed_requests_get_errors_that_say_what_is_wrong() {
        assert!(decode("{")
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        assert!(decode(r#"{"command":"dm_ls"}"#)
            .unwrap_err()
            .to_string()
            .contains("no \"version\""));
        assert!(decode(r#"{"version":"1.0","command":"dm_ls"}"#)
            .unwrap_err()
            .to_string()
            .contains("three numbers"));
        assert!(decode(r#"{"version":[1,0,0],"command":"teleport"}"#)
            .unwrap_err()
            .to_string()
            .contains("bad request"));
        assert!(
            decode(r#"{"version":[1,0,0],"command":"dm_create","name":"x"}"#)
                .unwrap_err()
                .to_string()
                .contains("table")
        );
    }

    proptest::proptest! {
        /// Whatever arrives on the socket is answered, never a panic: random text, and
        /// requests of the right shape with random fields.
        #[test]
        fn any_request_line_decodes_or_is_refused(
            text in ".{0,200}",
            command in "[a-z_]{0,12}",
            name in ".{0,40}",
            v in proptest::array::uniform3(0u32..4),
            sector in proptest::num::u64::ANY,
        ) {
            let _ = decode(&text);
            let line = serde_json::json!({
                "version": v, "command": command, "name": name, "table": text,
                "sector": sector, "message": [name.clone()], "change": command,
                "vg": name, "lv": text,
            })
            .to_string();
            let _ = decode(&line);
        }
    }

    #[test]
    fn lv_changes_round_trip_through_json() {
        let req = Request::Lv(LvChange::Extend {
            vg: "vg0".into(),
            lv: "data".into(),
            options: LvCreateOptions {
                size: tessera_engine::units::parse_size("+20M").unwrap(),
                stripes: Some(2),
                stripe_size_bytes: Some(65536),
                pvs: vec!["/d/a.img".into()],
                segtype: None,
                mirrors: None,
                region_size_bytes: None,
            },
        });
        let line = envelope(&req, VERSION);
        match decode(&line).unwrap() {
            Request::Lv(LvChange::Extend { vg, lv, options }) => {
                assert_eq!((vg.as_str(), lv.as_str()), ("vg0", "data"));
                assert_eq!(
                    options.size,
                    tessera_engine::units::parse_size("+20M").unwrap()
                );
                assert_eq!(options.stripes, Some(2));
                assert_eq!(options.pvs, vec!["/d/a.img".to_string()]);
            }
            other => panic!("{other:?}"),
        }
    }
}
