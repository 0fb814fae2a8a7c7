//! The dm-raid superblock reader over arbitrary metadata-device starts: never panics, and a
//! superblock it accepts encodes to the bytes it was read from (the pristine fields, and
//! the 1.9.0 extension when flagged) and decodes again to itself, also through a device.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::dmraid::{self, DmRaidSuperblock, BASE_BYTES, BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(sb) = DmRaidSuperblock::decode(data, "fuzz") else {
        return;
    };
    let encoded = sb.encode();
    let covered = if sb.has_v190() { BYTES } else { BASE_BYTES };
    assert_eq!(&encoded[..covered], &data[..covered]);
    assert_eq!(DmRaidSuperblock::decode(&encoded, "fuzz").unwrap(), sb);
    let dev = MemoryDevice::new("fuzz", 1 << 20);
    dmraid::write(&dev, &sb).unwrap();
    assert_eq!(dmraid::read(&dev).unwrap(), sb);
    let _ = dev.flush();
});
