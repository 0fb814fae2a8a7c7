//! The NBD wire format: constants, and pure functions that parse what a client sends and
//! encode what the server answers. Nothing here does I/O, so all of it can be fuzzed.
//!
//! Numbers are big-endian on the wire. Values come from the NBD protocol specification
//! (`doc/proto.md` in NetworkBlockDevice/nbd).

use thiserror::Error;

/// `NBDMAGIC`, the first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server) and client flags share these two bits.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Option types.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// Information types in `NBD_REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flags and types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// Error values carried in replies.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;

/// Largest READ or WRITE payload the server accepts: the protocol's default maximum (2^25),
/// which every client stays within unless told otherwise.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option payload accepted: names and descriptions are at most 4096 bytes.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Longest string (export name, description, error message) the protocol allows.
pub const MAX_STRING: usize = 4096;

pub const REQUEST_LEN: usize = 28;
pub const OPTION_HEADER_LEN: usize = 16;
pub const SIMPLE_REPLY_LEN: usize = 16;
pub const STRUCTURED_HEADER_LEN: usize = 20;

/// Why the server must hang up: the byte stream can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("request magic {0:#010x} is not NBD_REQUEST_MAGIC; closing the connection")]
    BadRequestMagic(u32),
    #[error("option magic {0:#018x} is not IHAVEOPT; closing the connection")]
    BadOptionMagic(u64),
    #[error("client flags {0:#x} include bits this server does not offer; closing the connection")]
    UnknownClientFlags(u32),
    #[error(
        "write of {0} bytes exceeds the {MAX_PAYLOAD} byte request limit; closing the connection"
    )]
    OversizeWrite(u32),
    #[error("NBD_OPT_EXPORT_NAME carries {0} bytes, more than an export name can be; closing the connection")]
    OversizeExportName(u32),
    #[error(
        "NBD_OPT_EXPORT_NAME asked for export '{0}', which does not exist; closing the connection"
    )]
    UnknownExport(String),
    #[error("NBD_OPT_EXPORT_NAME gave a name that is not UTF-8; closing the connection")]
    ExportNameNotUtf8,
}

/// A transmission-phase command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    WriteZeroes,
    /// Anything else, including CACHE and BLOCK_STATUS, which this server does not offer.
    Other(u16),
}

impl Command {
    pub fn from_wire(v: u16) -> Self {
        match v {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            6 => Command::WriteZeroes,
            other => Command::Other(other),
        }
    }

    pub fn to_wire(self) -> u16 {
        match self {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disc => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::WriteZeroes => 6,
            Command::Other(v) => v,
        }
    }

    /// True for commands that change the export.
    pub fn writes(self) -> bool {
        matches!(self, Command::Write | Command::Trim | Command::WriteZeroes)
    }
}

/// A request header; a WRITE's payload follows it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// Parses a request header. Only the magic can be wrong here; everything else is judged by
/// [`check_request`] against the export.
pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Result<Request, ProtocolError> {
    let magic = be32(&b[0..4]);
    if magic != REQUEST_MAGIC {
        return Err(ProtocolError::BadRequestMagic(magic));
    }
    Ok(Request {
        flags: be16(&b[4..6]),
        command: Command::from_wire(be16(&b[6..8])),
        cookie: be64(&b[8..16]),
        offset: be64(&b[16..24]),
        length: be32(&b[24..28]),
    })
}

/// Encodes a request header (for clients, tests and the fuzzer's round trip).
pub fn encode_request(r: &Request) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&r.flags.to_be_bytes());
    b[6..8].copy_from_slice(&r.command.to_wire().to_be_bytes());
    b[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..28].copy_from_slice(&r.length.to_be_bytes());
    b
}

/// What a connection's export allows, as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Export size sent at the handshake.
    pub size: u64,
    pub read_only: bool,
    /// Structured replies negotiated (which also enables `NBD_CMD_FLAG_DF` on READ).
    pub structured: bool,
}

/// Why a request is refused; [`Refusal::errno`] is the NBD error to reply with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("command {0} is not supported")]
    UnknownCommand(u16),
    #[error("flags {0:#x} are not valid for this command")]
    BadFlags(u16),
    #[error("the export is read-only")]
    ReadOnly,
    #[error("{0} bytes is more than the {MAX_PAYLOAD} byte request limit")]
    TooLong(u32),
    #[error("the range runs past the end of the export ({size} bytes)")]
    PastEnd { size: u64, writing: bool },
    #[error("fast zeroing is not offered; write zeroes without the fast flag")]
    NoFastZero,
}

impl Refusal {
    pub fn errno(&self) -> u32 {
        match self {
            Refusal::UnknownCommand(_) | Refusal::BadFlags(_) => EINVAL,
            Refusal::ReadOnly => EPERM,
            Refusal::TooLong(_) => EOVERFLOW,
            Refusal::PastEnd { writing: true, .. } => ENOSPC,
            Refusal::PastEnd { writing: false, .. } => EINVAL,
            Refusal::NoFastZero => ENOTSUP,
        }
    }
}

/// Judges a request before any buffer is allocated or the device touched.
///
/// Choices where the specification leaves room:
/// - FUA is accepted on every command (clients are known to set it on reads and flushes).
/// - READ or WRITE longer than [`MAX_PAYLOAD`]: `EOVERFLOW`. A WRITE that long is not
///   answered at all: the caller hangs up rather than read the payload.
/// - Past the end: `ENOSPC` for WRITE and WRITE_ZEROES, `EINVAL` for READ and TRIM, as the
///   specification recommends.
/// - `NBD_CMD_FLAG_FAST_ZERO` always fails with `ENOTSUP`: a [`BlockDevice`] cannot tell
///   whether its `write_zeroes` is faster than writing (files fall back to writing zero
///   buffers where the filesystem cannot allocate zeroed extents), and a wrong promise
///   would slow clients down. The flag is still advertised so clients learn that quickly.
///
/// [`BlockDevice`]: tessera_block::BlockDevice
pub fn check_request(r: &Request, limits: &Limits) -> Result<(), Refusal> {
    let allowed = match r.command {
        Command::Read if limits.structured => CMD_FLAG_FUA | CMD_FLAG_DF,
        Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        Command::Read | Command::Write | Command::Flush | Command::Trim | Command::Disc => {
            CMD_FLAG_FUA
        }
        Command::Other(c) => return Err(Refusal::UnknownCommand(c)),
    };
    if r.flags & !allowed != 0 {
        return Err(Refusal::BadFlags(r.flags));
    }
    if limits.read_only && r.command.writes() {
        return Err(Refusal::ReadOnly);
    }
    if matches!(r.command, Command::Flush | Command::Disc) {
        // Offset and length are reserved; clients send zeroes and we ignore them.
        return Ok(());
    }
    if r.length > MAX_PAYLOAD && matches!(r.command, Command::Read | Command::Write) {
        return Err(Refusal::TooLong(r.length));
    }
    let in_range = r
        .offset
        .checked_add(u64::from(r.length))
        .is_some_and(|end| end <= limits.size);
    if !in_range {
        let writing = matches!(r.command, Command::Write | Command::WriteZeroes);
        return Err(Refusal::PastEnd {
            size: limits.size,
            writing,
        });
    }
    if r.flags & CMD_FLAG_FAST_ZERO != 0 {
        return Err(Refusal::NoFastZero);
    }
    Ok(())
}

/// The 16-byte header of an option request: the option and its payload length.
pub fn parse_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<(u32, u32), ProtocolError> {
    let magic = be64(&b[0..8]);
    if magic != IHAVEOPT {
        return Err(ProtocolError::BadOptionMagic(magic));
    }
    Ok((be32(&b[8..12]), be32(&b[12..16])))
}

/// An option request the server understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionRequest {
    ExportName(String),
    Abort,
    List,
    Info(InfoRequest),
    Go(InfoRequest),
    StructuredReply,
    /// An option this server does not offer: answered with `NBD_REP_ERR_UNSUP`.
    Unsupported(u32),
}

/// The payload of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    /// Information types asked for, unknown ones included (they are ignored).
    pub requests: Vec<u16>,
}

/// An option payload that is malformed: answered with `reply` (an `NBD_REP_ERR_*`) and the
/// message, and negotiation continues.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct OptionError {
    pub reply: u32,
    pub message: String,
}

impl OptionError {
    fn invalid(message: impl Into<String>) -> Self {
        OptionError {
            reply: REP_ERR_INVALID,
            message: message.into(),
        }
    }
}

/// Parses an option's payload. `NBD_OPT_EXPORT_NAME` cannot be answered with an error, so
/// its caller hangs up on `Err`.
pub fn parse_option(option: u32, data: &[u8]) -> Result<OptionRequest, OptionError> {
    let no_data = |req: OptionRequest, what: &str| {
        if data.is_empty() {
            Ok(req)
        } else {
            Err(OptionError::invalid(format!("{what} takes no data")))
        }
    };
    match option {
        OPT_EXPORT_NAME => Ok(OptionRequest::ExportName(parse_name(data)?)),
        // The specification asks servers to ignore data sent with ABORT.
        OPT_ABORT => Ok(OptionRequest::Abort),
        OPT_LIST => no_data(OptionRequest::List, "NBD_OPT_LIST"),
        OPT_STRUCTURED_REPLY => no_data(OptionRequest::StructuredReply, "NBD_OPT_STRUCTURED_REPLY"),
        OPT_INFO => Ok(OptionRequest::Info(parse_info(data)?)),
        OPT_GO => Ok(OptionRequest::Go(parse_info(data)?)),
        other => Ok(OptionRequest::Unsupported(other)),
    }
}

fn parse_info(data: &[u8]) -> Result<InfoRequest, OptionError> {
    let short = || OptionError::invalid("NBD_OPT_INFO/GO payload is shorter than its fields say");
    let name_len = data.get(0..4).map(be32).ok_or_else(short)? as usize;
    let name_end = 4usize.checked_add(name_len).ok_or_else(short)?;
    let name = parse_name(data.get(4..name_end).ok_or_else(short)?)?;
    let count = data
        .get(name_end..name_end + 2)
        .map(be16)
        .ok_or_else(short)? as usize;
    let list = &data[name_end + 2..];
    if list.len() != count * 2 {
        return Err(OptionError::invalid(format!(
            "NBD_OPT_INFO/GO announces {count} information requests but carries {} bytes of them",
            list.len()
        )));
    }
    let requests = list.chunks_exact(2).map(be16).collect();
    Ok(InfoRequest { name, requests })
}

fn parse_name(b: &[u8]) -> Result<String, OptionError> {
    if b.len() > MAX_STRING {
        return Err(OptionError {
            reply: REP_ERR_TOO_BIG,
            message: format!("export names are at most {MAX_STRING} bytes"),
        });
    }
    String::from_utf8(b.to_vec()).map_err(|_| OptionError::invalid("export name is not UTF-8"))
}

/// An option reply: header and payload.
pub fn encode_option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// A simple reply header (READ data, if any, follows).
pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header for `len` bytes of payload.
pub fn encode_structured_header(
    flags: u16,
    kind: u16,
    cookie: u64,
    len: u32,
) -> [u8; STRUCTURED_HEADER_LEN] {
    let mut b = [0u8; STRUCTURED_HEADER_LEN];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// A final `NBD_REPLY_TYPE_ERROR` chunk with a message for people.
pub fn encode_structured_error(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let msg = truncate(message, MAX_STRING);
    let mut b = Vec::with_capacity(STRUCTURED_HEADER_LEN + 6 + msg.len());
    b.extend_from_slice(&encode_structured_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    ));
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg.as_bytes());
    b
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: Command, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            command,
            cookie: 7,
            offset,
            length,
        }
    }

    const RW: Limits = Limits {
        size: 1 << 20,
        read_only: false,
        structured: false,
    };

    #[test]
    fn request_round_trips() {
        let r = req(Command::WriteZeroes, CMD_FLAG_NO_HOLE, 4096, 512);
        assert_eq!(parse_request(&encode_request(&r)), Ok(r));
        let mut bad = encode_request(&r);
        bad[0] ^= 1;
        assert!(matches!(
            parse_request(&bad),
            Err(ProtocolError::BadRequestMagic(_))
        ));
    }

    #[test]
    fn request_checks() {
        let ro = Limits {
            read_only: true,
            ..RW
        };
        let sr = Limits {
            structured: true,
            ..RW
        };
        let cases = [
            (req(Command::Read, 0, 0, 4096), RW, Ok(())),
            (req(Command::Read, 0, (1 << 20) - 1, 2), RW, Err(EINVAL)),
            (req(Command::Read, 0, u64::MAX, 1), RW, Err(EINVAL)),
            (
                req(Command::Read, 0, 0, MAX_PAYLOAD + 1),
                RW,
                Err(EOVERFLOW),
            ),
            (req(Command::Read, CMD_FLAG_DF, 0, 1), RW, Err(EINVAL)),
            (req(Command::Read, CMD_FLAG_DF, 0, 1), sr, Ok(())),
            (req(Command::Read, 1 << 9, 0, 1), RW, Err(EINVAL)),
            (req(Command::Write, CMD_FLAG_FUA, 0, 1), RW, Ok(())),
            (req(Command::Write, 0, 1 << 20, 1), RW, Err(ENOSPC)),
            (req(Command::Write, 0, 0, 1), ro, Err(EPERM)),
            (req(Command::Trim, 0, 0, 1), ro, Err(EPERM)),
            (req(Command::Trim, 0, 1 << 20, 1), RW, Err(EINVAL)),
            (req(Command::WriteZeroes, 0, 0, u32::MAX), RW, Err(ENOSPC)),
            (
                req(Command::WriteZeroes, CMD_FLAG_FAST_ZERO, 0, 8),
                RW,
                Err(ENOTSUP),
            ),
            (
                req(Command::WriteZeroes, CMD_FLAG_NO_HOLE, 0, 8),
                RW,
                Ok(()),
            ),
            (req(Command::Flush, CMD_FLAG_FUA, 99, 99), RW, Ok(())),
            (req(Command::Flush, CMD_FLAG_NO_HOLE, 0, 0), RW, Err(EINVAL)),
            (req(Command::Other(5), 0, 0, 0), RW, Err(EINVAL)),
        ];
        for (r, limits, want) in cases {
            assert_eq!(
                check_request(&r, &limits).map_err(|e| e.errno()),
                want,
                "{r:?} {limits:?}"
            );
        }
    }

    fn info_payload(name: &[u8], requests: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for r in requests {
            d.extend_from_slice(&r.to_be_bytes());
        }
        d
    }

    #[test]
    fn options_parse() {
        let go = parse_option(OPT_GO, &info_payload(b"disk", &[INFO_BLOCK_SIZE, 99]));
        assert_eq!(
            go,
            Ok(OptionRequest::Go(InfoRequest {
                name: "disk".into(),
                requests: vec![INFO_BLOCK_SIZE, 99]
            }))
        );
        let mut short = info_payload(b"disk", &[1, 2]);
        short.pop();
        assert_eq!(
            parse_option(OPT_INFO, &short).unwrap_err().reply,
            REP_ERR_INVALID
        );
        assert_eq!(
            parse_option(OPT_GO, &[0, 0, 0, 9, b'a']).unwrap_err().reply,
            REP_ERR_INVALID
        );
        assert_eq!(
            parse_option(OPT_GO, &[0xff, 0xff, 0xff, 0xff])
                .unwrap_err()
                .reply,
            REP_ERR_INVALID
        );
        assert_eq!(
            parse_option(OPT_GO, &info_payload(&[0xff], &[]))
                .unwrap_err()
                .reply,
            REP_ERR_INVALID
        );
        assert_eq!(
            parse_option(OPT_EXPORT_NAME, &[b'x'; MAX_STRING + 1])
                .unwrap_err()
                .reply,
            REP_ERR_TOO_BIG
        );
        assert_eq!(
            parse_option(OPT_LIST, b"x").unwrap_err().reply,
            REP_ERR_INVALID
        );
        assert_eq!(parse_option(OPT_ABORT, b"x"), Ok(OptionRequest::Abort));
        assert_eq!(parse_option(42, b"x"), Ok(OptionRequest::Unsupported(42)));
        let mut hdr = [0u8; 16];
        hdr[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        hdr[11] = 7;
        hdr[15] = 3;
        assert_eq!(parse_option_header(&hdr), Ok((OPT_GO, 3)));
        hdr[0] = 0;
        assert!(parse_option_header(&hdr).is_err());
    }

    #[test]
    fn error_messages_are_capped_on_char_boundaries() {
        let long = "é".repeat(3000);
        let b = encode_structured_error(1, EIO, &long);
        let msg_len = u16::from_be_bytes([b[24], b[25]]) as usize;
        assert!(msg_len <= MAX_STRING);
        assert!(std::str::from_utf8(&b[26..]).is_ok());
        assert_eq!(b.len(), 26 + msg_len);
    }
}
