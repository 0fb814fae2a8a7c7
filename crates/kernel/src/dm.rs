//! device-mapper through its ioctls, as libdevmapper speaks them: every command is one
//! `struct dm_ioctl` (312 bytes) with the interface version in it, followed by the
//! command's data (target specs for a table load, a message), in one buffer the kernel
//! also answers into. Version 4 of the interface; the kernel serves any request of its
//! major version whose minor is not newer than its own.
//!
//! Written by hand because it is small and exact: the layout is fixed by the kernel's
//! `include/uapi/linux/dm-ioctl.h`, and the encoding is tested without a kernel below.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use thiserror::Error;

/// The interface version tessera speaks: 4.0.0 holds every command it uses but messages
/// (4.2) and is served by every kernel since 2.6.
pub const VERSION: [u32; 3] = [4, 0, 0];
/// Messages need this minor.
const MESSAGE_MINOR: u32 = 2;

const HEADER: usize = 312;
const SPEC: usize = 40;
const NAME_LEN: usize = 128;
const UUID_LEN: usize = 129;
const TYPE_LEN: usize = 16;
const CONTROL: &str = "/dev/mapper/control";

// Flags (dm-ioctl.h).
const READONLY_FLAG: u32 = 1 << 0;
const SUSPEND_FLAG: u32 = 1 << 1;
const STATUS_TABLE_FLAG: u32 = 1 << 4;
const ACTIVE_PRESENT_FLAG: u32 = 1 << 5;
const INACTIVE_PRESENT_FLAG: u32 = 1 << 6;
const BUFFER_FULL_FLAG: u32 = 1 << 8;
const DATA_OUT_FLAG: u32 = 1 << 16;

/// The commands, by their ioctl numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Version = 0,
    ListDevices = 2,
    DevCreate = 3,
    DevRemove = 4,
    DevRename = 5,
    DevSuspend = 6,
    DevStatus = 7,
    TableLoad = 9,
    TableClear = 10,
    TableStatus = 12,
    ListVersions = 13,
    TargetMsg = 14,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Command::Version => "DM_VERSION",
            Command::ListDevices => "DM_LIST_DEVICES",
            Command::DevCreate => "DM_DEV_CREATE",
            Command::DevRemove => "DM_DEV_REMOVE",
            Command::DevRename => "DM_DEV_RENAME",
            Command::DevSuspend => "DM_DEV_SUSPEND",
            Command::DevStatus => "DM_DEV_STATUS",
            Command::TableLoad => "DM_TABLE_LOAD",
            Command::TableClear => "DM_TABLE_CLEAR",
            Command::TableStatus => "DM_TABLE_STATUS",
            Command::ListVersions => "DM_LIST_VERSIONS",
            Command::TargetMsg => "DM_TARGET_MSG",
        }
    }

    /// `_IOWR(0xfd, nr, struct dm_ioctl)`.
    fn request(self) -> u64 {
        (3u64 << 30) | ((HEADER as u64) << 16) | (0xfd << 8) | self as u64
    }
}

#[derive(Debug, Error)]
pub enum DmError {
    #[error("device-mapper is not available: {why}")]
    Unavailable { why: String },
    #[error("the kernel's device-mapper speaks interface {}.{}.{}; tessera needs {}.{}.x or newer in major {}", kernel[0], kernel[1], kernel[2], VERSION[0], need, VERSION[0])]
    Version { kernel: [u32; 3], need: u32 },
    #[error("the kernel's device-mapper refused interface {}.{}.{}: it speaks {}.{}.{} and serves only major {} up to minor {}", asked[0], asked[1], asked[2], kernel[0], kernel[1], kernel[2], kernel[0], kernel[1])]
    Refused { asked: [u32; 3], kernel: [u32; 3] },
    #[error("{command} on {device:?}: {source}{hint}")]
    Ioctl {
        command: &'static str,
        device: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} {value:?} is too long: at most {max} bytes")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error("{what} {value:?} holds a character device-mapper does not take")]
    BadName { what: &'static str, value: String },
    #[error("the kernel's answer to {command} is malformed: {why}")]
    Malformed { command: &'static str, why: String },
}

pub type Result<T> = std::result::Result<T, DmError>;

/// One row of a table: what the kernel loads and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub start: u64,
    pub length: u64,
    pub target_type: String,
    pub params: String,
}

impl Row {
    /// Parses `start length type params...` (dmsetup's table syntax).
    pub fn parse(line: &str) -> Option<Row> {
        let mut it = line.split_whitespace();
        let start = it.next()?.parse().ok()?;
        let length = it.next()?.parse().ok()?;
        let target_type = it.next()?.to_string();
        let params = it.collect::<Vec<_>>().join(" ");
        Some(Row {
            start,
            length,
            target_type,
            params,
        })
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.start, self.length, self.target_type)?;
        if !self.params.is_empty() {
            write!(f, " {}", self.params)?;
        }
        Ok(())
    }
}

/// A device as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevInfo {
    pub name: String,
    pub uuid: String,
    pub major: u32,
    pub minor: u32,
    pub open_count: i32,
    pub target_count: u32,
    pub event_nr: u32,
    pub suspended: bool,
    pub read_only: bool,
    pub live_table: bool,
    pub inactive_table: bool,
}

/// The kernel's device number encoding (`huge_encode_dev`).
fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

fn put_str(buf: &mut [u8], at: usize, len: usize, s: &str) {
    buf[at..at + s.len().min(len - 1)].copy_from_slice(&s.as_bytes()[..s.len().min(len - 1)]);
}

fn get_str(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn check_name(what: &'static str, value: &str, max: usize) -> Result<()> {
    if value.len() >= max {
        return Err(DmError::TooLong {
            what,
            value: value.into(),
            max: max - 1,
        });
    }
    if value
        .bytes()
        .any(|b| b == 0 || (what == "device name" && b == b'/'))
    {
        return Err(DmError::BadName {
            what,
            value: value.into(),
        });
    }
    Ok(())
}

/// A request: the header's inputs and the data after it.
#[derive(Debug, Default, Clone)]
pub struct Request {
    pub version: [u32; 3],
    pub flags: u32,
    pub name: String,
    pub uuid: String,
    pub event_nr: u32,
    pub target_count: u32,
    pub data: Vec<u8>,
}

impl Request {
    /// The buffer for the kernel: header, data, and `room` bytes for the answer.
    pub fn encode(&self, room: usize) -> Vec<u8> {
        let size = (HEADER + self.data.len() + room).next_multiple_of(8);
        let mut b = vec![0u8; size];
        for (i, v) in self.version.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b[12..16].copy_from_slice(&(size as u32).to_ne_bytes());
        b[16..20].copy_from_slice(&(HEADER as u32).to_ne_bytes());
        b[20..24].copy_from_slice(&self.target_count.to_ne_bytes());
        b[28..32].copy_from_slice(&self.flags.to_ne_bytes());
        b[32..36].copy_from_slice(&self.event_nr.to_ne_bytes());
        put_str(&mut b, 48, NAME_LEN, &self.name);
        put_str(&mut b, 48 + NAME_LEN, UUID_LEN, &self.uuid);
        b[HEADER..HEADER + self.data.len()].copy_from_slice(&self.data);
        b
    }
}

/// The header of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub version: [u32; 3],
    pub data_size: u32,
    pub data_start: u32,
    pub target_count: u32,
    pub open_count: i32,
    pub flags: u32,
    pub event_nr: u32,
    pub dev: u64,
    pub name: String,
    pub uuid: String,
}

impl Reply {
    pub fn decode(b: &[u8]) -> Option<Reply> {
        if b.len() < HEADER {
            return None;
        }
        Some(Reply {
            version: [u32_at(b, 0), u32_at(b, 4), u32_at(b, 8)],
            data_size: u32_at(b, 12),
            data_start: u32_at(b, 16),
            target_count: u32_at(b, 20),
            open_count: u32_at(b, 24) as i32,
            flags: u32_at(b, 28),
            event_nr: u32_at(b, 32),
            dev: u64_at(b, 40),
            name: get_str(&b[48..48 + NAME_LEN]),
            uuid: get_str(&b[48 + NAME_LEN..48 + NAME_LEN + UUID_LEN]),
        })
    }

    fn info(&self) -> DevInfo {
        let (major, minor) = decode_dev(self.dev);
        DevInfo {
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            major,
            minor,
            open_count: self.open_count,
            target_count: self.target_count,
            event_nr: self.event_nr,
            suspended: self.flags & SUSPEND_FLAG != 0,
            read_only: self.flags & READONLY_FLAG != 0,
            live_table: self.flags & ACTIVE_PRESENT_FLAG != 0,
            inactive_table: self.flags & INACTIVE_PRESENT_FLAG != 0,
        }
    }
}

/// Target specs for DM_TABLE_LOAD: each `next` counts from the start of its own spec.
pub fn encode_table(rows: &[Row]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for row in rows {
        if row.target_type.len() >= TYPE_LEN {
            return Err(DmError::TooLong {
                what: "target type",
                value: row.target_type.clone(),
                max: TYPE_LEN - 1,
            });
        }
        if row.params.bytes().any(|b| b == 0) {
            return Err(DmError::BadName {
                what: "table parameters",
                value: row.params.clone(),
            });
        }
        let params_len = (row.params.len() + 1).next_multiple_of(8);
        let mut spec = vec![0u8; SPEC + params_len];
        spec[0..8].copy_from_slice(&row.start.to_ne_bytes());
        spec[8..16].copy_from_slice(&row.length.to_ne_bytes());
        spec[20..24].copy_from_slice(&((SPEC + params_len) as u32).to_ne_bytes());
        put_str(&mut spec, 24, TYPE_LEN, &row.target_type);
        spec[SPEC..SPEC + row.params.len()].copy_from_slice(row.params.as_bytes());
        out.extend(spec);
    }
    Ok(out)
}

/// Target specs from DM_TABLE_STATUS: each `next` counts from the start of the first spec.
pub fn decode_table(data: &[u8], count: u32) -> std::result::Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let mut at = 0usize;
    for i in 0..count {
        let spec = data.get(at..at + SPEC).ok_or_else(|| {
            format!(
                "target {i} at byte {at} is past the data ({} bytes)",
                data.len()
            )
        })?;
        let params = &data[at + SPEC..];
        rows.push(Row {
            start: u64_at(spec, 0),
            length: u64_at(spec, 8),
            target_type: get_str(&spec[24..24 + TYPE_LEN]),
            params: get_str(params),
        });
        let next = u32_at(spec, 20) as usize;
        if i + 1 < count && next <= at {
            return Err(format!(
                "target {i}'s next offset {next} does not move forward"
            ));
        }
        at = next;
    }
    Ok(rows)
}

/// An open `/dev/mapper/control`, with the kernel's interface version.
pub struct Control {
    file: File,
    kernel: [u32; 3],
}

impl Control {
    /// Opens the control node (making it from /proc/misc where no udev made it) and checks
    /// the kernel's interface version.
    pub fn open() -> Result<Control> {
        let file = match OpenOptions::new().read(true).write(true).open(CONTROL) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                make_control_node()?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(CONTROL)
                    .map_err(|e| DmError::Unavailable {
                        why: format!("{CONTROL}: {e}"),
                    })?
            }
            Err(e) => {
                let why = if misc_minor().is_none() {
                    format!("{CONTROL}: {e}: {NO_DM}")
                } else if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
                    format!("{CONTROL}: {e} (device-mapper needs root)")
                } else {
                    format!("{CONTROL}: {e}")
                };
                return Err(DmError::Unavailable { why });
            }
        };
        let mut control = Control {
            file,
            kernel: VERSION,
        };
        let reply = control.call(Command::Version, &Request::default(), 0)?.0;
        control.kernel = reply.version;
        if reply.version[0] != VERSION[0] {
            return Err(DmError::Version {
                kernel: reply.version,
                need: VERSION[1],
            });
        }
        Ok(control)
    }

    /// The kernel's interface version.
    pub fn kernel_version(&self) -> [u32; 3] {
        self.kernel
    }

    /// Asks the kernel whether it serves interface `version` (DM_VERSION with it): the
    /// kernel refuses another major, and a minor newer than its own.
    pub fn handshake(&self, version: [u32; 3]) -> Result<[u32; 3]> {
        let req = Request {
            version,
            ..Request::default()
        };
        match self.call(Command::Version, &req, 0) {
            Ok((reply, _)) => Ok(reply.version),
            Err(DmError::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                Err(DmError::Refused {
                    asked: version,
                    kernel: self.kernel,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Issues `command`; the answer's header and data. `room` is where the answer's data
    /// goes; a full buffer is retried larger.
    pub fn call(&self, command: Command, req: &Request, room: usize) -> Result<(Reply, Vec<u8>)> {
        let mut req = req.clone();
        if req.version == [0, 0, 0] {
            req.version = VERSION;
        }
        let mut room = room;
        loop {
            let mut buf = req.encode(room);
            // SAFETY: `buf` is a dm_ioctl header followed by its data, `data_size` bytes
            // long as the header says; the kernel reads and writes only within it.
            let rc = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    command.request() as libc::Ioctl,
                    buf.as_mut_ptr(),
                )
            };
            if rc < 0 {
                let source = io::Error::last_os_error();
                return Err(DmError::Ioctl {
                    command: command.name(),
                    device: req.name.clone(),
                    hint: hint(command, &source),
                    source,
                });
            }
            let reply = Reply::decode(&buf).ok_or(DmError::Malformed {
                command: command.name(),
                why: "shorter than its header".into(),
            })?;
            if reply.flags & BUFFER_FULL_FLAG != 0 && room < 64 << 20 {
                room = (room * 2).max(16 << 10);
                continue;
            }
            let start = (reply.data_start as usize).min(buf.len());
            let end = (reply.data_size as usize).clamp(start, buf.len());
            return Ok((reply, buf[start..end].to_vec()));
        }
    }

    fn named(name: &str) -> Result<Request> {
        check_name("device name", name, NAME_LEN)?;
        Ok(Request {
            name: name.into(),
            ..Request::default()
        })
    }

    /// Creates device `name` with `uuid` (no table yet), as `dmsetup create --notable`.
    pub fn create(&self, name: &str, uuid: &str) -> Result<DevInfo> {
        let mut req = Self::named(name)?;
        check_name("uuid", uuid, UUID_LEN)?;
        req.uuid = uuid.into();
        Ok(self.call(Command::DevCreate, &req, 0)?.0.info())
    }

    /// Loads `rows` as the device's inactive table.
    pub fn load(&self, name: &str, rows: &[Row], read_only: bool) -> Result<()> {
        let mut req = Self::named(name)?;
        req.data = encode_table(rows)?;
        req.target_count = rows.len() as u32;
        if read_only {
            req.flags |= READONLY_FLAG;
        }
        self.call(Command::TableLoad, &req, 0)?;
        Ok(())
    }

    /// Drops the inactive table.
    pub fn clear(&self, name: &str) -> Result<()> {
        self.call(Command::TableClear, &Self::named(name)?, 0)?;
        Ok(())
    }

    /// Suspends the device (in-flight I/O completes, new I/O waits).
    pub fn suspend(&self, name: &str) -> Result<DevInfo> {
        let mut req = Self::named(name)?;
        req.flags |= SUSPEND_FLAG;
        Ok(self.call(Command::DevSuspend, &req, 0)?.0.info())
    }

    /// Resumes the device, making its inactive table live if it has one.
    pub fn resume(&self, name: &str) -> Result<DevInfo> {
        Ok(self
            .call(Command::DevSuspend, &Self::named(name)?, 0)?
            .0
            .info())
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        self.call(Command::DevRemove, &Self::named(name)?, 0)?;
        Ok(())
    }

    pub fn rename(&self, name: &str, new_name: &str) -> Result<()> {
        let mut req = Self::named(name)?;
        check_name("device name", new_name, NAME_LEN)?;
        req.data = new_name.as_bytes().to_vec();
        req.data.push(0);
        self.call(Command::DevRename, &req, 0)?;
        Ok(())
    }

    /// The device's state, or `None` if there is no such device.
    pub fn info(&self, name: &str) -> Result<Option<DevInfo>> {
        match self.call(Command::DevStatus, &Self::named(name)?, 0) {
            Ok((reply, _)) => Ok(Some(reply.info())),
            Err(DmError::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::ENXIO) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn table_status(&self, name: &str, table: bool) -> Result<Vec<Row>> {
        let mut req = Self::named(name)?;
        if table {
            req.flags |= STATUS_TABLE_FLAG;
        }
        let (reply, data) = self.call(Command::TableStatus, &req, 16 << 10)?;
        decode_table(&data, reply.target_count).map_err(|why| DmError::Malformed {
            command: Command::TableStatus.name(),
            why,
        })
    }

    /// The live table (`dmsetup table`).
    pub fn table(&self, name: &str) -> Result<Vec<Row>> {
        self.table_status(name, true)
    }

    /// Each row's status (`dmsetup status`).
    pub fn status(&self, name: &str) -> Result<Vec<Row>> {
        self.table_status(name, false)
    }

    /// Every device: (name, major, minor).
    pub fn list(&self) -> Result<Vec<(String, u32, u32)>> {
        let (_, data) = self.call(Command::ListDevices, &Request::default(), 16 << 10)?;
        let mut out = Vec::new();
        let mut at = 0usize;
        while at + 12 <= data.len() {
            let dev = u64_at(&data, at);
            let next = u32_at(&data, at + 8) as usize;
            if dev == 0 && next == 0 && out.is_empty() {
                break;
            }
            let (major, minor) = decode_dev(dev);
            out.push((get_str(&data[at + 12..]), major, minor));
            if next == 0 {
                break;
            }
            at += next;
        }
        Ok(out)
    }

    /// The kernel's target types and their versions (`dmsetup targets`).
    pub fn targets(&self) -> Result<Vec<(String, [u32; 3])>> {
        let (_, data) = self.call(Command::ListVersions, &Request::default(), 16 << 10)?;
        let mut out = Vec::new();
        let mut at = 0usize;
        while at + 16 <= data.len() {
            let next = u32_at(&data, at) as usize;
            let v = [
                u32_at(&data, at + 4),
                u32_at(&data, at + 8),
                u32_at(&data, at + 12),
            ];
            out.push((get_str(&data[at + 16..]), v));
            if next == 0 {
                break;
            }
            at += next;
        }
        Ok(out)
    }

    /// Sends a message to the target at `sector` (`dmsetup message`); its answer, if any.
    pub fn message(&self, name: &str, sector: u64, message: &str) -> Result<String> {
        if self.kernel[1] < MESSAGE_MINOR {
            return Err(DmError::Version {
                kernel: self.kernel,
                need: MESSAGE_MINOR,
            });
        }
        let mut req = Self::named(name)?;
        req.version = [VERSION[0], MESSAGE_MINOR, 0];
        req.data = sector.to_ne_bytes().to_vec();
        req.data.extend_from_slice(message.as_bytes());
        req.data.push(0);
        let (reply, data) = self.call(Command::TargetMsg, &req, 4096)?;
        Ok(if reply.flags & DATA_OUT_FLAG != 0 {
            get_str(&data)
        } else {
            String::new()
        })
    }
}

/// A word on the usual causes, for the error message.
fn hint(command: Command, e: &io::Error) -> &'static str {
    match (command, e.raw_os_error()) {
        (_, Some(libc::EBUSY)) => " (the device is open or in use by another device)",
        (Command::DevCreate, Some(libc::EEXIST)) => " (a device of that name or uuid exists)",
        (_, Some(libc::ENXIO)) => " (no such device)",
        (Command::TableLoad, Some(libc::ENODEV | libc::ENOENT)) => {
            " (a device the table names does not exist)"
        }
        (Command::TableLoad, Some(libc::EINVAL)) => {
            " (the kernel refused the table: see `dmesg` for the target's reason)"
        }
        (_, Some(libc::EPERM | libc::EACCES)) => " (device-mapper needs root)",
        _ => "",
    }
}

const NO_DM: &str =
    "the kernel has no device-mapper (no 'device-mapper' in /proc/misc; load the dm-mod module)";

/// The misc minor of device-mapper, if the kernel has it.
fn misc_minor() -> Option<u32> {
    let misc = std::fs::read_to_string("/proc/misc").unwrap_or_default();
    misc.lines().find_map(|l| {
        let (num, name) = l.trim().split_once(' ')?;
        (name.trim() == "device-mapper").then(|| num.parse::<u32>().ok())?
    })
}

/// Makes /dev/mapper/control from the minor /proc/misc gives device-mapper (udev would).
fn make_control_node() -> Result<()> {
    let minor = misc_minor().ok_or_else(|| DmError::Unavailable { why: NO_DM.into() })?;
    std::fs::create_dir_all(Path::new(CONTROL).parent().expect("has a parent")).map_err(|e| {
        DmError::Unavailable {
            why: format!("/dev/mapper: {e}"),
        }
    })?;
    make_node(CONTROL, libc::S_IFCHR, 10, minor).map_err(|e| DmError::Unavailable {
        why: format!("{CONTROL}: {e}"),
    })
}

/// Makes a device node (block or character) at `path`, replacing a stale one.
pub fn make_node(path: &str, kind: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::other("path holds a NUL"))?;
    let _ = std::fs::remove_file(path);
    // SAFETY: `c` is a NUL-terminated path; mknod only reads it.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o600, libc::makedev(major, minor)) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_laid_out_as_dm_ioctl_h_says() {
        let req = Request {
            version: [4, 0, 0],
            flags: SUSPEND_FLAG,
            name: "vg-lv".into(),
            uuid: "LVM-abc".into(),
            event_nr: 7,
            target_count: 2,
            data: vec![1, 2, 3],
        };
        let b = req.encode(100);
        assert_eq!(b.len() % 8, 0);
        assert_eq!(u32_at(&b, 12) as usize, b.len(), "data_size is the buffer");
        assert_eq!(u32_at(&b, 16), 312, "data starts after the header");
        assert_eq!(u32_at(&b, 20), 2);
        assert_eq!(u32_at(&b, 28), SUSPEND_FLAG);
        assert_eq!(u32_at(&b, 32), 7);
        assert_eq!(&b[48..53], b"vg-lv");
        assert_eq!(b[53], 0);
        assert_eq!(&b[176..183], b"LVM-abc");
        assert_eq!(&b[312..315], &[1, 2, 3]);
        let reply = Reply::decode(&b).unwrap();
        assert_eq!(reply.name, "vg-lv");
        assert_eq!(reply.uuid, "LVM-abc");
        assert_eq!(reply.version, [4, 0, 0]);
    }

    #[test]
    fn ioctl_numbers_are_iowr_0xfd() {
        // DM_VERSION and DM_TABLE_LOAD as the kernel headers define them on x86-64.
        assert_eq!(Command::Version.request(), 0xc138_fd00);
        assert_eq!(Command::TableLoad.request(), 0xc138_fd09);
        assert_eq!(Command::TargetMsg.request(), 0xc138_fd0e);
    }

    #[test]
    fn tables_encode_with_next_from_each_spec_and_decode_from_the_first() {
        let rows = vec![
            Row::parse("0 2048 linear 7:0 2048").unwrap(),
            Row::parse("2048 4096 striped 2 128 7:1 0 7:2 0").unwrap(),
        ];
        let enc = encode_table(&rows).unwrap();
        // First spec: 40 bytes + "7:0 2048\0" padded to 16.
        assert_eq!(u32_at(&enc, 20), 56);
        assert_eq!(&enc[24..30], b"linear");
        // As the kernel answers: next counts from the first spec.
        let mut answer = enc.clone();
        let second = u32_at(&enc, 20);
        answer[20..24].copy_from_slice(&second.to_ne_bytes());
        let second_next = second + u32_at(&enc, second as usize + 20);
        answer[second as usize + 20..second as usize + 24]
            .copy_from_slice(&second_next.to_ne_bytes());
        assert_eq!(decode_table(&answer, 2).unwrap(), rows);
        assert!(decode_table(&answer[..50], 2).is_err());
    }

    #[test]
    fn bad_names_and_params_are_refused() {
        assert!(matches!(
            check_name("device name", "a/b", NAME_LEN),
            Err(DmError::BadName { .. })
        ));
        assert!(matches!(
            check_name("device name", &"x".repeat(128), NAME_LEN),
            Err(DmError::TooLong { .. })
        ));
        let row = Row {
            start: 0,
            length: 8,
            target_type: "a-very-long-target-type".into(),
            params: String::new(),
        };
        assert!(encode_table(&[row]).is_err());
    }

    #[test]
    fn device_numbers_decode_as_the_kernel_encodes_them() {
        // huge_encode_dev(MKDEV(253, 3)) and MKDEV(259, 300).
        assert_eq!(decode_dev((253 << 8) | 3), (253, 3));
        let minor = 300u64;
        let enc = (minor & 0xff) | (259 << 8) | ((minor & !0xff) << 12);
        assert_eq!(decode_dev(enc), (259, 300));
    }
}
