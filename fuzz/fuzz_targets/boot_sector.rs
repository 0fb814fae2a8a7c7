//! The FAT, NTFS and exFAT boot-sector probes over arbitrary device contents: never panic,
//! and what the partition-table check says agrees with what the probes find.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_formats::bootsector::{
    is_exfat, is_ntfs, is_vfat, not_a_partition_table, probe, probe_exfat, probe_ntfs,
    probe_vfat,
};

fuzz_target!(|data: &[u8]| {
    let dev = data;
    let found = probe(&dev);
    if let Some(fs) = &found {
        assert!(["vfat", "ntfs", "exfat"].contains(&fs.kind));
        // Serials are printed as blkid prints them: XXXX-XXXX, or 16 hex digits.
        let ok = match fs.kind {
            "ntfs" => fs.uuid.is_empty() || fs.uuid.len() == 16,
            _ => fs.uuid.is_empty() || (fs.uuid.len() == 9 && &fs.uuid[4..5] == "-"),
        };
        assert!(ok, "{:?}", fs.uuid);
        assert_eq!(fs.label, fs.label.trim_end());
    }
    // A probe that accepts the sector implies its quick check does (the full vfat probe
    // also checks FAT32's information sector, so not the reverse).
    if probe_vfat(&dev).is_some() {
        assert!(is_vfat(&dev));
    }
    assert_eq!(probe_ntfs(&dev).is_some(), is_ntfs(&dev));
    assert_eq!(probe_exfat(&dev).is_some(), is_exfat(&dev));
    if not_a_partition_table(&dev).is_none() {
        assert!(probe_ntfs(&dev).is_none() && probe_exfat(&dev).is_none());
    }
});
