//! The VG model over arbitrary metadata text: never panics, and a VG it accepts prints to
//! a text that reads back as the same VG.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_formats::lvm2::config::Style;
use tessera_formats::lvm2::vg::VolumeGroup;

fuzz_target!(|data: &[u8]| {
    if let Ok((vg, info)) = VolumeGroup::from_text(data) {
        for style in [Style::Disk, Style::File] {
            let text = vg.to_text(&info, style);
            let (again, _) =
                VolumeGroup::from_text(text.as_bytes()).expect("printed VG reads back");
            assert_eq!(again, vg);
        }
    }
});
