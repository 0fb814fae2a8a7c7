use tessera_block::{BlockDevice, MemoryDevice};

use super::*;

const DISK_SECTORS: u64 = 8192;

type WriteFn = fn(&dyn BlockDevice, &SetSpec, u32) -> Result<(), AtaraidError>;

fn writer(vendor: Vendor) -> WriteFn {
    match vendor {
        Vendor::Asr => asr::write_member,
        Vendor::Lsi => lsi::write_member,
        Vendor::Nvidia => nvidia::write_member,
        Vendor::Promise => promise::write_member,
        other => panic!("no writer for {other}"),
    }
}

fn prober(vendor: Vendor) -> ProbeFn {
    probers()
        .iter()
        .find(|(v, _)| *v == vendor)
        .map(|(_, f)| *f)
        .expect("registered")
}

fn spec(level: Level, members: u32, stripe: u32) -> SetSpec {
    SetSpec {
        level,
        member_count: members,
        stripe_sectors: stripe,
        member_data_sectors: 4096,
        id: 0x1234_5678,
        name: "tessera".into(),
    }
}

fn members_of(vendor: Vendor, spec: &SetSpec) -> Vec<Member> {
    (0..spec.member_count)
        .map(|i| {
            let dev = MemoryDevice::new(format!("disk{i}"), DISK_SECTORS * 512);
            writer(vendor)(&dev, spec, i).expect("write");
            // Only this vendor's prober finds the member.
            for (other, probe) in probers() {
                if *other != vendor {
                    assert_eq!(
                        probe(&dev).expect("other probe"),
                        None,
                        "{other} on {vendor}"
                    );
                }
            }
            prober(vendor)(&dev).expect("probe").expect("member found")
        })
        .collect()
}

#[test]
fn every_format_reads_back_what_it_wrote() {
    let cases: &[(Vendor, Level, u32, u32)] = &[
        (Vendor::Asr, Level::Raid0, 3, 128),
        (Vendor::Asr, Level::Raid1, 2, 0),
        (Vendor::Lsi, Level::Raid0, 2, 64),
        (Vendor::Lsi, Level::Raid1, 2, 0),
        (Vendor::Nvidia, Level::Raid0, 3, 128),
        (Vendor::Nvidia, Level::Raid1, 2, 0),
        (Vendor::Nvidia, Level::Raid01, 4, 64),
        (Vendor::Nvidia, Level::Jbod, 2, 0),
        (
            Vendor::Nvidia,
            Level::Raid5 {
                layout: Raid5Layout::LeftSymmetric,
            },
            3,
            32,
        ),
        (Vendor::Promise, Level::Raid0, 2, 128),
        (Vendor::Promise, Level::Raid1, 2, 0),
        (Vendor::Promise, Level::Raid01, 4, 64),
        (Vendor::Promise, Level::Jbod, 3, 0),
    ];
    for &(vendor, level, count, stripe) in cases {
        let spec = spec(level, count, stripe);
        let members = members_of(vendor, &spec);
        let first = &members[0];
        for (i, m) in members.iter().enumerate() {
            assert_eq!(m.vendor, vendor);
            assert_eq!(m.level, level, "{vendor} {level:?}");
            assert_eq!(m.index, i as u32, "{vendor} {level:?}");
            assert_eq!(m.member_count, count, "{vendor} {level:?}");
            assert_eq!(m.set_name, first.set_name);
            assert_eq!(m.set_id, first.set_id);
            assert_eq!(m.state, MemberState::Ok);
            assert_eq!(m.stripe_sectors, stripe, "{vendor} {level:?}");
            assert!(m.data_offset + m.data_sectors <= m.metadata_offset);
            assert!(
                m.data_sectors >= spec.member_data_sectors,
                "{vendor} {level:?}"
            );
        }
        assert!(first.set_name.starts_with(vendor.dmraid_name()));
    }
}

#[test]
fn set_names_are_built_as_dmraid_builds_them() {
    assert_eq!(promise::set_name(305419896), "pdc_dafebjijg");
    assert_eq!(nvidia::set_name(0x1234_5678), "nvidia_bcdefghi");
    assert_eq!(nvidia::set_name(0xdead_beef), "nvidia_deadbeef");
    assert_eq!(lsi::set_name(42, 0), "lsi_eca");
    let members = members_of(Vendor::Asr, &spec(Level::Raid1, 2, 0));
    assert_eq!(members[0].set_name, "asr_tessera");
}

fn corrupt(dev: &MemoryDevice, offset: u64) {
    let mut b = [0u8; 1];
    dev.read_at(&mut b, offset).unwrap();
    b[0] ^= 0x5A;
    dev.write_at(&b, offset).unwrap();
}

#[test]
fn damaged_metadata_is_named() {
    // Promise: a byte inside the record, after the signature.
    let dev = MemoryDevice::new("/dev/pdc0", DISK_SECTORS * 512);
    promise::write_member(&dev, &spec(Level::Raid0, 2, 128), 0).unwrap();
    corrupt(&dev, (DISK_SECTORS - 63) * 512 + 0x300);
    let err = promise::probe(&dev).unwrap_err().to_string();
    assert!(
        err.contains("/dev/pdc0") && err.contains("Promise") && err.contains("checksum"),
        "{err}"
    );

    let dev = MemoryDevice::new("/dev/nv0", DISK_SECTORS * 512);
    nvidia::write_member(&dev, &spec(Level::Raid1, 2, 0), 1).unwrap();
    corrupt(&dev, (DISK_SECTORS - 2) * 512 + 0x50);
    let err = nvidia::probe(&dev).unwrap_err().to_string();
    assert!(
        err.contains("/dev/nv0") && err.contains("NVIDIA") && err.contains("checksum"),
        "{err}"
    );

    let dev = MemoryDevice::new("/dev/asr0", DISK_SECTORS * 512);
    asr::write_member(&dev, &spec(Level::Raid0, 2, 128), 0).unwrap();
    corrupt(&dev, (DISK_SECTORS - 17) * 512 + 64 + 20);
    let err = asr::probe(&dev).unwrap_err().to_string();
    assert!(
        err.contains("/dev/asr0") && err.contains("Adaptec") && err.contains("checksum"),
        "{err}"
    );

    // LSI has no checksum: a slot outside the set is named instead.
    let dev = MemoryDevice::new("/dev/lsi0", DISK_SECTORS * 512);
    lsi::write_member(&dev, &spec(Level::Raid0, 2, 128), 0).unwrap();
    dev.write_at(&[7], (DISK_SECTORS - 1) * 512 + 0x1F1)
        .unwrap();
    let err = lsi::probe(&dev).unwrap_err().to_string();
    assert!(
        err.contains("/dev/lsi0") && err.contains("LSI") && err.contains("slot"),
        "{err}"
    );
}

#[test]
fn small_devices_are_refused_or_ignored_without_panics() {
    for size in [0u64, 1, 511, 512, 1024, 2048, 4096, 63 * 512] {
        let dev = MemoryDevice::new("/dev/tiny", size);
        for (vendor, probe) in probers() {
            assert!(
                probe(&dev).expect("blank device").is_none(),
                "{vendor} {size}"
            );
        }
        if size < 63 * 512 {
            let err = promise::write_member(&dev, &spec(Level::Raid0, 2, 128), 0);
            assert!(err.is_err(), "{size}");
        }
    }
}

#[test]
fn a_promise_record_cut_short_by_the_device_end_is_truncated() {
    // The record at 63 sectors from the end, then the device is cut to end inside it.
    let full = MemoryDevice::new("/dev/full", DISK_SECTORS * 512);
    promise::write_member(&full, &spec(Level::Raid1, 2, 0), 0).unwrap();
    let mut buf = vec![0u8; (DISK_SECTORS * 512) as usize];
    full.read_at(&mut buf, 0).unwrap();
    // Keep the record's first sector only; the rest of the device is gone.
    let cut_bytes = (DISK_SECTORS - 63 + 1) * 512;
    let cut = MemoryDevice::new("/dev/cut", cut_bytes);
    cut.write_at(&buf[..cut_bytes as usize], 0).unwrap();
    // Seen from the new end, 63 sectors back is no longer the record: nothing is found or
    // the record found is named damaged; never a panic.
    let _ = promise::probe(&cut);
    let truncated = read_bytes(&cut, Vendor::Promise, (DISK_SECTORS - 63) * 512, 2048).unwrap_err();
    let text = truncated.to_string();
    assert!(
        text.contains("/dev/cut") && text.contains("too small"),
        "{text}"
    );
}
