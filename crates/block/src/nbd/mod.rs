//! A remote physical volume: an NBD client that is a [`BlockDevice`].
//!
//! One request at a time travels on each connection, and a call returns only once the
//! server has answered it, so a write (or flush, or FUA write) is acknowledged to the caller
//! only after the server acknowledged it. When the server allows several connections
//! (`NBD_FLAG_CAN_MULTI_CONN`) up to `connections` are opened and used in turn, so that
//! callers on several threads are served in parallel.
//!
//! A connection that fails (closed, reset, no answer within the timeout) is reopened; the
//! request that was waiting is sent again. Writes the server acknowledged but has not yet
//! made durable with a flush may be lost if the server restarted, so they are kept (up to
//! [`REPLAY_LIMIT`] bytes; past that a flush is sent to make them durable) and written again
//! before anything else goes over the new connections. When the server stays away for the
//! whole timeout the request fails with [`BlockError::Io`] naming the URI: a RAID member
//! fails and its array goes on degraded.

mod uri;
pub mod wire;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

pub use uri::{is_nbd_uri, Address, NbdUri, DEFAULT_PORT};
use wire::{Expect, ExportInfo, Reply, WireError};

use crate::{check_range, BlockDevice, BlockError, Result};

/// Bytes of acknowledged, not yet flushed writes kept for replay after a reconnection;
/// past this a flush makes them durable.
pub const REPLAY_LIMIT: usize = 64 << 20;
/// Largest TRIM or WRITE_ZEROES sent at once.
const MAX_RANGE_OP: u64 = 1 << 30;

/// How [`NbdDevice::open`] connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NbdOptions {
    /// Refuse writes, whatever the server allows.
    pub read_only: bool,
    /// How long a request may wait for an answer, and how long the server may stay away
    /// before requests fail.
    pub timeout: Duration,
    /// Most connections to open when the server sets `NBD_FLAG_CAN_MULTI_CONN`.
    pub connections: usize,
    /// Ask for structured replies (the server may still decline).
    pub structured: bool,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            read_only: false,
            timeout: Duration::from_secs(10),
            connections: 4,
            structured: true,
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

impl Stream {
    fn connect(address: &Address, timeout: Duration) -> io::Result<Stream> {
        let stream = match address {
            Address::Unix { socket } => {
                let s = UnixStream::connect(socket)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Stream::Unix(s)
            }
            Address::Tcp { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
                let mut found = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Stream::Tcp(s)
            }
        };
        Ok(stream)
    }
}

/// An acknowledged change not yet made durable by a flush.
enum Logged {
    Write { offset: u64, data: Vec<u8> },
    Trim { offset: u64, len: u64 },
    Zeroes { offset: u64, len: u64 },
}

#[derive(Default)]
struct ReplayLog {
    next_seq: u64,
    entries: VecDeque<(u64, Logged)>,
    bytes: usize,
}

struct Connections {
    /// Counts reconnections, so that of several callers meeting one outage only the first
    /// reconnects.
    generation: u64,
    slots: Vec<Mutex<Option<Stream>>>,
}

/// A command to send: what it carries and what comes back.
enum Payload<'a> {
    None,
    Write(&'a [u8]),
    Read(&'a mut [u8]),
}

/// Why one attempt at a request did not complete.
enum Attempt {
    /// The connection is gone; reconnect and send it again.
    Retry(String),
    Fail(BlockError),
}

/// An NBD export used as a block device.
pub struct NbdDevice {
    name: String,
    uri: NbdUri,
    options: NbdOptions,
    info: ExportInfo,
    read_only: bool,
    conns: RwLock<Connections>,
    next: AtomicUsize,
    cookie: AtomicU64,
    log: Mutex<ReplayLog>,
    /// Serializes read-modify-write of partly covered blocks.
    rmw: Mutex<()>,
    /// Set when the server stayed away past the timeout: later requests try once, not for
    /// the whole timeout again.
    gone: Mutex<bool>,
    reconnections: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for NbdDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdDevice")
            .field("uri", &self.name)
            .field("info", &self.info)
            .finish()
    }
}

impl NbdDevice {
    /// Connects to the export `uri` names (`nbd://HOST:PORT/EXPORT` or
    /// `nbd+unix:///EXPORT?socket=PATH`). The URI's `timeout` and `connections` parameters
    /// override `options`. The device's name is `uri` as given.
    pub fn open(uri: &str, options: NbdOptions) -> Result<NbdDevice> {
        let open_err = |why: String| BlockError::Open {
            device: uri.to_string(),
            source: io::Error::other(why),
        };
        let parsed = NbdUri::parse(uri).map_err(open_err)?;
        let mut options = options;
        if let Some(t) = parsed.timeout {
            options.timeout = t;
        }
        if let Some(n) = parsed.connections {
            options.connections = n;
        }
        options.connections = options.connections.max(1);
        let (first, info) = connect(&parsed, &options).map_err(|e| {
            open_err(format!(
                "cannot reach the NBD server at {}: {e}",
                parsed.address
            ))
        })?;
        let count = if info.has(wire::FLAG_CAN_MULTI_CONN) {
            options.connections
        } else {
            1
        };
        // Every connection is opened now: one opened later might meet a restarted server
        // before the unflushed writes were replayed to it.
        let mut slots = vec![Mutex::new(Some(first))];
        for _ in 1..count {
            let (stream, _) = connect(&parsed, &options).map_err(|e| {
                open_err(format!(
                    "cannot open another connection to {}: {e}",
                    parsed.address
                ))
            })?;
            slots.push(Mutex::new(Some(stream)));
        }
        tracing::debug!(
            "{uri}: {} bytes, flags {:#x}, structured replies {}, {} connection(s)",
            info.size,
            info.flags,
            info.structured,
            count
        );
        Ok(NbdDevice {
            name: uri.to_string(),
            read_only: options.read_only || info.has(wire::FLAG_READ_ONLY),
            uri: parsed,
            options,
            info,
            conns: RwLock::new(Connections {
                generation: 0,
                slots,
            }),
            next: AtomicUsize::new(0),
            cookie: AtomicU64::new(1),
            log: Mutex::new(ReplayLog::default()),
            rmw: Mutex::new(()),
            gone: Mutex::new(false),
            reconnections: AtomicU64::new(0),
        })
    }

    /// What negotiation learned: size, flags, block sizes, structured replies.
    pub fn export_info(&self) -> ExportInfo {
        self.info
    }

    /// How many connections may be open at once.
    pub fn connection_count(&self) -> usize {
        self.conns
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .slots
            .len()
    }

    /// How many times the connections were reopened after a failure.
    pub fn reconnections(&self) -> u64 {
        self.reconnections.load(Ordering::Relaxed)
    }

    /// Writes `buf` at `offset` with `NBD_CMD_FLAG_FUA` where the server offers it (else
    /// a write and a flush): durable once this returns.
    pub fn write_at_fua(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        if !self.info.has(wire::FLAG_SEND_FUA) {
            self.write_at(buf, offset)?;
            return self.flush();
        }
        self.write_some(buf, offset, wire::CMD_FLAG_FUA)
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        check_range(&self.name, offset, len, self.info.size)?;
        if self.read_only {
            return Err(BlockError::ReadOnly {
                device: self.name.clone(),
            });
        }
        Ok(())
    }

    fn io_error(&self, offset: u64, len: u64, why: String) -> BlockError {
        BlockError::Io {
            device: self.name.clone(),
            offset,
            len,
            source: io::Error::other(why),
        }
    }

    fn write_chunks(&self, buf: &[u8], offset: u64, flags: u16) -> Result<()> {
        let max = self.info.max_payload() as usize;
        for (i, part) in buf.chunks(max).enumerate() {
            let at = offset + (i * max) as u64;
            self.request(
                wire::CMD_WRITE,
                flags,
                at,
                part.len() as u64,
                Payload::Write(part),
            )?;
            self.remember(Logged::Write {
                offset: at,
                data: part.to_vec(),
            })?;
        }
        Ok(())
    }

    /// Keeps an acknowledged change for replay, while the server may still lose it.
    fn remember(&self, entry: Logged) -> Result<()> {
        if !self.info.has(wire::FLAG_SEND_FLUSH) {
            // A server without flush makes writes durable before acknowledging them.
            return Ok(());
        }
        let over = {
            let mut log = lock(&self.log);
            let seq = log.next_seq;
            log.next_seq += 1;
            if let Logged::Write { data, .. } = &entry {
                log.bytes += data.len();
            }
            log.entries.push_back((seq, entry));
            log.bytes > REPLAY_LIMIT
        };
        if over {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends one command and waits for its answer, reconnecting (and replaying the
    /// unflushed writes) while the server is away for less than the timeout.
    fn request(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u64,
        mut payload: Payload<'_>,
    ) -> Result<()> {
        let mut outage: Option<(Instant, String)> = None;
        loop {
            let generation;
            let attempt = {
                let conns = self.conns.read().unwrap_or_else(PoisonError::into_inner);
                generation = conns.generation;
                let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.slots.len();
                let mut slot = lock(&conns.slots[i]);
                match slot.as_mut() {
                    None => Attempt::Retry("no connection to the server".into()),
                    Some(stream) => {
                        let cookie = self.cookie.fetch_add(1, Ordering::Relaxed);
                        match exchange(
                            stream,
                            self.info.structured,
                            command,
                            flags,
                            cookie,
                            offset,
                            len,
                            &mut payload,
                        ) {
                            Ok(Reply::Done) => return Ok(()),
                            Ok(Reply::Error { errno, .. }) if errno == wire::NBD_ESHUTDOWN => {
                                *slot = None;
                                Attempt::Retry("the server is shutting down".into())
                            }
                            Ok(Reply::Error { errno, message }) => {
                                let os = io::Error::from_raw_os_error(errno as i32);
                                let why = if message.is_empty() {
                                    format!("the NBD server failed the request: {os}")
                                } else {
                                    format!("the NBD server failed the request: {os} ({message})")
                                };
                                Attempt::Fail(self.io_error(offset, len, why))
                            }
                            Err(WireError::Io(e)) => {
                                *slot = None;
                                Attempt::Retry(WireError::Io(e).to_string())
                            }
                            Err(e) => {
                                *slot = None;
                                Attempt::Fail(self.io_error(offset, len, e.to_string()))
                            }
                        }
                    }
                }
            };
            match attempt {
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(why) => {
                    let since = outage.get_or_insert_with(|| (Instant::now(), String::new()));
                    since.1 = why;
                    let (started, why) = (since.0, since.1.clone());
                    self.recover(generation, started, &why)
                        .map_err(|why| self.io_error(offset, len, why))?;
                }
            }
        }
    }

    /// Reopens every connection after an outage and replays the unflushed writes, unless
    /// another caller did so since `generation`. Keeps trying until the timeout has passed
    /// since `started` (only once when the server was already given up on).
    fn recover(
        &self,
        generation: u64,
        started: Instant,
        why: &str,
    ) -> std::result::Result<(), String> {
        let mut conns = self.conns.write().unwrap_or_else(PoisonError::into_inner);
        if conns.generation != generation {
            return Ok(());
        }
        let given_up = *lock(&self.gone);
        let mut last = String::new();
        let mut pause = Duration::from_millis(50);
        loop {
            match self.reopen(&mut conns) {
                Ok(()) => {
                    conns.generation += 1;
                    *lock(&self.gone) = false;
                    self.reconnections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "{}: reconnected to the NBD server after {:.1} s ({last})",
                        self.name,
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                Err(e) => last = e,
            }
            if given_up || started.elapsed() >= self.options.timeout {
                *lock(&self.gone) = true;
                return Err(format!(
                    "the NBD server at {} has not answered for {:.1} s (timeout {:.1} s): \
                     {why}; reconnecting: {last}",
                    self.uri.address,
                    started.elapsed().as_secs_f64(),
                    self.options.timeout.as_secs_f64()
                ));
            }
            let left = self.options.timeout.saturating_sub(started.elapsed());
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Opens every connection anew and writes the unflushed changes again over the first.
    fn reopen(&self, conns: &mut Connections) -> std::result::Result<(), String> {
        let mut fresh = Vec::with_capacity(conns.slots.len());
        for _ in 0..conns.slots.len() {
            let (stream, info) = connect(&self.uri, &self.options).map_err(|e| e.to_string())?;
            if info.size != self.info.size {
                return Err(format!(
                    "the export came back with {} bytes instead of {}",
                    info.size, self.info.size
                ));
            }
            fresh.push(stream);
        }
        let log = lock(&self.log);
        if !log.entries.is_empty() {
            tracing::info!(
                "{}: writing {} unflushed change(s) ({} bytes) again",
                self.name,
                log.entries.len(),
                log.bytes
            );
        }
        let stream = &mut fresh[0];
        for (_, entry) in &log.entries {
            let cookie = self.cookie.fetch_add(1, Ordering::Relaxed);
            let (command, offset, len, mut payload) = match entry {
                Logged::Write { offset, data } => (
                    wire::CMD_WRITE,
                    *offset,
                    data.len() as u64,
                    Payload::Write(data),
                ),
                Logged::Trim { offset, len } => (wire::CMD_TRIM, *offset, *len, Payload::None),
                Logged::Zeroes { offset, len } => {
                    (wire::CMD_WRITE_ZEROES, *offset, *len, Payload::None)
                }
            };
            match exchange(
                stream,
                self.info.structured,
                command,
                0,
                cookie,
                offset,
                len,
                &mut payload,
            ) {
                Ok(Reply::Done) => {}
                Ok(Reply::Error { errno, message }) => {
                    return Err(format!(
                        "replaying a change at byte {offset} failed: error {errno} {message}"
                    ))
                }
                Err(e) => return Err(format!("replaying a change at byte {offset}: {e}")),
            }
        }
        drop(log);
        for (slot, stream) in conns.slots.iter().zip(fresh) {
            *lock(slot) = Some(stream);
        }
        Ok(())
    }

    fn range_op(&self, command: u16, offset: u64, len: u64) -> Result<()> {
        let step = MAX_RANGE_OP / u64::from(self.info.min_block) * u64::from(self.info.min_block);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(step);
            let at = offset + done;
            self.request(command, 0, at, n, Payload::None)?;
            let entry = if command == wire::CMD_TRIM {
                Logged::Trim { offset: at, len: n }
            } else {
                Logged::Zeroes { offset: at, len: n }
            };
            self.remember(entry)?;
            done += n;
        }
        Ok(())
    }
}

/// Opens one connection and negotiates the export.
fn connect(
    uri: &NbdUri,
    options: &NbdOptions,
) -> std::result::Result<(Stream, ExportInfo), WireError> {
    let mut stream = Stream::connect(&uri.address, options.timeout)?;
    let info = wire::negotiate(&mut stream, &uri.export, options.structured)?;
    Ok((stream, info))
}

/// Sends one request and reads its reply.
#[allow(clippy::too_many_arguments)]
fn exchange(
    stream: &mut Stream,
    structured: bool,
    command: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    len: u64,
    payload: &mut Payload<'_>,
) -> std::result::Result<Reply, WireError> {
    let length = u32::try_from(len).map_err(|_| WireError::Protocol("request too long".into()))?;
    let header = wire::encode_request(flags, command, cookie, offset, length);
    match payload {
        Payload::Write(data) => {
            let mut b = Vec::with_capacity(header.len() + data.len());
            b.extend_from_slice(&header);
            b.extend_from_slice(data);
            stream.write_all(&b)?;
        }
        _ => stream.write_all(&header)?,
    }
    stream.flush()?;
    let read = match payload {
        Payload::Read(buf) => Some(&mut **buf),
        _ => None,
    };
    wire::read_reply(
        stream,
        structured,
        Expect {
            cookie,
            offset,
            read,
        },
    )
}

impl NbdDevice {
    /// For a request that does not start and end on the server's minimum block size, the
    /// aligned span that covers it (start, length).
    fn unaligned(&self, offset: u64, len: u64) -> Option<(u64, usize)> {
        let min = u64::from(self.info.min_block);
        if min <= 1 || (offset % min == 0 && len % min == 0) || len == 0 {
            return None;
        }
        let start = offset / min * min;
        let end = (offset + len).div_ceil(min) * min;
        Some((start, (end - start) as usize))
    }

    fn read_aligned(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let max = self.info.max_payload() as usize;
        for (i, part) in buf.chunks_mut(max).enumerate() {
            let at = offset + (i * max) as u64;
            let len = part.len() as u64;
            self.request(wire::CMD_READ, 0, at, len, Payload::Read(part))?;
        }
        Ok(())
    }

    /// Writes a range of any alignment.
    fn write_some(&self, buf: &[u8], offset: u64, flags: u16) -> Result<()> {
        let Some((start, span)) = self.unaligned(offset, buf.len() as u64) else {
            return self.write_chunks(buf, offset, flags);
        };
        // The server takes whole blocks only: read, change and write back the blocks the
        // request touches, one such request at a time so two cannot undo each other.
        let _guard = lock(&self.rmw);
        let mut whole = vec![0u8; span];
        self.read_aligned(&mut whole, start)?;
        let skip = (offset - start) as usize;
        whole[skip..skip + buf.len()].copy_from_slice(buf);
        self.write_chunks(&whole, start, flags)
    }
}

impl BlockDevice for NbdDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn size_bytes(&self) -> u64 {
        self.info.size
    }

    fn logical_block_size(&self) -> u32 {
        self.info.min_block.max(512)
    }

    fn physical_block_size(&self) -> u32 {
        self.info.preferred_block.max(self.logical_block_size())
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&self.name, offset, buf.len() as u64, self.info.size)?;
        if let Some((start, span)) = self.unaligned(offset, buf.len() as u64) {
            let mut whole = vec![0u8; span];
            self.read_aligned(&mut whole, start)?;
            let skip = (offset - start) as usize;
            buf.copy_from_slice(&whole[skip..skip + buf.len()]);
            return Ok(());
        }
        self.read_aligned(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        self.write_some(buf, offset, 0)
    }

    fn flush(&self) -> Result<()> {
        if !self.info.has(wire::FLAG_SEND_FLUSH) {
            return Ok(());
        }
        // Changes acknowledged before the flush is sent are durable once it is answered;
        // with multi-conn, whichever connection they went over.
        let upto = lock(&self.log).next_seq;
        self.request(wire::CMD_FLUSH, 0, 0, 0, Payload::None)
            .map_err(|e| match e {
                BlockError::Io { device, source, .. } => BlockError::Flush { device, source },
                other => other,
            })?;
        let mut log = lock(&self.log);
        while log.entries.front().is_some_and(|(seq, _)| *seq < upto) {
            if let Some((_, Logged::Write { data, .. })) = log.entries.pop_front() {
                log.bytes -= data.len();
            }
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        // Without TRIM the range simply keeps its data, which discard's contract allows.
        if len == 0 || !self.info.has(wire::FLAG_SEND_TRIM) {
            return Ok(());
        }
        // Partly covered blocks at the edges keep their data.
        let min = u64::from(self.info.min_block);
        let (start, end) = (offset.div_ceil(min) * min, (offset + len) / min * min);
        if start >= end {
            return Ok(());
        }
        self.range_op(wire::CMD_TRIM, start, end - start)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let min = u64::from(self.info.min_block);
        let (start, end) = (offset.div_ceil(min) * min, (offset + len) / min * min);
        if self.info.has(wire::FLAG_SEND_WRITE_ZEROES) && start < end {
            // Partly covered blocks at the edges are written as zero bytes.
            self.write_some(&vec![0u8; (start - offset) as usize], offset, 0)?;
            self.range_op(wire::CMD_WRITE_ZEROES, start, end - start)?;
            return self.write_some(&vec![0u8; (offset + len - end) as usize], end, 0);
        }
        let zeroes = vec![0u8; len.min(u64::from(self.info.max_payload())) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.write_some(&zeroes[..n], offset + done, 0)?;
            done += n as u64;
        }
        Ok(())
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        // Say goodbye, so servers do not log a dropped connection; failures do not matter.
        let conns = self.conns.get_mut().unwrap_or_else(PoisonError::into_inner);
        for slot in &conns.slots {
            if let Some(stream) = lock(slot).as_mut() {
                let header = wire::encode_request(0, wire::CMD_DISC, 0, 0, 0);
                let _ = stream.write_all(&header);
            }
        }
    }
}
