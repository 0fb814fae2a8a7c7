//! tessera beside the real lvm2 on loop devices: VGs that lvm2 makes, tessera reads the same;
//! VGs that tessera makes and changes, lvm2 checks, reads and backs up the same; and the two
//! take turns changing one VG.

mod common;

use common::*;
use serde_json::Value;
use tessera_formats::lvm2::vg::VolumeGroup;

const SEG_FIELDS: &str = "lv_name,vg_name,lv_size,seg_start_pe,seg_size_pe,seg_size,segtype,stripes,stripe_size,seg_pe_ranges,devices";
const PV_FIELDS: &str =
    "pv_name,vg_name,pv_uuid,pv_size,pv_free,dev_size,pe_start,pv_pe_count,pv_pe_alloc_count";
const VG_FIELDS: &str = "vg_name,vg_uuid,pv_count,lv_count,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count,vg_seqno";

const LVM_CREATE: &[&str] = &["--driverloaded", "n", "-an", "-Zn", "-Wn", "-q"];

fn lvcreate(loops: &Loops, args: &[&str]) {
    let mut a = vec!["lvcreate"];
    a.extend(LVM_CREATE);
    a.extend(args);
    lvm(&loops.list(), &a);
}

fn lvm_change(loops: &Loops, cmd: &str, args: &[&str]) {
    let mut a = vec![cmd, "--driverloaded", "n", "-q"];
    a.extend(args);
    lvm(&loops.list(), &a);
}

/// Every report of lvm2 and tessera agrees on the loop devices.
fn assert_agree(loops: &Loops, context: &str) {
    let (l, t) = both_reports(
        loops,
        &["lvs", "--segments"],
        &["lv", "list", "--segments"],
        SEG_FIELDS,
    );
    assert!(!l.is_empty(), "{context}: lvm2 lists no segments");
    assert_eq!(
        l, t,
        "{context}: segments differ\nlvm2:    {l:?}\ntessera: {t:?}"
    );
    let (l, t) = both_reports(loops, &["pvs"], &["pv", "list"], PV_FIELDS);
    assert!(!l.is_empty(), "{context}: lvm2 lists no PVs");
    assert_eq!(l, t, "{context}: PVs differ");
    let (l, t) = both_reports(loops, &["vgs"], &["vg", "list"], VG_FIELDS);
    assert_eq!(l, t, "{context}: VGs differ");
}

fn vgck(loops: &Loops, vg: &str) {
    lvm(&loops.list(), &["vgck", vg]);
    for dev in &loops.devices {
        let out = lvm_output(&loops.list(), &["pvck", dev]);
        assert!(
            out.status.success(),
            "pvck {dev}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn lvm2_made_vgs_are_read_by_tessera() {
    let loops = Loops::new(5, 64);
    let d = loops.devices.clone();
    let mut args = vec!["vgcreate", "-q", "vgl"];
    args.extend(d.iter().map(String::as_str));
    lvm(&loops.list(), &args);
    lvcreate(&loops, &["-L", "8M", "-n", "lin", "vgl"]);
    lvcreate(
        &loops,
        &["-i", "2", "-I", "64k", "-L", "16M", "-n", "st2", "vgl"],
    );
    lvcreate(
        &loops,
        &["-i", "3", "-I", "128k", "-L", "24M", "-n", "st3", "vgl"],
    );
    lvcreate(
        &loops,
        &[
            "-i", "2", "-I", "4k", "-L", "8M", "-n", "st2small", "vgl", &d[3], &d[4],
        ],
    );
    // A linear LV that spans three PVs in three segments.
    lvcreate(&loops, &["-L", "20M", "-n", "span", "vgl", &d[0]]);
    lvm_change(&loops, "lvextend", &["-L", "+24M", "vgl/span", &d[1]]);
    lvm_change(&loops, "lvextend", &["-L", "+8M", "vgl/span", &d[4]]);
    // A striped LV extended with a second striped segment.
    lvm_change(&loops, "lvextend", &["-L", "+8M", "vgl/st2"]);
    assert_agree(&loops, "lvm2-made VG");

    let t = report_rows(&tessera(
        &loops.list(),
        &loops.state_dir(),
        &[
            "lv",
            "list",
            "--segments",
            "-o",
            "lv_name,seg_pe_ranges",
            "--json",
        ],
    ));
    let spans: Vec<&Value> = t.iter().filter(|r| r["lv_name"] == "span").collect();
    assert_eq!(spans.len(), 3, "span has three segments: {spans:?}");
    let st3 = t.iter().find(|r| r["lv_name"] == "st3").unwrap();
    assert_eq!(st3["seg_pe_ranges"].as_str().unwrap().split(' ').count(), 3);
}

#[test]
fn tessera_made_vgs_pass_lvm2_checks() {
    let loops = Loops::new(4, 64);
    let d = loops.devices.clone();
    let state = loops.state_dir();
    let t = |args: &[&str]| tessera(&loops.list(), &state, args);
    t(&["pv", "create", &d[0], &d[1], &d[2]]);
    t(&["vg", "create", "vgt", &d[0], &d[1], &d[2]]);
    t(&["lv", "create", "vgt/lin", "--size", "8M"]);
    t(&[
        "lv",
        "create",
        "vgt/st2",
        "-L",
        "16M",
        "--stripes",
        "2",
        "--stripe-size",
        "64k",
    ]);
    t(&[
        "lv", "create", "vgt/st3", "-L", "24M", "-i", "3", "-I", "128k",
    ]);
    t(&["lv", "create", "vgt/big", "-l", "100%FREE"]);
    vgck(&loops, "vgt");
    assert_agree(&loops, "after creating LVs");

    t(&["lv", "reduce", "vgt/big", "-L", "-12M", "--force"]);
    t(&["vg", "extend", "vgt", &d[3]]);
    t(&["lv", "extend", "vgt/lin", "-L", "+20M"]);
    t(&["lv", "extend", "vgt/st2", "-l", "+4"]);
    t(&["lv", "rename", "vgt/lin", "linear"]);
    t(&["lv", "remove", "vgt/st3"]);
    vgck(&loops, "vgt");
    assert_agree(&loops, "after changing LVs");
    let lvs = report_rows(&lvm(
        &loops.list(),
        &[
            "lvs",
            "--segments",
            "-o",
            "lv_name,seg_pe_ranges",
            "--reportformat",
            "json",
        ],
    ));
    assert!(
        lvs.iter().filter(|r| r["lv_name"] == "linear").count() >= 2,
        "the extended LV spans PVs: {lvs:?}"
    );

    // lvm2's backup of the VG holds tessera's model: same ids, PVs, LVs and extents.
    let lvm_backup = loops.dir.path().join("lvm2.vg");
    lvm(
        &loops.list(),
        &["vgcfgbackup", "-f", lvm_backup.to_str().unwrap(), "vgt"],
    );
    let ours = loops.dir.path().join("tessera.vg");
    t(&["vg", "backup", "vgt", "--file", ours.to_str().unwrap()]);
    let (theirs, _) = VolumeGroup::from_text(&std::fs::read(&lvm_backup).unwrap()).unwrap();
    let (mine, _) = VolumeGroup::from_text(&std::fs::read(&ours).unwrap()).unwrap();
    assert_eq!(theirs.id, mine.id);
    assert_eq!(theirs.seqno, mine.seqno);
    assert_eq!(theirs.extent_size_sectors, mine.extent_size_sectors);
    let pv_view = |vg: &VolumeGroup| {
        vg.pvs
            .iter()
            .map(|p| {
                (
                    p.key.clone(),
                    p.id,
                    p.pe_start_sectors,
                    p.pe_count,
                    p.dev_size_sectors,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(pv_view(&theirs), pv_view(&mine));
    let lv_view = |vg: &VolumeGroup| {
        let mut v: Vec<_> = vg
            .lvs
            .iter()
            .map(|l| (l.name.clone(), l.id, l.segments.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(lv_view(&theirs), lv_view(&mine));

    // vg remove with LVs needs --force; then the PVs are orphans that lvm2 sees as such.
    let out = tessera_output(&loops.list(), &state, &["vg", "remove", "vgt"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    t(&["vg", "remove", "vgt", "--force"]);
    let pvs = report_rows(&lvm(
        &loops.list(),
        &["pvs", "-o", "pv_name,vg_name", "--reportformat", "json"],
    ));
    assert_eq!(pvs.len(), 4);
    assert!(pvs.iter().all(|r| r["vg_name"] == ""), "{pvs:?}");
    t(&["pv", "remove", &d[3]]);
    let pvs = report_rows(&lvm(
        &loops.list(),
        &["pvs", "-o", "pv_name", "--reportformat", "json"],
    ));
    assert_eq!(pvs.len(), 3);
}

#[test]
fn backups_restore_across_tools() {
    let loops = Loops::new(2, 64);
    let d = loops.devices.clone();
    let state = loops.state_dir();
    let t = |args: &[&str]| tessera(&loops.list(), &state, args);
    t(&["vg", "create", "vgb", &d[0], &d[1]]);
    t(&["lv", "create", "vgb/a", "-L", "12M"]);
    let ours = loops.dir.path().join("ours.vg");
    t(&["vg", "backup", "vgb", "-f", ours.to_str().unwrap()]);
    t(&["lv", "remove", "vgb/a"]);
    // lvm2 restores tessera's backup: the LV is back.
    lvm(
        &loops.list(),
        &["vgcfgrestore", "-q", "-f", ours.to_str().unwrap(), "vgb"],
    );
    vgck(&loops, "vgb");
    let lvs = report_rows(&tessera(&loops.list(), &state, &["lv", "list", "--json"]));
    assert_eq!(lvs.len(), 1, "{lvs:?}");
    assert_eq!(lvs[0]["lv_name"], "a");

    // tessera restores lvm2's backup.
    let theirs = loops.dir.path().join("theirs.vg");
    lvcreate(&loops, &["-L", "8M", "-n", "b", "vgb"]);
    lvm(
        &loops.list(),
        &["vgcfgbackup", "-q", "-f", theirs.to_str().unwrap(), "vgb"],
    );
    lvm_change(&loops, "lvremove", &["-f", "vgb/b"]);
    t(&["vg", "restore", "vgb", "--file", theirs.to_str().unwrap()]);
    vgck(&loops, "vgb");
    assert_agree(&loops, "after restoring lvm2's backup");
    let lvs = report_rows(&lvm(
        &loops.list(),
        &["lvs", "-o", "lv_name", "--reportformat", "json"],
    ));
    assert_eq!(lvs.len(), 2, "{lvs:?}");

    // The archive kept every committed text; restoring without a file takes the newest.
    let list = t(&["vg", "restore", "vgb", "--list"]);
    assert!(list.lines().count() >= 4, "archive: {list}");
}

#[test]
fn lvm2_and_tessera_take_turns() {
    let loops = Loops::new(4, 64);
    let d = loops.devices.clone();
    let state = loops.state_dir();
    let t = |args: &[&str]| tessera(&loops.list(), &state, args);
    lvm(
        &loops.list(),
        &["vgcreate", "-q", "turns", &d[0], &d[1], &d[2]],
    );
    let mut rounds = 0;
    for round in 0..20 {
        let name = format!("turns/lv{}", round / 4);
        let renamed = format!("r{}", round / 4);
        let by_lvm = round % 2 == 0;
        match (round % 4, by_lvm) {
            (0, true) => lvcreate(
                &loops,
                &["-L", "8M", "-n", &format!("lv{}", round / 4), "turns"],
            ),
            (1, false) => {
                t(&["lv", "extend", &name, "-L", "+12M"]);
            }
            (2, true) => lvm_change(
                &loops,
                "lvextend",
                &["-i", "2", "-I", "64k", "-L", "+8M", &name],
            ),
            (3, false) => {
                t(&["lv", "rename", &name, &renamed]);
            }
            _ => unreachable!(),
        }
        // Every fifth round the other side also changes the VG's shape.
        if round == 9 {
            t(&["vg", "extend", "turns", &d[3]]);
        }
        if round == 14 {
            lvm_change(&loops, "lvremove", &["-f", "turns/r1"]);
        }
        if round == 17 {
            t(&["lv", "reduce", "turns/r2", "-l", "-2", "--force"]);
        }
        lvm(&loops.list(), &["vgck", "turns"]);
        assert_agree(&loops, &format!("round {round}"));
        rounds += 1;
    }
    assert_eq!(rounds, 20);
    let vgs = report_rows(&lvm(
        &loops.list(),
        &["vgs", "-o", "vg_seqno", "--reportformat", "json"],
    ));
    assert!(vgs[0]["vg_seqno"].as_str().unwrap().parse::<u64>().unwrap() >= 24);
}

#[test]
fn vg_reduce_releases_unused_pvs_only() {
    let loops = Loops::new(3, 64);
    let d = loops.devices.clone();
    let state = loops.state_dir();
    let t = |args: &[&str]| tessera(&loops.list(), &state, args);
    t(&["vg", "create", "vgr", &d[0], &d[1], &d[2]]);
    t(&["lv", "create", "vgr/a", "-L", "8M", "--pv", &d[0]]);
    let out = tessera_output(&loops.list(), &state, &["vg", "reduce", "vgr", &d[0]]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&d[0]) && err.contains("allocated extents"),
        "{err}"
    );
    t(&["vg", "reduce", "vgr", &d[2]]);
    vgck(&loops, "vgr");
    assert_agree(&loops, "after vg reduce");
    let pvs = report_rows(&lvm(
        &loops.list(),
        &["pvs", "-o", "pv_name,vg_name", "--reportformat", "json"],
    ));
    let orphan = pvs
        .iter()
        .find(|r| r["pv_name"] == d[2].as_str())
        .expect("the released PV is listed");
    assert_eq!(orphan["vg_name"], "");
    // lvm2 can take the released PV straight into another VG.
    lvm(&loops.list(), &["vgcreate", "-q", "other", &d[2]]);
    assert_agree(&loops, "after lvm2 reuses the PV");
}
