//! Requests in flight on one connection are served in parallel, and replies (out of order)
//! carry the right cookies and data.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tessera_block::{BlockDevice, Result, SharedDevice};
use tessera_export::{Export, ExportSet};

/// A device whose reads take a while, as a disk's do.
struct Slow(SharedDevice);

const DELAY: Duration = Duration::from_millis(100);

impl BlockDevice for Slow {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        thread::sleep(DELAY);
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.0.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.0.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.0.write_zeroes(offset, len)
    }
}

#[test]
fn pipelined_requests_run_in_parallel() {
    let dir = tmpdir();
    let data = pattern(1 << 20, 9);
    let f = backing_file(dir.path(), "slow.img", &data);
    let exports = ExportSet::new();
    let slow = Arc::new(Slow(file_device(&f, false)));
    exports.insert("slow", Export::new(slow)).unwrap();
    let (_server, addr) = tcp_server(&exports);

    for structured in [false, true] {
        let mut c = Raw::open(addr, "slow", structured);
        let start = Instant::now();
        // Eight reads in flight at once (the default worker count).
        for i in 0..8u64 {
            c.request(0, 0, 100 + i, i * 4096, 4096, &[]);
        }
        let mut seen = Vec::new();
        for _ in 0..8 {
            let (cookie, got) = if structured {
                let (_, _, cookie, p) = c.chunk();
                (cookie, p[8..].to_vec())
            } else {
                let (err, cookie) = c.simple_reply();
                assert_eq!(err, 0);
                (cookie, c.recv(4096))
            };
            let i = (cookie - 100) as usize;
            assert_eq!(
                got,
                data[i * 4096..(i + 1) * 4096],
                "reply for cookie {cookie}"
            );
            seen.push(cookie);
        }
        let took = start.elapsed();
        seen.sort();
        assert_eq!(seen, (100..108).collect::<Vec<_>>());
        assert!(
            took < DELAY * 4,
            "8 slow reads took {took:?}: not served in parallel"
        );
        c.disconnect();
    }
}

/// A fast device serves a burst of small requests several per turn, with their replies
/// written together: every request of a pipelined burst (writes, reads and a refusal mixed)
/// gets exactly one whole reply with its own cookie and data, and the writes land.
#[test]
fn a_pipelined_burst_is_answered_request_by_request() {
    const N: u64 = 48;
    const LEN: usize = 4096;
    let dir = tmpdir();
    let data = pattern(1 << 20, 5);
    let f = backing_file(dir.path(), "burst.img", &data);
    let exports = ExportSet::new();
    exports
        .insert("burst", Export::new(file_device(&f, false)))
        .unwrap();
    let (_server, addr) = tcp_server(&exports);
    let written = pattern(N as usize * LEN, 77);

    for structured in [false, true] {
        let mut c = Raw::open(addr, "burst", structured);
        // Enough one-at-a-time reads for the server to learn that the device is fast.
        for i in 0..64u64 {
            let got = c.read(i, i * LEN as u64, LEN as u32).unwrap();
            assert_eq!(got, data[(i as usize) * LEN..(i as usize + 1) * LEN]);
        }
        // One send: writes to the upper half, reads of the lower half, a refused read.
        let mut burst = Vec::new();
        for i in 0..N {
            let req = tessera_export::proto::Request {
                flags: 0,
                command: tessera_export::proto::Command::Write,
                cookie: 1000 + i,
                offset: (512 << 10) + i * LEN as u64,
                length: LEN as u32,
            };
            burst.extend_from_slice(&tessera_export::proto::encode_request(&req));
            burst.extend_from_slice(&written[i as usize * LEN..(i as usize + 1) * LEN]);
            let req = tessera_export::proto::Request {
                command: tessera_export::proto::Command::Read,
                cookie: 2000 + i,
                offset: i * LEN as u64,
                ..req
            };
            burst.extend_from_slice(&tessera_export::proto::encode_request(&req));
        }
        let past_end = tessera_export::proto::Request {
            flags: 0,
            command: tessera_export::proto::Command::Read,
            cookie: 3000,
            offset: 1 << 20,
            length: LEN as u32,
        };
        burst.extend_from_slice(&tessera_export::proto::encode_request(&past_end));
        c.send(&burst);

        let mut seen = Vec::new();
        for _ in 0..2 * N + 1 {
            // Replies without data may be simple ones even after structured replies.
            let mut magic = [0u8; 4];
            c.s.peek(&mut magic).unwrap();
            let simple = magic == tessera_export::proto::SIMPLE_REPLY_MAGIC.to_be_bytes();
            let (cookie, error, got) = if structured && !simple {
                let (flags, kind, cookie, p) = c.chunk();
                assert_ne!(flags & tessera_export::proto::REPLY_FLAG_DONE, 0);
                match kind {
                    tessera_export::proto::REPLY_TYPE_OFFSET_DATA => (cookie, 0, p[8..].to_vec()),
                    tessera_export::proto::REPLY_TYPE_ERROR => (
                        cookie,
                        u32::from_be_bytes(p[0..4].try_into().unwrap()),
                        vec![],
                    ),
                    // A write's reply.
                    _ => (cookie, 0, vec![]),
                }
            } else {
                let (error, cookie) = c.simple_reply();
                let read_ok = (2000..2000 + N).contains(&cookie) && error == 0;
                (cookie, error, if read_ok { c.recv(LEN) } else { vec![] })
            };
            match cookie {
                1000.. if cookie < 1000 + N => assert_eq!((error, got.len()), (0, 0)),
                2000.. if cookie < 2000 + N => {
                    let i = (cookie - 2000) as usize;
                    assert_eq!(error, 0, "read {cookie}");
                    assert_eq!(got, data[i * LEN..(i + 1) * LEN], "read {cookie}");
                }
                3000 => assert_ne!(error, 0, "a read past the end was not refused"),
                other => panic!("reply with unknown cookie {other}"),
            }
            seen.push(cookie);
        }
        seen.sort();
        let mut want: Vec<u64> = (1000..1000 + N).chain(2000..2000 + N).collect();
        want.push(3000);
        assert_eq!(seen, want);
        let back = c.read(9, 512 << 10, (N as usize * LEN) as u32).unwrap();
        assert!(back == written, "the burst's writes did not land");
        c.disconnect();
    }
}
