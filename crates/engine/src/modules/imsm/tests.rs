use std::sync::Arc;

use tessera_block::{BlockDevice, MemoryDevice, SharedDevice};
use tessera_formats::imsm::{self, Dev, Disk, Map, Mpb};

use super::ImsmMembers;
use crate::format::{Finding, FormatModule, Member, Shown};
use serde_json::Value;

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
    // Degraded without a spare, it runs degraded, read-only or writable.
    let reg = crate::format::target_registry();
    assert!(set.volumes[0].activate(reg.clone(), false).is_ok());
    let run = set.volumes[0].activate(reg, true).unwrap();
    assert_eq!(run.notes, ["running degraded: no spare to rebuild onto"]);
}

/// The members of [`members`] plus `/dev/loop4`, a spare with its own record.
fn with_spare(devs: Vec<Dev>, status: [u32; 4]) -> (Vec<Member>, SharedDevice) {
    let mut all = members(devs, status, None);
    let dev = MemoryDevice::new("/dev/loop4", SIZE);
    imsm::write(&dev, &Mpb::spare_record("/dev/loop4", SIZE / 512)).unwrap();
    let device: SharedDevice = Arc::new(dev);
    let (finding, _) = ImsmMembers.probe("/dev/loop4", &device).unwrap();
    all.push(Member {
        name: "/dev/loop4".into(),
        device: device.clone(),
        finding,
    });
    (all, device)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never happened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_spare_takes_a_missing_members_place_and_the_rebuild_is_recorded_to_its_end() {
    let (mut all, spare) = with_spare(raid5_and_raid0(), OK);
    // Disk 1 is gone.
    all.remove(1);
    let kept: Vec<SharedDevice> = all.iter().take(3).map(|m| m.device.clone()).collect();
    let sets = ImsmMembers.assemble(all);
    assert_eq!(sets.len(), 1, "the spare joins the one container");
    let set = &sets[0];
    assert!(
        set.node.summary.contains("1 spare(s)"),
        "{}",
        set.node.summary
    );
    assert!(set
        .places
        .iter()
        .any(|p| p.name == "/dev/loop4" && p.state.as_deref() == Some("spare")));
    let reg = crate::format::target_registry();
    // Read-only, nothing is taken or written.
    let ro = set.volumes[0].activate(reg.clone(), false).unwrap();
    assert_eq!(ro.notes, ["running degraded"]);
    drop(ro);
    assert!(imsm::read(spare.as_ref())
        .unwrap()
        .unwrap()
        .is_spare_record());

    let run = set.volumes[0].activate(reg, true).unwrap();
    assert_eq!(run.notes, ["rebuilding slot 1 onto /dev/loop4"]);
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 / 3) as u8).collect();
    run.device.write_at(&data, 1 << 20).unwrap();
    wait_for("the end of the rebuild", || {
        imsm::read(spare.as_ref())
            .unwrap()
            .is_some_and(|m| !m.devs[0].is_migrating())
    });
    let mpb = imsm::read(spare.as_ref()).unwrap().unwrap();
    assert_ne!(mpb.family_num, 7, "a new container generation");
    assert_eq!(mpb.orig_family_num, 7);
    // The missing disk failed (its serial shifted, as mdmon marks a missing one), kept
    // while r0 names it; the spare configured in r5's slot 1, one normal map.
    assert!(mpb.disks[1].is_failed());
    assert_eq!(mpb.disks[1].serial_string(), "dev/loop1:0");
    assert_eq!(mpb.disks[4].serial_string(), "/dev/loop4");
    assert_eq!(mpb.disks[4].status, imsm::CONFIGURED_DISK);
    let r5 = &mpb.devs[0];
    assert_eq!(r5.maps.len(), 1);
    assert_eq!(r5.maps[0].disk_ord_tbl, [0, 4, 2, 3]);
    assert_eq!(r5.maps[0].map_state, imsm::MAP_NORMAL);
    assert_eq!(r5.maps[0].failed_disk_num, 0xff);
    let mut back = vec![0u8; data.len()];
    run.device.read_at(&mut back, 1 << 20).unwrap();
    assert!(back == data);
    drop(run);
    // Every member still in the container holds the same record.
    for m in [0usize, 1, 2] {
        let on = imsm::read(kept[m].as_ref()).unwrap().unwrap();
        assert_eq!(on, mpb, "member {m}");
    }
}

#[test]
fn a_rebuild_under_way_resumes_from_its_checkpoint() {
    let (all, spare) = with_spare(raid5_and_raid0(), OK);
    // As tessera or mdmon leave it: the spare took slot 2 of r5, 5 units done.
    let mut mpb = imsm::read(all[0].device.as_ref()).unwrap().unwrap();
    mpb.activate_spare(
        0,
        2,
        imsm::SpareDisk::New(Disk::new("/dev/loop4", SIZE / 512, imsm::SPARE_DISK)),
        1,
    )
    .unwrap();
    mpb.rebuild_checkpoint(0, 5 * 128 + 3);
    for m in all.iter().map(|m| &m.device).chain([&spare]) {
        imsm::write(m.as_ref(), &mpb).unwrap();
    }
    let members: Vec<Member> = all
        .into_iter()
        .map(|m| {
            let (finding, _) = ImsmMembers.probe(&m.name, &m.device).unwrap();
            Member { finding, ..m }
        })
        .collect();
    let sets = ImsmMembers.assemble(members);
    let set = &sets[0];
    let Shown::Own(node) = set.volumes[0].shown() else {
        panic!("a volume is a node of its own")
    };
    assert_eq!(node.state.as_deref(), Some("recovering"));
    assert_eq!(node.detail["rebuild"]["slot"], 2);
    assert_eq!(node.detail["rebuild"]["done_sectors"], 640);
    assert!(
        node.summary.contains("rebuilding slot 2 onto /dev/loop4"),
        "{}",
        node.summary
    );
    let run = set.volumes[0]
        .activate(crate::format::target_registry(), true)
        .unwrap();
    wait_for("the end of the rebuild", || {
        imsm::read(spare.as_ref())
            .unwrap()
            .is_some_and(|m| !m.devs[0].is_migrating())
    });
    let report = run.device.message(0, &["report"]).unwrap();
    let rebuilt: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("last_sectors="))
        .unwrap()
        .parse()
        .unwrap();
    // r5's members give 4096 sectors; the rebuild went on from sector 640.
    assert_eq!(rebuilt, 4096 - 640, "{report}");
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

#[test]
fn a_disk_failed_in_one_volume_is_rebuilt_in_every_volume_onto_the_one_spare() {
    // mdmon fails a disk in all the container's volumes at once, and the spare takes a
    // slot in each.
    let devs = vec![
        Dev::new("r5", 3 * 4096, Map::new(5, vec![0, 1, 2, 3], 0, 4096, 128)),
        Dev::new(
            "r10",
            2 * 4096,
            Map::new(10, vec![0, 1, 2, 3], 8192, 4096, 64),
        ),
    ];
    let (all, spare) = with_spare(devs, OK);
    let sets = ImsmMembers.assemble(all);
    let set = &sets[0];
    let reg = crate::format::target_registry();
    let r5 = set.volumes[0].activate(reg.clone(), true).unwrap();
    let r10 = set.volumes[1].activate(reg, true).unwrap();
    assert!(r5.notes.is_empty() && r10.notes.is_empty(), "both whole");
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 11 / 5) as u8).collect();
    r5.device.write_at(&data, 1 << 20).unwrap();
    r10.device.write_at(&data, 1 << 20).unwrap();
    // Failed in r5 only, as `mdadm --fail` fails it in one array.
    r5.device.message(0, &["fail", "/dev/loop1"]).unwrap();
    // The spare's disk in slot 1 of both, each map whole again.
    let both_rebuilt = |m: &Mpb| {
        m.devs.iter().all(|d| {
            let idx = d.maps[0].disk_ord_tbl[1] as usize;
            !d.is_migrating()
                && m.disks.get(idx).map(|k| k.serial_string()).as_deref() == Some("/dev/loop4")
        })
    };
    wait_for("both volumes rebuilt onto the spare", || {
        imsm::read(spare.as_ref())
            .unwrap()
            .is_some_and(|m| both_rebuilt(&m))
    });
    let mpb = imsm::read(spare.as_ref()).unwrap().unwrap();
    // No volume names the failed disk any more: it left the table, the others moved up.
    let serials: Vec<String> = mpb.disks.iter().map(|d| d.serial_string()).collect();
    assert_eq!(
        serials,
        ["/dev/loop0", "/dev/loop2", "/dev/loop3", "/dev/loop4"]
    );
    assert_eq!(mpb.devs[0].maps[0].disk_ord_tbl, [0, 3, 1, 2]);
    assert_eq!(mpb.devs[1].maps[0].disk_ord_tbl, [0, 3, 1, 2]);
    for d in &mpb.devs {
        assert_eq!(d.maps[0].map_state, imsm::MAP_NORMAL, "{}", d.name());
    }
    // r10 stopped using the failed disk: its set names it faulty.
    let report = r10.device.message(0, &["report"]).unwrap();
    assert!(report.contains("faulty=/dev/loop1"), "{report}");
    for v in [&r5, &r10] {
        let mut back = vec![0u8; data.len()];
        v.device.read_at(&mut back, 1 << 20).unwrap();
        assert!(back == data);
    }
}

#[test]
fn md_detail_names_each_slot_as_mdadm_detail_does() {
    let mut all = members(raid5_and_raid0(), OK, None);
    all.remove(1);
    let sets = ImsmMembers.assemble(all);
    let volumes = sets[0].node.detail["volumes"].as_array().unwrap().clone();
    let r5 = &volumes[0]["md"];
    assert_eq!(r5["metadata"], "imsm");
    assert_eq!(r5["container"], "imsm-00000007");
    assert_eq!(r5["member"], 0);
    assert_eq!(r5["level"], "raid5");
    assert_eq!(r5["layout"], "left-asymmetric");
    assert_eq!(r5["chunk_bytes"], 64 * 1024);
    assert_eq!(r5["size_bytes"], 3 * 4096 * 512);
    assert_eq!(r5["state"], "degraded");
    let slots: Vec<(String, Value)> = r5["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["state"].as_str().unwrap().to_string(),
                m["device"].clone(),
            )
        })
        .collect();
    assert_eq!(
        slots,
        [
            ("active sync".to_string(), Value::from("/dev/loop0")),
            ("removed".to_string(), Value::Null),
            ("active sync".to_string(), Value::from("/dev/loop2")),
            ("active sync".to_string(), Value::from("/dev/loop3")),
        ]
    );
    // mdadm's UUID: four groups of eight hex digits, one per volume.
    let uuid = |v: &Value| v["md"]["uuid"].as_str().unwrap().to_string();
    let u0 = uuid(&volumes[0]);
    assert_eq!(u0.len(), 35, "{u0}");
    assert!(u0
        .split(':')
        .all(|g| g.len() == 8 && g.chars().all(|c| c.is_ascii_hexdigit())));
    assert_ne!(u0, uuid(&volumes[1]));
    assert_eq!(volumes[1]["md"]["state"], "failed");
}
