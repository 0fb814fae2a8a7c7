//! One client connection: fixed newstyle negotiation, then the transmission phase with a
//! small pool of workers so that a client with many requests in flight gets parallelism.
//! The workers take turns reading the next request, perform it, and write the reply under a
//! lock, so replies go out whole and in completion order.

use std::io::{self, Read, Write};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

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
    mut reader: R,
    mut writer: W,
    entered: impl FnOnce(),
) -> Result<(), ExportError> {
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

/// A request handed to a worker, with a WRITE's payload.
struct Job {
    req: Request,
    payload: Vec<u8>,
    /// Budget bytes to give back once answered.
    cost: u64,
}

/// The replies side: one writer shared by the workers, one whole reply at a time. After a
/// failed write the stream is broken, so later replies are dropped.
struct Replies<W> {
    out: Mutex<(W, Option<io::Error>)>,
}

impl<W: Write> Replies<W> {
    fn send(&self, bytes: &[u8]) {
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

/// The request stream, taken in turn by whichever worker is free (as nbdkit does): no hand-off
/// between a reader thread and the workers.
struct Intake<R> {
    r: R,
    done: bool,
    error: Option<ExportError>,
}

fn transmit<R: Read + Send, W: Write + Send>(
    r: R,
    w: W,
    session: &Session,
    workers: usize,
) -> Result<(), ExportError> {
    let replies = Replies {
        out: Mutex::new((w, None)),
    };
    let budget = Budget::new(INFLIGHT_BYTES);
    let intake = Mutex::new(Intake {
        r,
        done: false,
        error: None,
    });
    let serve = || loop {
        let job = {
            let mut intake = lock(&intake);
            if intake.done {
                return;
            }
            match next_job(&mut intake.r, &replies, session, &budget) {
                Ok(Some(job)) => job,
                Ok(None) => {
                    intake.done = true;
                    return;
                }
                Err(e) => {
                    intake.done = true;
                    intake.error = Some(e);
                    return;
                }
            }
        };
        answer(session, &replies, &budget, job);
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

/// Reads requests until one is accepted; answers refusals on the way. `None`: the client is
/// done (DISC or end of stream).
fn next_job<R: Read, W: Write>(
    r: &mut R,
    replies: &Replies<W>,
    session: &Session,
    budget: &Budget,
) -> Result<Option<Job>, ExportError> {
    loop {
        let mut header = [0u8; REQUEST_LEN];
        if !read_header(r, &mut header)? {
            debug!(export = %session.name, "client closed the connection");
            return Ok(None);
        }
        let req = parse_request(&header)?;
        trace!(?req, "request");
        if req.command == Command::Disc {
            debug!(export = %session.name, "client disconnected");
            return Ok(None);
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
            replies.send(&error_reply(session, req.cookie, refusal.errno(), &msg));
            continue;
        }
        let cost = match req.command {
            Command::Read | Command::Write => u64::from(req.length),
            _ => 0,
        };
        budget.acquire(cost);
        let mut payload = Vec::new();
        if req.command == Command::Write {
            if let Err(e) = read_payload(r, req.length, &mut payload) {
                budget.release(cost);
                return Err(e.into());
            }
        }
        return Ok(Some(Job { req, payload, cost }));
    }
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

fn answer<W: Write>(s: &Session, replies: &Replies<W>, budget: &Budget, job: Job) {
    replies.send(&execute(s, &job));
    budget.release(job.cost);
}

/// Performs a checked request; returns the whole reply.
fn execute(s: &Session, job: &Job) -> Vec<u8> {
    let Request {
        flags,
        command,
        cookie,
        offset,
        length,
    } = job.req;
    let dev = &*s.device;
    let fua = |r: Result<(), BlockError>| match r {
        Ok(()) if flags & CMD_FLAG_FUA != 0 => dev.flush(),
        other => other,
    };
    let result = match command {
        Command::Read => return read_reply(s, cookie, offset, length as usize),
        Command::Write => fua(dev.write_at(&job.payload, offset)),
        Command::Flush => dev.flush(),
        Command::Trim if length == 0 => Ok(()),
        Command::Trim => fua(dev.discard(offset, u64::from(length))),
        Command::WriteZeroes if length == 0 => Ok(()),
        Command::WriteZeroes if flags & CMD_FLAG_NO_HOLE != 0 => {
            fua(write_zero_buffers(s, offset, u64::from(length)))
        }
        Command::WriteZeroes => fua(dev.write_zeroes(offset, u64::from(length))),
        // Refused by check_request before reaching a worker.
        Command::Disc | Command::Other(_) => Ok(()),
    };
    match result {
        Ok(()) => encode_simple_reply(0, cookie).to_vec(),
        Err(e) => {
            let errno = errno_of(&e, command.writes());
            debug!(export = %s.name, "{command:?} failed: {e}");
            error_reply(s, cookie, errno, &e.to_string())
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

/// A READ's reply, data read straight into the reply buffer so it leaves in one write.
fn read_reply(s: &Session, cookie: u64, offset: u64, len: usize) -> Vec<u8> {
    let head = match s.limits.structured {
        true => STRUCTURED_HEADER_LEN + 8,
        false => SIMPLE_REPLY_LEN,
    };
    if s.limits.structured && len == 0 {
        // A data chunk must carry at least one byte.
        return encode_structured_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0).to_vec();
    }
    let mut buf = vec![0u8; head + len];
    if let Err(e) = s.device.read_at(&mut buf[head..], offset) {
        debug!(export = %s.name, "read failed: {e}");
        return error_reply(s, cookie, errno_of(&e, false), &e.to_string());
    }
    if s.limits.structured {
        let chunk = (len + 8) as u32; // len <= MAX_PAYLOAD
        buf[..STRUCTURED_HEADER_LEN].copy_from_slice(&encode_structured_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            cookie,
            chunk,
        ));
        buf[STRUCTURED_HEADER_LEN..head].copy_from_slice(&offset.to_be_bytes());
    } else {
        buf[..SIMPLE_REPLY_LEN].copy_from_slice(&encode_simple_reply(0, cookie));
    }
    buf
}

/// An error reply: structured (with a message) when negotiated, simple otherwise.
fn error_reply(s: &Session, cookie: u64, errno: u32, message: &str) -> Vec<u8> {
    match s.limits.structured {
        true => encode_structured_error(cookie, errno, message),
        false => encode_simple_reply(errno, cookie).to_vec(),
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
