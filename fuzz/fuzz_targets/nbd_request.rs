//! NBD transmission phase over arbitrary client bytes: the pure request parser round-trips
//! and its checks never panic, and a whole session (a canned handshake, then the input as
//! requests and payloads) against a 1 MiB export never panics or hangs.
//!
//! Input: byte 0 picks the session (bit 0: structured replies, bit 1: read-only export);
//! the rest is what the client sends after the handshake.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tessera_block::MemoryDevice;
use tessera_export::proto::{self, Limits};
use tessera_export::{serve_stream, Export, ExportSet, ServerConfig};

const SIZE: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let (structured, read_only) = (mode & 1 != 0, mode & 2 != 0);

    if let Some(header) = stream.first_chunk::<{ proto::REQUEST_LEN }>() {
        if let Ok(req) = proto::parse_request(header) {
            assert_eq!(&proto::encode_request(&req), header);
            let limits = Limits {
                size: SIZE,
                read_only,
                structured,
            };
            if let Err(refusal) = proto::check_request(&req, &limits) {
                assert_ne!(refusal.errno(), 0);
            }
        }
    }

    let exports = ExportSet::new();
    let dev = Arc::new(MemoryDevice::new("fuzz", SIZE));
    exports
        .insert("fuzz", Export::new(dev).read_only(read_only))
        .unwrap();
    let mut client = handshake(structured);
    client.extend_from_slice(stream);
    // Requests served on this thread: deterministic, and no threads per input.
    let config = ServerConfig {
        workers_per_connection: 0,
        ..ServerConfig::default()
    };
    let mut replies = Vec::new();
    let _ = serve_stream(&exports, &config, &client[..], &mut replies);
});

/// Client flags, optionally NBD_OPT_STRUCTURED_REPLY, then NBD_OPT_GO for "fuzz".
fn handshake(structured: bool) -> Vec<u8> {
    let mut b = 3u32.to_be_bytes().to_vec();
    let mut option = |opt: u32, data: &[u8]| {
        b.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
    };
    if structured {
        option(proto::OPT_STRUCTURED_REPLY, &[]);
    }
    option(proto::OPT_GO, &[0, 0, 0, 4, b'f', b'u', b'z', b'z', 0, 0]);
    b
}
