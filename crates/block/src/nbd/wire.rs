//! The client's side of the NBD wire format: fixed newstyle negotiation and reading
//! replies. Generic over `Read`/`Write` so the fuzzer drives it with plain byte buffers;
//! nothing the server sends may panic here, and every length it names is bounded before
//! memory is allocated for it.
//!
//! Numbers are big-endian on the wire; values come from the NBD protocol specification
//! (`doc/proto.md` in NetworkBlockDevice/nbd). The server side keeps its own copy of these
//! constants in tessera-export, which depends on this crate, not the other way round.

use std::fmt;
use std::io::{self, Read, Write};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// What an oldstyle server sends where a newstyle one sends `IHAVEOPT`.
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_PLATFORM: u32 = (1 << 31) + 4;
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = (1 << 31) + 8;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

pub const CMD_FLAG_FUA: u16 = 1 << 0;

pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) + 2;
const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

/// `ESHUTDOWN`: the server is going away; the request may be retried elsewhere or later.
pub const NBD_ESHUTDOWN: u32 = 108;

/// The protocol's default largest payload, which every server accepts.
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 << 20;
/// Longest option reply or chunk payload (beyond read data) this client reads.
const MAX_OPTION_REPLY: u32 = 64 << 10;
/// Longest message kept from an error reply.
const MAX_MESSAGE: usize = 4096;

/// What negotiation learned about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
    /// Block size constraints (1, 4096, 32 MiB when the server states none).
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_block: u32,
    /// Structured replies were negotiated.
    pub structured: bool,
}

impl ExportInfo {
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Largest READ or WRITE payload to send: the server's maximum, at most the default,
    /// a whole number of minimum blocks.
    pub fn max_payload(&self) -> u32 {
        let max = self.max_block.min(DEFAULT_MAX_PAYLOAD);
        (max / self.min_block * self.min_block).max(self.min_block)
    }
}

/// What went wrong on the wire.
#[derive(Debug)]
pub enum WireError {
    /// The connection failed (closed, reset, timed out): worth reconnecting.
    Io(io::Error),
    /// The server broke the protocol: its byte stream cannot be trusted any further.
    Protocol(String),
    /// The server refused the export or an option; reconnecting will not help.
    Refused(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                f.write_str("the server closed the connection")
            }
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Protocol(m) => write!(f, "the server broke the NBD protocol: {m}"),
            WireError::Refused(m) => f.write_str(m),
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

fn protocol(m: impl Into<String>) -> WireError {
    WireError::Protocol(m.into())
}

fn read_array<const N: usize, R: Read>(r: &mut R) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_u16<R: Read>(r: &mut R) -> io::Result<u16> {
    Ok(u16::from_be_bytes(read_array(r)?))
}

fn read_u32<R: Read>(r: &mut R) -> io::Result<u32> {
    Ok(u32::from_be_bytes(read_array(r)?))
}

fn read_u64<R: Read>(r: &mut R) -> io::Result<u64> {
    Ok(u64::from_be_bytes(read_array(r)?))
}

/// Reads and drops `len` bytes.
fn skip<R: Read>(r: &mut R, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(len), &mut io::sink())?;
    if copied != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn read_vec<R: Read>(r: &mut R, len: u32) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn send_option<W: Write>(w: &mut W, option: u32, data: &[u8]) -> io::Result<()> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b)?;
    w.flush()
}

/// One option reply: its type and payload.
fn read_option_reply<R: Read>(r: &mut R, option: u32) -> Result<(u32, Vec<u8>), WireError> {
    let magic = read_u64(r)?;
    if magic != OPTION_REPLY_MAGIC {
        return Err(protocol(format!(
            "option reply magic {magic:#018x} is not the NBD option reply magic"
        )));
    }
    let replied_to = read_u32(r)?;
    let kind = read_u32(r)?;
    let len = read_u32(r)?;
    if replied_to != option {
        return Err(protocol(format!(
            "the server answered option {replied_to} while option {option} was asked"
        )));
    }
    if len > MAX_OPTION_REPLY {
        return Err(protocol(format!(
            "an option reply of {len} bytes is longer than any this client accepts"
        )));
    }
    Ok((kind, read_vec(r, len)?))
}

fn option_error_text(kind: u32, data: &[u8]) -> String {
    let what = match kind {
        REP_ERR_UNSUP => "not supported",
        REP_ERR_POLICY => "forbidden by the server's policy",
        REP_ERR_INVALID => "invalid",
        REP_ERR_PLATFORM => "not available on the server's platform",
        REP_ERR_TLS_REQD => "refused: the server requires TLS, which tessera does not speak",
        REP_ERR_UNKNOWN => "refused: the server has no such export",
        REP_ERR_SHUTDOWN => "refused: the server is shutting down",
        REP_ERR_BLOCK_SIZE_REQD => "refused: the server requires block size negotiation",
        REP_ERR_TOO_BIG => "refused: too big",
        _ => "refused",
    };
    let message = String::from_utf8_lossy(&data[..data.len().min(MAX_MESSAGE)]);
    if message.trim().is_empty() {
        what.to_string()
    } else {
        format!("{what} ({})", message.trim())
    }
}

/// Checks the block size constraints a server sent.
fn check_block_sizes(min: u32, preferred: u32, max: u32) -> Result<(), WireError> {
    let ok = min.is_power_of_two()
        && min <= 64 * 1024
        && preferred.is_power_of_two()
        && preferred >= min
        && max >= min
        && (max == u32::MAX || max % min == 0);
    if ok {
        Ok(())
    } else {
        Err(protocol(format!(
            "block sizes minimum {min}, preferred {preferred}, maximum {max} are not valid"
        )))
    }
}

/// Negotiates `export` over a fresh connection (fixed newstyle; `NBD_OPT_GO`, or
/// `NBD_OPT_EXPORT_NAME` with servers that lack it), asking for structured replies when
/// `structured`. Leaves the connection in the transmission phase.
pub fn negotiate<S: Read + Write>(
    s: &mut S,
    export: &str,
    structured: bool,
) -> Result<ExportInfo, WireError> {
    let magic = read_u64(s)?;
    if magic != NBDMAGIC {
        return Err(protocol(format!(
            "greeting {magic:#018x} is not NBDMAGIC: this is not an NBD server"
        )));
    }
    let style = read_u64(s)?;
    if style == OLDSTYLE_MAGIC {
        return Err(WireError::Refused(
            "the server speaks only the oldstyle handshake, which has no export names; \
             tessera needs a newstyle server"
                .into(),
        ));
    }
    if style != IHAVEOPT {
        return Err(protocol(format!(
            "handshake magic {style:#018x} is neither newstyle nor oldstyle"
        )));
    }
    let server_flags = read_u16(s)?;
    let fixed = server_flags & FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
    let client_flags = u32::from(server_flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    s.write_all(&client_flags.to_be_bytes())?;
    if export.len() > 4096 {
        return Err(WireError::Refused(
            "export names are at most 4096 bytes".into(),
        ));
    }

    // Only a fixed-newstyle server may be sent options other than EXPORT_NAME.
    let mut is_structured = false;
    if fixed && structured {
        send_option(s, OPT_STRUCTURED_REPLY, &[])?;
        loop {
            let (kind, data) = read_option_reply(s, OPT_STRUCTURED_REPLY)?;
            match kind {
                REP_ACK => {
                    is_structured = true;
                    break;
                }
                k if k & (1 << 31) != 0 => break,
                // Informational replies to this option are not defined; skip them.
                _ => drop(data),
            }
        }
    }

    if fixed {
        let mut go = Vec::with_capacity(8 + export.len());
        go.extend_from_slice(&(export.len() as u32).to_be_bytes());
        go.extend_from_slice(export.as_bytes());
        go.extend_from_slice(&1u16.to_be_bytes());
        go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        send_option(s, OPT_GO, &go)?;
        let mut export_info: Option<(u64, u16)> = None;
        let mut sizes = (1u32, 4096u32, DEFAULT_MAX_PAYLOAD);
        loop {
            let (kind, data) = read_option_reply(s, OPT_GO)?;
            match kind {
                REP_ACK => break,
                REP_INFO => {
                    if data.len() < 2 {
                        return Err(protocol("an NBD_REP_INFO reply carries no type"));
                    }
                    match be16(&data) {
                        INFO_EXPORT if data.len() == 12 => {
                            export_info = Some((be64(&data[2..]), be16(&data[10..])));
                        }
                        INFO_BLOCK_SIZE if data.len() == 14 => {
                            let (min, pref, max) =
                                (be32(&data[2..]), be32(&data[6..]), be32(&data[10..]));
                            check_block_sizes(min, pref, max)?;
                            sizes = (min, pref, max);
                        }
                        INFO_EXPORT | INFO_BLOCK_SIZE => {
                            return Err(protocol(format!(
                                "NBD_INFO type {} with {} bytes has the wrong length",
                                be16(&data),
                                data.len()
                            )))
                        }
                        _ => {}
                    }
                }
                REP_ERR_UNSUP => return export_name(s, export, no_zeroes, is_structured),
                k if k & (1 << 31) != 0 => {
                    return Err(WireError::Refused(format!(
                        "export '{export}': {}",
                        option_error_text(k, &data)
                    )))
                }
                _ => {}
            }
        }
        let Some((size, flags)) = export_info else {
            return Err(protocol(
                "NBD_OPT_GO was acknowledged without NBD_INFO_EXPORT (size and flags)",
            ));
        };
        return finish(size, flags, sizes, is_structured);
    }
    export_name(s, export, no_zeroes, false)
}

/// The old way to pick an export: the server hangs up if it has no such export.
fn export_name<S: Read + Write>(
    s: &mut S,
    export: &str,
    no_zeroes: bool,
    structured: bool,
) -> Result<ExportInfo, WireError> {
    send_option(s, OPT_EXPORT_NAME, export.as_bytes())?;
    let answer = (|| -> io::Result<(u64, u16)> {
        let size = read_u64(s)?;
        let flags = read_u16(s)?;
        if !no_zeroes {
            skip(s, 124)?;
        }
        Ok((size, flags))
    })();
    match answer {
        Ok((size, flags)) => finish(size, flags, (1, 4096, DEFAULT_MAX_PAYLOAD), structured),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(WireError::Refused(format!(
            "export '{export}': the server closed the connection (it has no such export)"
        ))),
        Err(e) => Err(e.into()),
    }
}

fn finish(
    size: u64,
    flags: u16,
    (min, preferred, max): (u32, u32, u32),
    structured: bool,
) -> Result<ExportInfo, WireError> {
    if flags & FLAG_HAS_FLAGS == 0 {
        return Err(protocol(
            "transmission flags lack NBD_FLAG_HAS_FLAGS, which every server sets",
        ));
    }
    if size > i64::MAX as u64 {
        return Err(protocol(format!("export size {size} is beyond 2^63")));
    }
    Ok(ExportInfo {
        size,
        flags,
        min_block: min,
        preferred_block: preferred,
        max_block: max,
        structured,
    })
}

/// A request header and, for writes, its payload, as one buffer.
pub fn encode_request(flags: u16, command: u16, cookie: u64, offset: u64, length: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&command.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&length.to_be_bytes());
    b
}

/// How the server answered one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Done,
    /// The server refused or failed the request; the connection stays usable.
    Error {
        errno: u32,
        message: String,
    },
}

/// What a reply answers: the request's cookie, and for a READ its offset and the buffer
/// the data goes to.
pub struct Expect<'a> {
    pub cookie: u64,
    pub offset: u64,
    pub read: Option<&'a mut [u8]>,
}

/// Reads the whole reply to one request (a simple reply, or structured chunks up to the
/// one flagged done). Data of a successful READ lands in `expect.read`, which is then
/// covered exactly once.
pub fn read_reply<R: Read>(
    r: &mut R,
    structured: bool,
    expect: Expect<'_>,
) -> Result<Reply, WireError> {
    let Expect {
        cookie,
        offset,
        mut read,
    } = expect;
    let check_cookie = |got: u64| {
        if got == cookie {
            Ok(())
        } else {
            Err(protocol(format!(
                "a reply names request {got:#x}, but the request waiting is {cookie:#x}"
            )))
        }
    };
    let magic = read_u32(r)?;
    if magic == SIMPLE_REPLY_MAGIC {
        let errno = read_u32(r)?;
        check_cookie(read_u64(r)?)?;
        if errno != 0 {
            return Ok(Reply::Error {
                errno,
                message: String::new(),
            });
        }
        if let Some(buf) = read.as_deref_mut() {
            r.read_exact(buf)?;
        }
        return Ok(Reply::Done);
    }
    if magic != STRUCTURED_REPLY_MAGIC {
        return Err(protocol(format!(
            "reply magic {magic:#010x} is neither a simple nor a structured reply"
        )));
    }
    if !structured {
        return Err(protocol(
            "a structured reply came, but structured replies were not negotiated",
        ));
    }
    let want = read.as_deref().map_or(0, |b| b.len() as u64);
    let mut covered: Vec<(u64, u64)> = Vec::new();
    let mut error: Option<Reply> = None;
    let mut first = true;
    loop {
        if !first {
            let magic = read_u32(r)?;
            if magic != STRUCTURED_REPLY_MAGIC {
                return Err(protocol(format!(
                    "chunk magic {magic:#010x} is not the structured reply magic"
                )));
            }
        }
        first = false;
        let flags = read_u16(r)?;
        let kind = read_u16(r)?;
        check_cookie(read_u64(r)?)?;
        let len = read_u32(r)?;
        let done = flags & REPLY_FLAG_DONE != 0;
        match kind {
            REPLY_TYPE_NONE => {
                if len != 0 || !done {
                    return Err(protocol(
                        "NBD_REPLY_TYPE_NONE must be empty and the last chunk",
                    ));
                }
            }
            REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
                let Some(buf) = read.as_deref_mut() else {
                    return Err(protocol(
                        "a data chunk answers a request that reads nothing",
                    ));
                };
                if len < 8 + u32::from(kind == REPLY_TYPE_OFFSET_HOLE) * 4 {
                    return Err(protocol(format!(
                        "a data chunk of {len} bytes is too short"
                    )));
                }
                let at = read_u64(r)?;
                let count = if kind == REPLY_TYPE_OFFSET_HOLE {
                    if len != 12 {
                        return Err(protocol(format!("a hole chunk of {len} bytes, not 12")));
                    }
                    u64::from(read_u32(r)?)
                } else {
                    u64::from(len - 8)
                };
                let start = at
                    .checked_sub(offset)
                    .filter(|s| count > 0 && s.checked_add(count).is_some_and(|end| end <= want));
                let Some(start) = start else {
                    return Err(protocol(format!(
                        "a chunk of {count} bytes at {at} lies outside the {want} bytes read at {offset}"
                    )));
                };
                let part = &mut buf[start as usize..(start + count) as usize];
                if kind == REPLY_TYPE_OFFSET_HOLE {
                    part.fill(0);
                } else {
                    r.read_exact(part)?;
                }
                covered.push((start, start + count));
            }
            k if k & REPLY_TYPE_ERROR_BIT != 0 => {
                if !(6..=MAX_OPTION_REPLY).contains(&len) {
                    return Err(protocol(format!("an error chunk of {len} bytes")));
                }
                let payload = read_vec(r, len)?;
                let errno = be32(&payload);
                let msg_len = usize::from(be16(&payload[4..]));
                let known = matches!(k, REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET);
                if known && 6 + msg_len > payload.len() {
                    return Err(protocol(format!(
                        "an error chunk says its message has {msg_len} bytes but carries {}",
                        payload.len() - 6
                    )));
                }
                if errno == 0 {
                    return Err(protocol("an error chunk carries error 0"));
                }
                let message = if known {
                    String::from_utf8_lossy(&payload[6..6 + msg_len.min(MAX_MESSAGE)]).into_owned()
                } else {
                    String::new()
                };
                error.get_or_insert(Reply::Error { errno, message });
            }
            other => {
                return Err(protocol(format!("unknown reply chunk type {other}")));
            }
        }
        if done {
            break;
        }
    }
    if let Some(e) = error {
        return Ok(e);
    }
    if read.is_some() {
        covered.sort_unstable();
        let mut end = 0;
        for (s, e) in covered {
            if s != end {
                return Err(protocol(if s < end {
                    format!("reply chunks overlap at byte {}", offset + s)
                } else {
                    format!(
                        "reply chunks leave bytes {}..{} unread",
                        offset + end,
                        offset + s
                    )
                }));
            }
            end = e;
        }
        if end != want {
            return Err(protocol(format!(
                "reply chunks cover {end} of the {want} bytes read"
            )));
        }
    }
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn chunk(flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
        let mut b = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    fn data(at: u64, bytes: &[u8]) -> Vec<u8> {
        let mut p = at.to_be_bytes().to_vec();
        p.extend_from_slice(bytes);
        p
    }

    fn read(stream: &[u8], offset: u64, len: usize) -> (Result<Reply, WireError>, Vec<u8>) {
        let mut buf = vec![0xaa; len];
        let r = read_reply(
            &mut Cursor::new(stream),
            true,
            Expect {
                cookie: 9,
                offset,
                read: Some(&mut buf),
            },
        );
        (r, buf)
    }

    #[test]
    fn structured_reads_assemble_data_and_holes() {
        let mut s = chunk(0, REPLY_TYPE_OFFSET_DATA, 9, &data(104, b"tail"));
        let mut hole = 100u64.to_be_bytes().to_vec();
        hole.extend_from_slice(&4u32.to_be_bytes());
        s.extend(chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_HOLE, 9, &hole));
        let (r, buf) = read(&s, 100, 8);
        assert_eq!(r.unwrap(), Reply::Done);
        assert_eq!(buf, b"\0\0\0\0tail");
    }

    #[test]
    fn malformed_replies_are_errors() {
        // Wrong cookie.
        let (r, _) = read(&chunk(1, REPLY_TYPE_OFFSET_DATA, 8, &data(0, b"ab")), 0, 2);
        assert!(matches!(r, Err(WireError::Protocol(m)) if m.contains("request 0x8")));
        // Gap.
        let (r, _) = read(&chunk(1, REPLY_TYPE_OFFSET_DATA, 9, &data(1, b"b")), 0, 2);
        assert!(matches!(r, Err(WireError::Protocol(m)) if m.contains("unread")));
        // Outside the request.
        let (r, _) = read(&chunk(1, REPLY_TYPE_OFFSET_DATA, 9, &data(1, b"bc")), 0, 2);
        assert!(matches!(r, Err(WireError::Protocol(_))));
        // Overlap.
        let mut s = chunk(0, REPLY_TYPE_OFFSET_DATA, 9, &data(0, b"ab"));
        s.extend(chunk(1, REPLY_TYPE_OFFSET_DATA, 9, &data(1, b"b")));
        let (r, _) = read(&s, 0, 2);
        assert!(matches!(r, Err(WireError::Protocol(m)) if m.contains("overlap")));
        // Short: the stream ends inside the data.
        let mut s = chunk(1, REPLY_TYPE_OFFSET_DATA, 9, &data(0, b"abcd"));
        s.truncate(s.len() - 2);
        let (r, _) = read(&s, 0, 4);
        assert!(matches!(r, Err(WireError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof));
        // Simple reply with a wrong cookie.
        let mut s = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&7u64.to_be_bytes());
        let (r, _) = read(&s, 0, 0);
        assert!(matches!(r, Err(WireError::Protocol(_))));
    }

    #[test]
    fn error_chunks_carry_errno_and_message() {
        let mut p = 5u32.to_be_bytes().to_vec();
        p.extend_from_slice(&3u16.to_be_bytes());
        p.extend_from_slice(b"bad");
        let (r, _) = read(&chunk(1, REPLY_TYPE_ERROR, 9, &p), 0, 4);
        assert_eq!(
            r.unwrap(),
            Reply::Error {
                errno: 5,
                message: "bad".into()
            }
        );
    }

    /// A server's side of a negotiation, scripted.
    struct Script {
        input: Cursor<Vec<u8>>,
        sent: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.input.read(b)
        }
    }

    impl Write for Script {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.sent.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
        let mut b = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        b
    }

    fn greeting() -> Vec<u8> {
        let mut g = NBDMAGIC.to_be_bytes().to_vec();
        g.extend_from_slice(&IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        g
    }

    #[test]
    fn negotiation_with_go_reads_size_flags_and_block_sizes() {
        let mut input = greeting();
        input.extend(option_reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
        let mut info = INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&(1u64 << 20).to_be_bytes());
        info.extend_from_slice(&(FLAG_HAS_FLAGS | FLAG_SEND_FLUSH).to_be_bytes());
        input.extend(option_reply(OPT_GO, REP_INFO, &info));
        let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [512u32, 4096, 1 << 20] {
            bs.extend_from_slice(&v.to_be_bytes());
        }
        input.extend(option_reply(OPT_GO, REP_INFO, &bs));
        input.extend(option_reply(OPT_GO, REP_ACK, &[]));
        let mut s = Script {
            input: Cursor::new(input),
            sent: Vec::new(),
        };
        let info = negotiate(&mut s, "disk", true).unwrap();
        assert_eq!(info.size, 1 << 20);
        assert!(info.structured && info.has(FLAG_SEND_FLUSH));
        assert_eq!((info.min_block, info.max_payload()), (512, 1 << 20));
        // Client flags, then STRUCTURED_REPLY, then GO naming the export.
        assert_eq!(&s.sent[0..4], &3u32.to_be_bytes());
        assert!(s.sent.windows(4).any(|w| w == b"disk"));
    }

    #[test]
    fn unknown_export_is_refused_with_its_name() {
        let mut input = greeting();
        input.extend(option_reply(OPT_GO, REP_ERR_UNKNOWN, b"no such export"));
        let mut s = Script {
            input: Cursor::new(input),
            sent: Vec::new(),
        };
        let e = negotiate(&mut s, "nope", false).unwrap_err();
        assert!(
            matches!(&e, WireError::Refused(m) if m.contains("'nope'") && m.contains("no such export")),
            "{e}"
        );
    }
}
