use tessera_block::{BlockDevice, MemoryDevice};

use super::super0::{Disk0, DISKS, DISK_ACTIVE, DISK_SYNC, STATE_CLEAN};
use super::super1::{FEATURE_BITMAP, RESYNC_DONE, ROLE_FAULTY, ROLE_SPARE};
use super::*;

const SIZE: u64 = 16 << 20;

type Edit<T> = Box<dyn Fn(&mut T)>;
const SECTORS: u64 = SIZE / 512;

/// A member as mdadm 4.2 makes it for a 3-disk RAID5 with 64 KiB chunks (device 1 here).
fn sb1(version: MdVersion) -> Superblock1 {
    let (data_offset, super_offset, data_size) = match version {
        MdVersion::V1_0 => (0, (SECTORS - 16) & !7, 32736),
        MdVersion::V1_1 => (2048, 0, SECTORS - 2048),
        _ => (2048, 8, SECTORS - 2048),
    };
    let mut name = [0u8; 32];
    name[..11].copy_from_slice(b"labhost:v12");
    let mut roles = vec![ROLE_SPARE; 128];
    roles[..3].copy_from_slice(&[0, 1, 2]);
    Superblock1 {
        feature_map: 0,
        set_uuid: *b"\x20\x32\x90\xd6\x6f\x29\xf8\x5a\xf6\xd5\x53\x32\x7d\x13\xa2\x5f",
        set_name: name,
        ctime: 0x6b03_8aae,
        level: 5,
        layout: 2,
        size: data_size,
        chunksize: 128,
        raid_disks: 3,
        bitmap_offset: 0,
        new_level: 0,
        reshape_position: 0,
        delta_disks: 0,
        new_layout: 0,
        new_chunk: 0,
        new_offset: 0,
        data_offset,
        data_size,
        super_offset,
        recovery_offset: 0,
        dev_number: 1,
        cnt_corrected_read: 0,
        device_uuid: [7; 16],
        devflags: 0,
        bblog_shift: 0,
        bblog_size: 8,
        bblog_offset: 16,
        utime: 0x6b03_8aaf,
        events: 18,
        resync_offset: RESYNC_DONE,
        dev_roles: roles,
    }
}

fn sb0() -> Superblock0 {
    let mut disks = [Disk0::default(); DISKS];
    for (i, d) in disks.iter_mut().take(3).enumerate() {
        *d = Disk0 {
            number: i as u32,
            major: 7,
            minor: i as u32,
            raid_disk: i as u32,
            state: DISK_ACTIVE | DISK_SYNC,
        };
    }
    Superblock0 {
        minor_version: 90,
        patch_version: 0,
        gvalid_words: 0,
        set_uuid: [0x6e4b_0a7c, 0x6111_3399, 0x3d18_6b3c, 0x5395_8f34],
        ctime: 0x6b03_8aa9,
        level: 5,
        size: 16320,
        nr_disks: 3,
        raid_disks: 3,
        md_minor: 0,
        not_persistent: 0,
        utime: 0x6b03_8aa9,
        state: STATE_CLEAN,
        active_disks: 3,
        working_disks: 3,
        failed_disks: 0,
        spare_disks: 0,
        events: (3 << 32) | 5,
        cp_events: 0,
        recovery_cp: 0,
        reshape_position: 0,
        new_level: 0,
        delta_disks: 0,
        new_layout: 0,
        new_chunk: 0,
        layout: 2,
        chunk_size: 65536,
        root_pv: 0,
        root_block: 0,
        disks,
        this_disk: disks[2],
    }
}

fn member(version: MdVersion) -> (MemoryDevice, MdSuperblock) {
    let dev = MemoryDevice::new("/dev/loop7", SIZE);
    let sb = match version {
        MdVersion::V0_90 => MdSuperblock::V0(sb0()),
        v => MdSuperblock::V1(sb1(v)),
    };
    write(&dev, version, &sb).unwrap();
    (dev, sb)
}

/// Re-signs a damaged version-1 superblock on `dev` so that only the damage shows.
fn resign1(dev: &MemoryDevice, at: u64, edit: impl FnOnce(&mut [u8])) {
    let mut b = vec![0u8; 512];
    dev.read_at(&mut b, at).unwrap();
    edit(&mut b);
    let max_dev = le_u32(&b, 220).min(128) as usize;
    let sum = super1::checksum(&b[..256 + 2 * max_dev]);
    b[216..220].copy_from_slice(&sum.to_le_bytes());
    dev.write_at(&b, at).unwrap();
}

fn err_of(dev: &MemoryDevice) -> String {
    let e = probe(dev).unwrap_err().to_string();
    assert!(e.starts_with("/dev/loop7: "), "{e}");
    e
}

#[test]
fn locations_are_the_kernels() {
    assert_eq!(MdVersion::V1_2.offset_bytes(SIZE), Some(4096));
    assert_eq!(MdVersion::V1_1.offset_bytes(SIZE), Some(0));
    // mdadm put the 1.0 superblock of a 16 MiB member at sector 32752.
    assert_eq!(MdVersion::V1_0.offset_bytes(SIZE), Some(32752 * 512));
    assert_eq!(
        MdVersion::V1_0.offset_bytes(SIZE + 8 * 512 + 7 * 512),
        Some(32760 * 512)
    );
    assert_eq!(MdVersion::V0_90.offset_bytes(SIZE), Some(SIZE - 65536));
    assert_eq!(
        MdVersion::V0_90.offset_bytes(SIZE + 65535),
        Some(SIZE - 65536)
    );
    assert_eq!(MdVersion::V0_90.offset_bytes(65536), Some(0));
    assert_eq!(MdVersion::V0_90.offset_bytes(65535), None);
    assert_eq!(MdVersion::V1_0.offset_bytes(4096), None);
    assert_eq!(MdVersion::V1_2.offset_bytes(4096), None);
}

#[test]
fn round_trips_every_version() {
    for version in MdVersion::PROBE_ORDER {
        let (dev, sb) = member(version);
        assert_eq!(
            probe(&dev).unwrap(),
            Some((version, sb.clone())),
            "{version}"
        );
        assert_eq!(read(&dev, version).unwrap(), sb);
        let at = version.offset_bytes(SIZE).unwrap();
        match &sb {
            MdSuperblock::V1(s) => {
                let mut b = vec![0u8; 512];
                dev.read_at(&mut b, at).unwrap();
                assert_eq!(b, s.encode());
                assert_eq!(Superblock1::decode(&b, version, "x", at, SIZE).unwrap(), *s);
            }
            MdSuperblock::V0(s) => {
                let mut b = vec![0u8; 4096];
                dev.read_at(&mut b, at).unwrap();
                assert_eq!(b, s.encode());
                // mdadm's bytes: events lo/hi, the checksum and the first descriptor.
                assert_eq!(le_u32(&b, 156), 5);
                assert_eq!(le_u32(&b, 160), 3);
                assert_eq!(
                    &b[512..532],
                    b"\0\0\0\0\x07\0\0\0\0\0\0\0\0\0\0\0\x06\0\0\0"
                );
                assert_eq!(le_u32(&b, 152), super0::checksum(&b));
            }
        }
    }
}

#[test]
fn common_view() {
    let (_, v1) = member(MdVersion::V1_2);
    assert_eq!(v1.uuid_string(), "203290d6:6f29f85a:f6d55332:7d13a25f");
    assert_eq!(v1.name(), "labhost:v12");
    assert_eq!(name_without_homehost(&v1.name()), "v12");
    assert_eq!(homehost(&v1.name()), Some("labhost"));
    assert_eq!(name_without_homehost("plain"), "plain");
    assert_eq!((v1.level(), v1.layout(), v1.chunk_bytes()), (5, 2, 65536));
    assert_eq!(
        (v1.raid_disks(), v1.role(), v1.events()),
        (3, Role::Active(1), 18)
    );
    assert_eq!(v1.state(), ArrayState::Clean);
    assert_eq!(v1.data_offset_sectors(), 2048);
    assert_eq!(v1.used_size_sectors(), SECTORS - 2048);
    let (_, v0) = member(MdVersion::V0_90);
    assert_eq!(v0.uuid_string(), "6e4b0a7c:61113399:3d186b3c:53958f34");
    assert_eq!(v0.name(), "");
    assert_eq!(
        (v0.role(), v0.events(), v0.chunk_bytes()),
        (Role::Active(2), (3 << 32) | 5, 65536)
    );
    assert_eq!(
        (v0.data_offset_sectors(), v0.used_size_sectors()),
        (0, 32640)
    );

    let mut s = sb1(MdVersion::V1_2);
    s.resync_offset = 4096;
    s.dev_roles[1] = ROLE_FAULTY;
    let v = MdSuperblock::V1(s.clone());
    assert_eq!(
        v.state(),
        ArrayState::Dirty {
            resync_from_sector: 4096
        }
    );
    assert_eq!(v.role(), Role::Faulty);
    s.dev_roles[1] = ROLE_SPARE;
    assert_eq!(MdSuperblock::V1(s).role(), Role::Spare);
    let mut s = sb0();
    s.state = 0;
    s.recovery_cp = 99;
    s.cp_events = s.events;
    assert_eq!(
        MdSuperblock::V0(s.clone()).state(),
        ArrayState::Dirty {
            resync_from_sector: 99
        }
    );
    s.cp_events = 0;
    assert_eq!(
        MdSuperblock::V0(s).state(),
        ArrayState::Dirty {
            resync_from_sector: 0
        }
    );
}

#[test]
fn checksums_are_the_kernels() {
    // mdadm 4.2 wrote this 1.2 header (v12-0 of tests/md_fixtures.sh): checksum 0x49bf85de.
    let mut s = sb1(MdVersion::V1_2);
    s.device_uuid = *b"\x14\x96\xc6\x5f\xc6\x90\x0c\xbb\x46\x5a\xe0\xdc\xe5\x5b\x49\x6c";
    s.dev_number = 0;
    s.ctime = 0x6b03_8aae;
    s.utime = 0x6b03_8aaf;
    s.events = 1;
    s.data_size = 0x7800;
    s.size = 0x7800;
    let b = s.encode();
    assert_eq!(le_u32(&b, 216), 0x49bf_85de);
    // The fold carries the high half in, and an odd role count adds a trailing le16.
    let mut b = vec![0xffu8; 258];
    b[216..220].fill(0);
    let words: u64 = 64 * 0xffff_ffff - 0xffff_ffff + 0xffff;
    assert_eq!(
        super1::checksum(&b),
        ((words & 0xffff_ffff) + (words >> 32)) as u32
    );
}

#[test]
fn probe_finds_nothing_on_blank_and_tiny_devices() {
    for size in [0, 100, 4096, 8191, 65536, SIZE] {
        assert!(probe(&MemoryDevice::new("blank", size)).unwrap().is_none());
    }
    let e = read(&MemoryDevice::new("/dev/tiny", 4000), MdVersion::V1_2).unwrap_err();
    assert!(matches!(e, MdError::Truncated { .. }), "{e}");
    assert!(e.to_string().starts_with("/dev/tiny: too small"), "{e}");
}

#[test]
fn corrupt_version_1_superblocks_are_refused() {
    let at = 4096;
    let cases: Vec<(Edit<[u8]>, &str)> = vec![
        (Box::new(|b| b[4] = 2), "has version 2.0"),
        (Box::new(|b| b[220..224].copy_from_slice(&100_000u32.to_le_bytes())), "claims 100000 devices"),
        (Box::new(|b| b[256 + 2] = 9), "device 1 has role 0x0009, but the array has 3 raid disks"),
        (Box::new(|b| b[256 + 5] = 0xfe), "device 2 has role 0xfe02"),
        (Box::new(|b| b[160] = 200), "device number 200 has no entry in a role table of 128"),
        (Box::new(|b| b[144] = 16), "says it is at sector 16, but was found at sector 8"),
        (Box::new(|b| b[137] = 0x80), "the data area (sector 2048, 32768 sectors) runs past the end of the device at sector 32768"),
        (Box::new(|b| b[129] = 0xff), "runs past the end of the device"),
        (Box::new(|b| b[136..144].copy_from_slice(&u64::MAX.to_le_bytes())), "runs past the end"),
        (Box::new(|b| b[129] = 0), "overlaps the superblock"),
        (Box::new(|b| b[81] = 0x7f), "array's part of the member"),
        (Box::new(|b| b[12] = 1), "reserved bytes are not zero"),
        (Box::new(|b| b[250] = 1), "reserved bytes are not zero"),
        (Box::new(|b| b[10] = 1), "unknown feature bits 0x10000"),
        (Box::new(|b| {
            b[8] = FEATURE_BITMAP as u8;
            b[96..100].copy_from_slice(&(-100i32).to_le_bytes());
        }), "bitmap at -100 sectors"),
    ];
    for (edit, want) in cases {
        let (dev, _) = member(MdVersion::V1_2);
        resign1(&dev, at, edit);
        let e = err_of(&dev);
        assert!(e.contains(want), "{e} (want {want})");
    }
    // A bad checksum.
    let (dev, _) = member(MdVersion::V1_2);
    dev.write_at(&[1], at + 300).unwrap();
    let e = probe(&dev).unwrap_err();
    assert!(
        matches!(
            e,
            MdError::Checksum {
                version: MdVersion::V1_2,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("/dev/loop7: MD 1.2 superblock has checksum 0x"),
        "{e}"
    );
    // A member cut short: its data runs past the new end.
    let (dev, _) = member(MdVersion::V1_2);
    let short = MemoryDevice::with_contents("/dev/loop7", &dev.contents()[..8 << 20]);
    assert!(err_of(&short).contains("runs past the end of the device at sector 16384"));
    // A 1.0 member whose data runs into the superblock.
    let (dev, _) = member(MdVersion::V1_0);
    resign1(&dev, MdVersion::V1_0.offset_bytes(SIZE).unwrap(), |b| {
        b[136] = 0xf8
    });
    assert!(err_of(&dev).contains("runs past the superblock at sector 32752"));
    // A 1.0 superblock copied to a bigger device is not where it says.
    let big = MemoryDevice::new("/dev/loop7", SIZE + 4096);
    big.write_at(&sb1(MdVersion::V1_0).encode(), 32760 * 512)
        .unwrap();
    assert!(err_of(&big).contains("says it is at sector 32752, but was found at sector 32760"));
}

#[test]
fn corrupt_version_0_superblocks_are_refused() {
    let at = MdVersion::V0_90.offset_bytes(SIZE).unwrap();
    let edit0 = |dev: &MemoryDevice, edit: &dyn Fn(&mut Superblock0)| {
        let mut s = sb0();
        edit(&mut s);
        dev.write_at(&s.encode(), at).unwrap();
    };
    let cases: Vec<(Edit<Superblock0>, &str)> = vec![
        (Box::new(|s| s.raid_disks = 40), "40 raid disks"),
        (Box::new(|s| s.nr_disks = 28), "28 disks"),
        (Box::new(|s| s.this_disk.raid_disk = 5), "this device is number 2 in slot 5"),
        (Box::new(|s| s.this_disk.number = 27), "this device is number 27"),
        (Box::new(|s| s.disks[1].raid_disk = 3), "descriptor 1 is in sync in slot 3"),
        (Box::new(|s| s.size = 16 << 10), "array's part of the member (sector 0, 32768 sectors) runs past the superblock at sector 32640"),
    ];
    for (edit, want) in cases {
        let dev = MemoryDevice::new("/dev/loop7", SIZE);
        edit0(&dev, &*edit);
        let e = err_of(&dev);
        assert!(
            e.contains("MD 0.90 superblock") && e.contains(want),
            "{e} (want {want})"
        );
    }
    let (dev, _) = member(MdVersion::V0_90);
    dev.write_at(&[1], at + 3000).unwrap();
    assert!(matches!(
        probe(&dev),
        Err(MdError::Checksum {
            version: MdVersion::V0_90,
            ..
        })
    ));
    let (dev, _) = member(MdVersion::V0_90);
    dev.write_at(&92u32.to_ne_bytes(), at + 8).unwrap();
    assert!(err_of(&dev).contains("has version 0.92"));
    // The other byte order.
    let (dev, _) = member(MdVersion::V0_90);
    dev.write_at(&MAGIC.swap_bytes().to_ne_bytes(), at).unwrap();
    assert!(err_of(&dev).contains("other byte order"));
    // Nothing else on a device whose only magic is damaged.
    let (dev, _) = member(MdVersion::V0_90);
    dev.write_at(&[0], at).unwrap();
    assert!(probe(&dev).unwrap().is_none());
}

#[test]
fn writes_refuse_what_reads_would_refuse() {
    let dev = MemoryDevice::new("/dev/loop7", SIZE);
    let mut s = sb1(MdVersion::V1_2);
    s.dev_roles[0] = 3;
    assert!(matches!(
        write(&dev, MdVersion::V1_2, &MdSuperblock::V1(s)),
        Err(MdError::BadRole { .. })
    ));
    let s = sb1(MdVersion::V1_2);
    assert!(write(&dev, MdVersion::V1_1, &MdSuperblock::V1(s.clone())).is_err());
    assert!(write(&dev, MdVersion::V0_90, &MdSuperblock::V1(s)).is_err());
    let mut s = sb1(MdVersion::V1_2);
    s.dev_roles = vec![0; 2000];
    assert!(matches!(
        write(&dev, MdVersion::V1_2, &MdSuperblock::V1(s)),
        Err(MdError::MaxDev { .. })
    ));
    assert!(probe(&dev).unwrap().is_none());
}

/// The bitmap header mdadm 4.2 wrote for the `bitmap` set of tests/md_fixtures.sh.
fn bitmap_bytes(uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; 256];
    b[0..4].copy_from_slice(b"bitm");
    b[4] = 4;
    b[8..24].copy_from_slice(uuid);
    b[24] = 1;
    b[40..48].copy_from_slice(&0x7800u64.to_le_bytes());
    b[52..56].copy_from_slice(&(64u32 << 20).to_le_bytes());
    b[56] = 5;
    b
}

#[test]
fn reads_the_bitmap_header() {
    let (dev, mut sb) = member(MdVersion::V1_2);
    assert_eq!(read_bitmap(&dev, MdVersion::V1_2, &sb).unwrap(), None);
    if let MdSuperblock::V1(s) = &mut sb {
        s.feature_map |= FEATURE_BITMAP;
        s.bitmap_offset = 8;
    }
    write(&dev, MdVersion::V1_2, &sb).unwrap();
    let e = read_bitmap(&dev, MdVersion::V1_2, &sb)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "/dev/loop7: MD bitmap at byte 8192: magic is 0x00000000, not \"bitm\""
    );
    dev.write_at(&bitmap_bytes(&sb.array_uuid()), 8192).unwrap();
    let bm = read_bitmap(&dev, MdVersion::V1_2, &sb).unwrap().unwrap();
    assert_eq!(
        (bm.offset, bm.version, bm.events, bm.sync_size),
        (8192, 4, 1, 0x7800)
    );
    assert_eq!(
        (bm.chunksize, bm.daemon_sleep, bm.write_behind),
        (64 << 20, 5, 0)
    );
    assert_eq!(bm.bits(), 1);
    assert_eq!(bm.encode()[..], bitmap_bytes(&sb.array_uuid())[..256]);
    assert_eq!(
        BitmapSuper::decode(&bm.encode(), "/dev/loop7", 8192).unwrap(),
        bm
    );
    assert!(bm.is_current(1) && bm.is_current(2) && !bm.is_current(3));
    dev.write_at(&bitmap_bytes(&[9; 16]), 8192).unwrap();
    let e = read_bitmap(&dev, MdVersion::V1_2, &sb)
        .unwrap_err()
        .to_string();
    assert!(e.contains("belongs to array 09090909:"), "{e}");
    for (at, v, want) in [(4, 9u8, "unknown version 9"), (53, 3, "chunk size")] {
        let mut b = bitmap_bytes(&sb.array_uuid());
        b[at] = v;
        dev.write_at(&b, 8192).unwrap();
        let e = read_bitmap(&dev, MdVersion::V1_2, &sb)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn decoding_noise_never_panics() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let good = sb1(MdVersion::V1_2).encode();
    for i in 0..20_000 {
        let mut b = good.clone();
        for _ in 0..1 + i % 8 {
            let at = (next() as usize) % b.len();
            b[at] = next() as u8;
        }
        b.truncate(256 + (next() as usize) % 400);
        let sum = super1::checksum(&b[..b.len().min(256 + 2 * le_u32(&b, 220).min(1920) as usize)]);
        if i % 2 == 0 {
            b[216..220].copy_from_slice(&sum.to_le_bytes());
        }
        if let Ok(s) = Superblock1::decode(&b, MdVersion::V1_2, "noise", 4096, SIZE) {
            assert_eq!(
                Superblock1::decode(&s.encode(), MdVersion::V1_2, "noise", 4096, SIZE).unwrap(),
                s
            );
        }
    }
}
