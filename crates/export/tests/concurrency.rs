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
