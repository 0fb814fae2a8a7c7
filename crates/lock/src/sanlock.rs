//! A client of the sanlock daemon over its Unix socket (`RUN_DIR/sanlock.sock`), sending
//! what libsanlock_client sends (sanlock `sanlock_sock.h`, `sanlock.h`, `client.c`): a
//! 32-byte header (magic, protocol, command, flags, length, sequence, two data words) and
//! the command's fixed-size structures, all in the host's byte order; the reply is a
//! header whose first data word is the result (0 or a negative errno / SANLK_ code).
//!
//! Leases belong to a registered connection: [`Client::register`] opens one and keeps it;
//! the daemon releases what it holds when it closes (the process ended or dropped it).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

const SM_MAGIC: u32 = 0x0428_2010;
const SM_PROTO: u32 = 0x1;
const HEADER_BYTES: usize = 32;
pub const NAME_LEN: usize = 48;
pub const PATH_LEN: usize = 1024;
const DISK_BYTES: usize = PATH_LEN + 16;
const LOCKSPACE_BYTES: usize = 64 + DISK_BYTES;
const RESOURCE_BYTES: usize = 128;
const OPTIONS_BYTES: usize = 56;
/// A reply larger than this is not the daemon's.
const MAX_REPLY_ITEMS: u32 = 4096;

const CMD_REGISTER: u32 = 1;
const CMD_ADD_LOCKSPACE: u32 = 2;
const CMD_REM_LOCKSPACE: u32 = 3;
const CMD_ACQUIRE: u32 = 7;
const CMD_RELEASE: u32 = 8;
const CMD_INQ_LOCKSPACE: u32 = 16;
const CMD_WRITE_LOCKSPACE: u32 = 18;
const CMD_WRITE_RESOURCE: u32 = 19;
const CMD_GET_LOCKSPACES: u32 = 22;
const CMD_VERSION: u32 = 28;

/// Lockspace and resource flags: 512-byte sectors, 1 MiB leases (lvmlockd's choice on
/// 512-byte disks).
pub const LSF_SECTOR512_ALIGN1M: u32 = 0x100 | 0x10;
pub const RES_SECTOR512_ALIGN1M: u32 = 0x100 | 0x10;
pub const RES_SHARED: u32 = 0x4;

pub const EAGAIN: i32 = 11;
pub const ENOENT: i32 = 2;
pub const EEXIST: i32 = 17;
pub const EINPROGRESS: i32 = 115;
pub const SANLK_ACQUIRE_IDLIVE: i32 = -243;
pub const SANLK_ACQUIRE_OWNED: i32 = -244;
pub const SANLK_ACQUIRE_OTHER: i32 = -245;

#[derive(Debug, thiserror::Error)]
pub enum SanlockError {
    #[error("the sanlock daemon at {socket} cannot be reached ({cause}); start it (`sanlock daemon`, SANLOCK_RUN_DIR names its directory)")]
    Connect {
        socket: String,
        cause: std::io::Error,
    },
    #[error("talking to the sanlock daemon at {socket}: {cause}")]
    Io {
        socket: String,
        cause: std::io::Error,
    },
    #[error("the sanlock daemon at {socket} answered {what} with {detail}")]
    BadReply {
        socket: String,
        what: &'static str,
        detail: String,
    },
    #[error("sanlock {what}: {}", describe(*code))]
    Failed { what: String, code: i32 },
    #[error("{what}: {why}")]
    Argument { what: String, why: String },
}

impl SanlockError {
    /// The daemon's result code, for a command it refused.
    pub fn code(&self) -> Option<i32> {
        match self {
            SanlockError::Failed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// sanlock's result codes in words (sanlock_rv.h and errno).
pub fn describe(code: i32) -> String {
    let text = match code {
        -11 => "held by another host (EAGAIN)",
        -2 => "no such lockspace joined (ENOENT)",
        -17 => "already exists (EEXIST)",
        -16 => "busy (EBUSY)",
        -115 => "in progress (EINPROGRESS)",
        -22 => "invalid argument (EINVAL)",
        -13 => "permission denied (EACCES)",
        -28 | -90 => "beyond the end of the device",
        -223 => "no lease record (bad magic)",
        -229 => "lease record checksum wrong",
        -230 => "lockspace sizes disagree",
        -231 => "invalid host id",
        -241 => "the lockspace is not joined",
        -243 => "held by another live host",
        -244 => "owned by another host",
        -245 => "held by another host",
        -262 => "host id in use by another host",
        _ => "",
    };
    if text.is_empty() {
        format!("error {code}")
    } else {
        format!("{text} ({code})")
    }
}

/// Where a lease lives: a path and a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub offset: u64,
}

/// A lockspace as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockspace {
    pub name: String,
    pub host_id: u64,
    pub flags: u32,
    pub disk: Disk,
}

/// A resource (a paxos lease) in a lockspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub lockspace: String,
    pub name: String,
    pub flags: u32,
    pub disk: Disk,
}

fn put_name(out: &mut Vec<u8>, what: &str, name: &str) -> Result<(), SanlockError> {
    if name.len() > NAME_LEN {
        return Err(SanlockError::Argument {
            what: what.into(),
            why: format!("'{name}' is longer than sanlock's {NAME_LEN} bytes"),
        });
    }
    let mut field = [0u8; NAME_LEN];
    field[..name.len()].copy_from_slice(name.as_bytes());
    out.extend_from_slice(&field);
    Ok(())
}

fn put_disk(out: &mut Vec<u8>, disk: &Disk) -> Result<(), SanlockError> {
    use std::os::unix::ffi::OsStrExt;
    let path = disk.path.as_os_str().as_bytes();
    // sanlock escapes ':' in paths (sanlock_path_export); a NUL must fit after it.
    if path.len() >= PATH_LEN || path.contains(&b':') || path.contains(&0) {
        return Err(SanlockError::Argument {
            what: disk.path.display().to_string(),
            why: format!(
                "a sanlock lease path must be shorter than {PATH_LEN} bytes, without ':' or NUL"
            ),
        });
    }
    let mut field = vec![0u8; PATH_LEN];
    field[..path.len()].copy_from_slice(path);
    out.extend_from_slice(&field);
    out.extend_from_slice(&disk.offset.to_ne_bytes());
    out.extend_from_slice(&[0u8; 8]);
    Ok(())
}

fn lockspace_bytes(ls: &Lockspace) -> Result<Vec<u8>, SanlockError> {
    let mut out = Vec::with_capacity(LOCKSPACE_BYTES);
    put_name(&mut out, "lockspace name", &ls.name)?;
    out.extend_from_slice(&ls.host_id.to_ne_bytes());
    out.extend_from_slice(&ls.flags.to_ne_bytes());
    out.extend_from_slice(&[0u8; 4]);
    put_disk(&mut out, &ls.disk)?;
    debug_assert_eq!(out.len(), LOCKSPACE_BYTES);
    Ok(out)
}

fn resource_bytes(res: &Resource, with_disk: bool) -> Result<Vec<u8>, SanlockError> {
    let mut out = Vec::with_capacity(RESOURCE_BYTES + DISK_BYTES);
    put_name(&mut out, "lockspace name", &res.lockspace)?;
    put_name(&mut out, "resource name", &res.name)?;
    out.extend_from_slice(&[0u8; 8]); // lver
    out.extend_from_slice(&[0u8; 8]); // data64
    out.extend_from_slice(&[0u8; 4]); // data32
    out.extend_from_slice(&[0u8; 4]); // unused
    out.extend_from_slice(&res.flags.to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes()); // num_disks
    if with_disk {
        put_disk(&mut out, &res.disk)?;
    }
    Ok(out)
}

fn name_from(field: &[u8]) -> String {
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn ne_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn ne_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(x)
}

/// A reply header: result and second data word, after checking the magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeader {
    pub version: u32,
    pub result: i32,
    pub data2: u32,
}

/// Reads a reply header the daemon sent.
pub fn parse_reply_header(bytes: &[u8]) -> Result<ReplyHeader, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!("{} bytes, a header is {HEADER_BYTES}", bytes.len()));
    }
    let magic = ne_u32(bytes, 0);
    if magic != SM_MAGIC {
        return Err(format!(
            "magic {magic:#010x}, not sanlock's {SM_MAGIC:#010x}"
        ));
    }
    Ok(ReplyHeader {
        version: ne_u32(bytes, 4),
        result: ne_u32(bytes, 24) as i32,
        data2: ne_u32(bytes, 28),
    })
}

/// Reads one `struct sanlk_lockspace` the daemon sent.
pub fn parse_lockspace(bytes: &[u8]) -> Result<Lockspace, String> {
    use std::os::unix::ffi::OsStrExt;
    if bytes.len() < LOCKSPACE_BYTES {
        return Err(format!(
            "{} bytes, a lockspace is {LOCKSPACE_BYTES}",
            bytes.len()
        ));
    }
    let path = &bytes[64..64 + PATH_LEN];
    let end = path.iter().position(|&c| c == 0).unwrap_or(PATH_LEN);
    Ok(Lockspace {
        name: name_from(&bytes[..NAME_LEN]),
        host_id: ne_u64(bytes, 48),
        flags: ne_u32(bytes, 56),
        disk: Disk {
            path: PathBuf::from(std::ffi::OsStr::from_bytes(&path[..end])),
            offset: ne_u64(bytes, 64 + PATH_LEN),
        },
    })
}

/// The daemon of one host, found by its run directory.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// A registered connection: the leases acquired through it are held until it is dropped.
pub struct Registration {
    stream: UnixStream,
    socket: String,
    held: Vec<Resource>,
}

impl Client {
    /// The daemon whose run directory is `run_dir` (sanlock's SANLOCK_RUN_DIR).
    pub fn new(run_dir: &Path) -> Client {
        Client {
            socket: run_dir.join("sanlock.sock"),
        }
    }

    /// The daemon SANLOCK_RUN_DIR names, else sanlock's default /run/sanlock.
    pub fn from_env() -> Client {
        let dir = std::env::var_os("SANLOCK_RUN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/sanlock"));
        Client::new(&dir)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn name(&self) -> String {
        self.socket.display().to_string()
    }

    fn connect(&self) -> Result<UnixStream, SanlockError> {
        UnixStream::connect(&self.socket).map_err(|cause| SanlockError::Connect {
            socket: self.name(),
            cause,
        })
    }

    fn io(&self, cause: std::io::Error) -> SanlockError {
        SanlockError::Io {
            socket: self.name(),
            cause,
        }
    }

    fn send(
        &self,
        stream: &mut UnixStream,
        cmd: u32,
        flags: u32,
        data: u32,
        data2: u32,
        payload: &[u8],
    ) -> Result<(), SanlockError> {
        let mut msg = Vec::with_capacity(HEADER_BYTES + payload.len());
        for word in [
            SM_MAGIC,
            SM_PROTO,
            cmd,
            flags,
            (HEADER_BYTES + payload.len()) as u32,
            0,
            data,
            data2,
        ] {
            msg.extend_from_slice(&word.to_ne_bytes());
        }
        msg.extend_from_slice(payload);
        stream.write_all(&msg).map_err(|e| self.io(e))
    }

    fn reply(
        &self,
        stream: &mut UnixStream,
        what: &'static str,
    ) -> Result<ReplyHeader, SanlockError> {
        let mut buf = [0u8; HEADER_BYTES];
        stream.read_exact(&mut buf).map_err(|e| self.io(e))?;
        parse_reply_header(&buf).map_err(|detail| SanlockError::BadReply {
            socket: self.name(),
            what,
            detail,
        })
    }

    /// One command on its own connection; returns the daemon's result.
    fn command(
        &self,
        cmd: u32,
        flags: u32,
        data: u32,
        data2: u32,
        payload: &[u8],
        what: &'static str,
    ) -> Result<ReplyHeader, SanlockError> {
        let mut stream = self.connect()?;
        self.send(&mut stream, cmd, flags, data, data2, payload)?;
        self.reply(&mut stream, what)
    }

    fn check(result: i32, what: impl Into<String>) -> Result<(), SanlockError> {
        if result < 0 {
            return Err(SanlockError::Failed {
                what: what.into(),
                code: result,
            });
        }
        Ok(())
    }

    /// The daemon's version word (e.g. 0x03080500 for 3.8.5).
    pub fn version(&self) -> Result<u32, SanlockError> {
        let reply = self.command(CMD_VERSION, 0, 0, 0, &[], "version")?;
        Self::check(reply.result, "version")?;
        Ok(reply.data2)
    }

    /// Writes the delta leases of lockspace `ls` (host id 0) with `io_timeout` seconds,
    /// as `sanlock_write_lockspace` does.
    pub fn write_lockspace(&self, ls: &Lockspace, io_timeout: u32) -> Result<(), SanlockError> {
        let payload = lockspace_bytes(ls)?;
        let reply = self.command(
            CMD_WRITE_LOCKSPACE,
            0,
            0,
            io_timeout,
            &payload,
            "write_lockspace",
        )?;
        Self::check(
            reply.result,
            format!(
                "writing lockspace '{}' at {}:{}",
                ls.name,
                ls.disk.path.display(),
                ls.disk.offset
            ),
        )
    }

    /// Writes an unheld paxos lease for `res`, as `sanlock_write_resource` does.
    pub fn write_resource(&self, res: &Resource) -> Result<(), SanlockError> {
        let payload = resource_bytes(res, true)?;
        let reply = self.command(CMD_WRITE_RESOURCE, 0, 0, 0, &payload, "write_resource")?;
        Self::check(
            reply.result,
            format!(
                "writing lease '{}' of lockspace '{}' at {}:{}",
                res.name,
                res.lockspace,
                res.disk.path.display(),
                res.disk.offset
            ),
        )
    }

    /// Joins lockspace `ls` with its host id, waiting until the delta lease is held
    /// (two io timeouts and more).
    pub fn add_lockspace(&self, ls: &Lockspace) -> Result<(), SanlockError> {
        let payload = lockspace_bytes(ls)?;
        let reply = self.command(CMD_ADD_LOCKSPACE, 0, 0, 0, &payload, "add_lockspace")?;
        Self::check(
            reply.result,
            format!("joining lockspace '{}' as host {}", ls.name, ls.host_id),
        )
    }

    /// Leaves lockspace `ls` (its delta lease is released on disk).
    pub fn rem_lockspace(&self, ls: &Lockspace) -> Result<(), SanlockError> {
        let payload = lockspace_bytes(ls)?;
        let reply = self.command(CMD_REM_LOCKSPACE, 0, 0, 0, &payload, "rem_lockspace")?;
        Self::check(
            reply.result,
            format!("leaving lockspace '{}' as host {}", ls.name, ls.host_id),
        )
    }

    /// 0 if the daemon holds lockspace `ls` with its host id, else sanlock's code
    /// (-ENOENT: not joined, -EINPROGRESS: joining or leaving).
    pub fn inq_lockspace(&self, ls: &Lockspace) -> Result<i32, SanlockError> {
        let payload = lockspace_bytes(ls)?;
        Ok(self
            .command(CMD_INQ_LOCKSPACE, 0, 0, 0, &payload, "inq_lockspace")?
            .result)
    }

    /// The lockspaces the daemon has joined (or is joining).
    pub fn lockspaces(&self) -> Result<Vec<Lockspace>, SanlockError> {
        let mut stream = self.connect()?;
        self.send(&mut stream, CMD_GET_LOCKSPACES, 0, 0, 0, &[])?;
        let reply = self.reply(&mut stream, "get_lockspaces")?;
        // -ENOSPC: the daemon's buffer ran out; the ones sent are still good.
        if reply.result < 0 && reply.result != -28 {
            Self::check(reply.result, "listing lockspaces")?;
        }
        if reply.data2 > MAX_REPLY_ITEMS {
            return Err(SanlockError::BadReply {
                socket: self.name(),
                what: "get_lockspaces",
                detail: format!("{} lockspaces", reply.data2),
            });
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; LOCKSPACE_BYTES];
        for _ in 0..reply.data2 {
            stream.read_exact(&mut buf).map_err(|e| self.io(e))?;
            out.push(
                parse_lockspace(&buf).map_err(|detail| SanlockError::BadReply {
                    socket: self.name(),
                    what: "get_lockspaces",
                    detail,
                })?,
            );
        }
        Ok(out)
    }

    /// A registered connection for acquiring leases.
    pub fn register(&self) -> Result<Registration, SanlockError> {
        let mut stream = self.connect()?;
        self.send(&mut stream, CMD_REGISTER, 0, 0, 0, &[])?;
        Ok(Registration {
            stream,
            socket: self.name(),
            held: Vec::new(),
        })
    }
}

impl Registration {
    fn client(&self) -> Client {
        Client {
            socket: PathBuf::from(&self.socket),
        }
    }

    /// Acquires `res` (shared if its flags say so) for this connection; `owner` is the
    /// name sanlock records for the holder in its status.
    pub fn acquire(&mut self, res: &Resource, owner: &str) -> Result<(), SanlockError> {
        let client = self.client();
        let mut payload = resource_bytes(res, true)?;
        let mut options = Vec::with_capacity(OPTIONS_BYTES);
        let owner: String = owner.chars().take(NAME_LEN - 1).collect();
        put_name(&mut options, "owner name", &owner)?;
        options.extend_from_slice(&[0u8; 8]);
        payload.extend_from_slice(&options);
        client.send(&mut self.stream, CMD_ACQUIRE, 0, 1, u32::MAX, &payload)?;
        let reply = client.reply(&mut self.stream, "acquire")?;
        Client::check(
            reply.result,
            format!("lease '{}' of lockspace '{}'", res.name, res.lockspace),
        )?;
        self.held.push(res.clone());
        Ok(())
    }

    /// Releases `res`, held through this connection.
    pub fn release(&mut self, res: &Resource) -> Result<(), SanlockError> {
        let client = self.client();
        let payload = resource_bytes(res, false)?;
        client.send(&mut self.stream, CMD_RELEASE, 0, 1, u32::MAX, &payload)?;
        let reply = client.reply(&mut self.stream, "release")?;
        Client::check(
            reply.result,
            format!(
                "releasing lease '{}' of lockspace '{}'",
                res.name, res.lockspace
            ),
        )?;
        self.held.retain(|r| r != res);
        Ok(())
    }

    /// What this connection holds.
    pub fn held(&self) -> &[Resource] {
        &self.held
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Releasing explicitly writes the leases free at once; closing would too, later.
        for res in std::mem::take(&mut self.held) {
            if let Err(e) = self.release(&res) {
                tracing::warn!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_have_sanlocks_sizes() {
        let ls = Lockspace {
            name: "lvm_vg".into(),
            host_id: 3,
            flags: LSF_SECTOR512_ALIGN1M,
            disk: Disk {
                path: "/dev/x".into(),
                offset: 4096,
            },
        };
        let b = lockspace_bytes(&ls).unwrap();
        assert_eq!(b.len(), 1104);
        assert_eq!(parse_lockspace(&b).unwrap(), ls);
        let res = Resource {
            lockspace: "lvm_vg".into(),
            name: "VGLK".into(),
            flags: RES_SECTOR512_ALIGN1M,
            disk: ls.disk.clone(),
        };
        assert_eq!(resource_bytes(&res, true).unwrap().len(), 128 + 1040);
        assert_eq!(resource_bytes(&res, false).unwrap().len(), 128);
    }

    #[test]
    fn bad_names_and_paths_are_refused() {
        let res = Resource {
            lockspace: "x".repeat(49),
            name: "VGLK".into(),
            flags: 0,
            disk: Disk {
                path: "/dev/x".into(),
                offset: 0,
            },
        };
        assert!(resource_bytes(&res, true).is_err());
        let res = Resource {
            lockspace: "ls".into(),
            disk: Disk {
                path: "/a:b".into(),
                offset: 0,
            },
            ..res
        };
        assert!(resource_bytes(&res, true).is_err());
    }

    #[test]
    fn reply_headers() {
        let mut b = Vec::new();
        for w in [SM_MAGIC, 1, 7, 0, 32, 0, (-11i32) as u32, 4] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        let h = parse_reply_header(&b).unwrap();
        assert_eq!(h.result, -11);
        assert_eq!(h.data2, 4);
        b[0] = 0;
        assert!(parse_reply_header(&b).is_err());
        assert!(parse_reply_header(&b[..10]).is_err());
    }
}
