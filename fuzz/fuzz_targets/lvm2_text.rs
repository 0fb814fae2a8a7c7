//! Parses arbitrary bytes as lvm2 configuration text; whatever parses must print, in both
//! styles, to text that parses back to the same tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_formats::lvm2::config;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = config::check_round_trip(data) {
        panic!("{e}");
    }
});
