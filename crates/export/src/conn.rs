//! One client connection: fixed newstyle negotiation, then the transmission phase with a
//! small pool of workers. The workers take turns at the request stream (as nbdkit's threads
//! do, so no hand-off between a reader and the workers): while the device answers small
//! requests fast (the page cache), a turn takes every small request already buffered and its
//! replies leave in one write; a slow device gets one request per turn, so that a client with
//! many requests in flight gets parallelism from a disk. Replies go out whole, in completion
//! order.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tessera_block::{BlockError, SharedDevice};
use tracing::{debug, trace};

use crate::exports::{Export, ExportSet};
use crate::proto::*;
use crate::{ExportError, ServerConfig};

/// Bytes of READ and WRITE payload a connection holds in memory at once: bounds memory per
/// client while leaving room for a deep queue of large requests.
const INFLIGHT_BYTES: u64 = 2 * MAX_PAYLOAD as u64;
/// First allocation for a WRITE payload; larger ones grow as their bytes arrive.
const PAYLOAD_STEP: u32 = 4 << 20;
/// Zero buffer for NO_HOLE write-zeroes, written repeatedly.
const ZERO_CHUNK: usize = 1 << 20;
/// Bytes of requests read from the socket at once: a client's whole queue of small requests.
const READ_BUFFER_BYTES: usize = 256 << 10;
/// Largest READ or WRITE that joins a turn's batch when the device is fast.
const BATCHED_MAX_BYTES: u32 = 128 << 10;
/// Average service time of a small request under which the device counts as fast: the page
/// cache takes a few microseconds, a disk tens to thousands.
const FAST_NANOS: u64 = 20_000;
/// READ and WRITE bytes of one turn's batch.
const BATCH_BYTES: usize = 256 << 10;
/// A reply buffer larger than this is given back after use rather than kept.
const KEEP_BYTES: usize = 4 << 20;

/// The export a connection entered transmission with, as negotiated.
struct Session {
    name: String,
    device: SharedDevice,
    limits: Limits,
    flags: u16,
}

impl Session {
    fn new(name: String, export: &Export, structured: bool) -> Self {
        let read_only = export.is_read_only();
        let mut flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN;
        if read_only {
            flags |= FLAG_READ_ONLY;
        } else {
            flags |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        }
        if structured {
            // Every read is answered with one data chunk, so "don't fragment" costs nothing.
            flags |= FLAG_SEND_DF;
        }
        Session {
            name,
            device: export.device.clone(),
            limits: Limits {
                // Read now, so a resized device is seen by each new connection.
                size: export.device.size_bytes(),
                read_only,
                structured,
            },
            flags,
        }
    }
}

/// Serves one client over any byte stream (a socket, a pipe, an in-memory buffer) until it
/// disconnects. `Err` says why the connection had to be closed.
pub fn serve_stream<R: Read + Send, W: Write + Send>(
    exports: &ExportSet,
    config: &ServerConfig,
    reader: R,
    writer: W,
) -> Result<(), ExportError> {
    serve_stream_with(exports, config, reader, writer, || {})
}

/// [`serve_stream`], calling `entered` once the client has finished the handshake.
pub(crate) fn serve_stream_with<R: Read + Send, W: Write + Send>(
    exports: &ExportSet,
    config: &ServerConfig,
    reader: R,
    mut writer: W,
    entered: impl FnOnce(),
) -> Result<(), ExportError> {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let Some(session) = negotiate(&mut reader, &mut writer, exports)? else {
        return Ok(());
    };
    entered();
    debug!(export = %session.name, size = session.limits.size, "client entered transmission");
    transmit(reader, writer, &session, config.workers_per_connection)
}

fn negotiate<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    exports: &ExportSet,
) -> Result<Option<Session>, ExportError> {
    let mut hello = [0u8; 18];
    hello[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    hello[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    hello[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&hello)?;
    w.flush()?;

    let mut client = [0u8; 4];
    r.read_exact(&mut client)?;
    let client = u32::from_be_bytes(client);
    if client & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtocolError::UnknownClientFlags(client).into());
    }
    let no_zeroes = client & FLAG_C_NO_ZEROES != 0;
    let mut structured = false;

    loop {
        let mut header = [0u8; OPTION_HEADER_LEN];
        r.read_exact(&mut header)?;
        let (option, len) = parse_option_header(&header)?;
        trace!(option, len, "option");
        if len > MAX_OPTION_LEN {
            if option == OPT_EXPORT_NAME {
                return Err(ProtocolError::OversizeExportName(len).into());
            }
            skip(r, len)?;
            let msg =
                format!("option payload of {len} bytes exceeds the {MAX_OPTION_LEN} byte limit");
            option_reply(w, option, REP_ERR_TOO_BIG, msg.as_bytes())?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)?;
        let request = match parse_option(option, &data) {
            Ok(request) => request,
            Err(_) if option == OPT_EXPORT_NAME => {
                // This option has no error reply: the protocol says hang up.
                let e = if len as usize > MAX_STRING {
                    ProtocolError::OversizeExportName(len)
                } else {
                    ProtocolError::ExportNameNotUtf8
                };
                return Err(e.into());
            }
            Err(e) => {
                option_reply(w, option, e.reply, e.message.as_bytes())?;
                continue;
            }
        };

        match request {
            OptionRequest::ExportName(name) => {
                let Some((name, export)) = exports.resolve(&name) else {
                    return Err(ProtocolError::UnknownExport(name).into());
                };
                let session = Session::new(name, &export, structured);
                let mut b = Vec::with_capacity(10 + 124);
                b.extend_from_slice(&session.limits.size.to_be_bytes());
                b.extend_from_slice(&session.flags.to_be_bytes());
                if !no_zeroes {
                    b.resize(b.len() + 124, 0);
                }
                w.write_all(&b)?;
                w.flush()?;
                return Ok(Some(session));
            }
            OptionRequest::Abort => {
                // The client may already be gone; the specification tolerates both.
                let _ = option_reply(w, option, REP_ACK, &[]);
                return Ok(None);
            }
            OptionRequest::List => {
                for (name, export) in exports.list() {
                    let mut d = Vec::with_capacity(4 + name.len() + export.description.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    d.extend_from_slice(export.description.as_bytes());
                    option_reply(w, option, REP_SERVER, &d)?;
                }
                option_reply(w, option, REP_ACK, &[])?;
            }
            OptionRequest::Info(info) | OptionRequest::Go(info) => {
                let Some((name, export)) = exports.resolve(&info.name) else {
                    let msg = match info.name.as_str() {
                        "" => format!(
                            "no default export: this server has {} exports; ask for one by name",
                            exports.len()
                        ),
                        n => format!("no export named '{n}'"),
                    };
                    option_reply(w, option, REP_ERR_UNKNOWN, msg.as_bytes())?;
                    continue;
                };
                let session = Session::new(name, &export, structured);
                send_info(w, option, &session, &export, &info.requests)?;
                option_reply(w, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return Ok(Some(session));
                }
            }
            OptionRequest::StructuredReply => {
                structured = true;
                option_reply(w, option, REP_ACK, &[])?;
            }
            OptionRequest::Unsupported(o) => {
                let msg = format!("option {o} is not supported by this server");
                option_reply(w, option, REP_ERR_UNSUP, msg.as_bytes())?;
            }
        }
    }
}

/// The `NBD_REP_INFO` replies to INFO or GO: the export's size and flags always, the rest
/// when asked for.
fn send_info<W: Write>(
    w: &mut W,
    option: u32,
    s: &Session,
    export: &Export,
    requests: &[u16],
) -> io::Result<()> {
    let mut d = INFO_EXPORT.to_be_bytes().to_vec();
    d.extend_from_slice(&s.limits.size.to_be_bytes());
    d.extend_from_slice(&s.flags.to_be_bytes());
    option_reply(w, option, REP_INFO, &d)?;

    let mut sent = Vec::new();
    for &kind in requests {
        if sent.contains(&kind) {
            continue;
        }
        sent.push(kind);
        let mut d = kind.to_be_bytes().to_vec();
        match kind {
            INFO_NAME => d.extend_from_slice(s.name.as_bytes()),
            INFO_DESCRIPTION if !export.description.is_empty() => {
                d.extend_from_slice(export.description.as_bytes())
            }
            INFO_BLOCK_SIZE => {
                let physical = export.device.physical_block_size();
                let usable = physical.is_power_of_two() && (512..=MAX_PAYLOAD).contains(&physical);
                let preferred = if usable { physical } else { 4096 };
                // Minimum 1: backends take any offset and length (files bounce unaligned I/O).
                for v in [1, preferred, MAX_PAYLOAD] {
                    d.extend_from_slice(&u32::to_be_bytes(v));
                }
            }
            _ => continue,
        }
        option_reply(w, option, REP_INFO, &d)?;
    }
    Ok(())
}

fn option_reply<W: Write>(w: &mut W, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
    w.write_all(&encode_option_reply(option, reply, data))?;
    w.flush()
}

/// Reads and discards `len` bytes, in bounded memory.
fn skip<R: Read>(r: &mut R, len: u32) -> io::Result<()> {
    let copied = io::copy(&mut r.take(u64::from(len)), &mut io::sink())?;
    if copied < u64::from(len) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "payload cut short",
        ));
    }
    Ok(())
}

/// The replies side: one writer shared by the workers, one whole reply (or a turn's replies)
/// at a time. After a failed write the stream is broken, so later
/// replies are dropped.
struct Replies<W> {
    out: Mutex<(W, Option<io::Error>)>,
}

impl<W: Write> Replies<W> {
    fn send(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut guard = lock(&self.out);
        let (out, failed) = &mut *guard;
        if failed.is_none() {
            if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
                *failed = Some(e);
            }
        }
    }

    fn take_error(&self) -> Option<io::Error> {
        lock(&self.out).1.take()
    }
}

/// How long the device has recently taken to serve a small READ or WRITE (a moving average).
/// For a fast device (the page cache) a worker serves many requests per turn: the I/O costs
/// less than waking another worker. A slow one (a disk) is served one request per worker, so
/// that many are served at once.
struct Pace {
    nanos: AtomicU64,
}

impl Pace {
    /// Starts slow: the first requests go to the workers and teach the average.
    fn new() -> Self {
        Pace {
            nanos: AtomicU64::new(FAST_NANOS * 64),
        }
    }

    fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX / 2);
        let old = self.nanos.load(Ordering::Relaxed);
        // A lost update between threads only makes the average a little less exact.
        let new = old - old / 8 + (sample / 8).min(u64::MAX / 4);
        self.nanos.store(new, Ordering::Relaxed);
    }

    fn fast(&self) -> bool {
        self.nanos.load(Ordering::Relaxed) < FAST_NANOS
    }
}

/// A READ or WRITE whose service time says whether the device is fast.
fn is_small(req: &Request) -> bool {
    matches!(req.command, Command::Read | Command::Write)
        && req.length <= BATCHED_MAX_BYTES
        && req.flags & CMD_FLAG_FUA == 0
}

/// Reply bytes built in place: a READ's data is read straight into it after its header, so
/// the reply leaves in one write without another copy. Only the growth is zero-filled, so a
/// reused buffer costs nothing per request.
#[derive(Default)]
struct ReplyBuf {
    bytes: Vec<u8>,
    len: usize,
}

impl ReplyBuf {
    /// Appends `n` bytes (contents unspecified) and returns them.
    fn extend(&mut self, n: usize) -> &mut [u8] {
        let start = self.len;
        if self.bytes.len() < start + n {
            self.bytes.resize(start + n, 0);
        }
        self.len += n;
        &mut self.bytes[start..start + n]
    }

    fn push(&mut self, data: &[u8]) {
        self.extend(data.len()).copy_from_slice(data);
    }

    fn filled(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties it, giving back memory a large reply took.
    fn clear(&mut self) {
        self.len = 0;
        if self.bytes.len() > KEEP_BYTES {
            self.bytes = Vec::new();
        }
    }
}

/// The request stream, taken in turn by whichever worker is free (as nbdkit does): no hand-off
/// between a reader thread and the workers.
struct Intake<R> {
    r: BufReader<R>,
    done: bool,
    error: Option<ExportError>,
}

/// Requests a worker took from the stream in one turn, with WRITE payloads.
#[derive(Default)]
struct Batch {
    requests: Vec<(Request, Vec<u8>)>,
    /// READ and WRITE bytes in it.
    bytes: u64,
    /// Budget bytes held for its first request.
    cost: u64,
}

/// Each worker takes a turn at the request stream: the next request and, while the device
/// answers fast, every small request already buffered behind it; then serves them and writes
/// all their replies at once. A slow device gets one request per turn, so that the workers
/// serve many at once.
fn transmit<R: Read + Send, W: Write + Send>(
    r: BufReader<R>,
    w: W,
    session: &Session,
    workers: usize,
) -> Result<(), ExportError> {
    let replies = Replies {
        out: Mutex::new((w, None)),
    };
    let budget = Budget::new(INFLIGHT_BYTES);
    let pace = Pace::new();
    let intake = Mutex::new(Intake {
        r,
        done: false,
        error: None,
    });
    let serve = || {
        let mut out = ReplyBuf::default();
        let mut batch = Batch::default();
        loop {
            {
                let mut intake = lock(&intake);
                if intake.done {
                    return;
                }
                let intake = &mut *intake;
                match take_batch(&mut intake.r, session, &budget, &pace, &mut batch, &mut out) {
                    Ok(true) => {}
                    Ok(false) => intake.done = true,
                    Err(e) => {
                        intake.done = true;
                        intake.error = Some(e);
                    }
                }
            }
            for (req, payload) in batch.requests.drain(..) {
                let started = Instant::now();
                execute(session, &req, &payload, &mut out);
                if is_small(&req) {
                    pace.record(started.elapsed());
                }
            }
            replies.send(out.filled());
            out.clear();
            budget.release(std::mem::take(&mut batch.cost));
            batch.bytes = 0;
        }
    };
    thread::scope(|s| {
        for _ in 1..workers {
            // Out of threads: serve with fewer workers rather than fail.
            if thread::Builder::new().spawn_scoped(s, serve).is_err() {
                break;
            }
        }
        serve(); // this thread is a worker too
    });
    if let Some(e) = replies.take_error() {
        return Err(e.into());
    }
    let error = lock(&intake).error.take();
    error.map_or(Ok(()), Err)
}

/// Fills `batch` with the next requests (refusals are answered into `out`). `Ok(false)`: the
/// client is done; what was taken is still served.
fn take_batch<R: Read>(
    r: &mut BufReader<R>,
    session: &Session,
    budget: &Budget,
    pace: &Pace,
    batch: &mut Batch,
    out: &mut ReplyBuf,
) -> Result<bool, ExportError> {
    loop {
        let buffered = r.buffer().get(..REQUEST_LEN);
        if !batch.requests.is_empty() || !out.is_empty() {
            // Only what is already here joins the batch: the client may be waiting for
            // these replies before it sends more.
            let Some(header) = buffered else {
                return Ok(true);
            };
            let mut h = [0u8; REQUEST_LEN];
            h.copy_from_slice(header);
            let joins = match parse_request(&h) {
                Ok(next) => {
                    !batch.requests.is_empty()
                        && pace.fast()
                        && is_small(&next)
                        && batch.bytes + u64::from(next.length) <= BATCH_BYTES as u64
                        && (next.command != Command::Write
                            || r.buffer().len() >= REQUEST_LEN + next.length as usize)
                }
                // Refusals and bad magic are answered by whoever reads them next.
                Err(_) => false,
            };
            if !joins && !batch.requests.is_empty() {
                return Ok(true);
            }
        }
        let req = match next_request(r, session, out)? {
            Next::Serve(req) => req,
            Next::Refused => continue,
            Next::Done => return Ok(false),
        };
        let bytes = match req.command {
            Command::Read | Command::Write => u64::from(req.length),
            _ => 0,
        };
        if batch.requests.is_empty() {
            // The first request of a turn may be large: it is held to the connection's budget.
            budget.acquire(bytes);
            batch.cost = bytes;
        }
        let mut payload = Vec::new();
        if req.command == Command::Write {
            read_payload(r, req.length, &mut payload)?;
        }
        batch.bytes += bytes;
        batch.requests.push((req, payload));
        if !pace.fast() {
            return Ok(true);
        }
    }
}

/// What the next request asks for.
enum Next {
    Serve(Request),
    /// Refused; its error reply is in the pending replies.
    Refused,
    /// The client is done (DISC or end of stream).
    Done,
}

/// Reads the next request; a refusal is answered into `pending`.
fn next_request<R: Read>(
    r: &mut BufReader<R>,
    session: &Session,
    pending: &mut ReplyBuf,
) -> Result<Next, ExportError> {
    let mut header = [0u8; REQUEST_LEN];
    if let Some(buffered) = r.buffer().get(..REQUEST_LEN) {
        header.copy_from_slice(buffered);
        r.consume(REQUEST_LEN);
    } else if !read_header(r, &mut header)? {
        debug!(export = %session.name, "client closed the connection");
        return Ok(Next::Done);
    }
    let req = parse_request(&header)?;
    trace!(?req, "request");
    if req.command == Command::Disc {
        debug!(export = %session.name, "client disconnected");
        return Ok(Next::Done);
    }
    if let Err(refusal) = check_request(&req, &session.limits) {
        if req.command == Command::Write {
            if req.length > MAX_PAYLOAD {
                return Err(ProtocolError::OversizeWrite(req.length).into());
            }
            skip(r, req.length)?;
        }
        let msg = format!(
            "{:?} of {} bytes at offset {}: {refusal}",
            req.command, req.length, req.offset
        );
        debug!(export = %session.name, "{msg}");
        push_error(session, pending, req.cookie, refusal.errno(), &msg);
        return Ok(Next::Refused);
    }
    Ok(Next::Serve(req))
}

/// Reads a WRITE's payload into a buffer that grows as bytes arrive, so a client that
/// announces a large write and never sends it cannot make us allocate the memory.
fn read_payload<R: Read>(r: &mut R, len: u32, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve_exact(len.min(PAYLOAD_STEP) as usize);
    let got = r.take(u64::from(len)).read_to_end(buf)?;
    if got < len as usize {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "write payload cut short",
        ));
    }
    Ok(())
}

/// Fills `buf` with the next request header: `Ok(false)` on a clean end of stream before its
/// first byte, an error if the stream ends inside it.
fn read_header<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("request header cut short after {filled} bytes"),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Performs a checked request; appends its whole reply to `out`.
fn execute(s: &Session, req: &Request, payload: &[u8], out: &mut ReplyBuf) {
    let Request {
        flags,
        command,
        cookie,
        offset,
        length,
    } = *req;
    let dev = &*s.device;
    let fua = |r: Result<(), BlockError>| match r {
        Ok(()) if flags & CMD_FLAG_FUA != 0 => dev.flush(),
        other => other,
    };
    let result = match command {
        Command::Read => return read_reply(s, cookie, offset, length as usize, out),
        Command::Write => fua(dev.write_at(payload, offset)),
        Command::Flush => dev.flush(),
        Command::Trim if length == 0 => Ok(()),
        Command::Trim => fua(dev.discard(offset, u64::from(length))),
        Command::WriteZeroes if length == 0 => Ok(()),
        Command::WriteZeroes if flags & CMD_FLAG_NO_HOLE != 0 => {
            fua(write_zero_buffers(s, offset, u64::from(length)))
        }
        Command::WriteZeroes => fua(dev.write_zeroes(offset, u64::from(length))),
        // Refused by check_request before being served.
        Command::Disc | Command::Other(_) => Ok(()),
    };
    match result {
        Ok(()) => out.push(&encode_simple_reply(0, cookie)),
        Err(e) => {
            let errno = errno_of(&e, command.writes());
            debug!(export = %s.name, "{command:?} failed: {e}");
            push_error(s, out, cookie, errno, &e.to_string());
        }
    }
}

/// NO_HOLE asks that the range stay allocated, which only writing zeroes guarantees for
/// every kind of device.
fn write_zero_buffers(s: &Session, offset: u64, len: u64) -> Result<(), BlockError> {
    let zeroes = vec![0u8; len.min(ZERO_CHUNK as u64) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeroes.len() as u64) as usize;
        s.device.write_at(&zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// A READ's reply, the data read straight into the reply buffer after its header.
fn read_reply(s: &Session, cookie: u64, offset: u64, len: usize, out: &mut ReplyBuf) {
    if s.limits.structured && len == 0 {
        // A data chunk must carry at least one byte.
        out.push(&encode_structured_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_NONE,
            cookie,
            0,
        ));
        return;
    }
    let head = match s.limits.structured {
        true => STRUCTURED_HEADER_LEN + 8,
        false => SIMPLE_REPLY_LEN,
    };
    let start = out.len;
    let reply = out.extend(head + len);
    if let Err(e) = s.device.read_at(&mut reply[head..], offset) {
        debug!(export = %s.name, "read failed: {e}");
        out.len = start;
        push_error(s, out, cookie, errno_of(&e, false), &e.to_string());
        return;
    }
    if s.limits.structured {
        let chunk = (len + 8) as u32; // len <= MAX_PAYLOAD
        reply[..STRUCTURED_HEADER_LEN].copy_from_slice(&encode_structured_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            cookie,
            chunk,
        ));
        reply[STRUCTURED_HEADER_LEN..head].copy_from_slice(&offset.to_be_bytes());
    } else {
        reply[..SIMPLE_REPLY_LEN].copy_from_slice(&encode_simple_reply(0, cookie));
    }
}

/// Appends an error reply: structured (with a message) when negotiated, simple otherwise.
fn push_error(s: &Session, out: &mut ReplyBuf, cookie: u64, errno: u32, message: &str) {
    match s.limits.structured {
        true => out.push(&encode_structured_error(cookie, errno, message)),
        false => out.push(&encode_simple_reply(errno, cookie)),
    }
}

/// The NBD error for a device error.
fn errno_of(e: &BlockError, writing: bool) -> u32 {
    match e {
        BlockError::OutOfRange { .. } if writing => ENOSPC,
        BlockError::OutOfRange { .. } | BlockError::Misaligned { .. } => EINVAL,
        BlockError::ReadOnly { .. } => EPERM,
        BlockError::Io { source, .. } | BlockError::Flush { source, .. } => {
            match source.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => ENOSPC,
                Some(libc::EROFS | libc::EPERM) => EPERM,
                _ => EIO,
            }
        }
        _ => EIO,
    }
}

/// Payload bytes a connection may hold; `acquire` blocks the request reader when full.
struct Budget {
    cap: u64,
    /// (bytes in use, a reader is waiting)
    state: Mutex<(u64, bool)>,
    freed: Condvar,
}

impl Budget {
    fn new(cap: u64) -> Self {
        Budget {
            cap,
            state: Mutex::new((0, false)),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self, n: u64) {
        let mut s = lock(&self.state);
        // An idle connection always admits one request, whatever its size.
        while s.0 > 0 && s.0 + n > self.cap {
            s.1 = true;
            s = self.freed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.0 += n;
    }

    fn release(&self, n: u64) {
        if n == 0 {
            return;
        }
        let mut s = lock(&self.state);
        s.0 -= n;
        // Waking costs a system call per request; only pay it when someone waits.
        if std::mem::take(&mut s.1) {
            self.freed.notify_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
