//! Helpers shared by the integration tests: temp dirs, backing files, servers, external
//! tools (which must be installed: a missing tool fails the test), and a raw NBD client for
//! traffic no real client would send.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use tessera_block::{FileDevice, OpenOptions, SharedDevice};
use tessera_export::proto::{self as nbd, *};
use tessera_export::{Export, ExportSet, ListenAddr, Server};

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("export-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
}

/// Deterministic, position-dependent bytes, so misplaced data shows.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed ^ (i >> 12) as u8)
        .collect()
}

/// Writes `data` to a new file at `dir/name`.
pub fn backing_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write backing file");
    path
}

pub fn file_device(path: &Path, read_only: bool) -> SharedDevice {
    Arc::new(
        FileDevice::open(
            path,
            OpenOptions {
                read_only,
                direct: false,
            },
        )
        .expect("open backing file"),
    )
}

pub fn file_export(path: &Path, read_only: bool) -> Export {
    Export::new(file_device(path, false)).read_only(read_only)
}

/// A server on a free loopback port.
pub fn tcp_server(exports: &ExportSet) -> (Server, SocketAddr) {
    let server = Server::bind_tcp(exports.clone(), "127.0.0.1:0").expect("bind");
    let ListenAddr::Tcp(addr) = *server.local_addr() else {
        panic!("not a TCP server")
    };
    (server, addr)
}

pub fn uri(addr: SocketAddr, export: &str) -> String {
    format!("nbd://{addr}/{export}")
}

/// A command for an external tool; panics (failing the test) if it is not installed.
pub fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    let package = match name {
        "nbdinfo" | "nbdcopy" | "nbdsh" => "libnbd-bin",
        "qemu-io" | "qemu-img" | "qemu-nbd" => "qemu-utils",
        other => other,
    };
    assert!(
        found,
        "{name} is not installed; these tests need it: apt-get install -y {package}"
    );
    Command::new(name)
}

/// Runs a command to completion; panics with its output unless it succeeded.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A hand-driven NBD client.
pub struct Raw {
    pub s: TcpStream,
    pub structured: bool,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw {
            s,
            structured: false,
        }
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("send");
    }

    pub fn recv(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).expect("receive");
        b
    }

    /// Reads the server's greeting; returns the handshake flags.
    pub fn hello(&mut self) -> u16 {
        let b = self.recv(18);
        assert_eq!(b[0..8], NBDMAGIC.to_be_bytes());
        assert_eq!(b[8..16], IHAVEOPT.to_be_bytes());
        u16::from_be_bytes([b[16], b[17]])
    }

    /// Greeting and client flags (fixed newstyle, no zeroes).
    pub fn start(addr: SocketAddr) -> Self {
        let mut c = Self::connect(addr);
        assert_eq!(c.hello(), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        c.send(&3u32.to_be_bytes());
        c
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b);
    }

    /// One option reply: (option, reply type, data).
    pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let h = self.recv(20);
        assert_eq!(
            h[0..8],
            OPTION_REPLY_MAGIC.to_be_bytes(),
            "option reply magic"
        );
        let option = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let reply = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        (option, reply, self.recv(len as usize))
    }

    /// Sends an option and returns the final reply type, skipping `NBD_REP_INFO`/`SERVER`.
    pub fn option_final(&mut self, option: u32, data: &[u8]) -> u32 {
        self.option(option, data);
        loop {
            let (o, reply, _) = self.option_reply();
            assert_eq!(o, option);
            if reply != REP_INFO && reply != REP_SERVER {
                return reply;
            }
        }
    }

    /// NBD_OPT_GO; returns (size, transmission flags).
    pub fn go(&mut self, name: &str) -> (u64, u16) {
        self.option(OPT_GO, &info_payload(name, &[]));
        let mut export = None;
        loop {
            let (o, reply, d) = self.option_reply();
            assert_eq!(o, OPT_GO);
            match reply {
                REP_INFO if d[0..2] == INFO_EXPORT.to_be_bytes() => {
                    let size = u64::from_be_bytes(d[2..10].try_into().unwrap());
                    export = Some((size, u16::from_be_bytes([d[10], d[11]])));
                }
                REP_INFO => {}
                REP_ACK => return export.expect("NBD_INFO_EXPORT before ACK"),
                other => panic!(
                    "GO {name:?} failed: reply {other:#x} {}",
                    String::from_utf8_lossy(&d)
                ),
            }
        }
    }

    /// A connection in transmission with `name`.
    pub fn open(addr: SocketAddr, name: &str, structured: bool) -> Self {
        let mut c = Self::start(addr);
        if structured {
            assert_eq!(c.option_final(OPT_STRUCTURED_REPLY, &[]), REP_ACK);
            c.structured = true;
        }
        c.go(name);
        c
    }

    pub fn request(
        &mut self,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        data: &[u8],
    ) {
        let req = Request {
            flags,
            command: nbd::Command::from_wire(command),
            cookie,
            offset,
            length,
        };
        let mut b = encode_request(&req).to_vec();
        b.extend_from_slice(data);
        self.send(&b);
    }

    /// A simple reply without data: (error, cookie).
    pub fn simple_reply(&mut self) -> (u32, u64) {
        let b = self.recv(16);
        assert_eq!(
            b[0..4],
            SIMPLE_REPLY_MAGIC.to_be_bytes(),
            "simple reply magic"
        );
        (
            u32::from_be_bytes(b[4..8].try_into().unwrap()),
            u64::from_be_bytes(b[8..16].try_into().unwrap()),
        )
    }

    /// One structured chunk: (flags, type, cookie, payload).
    pub fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        let b = self.recv(20);
        assert_eq!(
            b[0..4],
            STRUCTURED_REPLY_MAGIC.to_be_bytes(),
            "structured reply magic"
        );
        let len = u32::from_be_bytes(b[16..20].try_into().unwrap());
        (
            u16::from_be_bytes([b[4], b[5]]),
            u16::from_be_bytes([b[6], b[7]]),
            u64::from_be_bytes(b[8..16].try_into().unwrap()),
            self.recv(len as usize),
        )
    }

    /// Writes and waits for the reply; returns the error.
    pub fn write(&mut self, cookie: u64, offset: u64, data: &[u8], flags: u16) -> u32 {
        self.request(1, flags, cookie, offset, data.len() as u32, data);
        self.reply_error(cookie)
    }

    /// Reads `len` bytes; `Err(errno)` on an error reply.
    pub fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(0, 0, cookie, offset, len, &[]);
        if self.structured {
            let mut data = Vec::new();
            loop {
                let (flags, kind, c, p) = self.chunk();
                assert_eq!(c, cookie);
                match kind {
                    REPLY_TYPE_OFFSET_DATA => data.extend_from_slice(&p[8..]),
                    REPLY_TYPE_NONE => {}
                    REPLY_TYPE_ERROR => {
                        return Err(u32::from_be_bytes(p[0..4].try_into().unwrap()))
                    }
                    other => panic!("unexpected chunk type {other}"),
                }
                if flags & REPLY_FLAG_DONE != 0 {
                    return Ok(data);
                }
            }
        }
        let (err, c) = self.simple_reply();
        assert_eq!(c, cookie);
        if err != 0 {
            return Err(err);
        }
        Ok(self.recv(len as usize))
    }

    /// The error of a data-less reply (simple, or one structured error/none chunk).
    pub fn reply_error(&mut self, cookie: u64) -> u32 {
        let mut magic = [0u8; 4];
        self.s.peek(&mut magic).expect("peek reply");
        if magic == STRUCTURED_REPLY_MAGIC.to_be_bytes() {
            let (_, kind, c, p) = self.chunk();
            assert_eq!(c, cookie);
            return match kind {
                REPLY_TYPE_ERROR => u32::from_be_bytes(p[0..4].try_into().unwrap()),
                _ => 0,
            };
        }
        let (err, c) = self.simple_reply();
        assert_eq!(c, cookie);
        err
    }

    pub fn disconnect(mut self) {
        self.request(2, 0, 0, 0, 0, &[]);
        self.expect_closed();
    }

    /// Stops sending; the server sees end of stream.
    pub fn shutdown_write(&self) {
        self.s.shutdown(Shutdown::Write).expect("shutdown");
    }

    /// Asserts that the server hangs up: the stream ends (after any bytes still in flight).
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 4096];
        for _ in 0..1024 {
            match self.s.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Err(e) => panic!("expected the server to close the connection; read gave {e}"),
            }
        }
        panic!("expected the server to close the connection; it keeps sending");
    }
}

pub fn info_payload(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        d.extend_from_slice(&r.to_be_bytes());
    }
    d
}
