//! The metadata-area readers over arbitrary bytes: a header at 4096 or 0, then every text
//! it points at. Never panics, never allocates past the device; and a copy placed by
//! next_text_offset reads back and leaves the committed copy intact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::lvm2::mda::{next_text_offset, read_mda_header, read_text, write_text};

fuzz_target!(|data: &[u8]| {
    let dev = MemoryDevice::new("fuzz", (data.len() as u64).max(1 << 20));
    let _ = dev.write_at(data, 0);
    for start in [4096u64, 0] {
        let Ok(header) = read_mda_header(&dev, start) else {
            continue;
        };
        let committed = header
            .committed()
            .and_then(|l| read_text(&dev, &header, l).ok());
        for locn in &header.raw_locns {
            let _ = read_text(&dev, &header, locn);
        }
        let new = b"fuzz {\nseqno = 1\n}\n";
        if let Ok(offset) = next_text_offset("fuzz", &header, new.len() as u64 + 1) {
            let locn = write_text(&dev, &header, offset, new).expect("a placed copy is written");
            assert_eq!(
                read_text(&dev, &header, &locn).expect("the new copy reads back"),
                new
            );
            if let (Some(old), Some(text)) = (header.committed(), committed) {
                assert_eq!(
                    read_text(&dev, &header, old).expect("the old copy still reads"),
                    text
                );
            }
        }
    }
});
