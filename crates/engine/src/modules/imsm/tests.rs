use std::sync::Arc;

use tessera_block::{BlockDevice, MemoryDevice, SharedDevice};
use tessera_formats::imsm::{self, Dev, Disk, Map, Mpb};

use super::ImsmMembers;
use crate::format::{Finding, FormatModule, Member, Shown};

const SIZE: u64 = 16 << 20;

/// Four members `/dev/loopN` of family 7 holding `devs`, the MPB at `generation` (one
/// member's at `stale`, if given).
fn members(devs: Vec<Dev>, status: [u32; 4], stale: Option<usize>) -> Vec<Member> {
    (0..4)
        .map(|i| {
            let disks = (0..4)
                .map(|d| Disk::new(&format!("/dev/loop{d}"), SIZE / 512, status[d]))
                .collect();
            let generation = if stale == Some(i) { 3 } else { 5 };
            let mpb = Mpb::new(7, generation, disks, devs.clone());
            let dev = MemoryDevice::new(format!("/dev/loop{i}"), SIZE);
            imsm::write(&dev, &mpb).unwrap();
            let device: SharedDevice = Arc::new(dev);
            let name = format!("/dev/loop{i}");
            let (finding, _) = ImsmMembers.probe(&name, &device).unwrap();
            assert_eq!(finding.format, "isw_raid_member");
            Member {
                name,
                device,
                finding,
            }
        })
        .collect()
}

fn raid5_and_raid0() -> Vec<Dev> {
    vec![
        Dev::new("r5", 3 * 4096, Map::new(5, vec![0, 1, 2, 3], 0, 4096, 128)),
        Dev::new(
            "r0",
            4 * 4096,
            Map::new(0, vec![3, 2, 1, 0], 8192, 4096, 64),
        ),
    ]
}

const OK: [u32; 4] = [imsm::CONFIGURED_DISK; 4];

#[test]
fn a_container_makes_its_volumes() {
    let sets = ImsmMembers.assemble(members(raid5_and_raid0(), OK, None));
    assert_eq!(sets.len(), 1);
    let set = &sets[0];
    assert_eq!(set.node.name, "imsm-00000007");
    assert_eq!(set.node.state.as_deref(), Some("complete"));
    assert_eq!(set.places.len(), 4);
    let names: Vec<String> = set.volumes.iter().map(|v| v.name()).collect();
    assert_eq!(names, ["md/r5", "md/r0"]);
    let Shown::Own(node) = set.volumes[0].shown() else {
        panic!("a volume is a node of its own")
    };
    assert_eq!(node.size_bytes, 3 * 4096 * 512);
    assert_eq!(node.detail["level"], "raid5");
    // Running read-only reads the members' areas.
    let v = set.volumes[1]
        .activate(crate::format::target_registry(), false)
        .unwrap();
    assert_eq!(v.device.size_bytes(), 4 * 4096 * 512);
}

#[test]
fn a_failed_disk_degrades_raid5_and_stops_raid0() {
    let mut status = OK;
    status[1] |= imsm::FAILED_DISK;
    let sets = ImsmMembers.assemble(members(raid5_and_raid0(), status, None));
    let set = &sets[0];
    let names: Vec<String> = set.volumes.iter().map(|v| v.name()).collect();
    assert_eq!(names, ["md/r5"]);
    let text = format!("{:?}", set.node);
    assert!(
        text.contains("disk 1 (/dev/loop1) is marked failed"),
        "{text}"
    );
    assert!(text.contains("md/r0: cannot start"), "{text}");
    // Degraded, it runs read-only only.
    let reg = crate::format::target_registry();
    assert!(set.volumes[0].activate(reg.clone(), false).is_ok());
    let e = set.volumes[0].activate(reg, true).err().unwrap();
    assert!(
        e.contains("degraded IMSM volume runs read-only only"),
        "{e}"
    );
}

#[test]
fn a_reshape_is_refused_and_the_newest_generation_speaks() {
    let mut devs = raid5_and_raid0();
    devs[0].migr_state = 1;
    devs[0].migr_type = imsm::MIGR_GEN_MIGR;
    devs[0].maps.push(Map::new(0, vec![0, 1, 2], 0, 4096, 128));
    let sets = ImsmMembers.assemble(members(devs, OK, Some(2)));
    let set = &sets[0];
    let names: Vec<String> = set.volumes.iter().map(|v| v.name()).collect();
    assert_eq!(names, ["md/r0"]);
    let text = format!("{:?}", set.node);
    assert!(
        text.contains("in the middle of a reshape (raid0 over 3 to raid5 over 4"),
        "{text}"
    );
    assert!(text.contains("generation 5"), "{text}");
    let stale = set.places.iter().find(|p| p.name == "/dev/loop2").unwrap();
    assert!(
        stale
            .note
            .as_deref()
            .unwrap()
            .contains("generation 3, the container is at 5"),
        "{stale:?}"
    );
}

#[test]
fn damaged_metadata_is_a_finding() {
    let dev = MemoryDevice::new("/dev/sdz", SIZE);
    let mpb = Mpb::new(1, 1, vec![Disk::new("A", 1, 2)], Vec::new());
    imsm::write(&dev, &mpb).unwrap();
    let mut b = [0u8; 512];
    dev.read_at(&mut b, SIZE - 1024).unwrap();
    b[0x40] ^= 1;
    dev.write_at(&b, SIZE - 1024).unwrap();
    let device: SharedDevice = Arc::new(dev);
    let (f, _): (Finding, _) = ImsmMembers.probe("/dev/sdz", &device).unwrap();
    assert_eq!(f.problems.len(), 1);
    assert!(
        f.problems[0].starts_with("/dev/sdz: IMSM metadata checksum"),
        "{:?}",
        f.problems
    );
}
