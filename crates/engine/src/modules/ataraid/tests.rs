use std::sync::Arc;

use tessera_block::{BlockDevice, MemoryDevice, SharedDevice};
use tessera_formats::ataraid::{
    self as fmt, asr, lsi, nvidia, promise, Level, Raid5Layout, SetSpec, Vendor,
};

use super::*;
use crate::format::target_registry;

const DISK_SECTORS: u64 = 2048;

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

/// A set's member disks with metadata and the test pattern where the layout puts it, and
/// the set's size in sectors as this test reckons it.
fn build(vendor: Vendor, level: Level, count: u32, stripe: u32) -> (Vec<SharedDevice>, u64) {
    let spec = SetSpec {
        level,
        member_count: count,
        stripe_sectors: stripe,
        member_data_sectors: 1024,
        id: 0x0bad_cafe,
        name: "unit".into(),
    };
    let disks: Vec<SharedDevice> = (0..count)
        .map(|i| {
            let d = MemoryDevice::new(
                format!("/dev/sd{}", (b'a' + i as u8) as char),
                DISK_SECTORS * 512,
            );
            writer(vendor)(&d, &spec, i).unwrap();
            Arc::new(d) as SharedDevice
        })
        .collect();
    let metas: Vec<fmt::Member> = disks
        .iter()
        .map(|d| read(d.as_ref()).unwrap().unwrap())
        .collect();
    let sizes: Vec<u64> = metas.iter().map(|m| m.data_sectors).collect();
    let min = *sizes.iter().min().unwrap();
    let whole = if stripe == 0 {
        min
    } else {
        min / u64::from(stripe) * u64::from(stripe)
    };
    let n = u64::from(count);
    let set_sectors = match level {
        Level::Raid0 => whole * n,
        Level::Raid1 => whole,
        Level::Raid01 | Level::Raid10 => whole * n / 2,
        Level::Raid5 { .. } => whole * (n - 1),
        Level::Jbod => sizes.iter().sum(),
        Level::Spare => 0,
    };
    let members: Vec<(&dyn BlockDevice, u64)> = disks
        .iter()
        .zip(&metas)
        .map(|(d, m)| (d.as_ref() as &dyn BlockDevice, m.data_offset))
        .collect();
    fmt::write_pattern(level, stripe, &members, &sizes, set_sectors, 7).unwrap();
    (disks, set_sectors)
}

fn assemble(disks: &[SharedDevice]) -> Vec<Assembly> {
    let module = AtaraidMembers;
    let members: Vec<Member> = disks
        .iter()
        .map(|d| {
            let (finding, _) = module.probe(d.name(), d).expect("claimed");
            Member {
                name: d.name().to_string(),
                device: d.clone(),
                finding,
            }
        })
        .collect();
    module.assemble(members)
}

fn check_reads(a: &Assembly, set_sectors: u64) {
    assert_eq!(a.node.size_bytes, set_sectors * 512, "{}", a.node.name);
    let v = &a.volumes[0];
    let act = v.activate(target_registry(), false).unwrap();
    assert_eq!(act.device.size_bytes(), set_sectors * 512);
    let mut buf = vec![0u8; 512];
    for s in 0..set_sectors {
        act.device.read_at(&mut buf, s * 512).unwrap();
        assert_eq!(buf, fmt::pattern_sector(7, s), "{} sector {s}", a.node.name);
    }
}

const CASES: &[(Vendor, Level, u32, u32)] = &[
    (Vendor::Asr, Level::Raid0, 3, 16),
    (Vendor::Asr, Level::Raid1, 2, 0),
    (Vendor::Lsi, Level::Raid0, 2, 32),
    (Vendor::Lsi, Level::Raid1, 2, 0),
    (Vendor::Nvidia, Level::Raid0, 2, 16),
    (Vendor::Nvidia, Level::Raid1, 2, 0),
    (Vendor::Nvidia, Level::Raid01, 4, 16),
    (Vendor::Nvidia, Level::Jbod, 3, 0),
    (
        Vendor::Nvidia,
        Level::Raid5 {
            layout: Raid5Layout::LeftSymmetric,
        },
        3,
        16,
    ),
    (Vendor::Promise, Level::Raid0, 4, 32),
    (Vendor::Promise, Level::Raid1, 2, 0),
    (Vendor::Promise, Level::Raid01, 4, 16),
    (Vendor::Promise, Level::Jbod, 2, 0),
];

#[test]
fn every_set_reads_its_data_where_the_layout_put_it() {
    for &(vendor, level, count, stripe) in CASES {
        let (disks, set_sectors) = build(vendor, level, count, stripe);
        let sets = assemble(&disks);
        assert_eq!(sets.len(), 1, "{vendor} {level:?}");
        let a = &sets[0];
        assert_eq!(a.node.state.as_deref(), Some("clean"));
        assert_eq!(a.places.len(), count as usize);
        assert_eq!(a.node.detail["type"], level.dmraid_type());
        assert_eq!(a.volumes[0].name(), format!("md/{}", a.node.name));
        check_reads(a, set_sectors);
    }
}

#[test]
fn a_set_with_redundancy_reads_without_a_member_and_one_without_does_not() {
    for &(vendor, level, count, stripe) in CASES {
        let (disks, set_sectors) = build(vendor, level, count, stripe);
        // Member 1 gone (raid01: of the first stripe, raid10: of the first pair).
        let rest: Vec<SharedDevice> = disks
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, d)| d.clone())
            .collect();
        let sets = assemble(&rest);
        let a = &sets[0];
        if level.redundancy(count) > 0 {
            assert_eq!(
                a.node.state.as_deref(),
                Some("degraded"),
                "{vendor} {level:?}"
            );
            assert!(a.node.problems.iter().any(|p| p.contains("missing")));
            check_reads(a, set_sectors);
        } else {
            assert_eq!(
                a.node.state.as_deref(),
                Some("failed"),
                "{vendor} {level:?}"
            );
            assert!(a.volumes.is_empty());
            assert!(
                a.node.problems.iter().any(|p| p.contains("cannot be read")),
                "{:?}",
                a.node.problems
            );
        }
    }
}

#[test]
fn writing_is_refused_with_the_reason() {
    let (disks, _) = build(Vendor::Promise, Level::Raid1, 2, 0);
    let sets = assemble(&disks);
    let err = sets[0].volumes[0]
        .activate(target_registry(), true)
        .err()
        .expect("refused");
    assert!(
        err.contains("read-only") && err.contains("Promise"),
        "{err}"
    );
}

#[test]
fn damaged_metadata_is_a_finding_naming_the_device() {
    let d = MemoryDevice::new("/dev/sdz", DISK_SECTORS * 512);
    let spec = SetSpec {
        level: Level::Raid0,
        member_count: 2,
        stripe_sectors: 16,
        member_data_sectors: 1024,
        id: 1,
        name: String::new(),
    };
    nvidia::write_member(&d, &spec, 0).unwrap();
    d.write_at(&[0xFF], (DISK_SECTORS - 2) * 512 + 0x60)
        .unwrap();
    let d: SharedDevice = Arc::new(d);
    let (finding, _) = AtaraidMembers.probe("/dev/sdz", &d).expect("found");
    assert_eq!(finding.format, "nvidia_raid_member");
    assert!(
        finding.problems[0].contains("/dev/sdz") && finding.problems[0].contains("checksum"),
        "{:?}",
        finding.problems
    );
}

#[test]
fn the_reference_layout_places_raid5_as_md_does() {
    // md's left-symmetric raid5 over 3 disks, chunk 1: row 0 parity on disk 2, data on
    // 0, 1; row 1 parity on disk 1, data on 2, 0.
    let l = Level::Raid5 {
        layout: Raid5Layout::LeftSymmetric,
    };
    let sizes = [10, 10, 10];
    assert_eq!(fmt::locate(l, 1, &sizes, 0), (vec![(0, 0)], Some((2, 0))));
    assert_eq!(fmt::locate(l, 1, &sizes, 1), (vec![(1, 0)], Some((2, 0))));
    assert_eq!(fmt::locate(l, 1, &sizes, 2), (vec![(2, 1)], Some((1, 1))));
    assert_eq!(fmt::locate(l, 1, &sizes, 3), (vec![(0, 1)], Some((1, 1))));
}
