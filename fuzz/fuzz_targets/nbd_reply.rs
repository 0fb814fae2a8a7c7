//! The NBD client's reading of what a server sends: negotiation (greeting, option replies,
//! NBD_OPT_GO's information) and then replies (simple, or structured chunks) to a READ.
//! Whatever the bytes, it returns a reply or an error, never panics, and a READ it calls
//! done has every byte of its buffer written.
//!
//! Input: byte 0 picks the case (bit 0: ask for structured replies; bit 1: negotiate first;
//! bits 2-7: the READ's length in 512-byte units, 0 meaning a request without data); the
//! rest is the server's byte stream.
#![no_main]

use std::io::{self, Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use tessera_block::nbd::wire::{self, Expect, Reply};

/// The server's bytes to read; what the client sends goes nowhere.
struct Server<'a> {
    input: Cursor<&'a [u8]>,
}

impl Read for Server<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.input.read(b)
    }
}

impl Write for Server<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const OFFSET: u64 = 4096;
const COOKIE: u64 = 1;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let mut server = Server {
        input: Cursor::new(stream),
    };
    let mut structured = mode & 1 != 0;
    if mode & 2 != 0 {
        match wire::negotiate(&mut server, "export", structured) {
            Ok(info) => {
                structured = info.structured;
                assert!(info.min_block.is_power_of_two());
                assert!(info.max_payload() >= info.min_block);
            }
            Err(_) => return,
        }
    }
    let len = usize::from(mode >> 2) * 512;
    // A pattern the reply must overwrite entirely if it claims success.
    let mut buf = vec![0xa5u8; len];
    let read = (len > 0).then_some(&mut buf[..]);
    let reply = wire::read_reply(
        &mut server,
        structured,
        Expect {
            cookie: COOKIE,
            offset: OFFSET,
            read,
        },
    );
    if let Ok(Reply::Error { errno, .. }) = &reply {
        assert_ne!(*errno, 0);
    }
});
