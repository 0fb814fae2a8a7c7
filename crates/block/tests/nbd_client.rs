//! The NBD client against real servers: nbdkit (memory and file plugins, with and without
//! structured replies, multi-conn on and off, the old EXPORT_NAME handshake, block size
//! limits, injected errors) and qemu-nbd. Every test compares bytes with a model of what
//! the export must hold, and for file-backed exports with the file itself.
//!
//! Servers that break the protocol (a reply naming another request, a short read, a server
//! hanging up mid-reply) are played by small scripted servers in this file: no real server
//! misbehaves on purpose. The client must answer them with errors, never panics.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_block::{BlockDevice, BlockError, NbdDevice, NbdOptions};

/// A server process, killed when dropped.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args` and waits until it accepts NBD connections at `uri`.
fn start(program: &str, args: &[&str], uri: &str) -> Server {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} must be installed (Debian: nbdkit, qemu-utils): {e}")
        });
    let server = Server { child };
    wait_ready(uri);
    server
}

fn wait_ready(uri: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("nbdinfo")
            .args(["--size", uri])
            .stderr(Stdio::null())
            .output()
            .expect("nbdinfo (libnbd-bin) must be installed");
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "{uri} never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unix_uri(sock: &Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", sock.display())
}

/// Deterministic bytes that differ per offset and per round.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes, overwrites, trims (where the server zeroes trimmed ranges the test does not
/// assume it), writes zeroes and flushes through `dev`, mirroring each change in `model`;
/// then reads the whole device back and compares.
fn exercise(dev: &NbdDevice, model: &mut [u8]) {
    let size = dev.size_bytes();
    assert_eq!(size, model.len() as u64);
    let writes: &[(u64, usize)] = &[
        (0, 4096),
        (512, 512),
        (1 << 20, 300_000),
        (size - 8192, 8192),
        ((3 << 20) + 4096, 3 << 20),
    ];
    for (i, &(offset, len)) in writes.iter().enumerate() {
        let data = pattern(len, i as u64 + 1);
        dev.write_at(&data, offset).unwrap();
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
    }
    dev.write_zeroes(1 << 20, 65536).unwrap();
    model[1 << 20..(1 << 20) + 65536].fill(0);
    dev.write_zeroes(size - 4096, 4096).unwrap();
    model[size as usize - 4096..].fill(0);
    // A trimmed range may read back as anything: write it again afterwards.
    dev.discard(3 << 20, 1 << 20).unwrap();
    let again = pattern(1 << 20, 99);
    dev.write_at(&again, 3 << 20).unwrap();
    model[3 << 20..4 << 20].copy_from_slice(&again);
    dev.flush().unwrap();

    let mut back = vec![0u8; model.len()];
    dev.read_at(&mut back, 0).unwrap();
    assert!(
        back == model,
        "{}: read back differs from what was written",
        dev.name()
    );
    // Unaligned small reads too.
    let mut small = [0u8; 7];
    dev.read_at(&mut small, 513).unwrap();
    assert_eq!(&small, &model[513..520]);
}

const SIZE: u64 = 16 << 20;

#[test]
fn nbdkit_memory_structured_and_multi_conn() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let uri = unix_uri(&sock, "");
    let _s = start(
        "nbdkit",
        &["-f", "-U", sock.to_str().unwrap(), "memory", "16M"],
        &uri,
    );
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    let info = dev.export_info();
    assert!(
        info.structured,
        "nbdkit offers structured replies: {info:?}"
    );
    assert_eq!(
        dev.connection_count(),
        4,
        "nbdkit memory sets CAN_MULTI_CONN"
    );
    let mut model = vec![0u8; SIZE as usize];
    exercise(&dev, &mut model);

    // Several threads at once, over the connections in turn.
    let dev = std::sync::Arc::new(dev);
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                for round in 0..32u64 {
                    let off = (t * 4 + round % 4) << 20;
                    let data = pattern(65536, t * 1000 + round);
                    dev.write_at(&data, off).unwrap();
                    let mut back = vec![0u8; data.len()];
                    dev.read_at(&mut back, off).unwrap();
                    assert!(back == data, "thread {t} round {round}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    dev.flush().unwrap();
}

#[test]
fn nbdkit_memory_without_structured_replies_or_multi_conn() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let uri = unix_uri(&sock, "");
    let _s = start(
        "nbdkit",
        &[
            "-f",
            "--no-sr",
            "-U",
            sock.to_str().unwrap(),
            "--filter=multi-conn",
            "memory",
            "16M",
            "multi-conn-mode=disable",
        ],
        &uri,
    );
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    assert!(!dev.export_info().structured);
    assert_eq!(dev.connection_count(), 1);
    let mut model = vec![0u8; SIZE as usize];
    exercise(&dev, &mut model);
}

#[test]
fn nbdkit_file_over_tcp_matches_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut model = pattern(SIZE as usize, 7);
    std::fs::write(&img, &model).unwrap();
    let port = free_port();
    let uri = format!("nbd://127.0.0.1:{port}/");
    let _s = start(
        "nbdkit",
        &[
            "-f",
            "-p",
            &port.to_string(),
            "-i",
            "127.0.0.1",
            "file",
            img.to_str().unwrap(),
        ],
        &uri,
    );
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    exercise(&dev, &mut model);
    drop(dev);
    assert!(
        std::fs::read(&img).unwrap() == model,
        "the file differs from the model"
    );
}

#[test]
fn nbdkit_old_handshake_and_block_size_limits() {
    // --mask-handshake=0: not fixed newstyle, so only NBD_OPT_EXPORT_NAME; no structured
    // replies. The blocksize-policy filter makes the client split large requests.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let uri = unix_uri(&sock, "");
    let _s = start(
        "nbdkit",
        &[
            "-f",
            "--mask-handshake=0",
            "-U",
            sock.to_str().unwrap(),
            "memory",
            "16M",
        ],
        &uri,
    );
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    assert!(!dev.export_info().structured);
    let mut model = vec![0u8; SIZE as usize];
    exercise(&dev, &mut model);
    drop(dev);
    drop(_s);

    let sock = dir.path().join("s2");
    let uri = unix_uri(&sock, "");
    let _s = start(
        "nbdkit",
        &[
            "-f",
            "-U",
            sock.to_str().unwrap(),
            "--filter=blocksize-policy",
            "memory",
            "16M",
            "blocksize-minimum=512",
            "blocksize-preferred=4096",
            "blocksize-maximum=65536",
            "blocksize-error-policy=error",
        ],
        &uri,
    );
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    let info = dev.export_info();
    assert_eq!(
        (info.min_block, info.max_payload()),
        (512, 65536),
        "{info:?}"
    );
    let mut model = vec![0u8; SIZE as usize];
    exercise(&dev, &mut model);
}

#[test]
fn qemu_nbd_file_matches_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut model = pattern(SIZE as usize, 3);
    std::fs::write(&img, &model).unwrap();
    let sock = dir.path().join("q");
    let uri = unix_uri(&sock, "disk");
    let _s = start(
        "qemu-nbd",
        &[
            "-f",
            "raw",
            "-t",
            "-k",
            sock.to_str().unwrap(),
            "-x",
            "disk",
            "--discard=unmap",
            img.to_str().unwrap(),
        ],
        &uri,
    );
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    assert!(
        dev.export_info().structured,
        "qemu-nbd offers structured replies"
    );
    exercise(&dev, &mut model);
    drop(dev);
    assert!(
        std::fs::read(&img).unwrap() == model,
        "the file differs from the model"
    );

    // An export qemu-nbd does not have is refused, naming it.
    let e = NbdDevice::open(&unix_uri(&sock, "other"), NbdOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("'other'") && msg.contains(&uri[..10]), "{msg}");
}

#[test]
fn read_only_exports_refuse_writes_and_server_errors_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let uri = unix_uri(&sock, "");
    let _s = start(
        "nbdkit",
        &["-f", "-r", "-U", sock.to_str().unwrap(), "memory", "1M"],
        &uri,
    );
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    assert!(dev.is_read_only());
    assert!(matches!(
        dev.write_at(b"x", 0),
        Err(BlockError::ReadOnly { .. })
    ));
    assert!(matches!(
        dev.read_at(&mut [0u8; 2], (1 << 20) - 1),
        Err(BlockError::OutOfRange { .. })
    ));
    drop(dev);
    drop(_s);

    // nbdkit's error filter fails every read with EIO.
    let sock = dir.path().join("s2");
    let uri = unix_uri(&sock, "");
    let _s = start(
        "nbdkit",
        &[
            "-f",
            "-U",
            sock.to_str().unwrap(),
            "--filter=error",
            "memory",
            "1M",
            "error-pread=EIO",
            "error-pread-rate=100%",
        ],
        &uri,
    );
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    let e = dev.read_at(&mut [0u8; 512], 0).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&uri) && msg.contains("Input/output error"),
        "{msg}"
    );
    // The connection stays usable after an error reply.
    dev.write_at(&[1u8; 512], 0).unwrap();
}

#[test]
fn reconnects_and_replays_unflushed_writes_after_a_restart() {
    // nbdkit's memory plugin loses everything when it stops: whatever reads back after the
    // restart was written again by the client from its replay log.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let uri = format!("{}&timeout=5", unix_uri(&sock, ""));
    let sock_arg = sock.to_str().unwrap().to_string();
    let server = start("nbdkit", &["-f", "-U", &sock_arg, "memory", "16M"], &uri);
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    let flushed = pattern(65536, 1);
    dev.write_at(&flushed, 0).unwrap();
    dev.flush().unwrap();
    let unflushed = pattern(1 << 20, 2);
    dev.write_at(&unflushed, 1 << 20).unwrap();
    dev.write_zeroes(1 << 20, 4096).unwrap();

    drop(server);
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        // A killed nbdkit leaves its socket behind, and would not bind over it.
        let _ = std::fs::remove_file(&sock_arg);
        let child = Command::new("nbdkit")
            .args(["-f", "-U", &sock_arg, "memory", "16M"])
            .stderr(std::fs::File::create(format!("{sock_arg}.log")).unwrap())
            .spawn()
            .unwrap();
        Server { child }
    });
    // This write waits through the outage and completes against the new server.
    let t = Instant::now();
    let late = pattern(4096, 3);
    if let Err(e) = dev.write_at(&late, 8 << 20) {
        let log = std::fs::read_to_string(format!("{}.log", sock.display())).unwrap_or_default();
        panic!("the write failed: {e}; the restarted nbdkit said: {log}");
    }
    let waited = t.elapsed();
    let _server = restart.join().unwrap();
    assert!(
        waited >= Duration::from_millis(500),
        "the write waited {waited:?}"
    );
    assert_eq!(dev.reconnections(), 1);

    let mut back = vec![0u8; 1 << 20];
    dev.read_at(&mut back, 1 << 20).unwrap();
    let mut want = unflushed.clone();
    want[..4096].fill(0);
    assert!(back == want, "the unflushed writes were replayed in order");
    let mut back = vec![0u8; 4096];
    dev.read_at(&mut back, 8 << 20).unwrap();
    assert_eq!(back, late);
    // The flushed write was durable on the old server only: a fresh memory disk lost it,
    // which is what a memory disk does; the client does not keep flushed writes.
    let mut back = vec![0u8; 65536];
    dev.read_at(&mut back, 0).unwrap();
    assert!(back.iter().all(|b| *b == 0));
    println!("outage of ~700 ms: the write waited {waited:?}");
}

#[test]
fn a_server_that_stays_away_fails_requests_naming_the_uri() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let uri = format!("{}&timeout=1.5", unix_uri(&sock, ""));
    let server = start(
        "nbdkit",
        &["-f", "-U", sock.to_str().unwrap(), "memory", "1M"],
        &uri,
    );
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    dev.write_at(&[5u8; 4096], 0).unwrap();
    drop(server);
    let t = Instant::now();
    let e = dev.read_at(&mut [0u8; 4096], 0).unwrap_err();
    let waited = t.elapsed();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&uri) && msg.contains("has not answered"),
        "{msg}"
    );
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
        "gave up after {waited:?}"
    );
    // Once given up on, later requests try once and fail fast.
    let t = Instant::now();
    assert!(dev.write_at(&[1u8; 512], 0).is_err());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    println!("gave up after {waited:?}: {msg}");
}

/// A scripted server: answers the handshake (fixed newstyle, NBD_OPT_GO with a 1 MiB
/// export) and then lets `misbehave` answer the first request.
/// The server thread is left behind when the test is done with it.
fn scripted(misbehave: fn(&mut TcpStream, u64)) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        // Serve a few connections: the client reconnects after a dropped one.
        for _ in 0..3 {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut g = 0x4e42_444d_4147_4943u64.to_be_bytes().to_vec();
            g.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
            g.extend_from_slice(&3u16.to_be_bytes());
            if s.write_all(&g).is_err() {
                return;
            }
            let mut b4 = [0u8; 4];
            if s.read_exact(&mut b4).is_err() {
                return;
            }
            loop {
                let mut h = [0u8; 16];
                if s.read_exact(&mut h).is_err() {
                    return;
                }
                let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
                let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
                let mut data = vec![0u8; len as usize];
                s.read_exact(&mut data).unwrap();
                let reply = |kind: u32, payload: &[u8]| {
                    let mut r = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
                    r.extend_from_slice(&opt.to_be_bytes());
                    r.extend_from_slice(&kind.to_be_bytes());
                    r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                    r.extend_from_slice(payload);
                    r
                };
                if opt == 7 {
                    let mut info = 0u16.to_be_bytes().to_vec();
                    info.extend_from_slice(&(1u64 << 20).to_be_bytes());
                    info.extend_from_slice(&(1u16 | 4).to_be_bytes());
                    let mut out = reply(3, &info);
                    out.extend(reply(1, &[]));
                    s.write_all(&out).unwrap();
                    break;
                }
                // Decline structured replies: the misbehaviour is in simple replies.
                s.write_all(&reply((1 << 31) + 1, &[])).unwrap();
            }
            let mut req = [0u8; 28];
            if s.read_exact(&mut req).is_err() {
                continue;
            }
            let cookie = u64::from_be_bytes(req[8..16].try_into().unwrap());
            misbehave(&mut s, cookie);
        }
    });
    (format!("nbd://127.0.0.1:{port}/?timeout=1"), handle)
}

fn simple_reply(cookie: u64) -> Vec<u8> {
    let mut r = 0x6744_6698u32.to_be_bytes().to_vec();
    r.extend_from_slice(&0u32.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r
}

#[test]
fn malformed_servers_give_errors_not_panics() {
    // A reply naming another request.
    let (uri, h) = scripted(|s, cookie| {
        let _ = s.write_all(&simple_reply(cookie ^ 0xff));
        let _ = s.write_all(&[0u8; 4096]);
    });
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    let e = dev.read_at(&mut [0u8; 4096], 0).unwrap_err().to_string();
    assert!(
        e.contains("broke the NBD protocol") && e.contains("names request"),
        "{e}"
    );
    drop(dev);
    drop(h);

    // A short read: half the data, then the server hangs up (every time).
    let (uri, h) = scripted(|s, cookie| {
        let _ = s.write_all(&simple_reply(cookie));
        let _ = s.write_all(&[7u8; 2048]);
    });
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    let e = dev.read_at(&mut [0u8; 4096], 0).unwrap_err().to_string();
    assert!(
        e.starts_with("nbd://127.0.0.1") && e.contains("has not answered"),
        "{e}"
    );
    drop(dev);
    drop(h);

    // Closing mid-reply header.
    let (uri, h) = scripted(|s, _| {
        let _ = s.write_all(&0x6744_6698u32.to_be_bytes());
    });
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    let e = dev.write_at(&[1u8; 512], 0).unwrap_err().to_string();
    assert!(
        e.starts_with("nbd://127.0.0.1") && e.contains("has not answered"),
        "{e}"
    );
    drop(dev);
    drop(h);

    // Garbage instead of a reply.
    let (uri, h) = scripted(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let dev = NbdDevice::open(&uri, NbdOptions::default()).unwrap();
    let e = dev.flush().unwrap_err().to_string();
    assert!(e.contains("reply magic"), "{e}");
    drop(dev);
    drop(h);
}

#[test]
fn nothing_listening_is_a_clear_open_error() {
    let port = free_port();
    let uri = format!("nbd://127.0.0.1:{port}/disk");
    let e = NbdDevice::open(&uri, NbdOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&uri) && e.contains("cannot reach"), "{e}");
    let e = NbdDevice::open("nbds://h/x", NbdOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("TLS"), "{e}");
}
