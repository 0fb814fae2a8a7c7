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

/// A raid5 and a raid10 volume over the same four disks, as mdadm puts two volumes in a
/// container.
fn raid5_and_raid10() -> Mpb {
    let disks = (0..4)
        .map(|i| Disk::new(&format!("/dev/loop{i}"), 65536, CONFIGURED_DISK))
        .collect();
    let r5 = Dev::new(
        "vol5",
        3 * 16384,
        Map::new(5, vec![0, 1, 2, 3], 0, 16384, 128),
    );
    let r10 = Dev::new(
        "vol10",
        2 * 8192,
        Map::new(10, vec![0, 1, 2, 3], 16384 + 2048, 8192, 128),
    );
    Mpb::new(0x1234_5678, 7, disks, vec![r5, r10])
}

#[test]
fn a_spare_record_is_as_mdadm_writes_it() {
    let spare = Mpb::spare_record("/dev/loop4", 65536);
    assert!(spare.is_spare_record());
    let bytes = spare.encode();
    assert_eq!(bytes.len(), HEADER_BYTES + DISK_BYTES);
    // Its family is the checksum of the record with family and check_sum 0.
    let mut zero = bytes.clone();
    zero[0x20..0x24].fill(0);
    zero[0x28..0x2C].fill(0);
    assert_eq!(spare.family_num, checksum(&zero));
    let back = Mpb::decode(&bytes, "d4", 512).unwrap();
    assert_eq!(back.generation_num, 1);
    assert_eq!(back.orig_family_num, 0);
    assert_eq!(back.disks[0].status, SPARE_DISK);
    assert!(!raid5_and_raid10().is_spare_record());
}

#[test]
fn a_spare_takes_a_failed_members_slot_and_its_rebuild_ends_in_one_normal_map() {
    let mut mpb = raid5_and_raid10();
    assert!(mpb.mark_failed(1));
    assert!(!mpb.mark_failed(1), "a failed disk is failed once");
    assert_eq!(mpb.disks[1].serial_string(), "/dev/loop1:0");
    assert!(mpb.disks[1].is_failed());
    for dev in &mpb.devs {
        let map = &dev.maps[0];
        assert_eq!(map.disk_ord_tbl[1], 1 | ORD_REBUILD);
        assert_eq!(map.failed_disk_num, 1);
        assert_eq!(map.map_state, MAP_DEGRADED);
    }

    // The raid5 volume takes the spare: the disk joins the table configured, the volume
    // migrates from the degraded layout (map 1, the spare flagged) to the whole one.
    let family = mpb.family_num;
    let (idx, deleted) = mpb
        .activate_spare(
            0,
            1,
            SpareDisk::New(Disk::new("/dev/loop4", 65536, SPARE_DISK)),
            0x100,
        )
        .unwrap();
    assert_eq!((idx, deleted), (4, None), "vol10 still uses disk 1");
    assert_eq!(mpb.disks[4].status, CONFIGURED_DISK);
    assert_eq!(mpb.family_num, family + 0x100);
    assert_eq!(mpb.orig_family_num, family);
    let r5 = &mpb.devs[0];
    assert!(r5.is_rebuilding());
    assert_eq!((r5.migr_state, r5.migr_type), (1, MIGR_REBUILD));
    assert_eq!(r5.maps[0].disk_ord_tbl, [0, 4, 2, 3]);
    assert_eq!(r5.maps[0].map_state, MAP_NORMAL);
    assert_eq!(r5.maps[1].disk_ord_tbl, [0, 4 | ORD_REBUILD, 2, 3]);
    assert_eq!(r5.maps[1].map_state, MAP_DEGRADED);
    assert_eq!(r5.maps[1].failed_disk_num, 1);
    assert_eq!(r5.rebuild_slot(), Some((1, 4)));

    // The raid10 one takes the same disk: the failed disk, used nowhere now, leaves the
    // table and the disks after it move down one.
    let (idx, deleted) = mpb
        .activate_spare(1, 1, SpareDisk::InTable(4), 0x100)
        .unwrap();
    assert_eq!((idx, deleted), (3, Some(1)));
    assert_eq!(mpb.disks.len(), 4);
    assert_eq!(mpb.disks[3].serial_string(), "/dev/loop4");
    assert_eq!(mpb.devs[0].maps[0].disk_ord_tbl, [0, 3, 1, 2]);
    assert_eq!(mpb.devs[0].maps[1].disk_ord_tbl, [0, 3 | ORD_REBUILD, 1, 2]);
    assert_eq!(mpb.devs[1].maps[1].disk_ord_tbl, [0, 3 | ORD_REBUILD, 1, 2]);

    // Checkpoints count whole units: raid5 with 64 KiB chunks, 128 sectors a unit; raid10
    // (two domains) 512.
    assert_eq!(mpb.devs[0].rebuild_unit_sectors(), 128);
    assert_eq!(mpb.devs[1].rebuild_unit_sectors(), 512);
    assert!(mpb.rebuild_checkpoint(0, 1000));
    assert_eq!(mpb.devs[0].curr_migr_unit, 7);
    assert_eq!(mpb.devs[0].rebuild_done_sectors(), 896);
    assert!(!mpb.rebuild_checkpoint(0, 1020), "the same unit");

    // It survives encoding, as mdadm would read it mid-rebuild.
    let back = Mpb::decode(&mpb.encode(), "d0", 512).unwrap();
    assert_eq!(back.devs, mpb.devs);

    assert!(mpb.end_rebuild(0));
    let r5 = &mpb.devs[0];
    assert_eq!(r5.maps.len(), 1);
    assert_eq!((r5.migr_state, r5.migr_type, r5.curr_migr_unit), (0, 0, 0));
    assert_eq!(r5.maps[0].map_state, MAP_NORMAL);
    assert_eq!(r5.maps[0].failed_disk_num, 0xff);
    assert_eq!(r5.maps[0].disk_ord_tbl, [0, 3, 1, 2]);
    assert!(!mpb.end_rebuild(0), "ended once");
    assert!(mpb.devs[1].is_rebuilding());
}

#[test]
fn a_spare_is_refused_for_a_migrating_volume_and_for_a_slot_that_is_not_there() {
    let mut mpb = raid5_and_raid10();
    mpb.devs[0].migr_state = 1;
    mpb.devs[0].migr_type = MIGR_GEN_MIGR;
    let m = mpb.devs[0].maps[0].clone();
    mpb.devs[0].maps.push(m);
    let e = mpb
        .activate_spare(0, 1, SpareDisk::InTable(2), 1)
        .unwrap_err();
    assert!(e.to_string().contains("general migration"), "{e}");
    let e = mpb
        .activate_spare(1, 9, SpareDisk::InTable(2), 1)
        .unwrap_err();
    assert!(e.to_string().contains("no such slot"), "{e}");
    let e = mpb
        .activate_spare(1, 0, SpareDisk::InTable(0), 1)
        .unwrap_err();
    assert!(e.to_string().contains("cannot take slot"), "{e}");
}

#[test]
fn a_second_failure_while_rebuilding_stays_recorded_at_the_end() {
    let mut mpb = raid5_and_raid10();
    mpb.activate_spare(
        1,
        0,
        SpareDisk::New(Disk::new("/dev/loop4", 65536, SPARE_DISK)),
        1,
    )
    .unwrap();
    // Slot 3 (the other mirror) fails while slot 0 rebuilds.
    assert!(mpb.mark_failed(3));
    let r10 = &mpb.devs[1];
    assert_eq!(r10.maps[0].failed_disk_num, 0, "kept while rebuilding");
    assert!(mpb.end_rebuild(1));
    let map = &mpb.devs[1].maps[0];
    assert_eq!(map.map_state, MAP_DEGRADED);
    assert_ne!(map.failed_disk_num, 0xff);
}

#[test]
fn uuids_print_as_mdadm_prints_its_hash_words() {
    let bytes: Vec<u8> = (0..16).collect();
    assert_eq!(
        mdadm_uuid_text(&bytes),
        "03020100:07060504:0b0a0908:0f0e0d0c"
    );
}
