use super::*;
use tessera_block::MemoryDevice;

fn sample() -> Mpb {
    let disks = (0..4)
        .map(|i| Disk::new(&format!("/dev/loop{i}"), 65536, CONFIGURED_DISK))
        .collect();
    let r5 = Dev::new(
        "vol5",
        3 * 16384,
        Map::new(5, vec![0, 1, 2, 3], 0, 16384, 128),
    );
    let r0 = Dev::new(
        "vol0",
        4 * 8192,
        Map::new(0, vec![0, 1, 2, 3], 16384 + 2048, 8192, 64),
    );
    Mpb::new(0x1234_5678, 7, disks, vec![r5, r0])
}

#[test]
fn an_mpb_reads_back_as_written() {
    let dev = MemoryDevice::new("d0", 64 << 20);
    let mpb = sample();
    write(&dev, &mpb).unwrap();
    let back = read(&dev).unwrap().unwrap();
    assert_eq!(back.family_num, 0x1234_5678);
    assert_eq!(back.generation_num, 7);
    assert_eq!(back.version_string(), "1.3.00");
    assert_eq!(back.disks.len(), 4);
    assert_eq!(back.disks[2].serial_string(), "/dev/loop2");
    assert_eq!(back.devs[0].name(), "vol5");
    assert_eq!(back.devs[0].maps[0].level(), 5);
    assert_eq!(back.devs[1].maps[0].pba_of_lba0, 18432);
    // Encoding what was read gives the same bytes.
    assert_eq!(back.encode(), mpb.encode());
    assert_eq!(back.mpb_size as usize, mpb.encode().len());
}

#[test]
fn a_long_mpb_continues_before_the_anchor() {
    let dev = MemoryDevice::new("d0", 64 << 20);
    let disks: Vec<Disk> = (0..20)
        .map(|i| Disk::new(&format!("SERIAL{i:04}"), 65536, CONFIGURED_DISK))
        .collect();
    let mut mpb = Mpb::new(1, 1, disks, Vec::new());
    mpb.devs.push(Dev::new(
        "big",
        100,
        Map::new(0, (0..20).collect(), 0, 1024, 128),
    ));
    let bytes = mpb.encode();
    assert!(bytes.len() > 1024, "{}", bytes.len());
    write(&dev, &mpb).unwrap();
    // The anchor is the second-to-last sector; the rest ends where it starts.
    let mut anchor = [0u8; 512];
    dev.read_at(&mut anchor, (64 << 20) - 1024).unwrap();
    assert_eq!(&anchor[..], &bytes[..512]);
    let mut next = [0u8; 512];
    dev.read_at(&mut next, (64 << 20) - 1024 - 1024).unwrap();
    assert_eq!(&next[..], &bytes[512..1024]);
    assert_eq!(read(&dev).unwrap().unwrap().disks.len(), 20);
}

#[test]
fn raid10_is_stored_as_raid1_over_four() {
    let m = Map::new(10, vec![0, 1, 2, 3], 0, 1024, 128);
    assert_eq!(m.raid_level, 1);
    assert_eq!(m.level(), 10);
    assert_eq!(Map::new(1, vec![0, 1], 0, 1024, 128).level(), 1);
}

/// Puts MPB bytes where mdadm stores them on a device of 8 MiB.
fn place(dev: &MemoryDevice, bytes: &[u8]) {
    let anchor = (8 << 20) - 1024;
    let mut b = bytes.to_vec();
    b.resize(bytes.len().div_ceil(512) * 512, 0);
    dev.write_at(&b[..512], anchor).unwrap();
    if b.len() > 512 {
        dev.write_at(&b[512..], anchor - (b.len() as u64 - 512))
            .unwrap();
    }
}

#[test]
fn damage_is_named() {
    let dev = MemoryDevice::new("d0", 8 << 20);
    assert!(read(&dev).unwrap().is_none());
    let good = sample().encode();
    place(&dev, &good);
    assert!(read(&dev).unwrap().is_some());
    // A flipped byte in a volume's name.
    let mut bad = good.clone();
    bad[HEADER_BYTES + 4 * DISK_BYTES] ^= 1;
    place(&dev, &bad);
    let e = read(&dev).unwrap_err().to_string();
    assert!(e.starts_with("d0: IMSM metadata checksum"), "{e}");
    // mpb_size past the start of the device.
    let mut bad = good.clone();
    put32(&mut bad, 0x24, 1 << 30);
    place(&dev, &bad);
    let e = read(&dev).unwrap_err().to_string();
    assert!(e.contains("mpb_size"), "{e}");
    // A map whose member count runs past the MPB (checksum fixed up).
    let mut bad = good.clone();
    let map0 = HEADER_BYTES + 4 * DISK_BYTES + DEV_HEADER_BYTES;
    bad[map0 + 16] = 200;
    let sum = checksum(&bad);
    put32(&mut bad, 0x20, sum);
    place(&dev, &bad);
    let e = read(&dev).unwrap_err().to_string();
    assert!(e.contains("volume 0 (vol5) map 0 disk_ord_tbl"), "{e}");
}

#[test]
fn migration_record_fields() {
    let mut b = [0u8; 128];
    put32(&mut b, 4, 5);
    put32(&mut b, 48, 1);
    put32(&mut b, 8, 0xabcd);
    let r = MigrRecord::decode(&b).unwrap();
    assert_eq!(r.curr_migr_unit, (1 << 32) | 5);
    assert_eq!(r.family_num, 0xabcd);
}
