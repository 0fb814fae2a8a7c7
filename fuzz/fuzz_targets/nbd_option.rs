//! NBD option haggling over arbitrary client bytes: the pure option parsers never panic and
//! INFO/GO payloads they accept encode back to the same bytes, and a whole negotiation
//! (client flags, then the input as options, then whatever follows GO) never panics.
//!
//! Input: bytes 0..4 are an option number (reduced to 0..16 so real options are common),
//! parsed with the rest as its payload; the whole input is also the client's stream after
//! its flags.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tessera_block::MemoryDevice;
use tessera_export::proto::{self, OptionRequest};
use tessera_export::{serve_stream, Export, ExportSet, ServerConfig};

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.first_chunk::<{ proto::OPTION_HEADER_LEN }>() {
        let _ = proto::parse_option_header(header);
    }
    if let Some((code, payload)) = data.split_first_chunk::<4>() {
        let option = u32::from_be_bytes(*code) % 16;
        match proto::parse_option(option, payload) {
            Ok(OptionRequest::Info(info) | OptionRequest::Go(info)) => {
                let mut again = (info.name.len() as u32).to_be_bytes().to_vec();
                again.extend_from_slice(info.name.as_bytes());
                again.extend_from_slice(&(info.requests.len() as u16).to_be_bytes());
                for r in &info.requests {
                    again.extend_from_slice(&r.to_be_bytes());
                }
                assert_eq!(again, payload);
            }
            Ok(_) => {}
            Err(e) => assert!(e.reply & (1 << 31) != 0, "an error reply has bit 31 set"),
        }
    }

    let exports = ExportSet::new();
    let disk = Arc::new(MemoryDevice::new("disk", 1 << 20));
    let iso = Arc::new(MemoryDevice::new("iso", 4096));
    exports
        .insert("disk", Export::new(disk).description("a disk"))
        .unwrap();
    exports
        .insert("iso", Export::new(iso).read_only(true))
        .unwrap();
    let mut client = 3u32.to_be_bytes().to_vec();
    client.extend_from_slice(data);
    // Requests served on this thread: deterministic, and no threads per input.
    let config = ServerConfig {
        workers_per_connection: 0,
        ..ServerConfig::default()
    };
    let mut replies = Vec::new();
    let _ = serve_stream(&exports, &config, &client[..], &mut replies);
    assert_eq!(replies.get(..8), Some(&proto::NBDMAGIC.to_be_bytes()[..]));
});
