//! `tessera pv move` beside the real lvm2 on loop devices (no device-mapper on this host, so
//! lvm2 checks and reads; the kernel lab's pv_move_lab has lvm2 move too). lvm2 makes a VG
//! over PVs full of pseudo-random bytes: a linear LV of two segments around another LV and a
//! striped LV with one stripe on the PV to empty. tessera moves that PV paced to a few MiB/s
//! and is killed with SIGKILL in the middle: lvm2's vgck passes on the VG it left (pvmove0,
//! LOCKED LVs); `tessera pv move` with no arguments resumes from the last checkpoint and
//! finishes; lvm2 then shows the PV empty and every LV's bytes, read back at the places
//! lvm2's own report names, are those from before. A second move is killed and aborted: the
//! bytes are whole again and lvm2 shows no trace of pvmove0.

mod common;

use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const LVM_CREATE: &[&str] = &["--driverloaded", "n", "-an", "-Zn", "-Wn", "-q"];
const EXTENT_SECTORS: u64 = 2048;
const PE_START_SECTORS: u64 = 2048;
const LVS: [&str; 3] = ["lin", "gap", "str"];

fn lvcreate(loops: &Loops, args: &[&str]) {
    let mut a = vec!["lvcreate"];
    a.extend(LVM_CREATE);
    a.extend(args);
    lvm(&loops.list(), &a);
}

/// The bytes of LV `lv` read from the images at the extents lvm2's report names (linear and
/// striped segments), independent of tessera.
fn lvm2_lv_bytes(loops: &Loops, lv: &str) -> Vec<u8> {
    let json = lvm(
        &loops.list(),
        &[
            "lvs",
            "--segments",
            "--reportformat",
            "json",
            "--units",
            "s",
            "--nosuffix",
            "-o",
            "lv_name,seg_start,seg_size,segtype,stripes,stripe_size,seg_pe_ranges",
            &format!("vg/{lv}"),
        ],
    );
    let v: Value = serde_json::from_str(&json).unwrap();
    let mut out = Vec::new();
    for seg in v["report"][0]["seg"].as_array().unwrap() {
        let num = |k: &str| seg[k].as_str().unwrap().parse::<u64>().unwrap();
        let (size, stripes, chunk) = (num("seg_size"), num("stripes"), num("stripe_size"));
        let segtype = seg["segtype"].as_str().unwrap();
        assert!(matches!(segtype, "linear" | "striped"), "{lv}: {segtype}");
        // "/dev/loopN:A-B" per stripe.
        let areas: Vec<(usize, u64)> = seg["seg_pe_ranges"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .map(|r| {
                let (dev, range) = r.rsplit_once(':').unwrap();
                let first: u64 = range.split('-').next().unwrap().parse().unwrap();
                let i = loops
                    .devices
                    .iter()
                    .position(|d| d == dev)
                    .unwrap_or_else(|| panic!("{lv} lies on {dev}, not one of the loop devices"));
                (i, PE_START_SECTORS + first * EXTENT_SECTORS)
            })
            .collect();
        assert_eq!(areas.len() as u64, stripes, "{lv}: {seg}");
        let files: Vec<std::fs::File> = loops
            .images
            .iter()
            .map(|p| std::fs::File::open(p).unwrap())
            .collect();
        let unit = if stripes > 1 { chunk } else { size };
        let mut s = 0;
        while s < size {
            let idx = s / unit;
            let (pv, base) = areas[(idx % stripes) as usize];
            let at = base + (idx / stripes) * unit;
            let mut buf = vec![0u8; (unit * 512) as usize];
            files[pv].read_exact_at(&mut buf, at * 512).unwrap();
            out.extend(buf);
            s += unit;
        }
    }
    out
}

fn sums(loops: &Loops) -> Vec<String> {
    LVS.iter()
        .map(|lv| sha(&lvm2_lv_bytes(loops, lv)))
        .collect()
}

/// Extents lvm2 counts in use on each loop device.
fn pv_used(loops: &Loops) -> Vec<u64> {
    let json = lvm(
        &loops.list(),
        &[
            "pvs",
            "--reportformat",
            "json",
            "-o",
            "pv_name,pv_pe_alloc_count",
        ],
    );
    let v: Value = serde_json::from_str(&json).unwrap();
    let rows = v["report"][0]["pv"].as_array().unwrap();
    loops
        .devices
        .iter()
        .map(|d| {
            let row = rows.iter().find(|r| r["pv_name"] == d.as_str()).unwrap();
            row["pv_pe_alloc_count"].as_str().unwrap().parse().unwrap()
        })
        .collect()
}

fn lv_names(loops: &Loops) -> String {
    lvm(
        &loops.list(),
        &["lvs", "-a", "--noheadings", "-o", "lv_name,lv_attr", "vg"],
    )
}

/// Starts `tessera pv move ARGS` and kills it with SIGKILL after `after`.
fn move_killed(loops: &Loops, args: &[&str], after: Duration) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(tessera_path())
        .arg("--devices")
        .arg(loops.list())
        .arg("--state-dir")
        .arg(loops.state_dir())
        .args(["pv", "move"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tessera runs");
    std::thread::sleep(after);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the move ended before it was killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    started.elapsed()
}

fn setup() -> Loops {
    let loops = Loops::new(4, 16);
    // Pseudo-random bytes everywhere, so every extent's bytes are its own.
    for (i, img) in loops.images.iter().enumerate() {
        std::fs::write(img, random(16 << 20, 7 + i as u64)).unwrap();
    }
    let list = loops.list();
    let d = &loops.devices;
    lvm(&list, &["pvcreate", "-q", &d[0], &d[1], &d[2], &d[3]]);
    lvm(
        &list,
        &[
            "vgcreate", "-q", "-s", "1M", "vg", &d[0], &d[1], &d[2], &d[3],
        ],
    );
    lvcreate(&loops, &["-L", "3M", "-n", "lin", "vg", &d[0]]);
    lvcreate(&loops, &["-L", "2M", "-n", "gap", "vg", &d[0]]);
    lvm(
        &list,
        &[
            "lvextend",
            "--driverloaded",
            "n",
            "-q",
            "-L",
            "+4M",
            "vg/lin",
            &d[0],
        ],
    );
    lvcreate(
        &loops,
        &[
            "-i", "2", "-I", "64k", "-L", "6M", "-n", "str", "vg", &d[0], &d[1],
        ],
    );
    loops
}

/// The move's report line: (total, copied by this run, moved before it).
fn report(out: &str) -> (u64, u64, u64) {
    let line = out
        .lines()
        .find(|l| l.contains("copied by this run"))
        .unwrap_or_else(|| panic!("no report line in:\n{out}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .filter_map(|w| w.parse().ok())
        .collect();
    // "/dev/loopN: moved T extents ... (C copied by this run, R were moved before it; K ..."
    let n = nums.len();
    (nums[n - 4], nums[n - 3], nums[n - 2])
}

#[test]
fn a_killed_move_resumes_from_its_checkpoint_and_lvm2_agrees() {
    let loops = setup();
    let list = loops.list();
    let state = loops.state_dir();
    let before = sums(&loops);
    assert_eq!(pv_used(&loops), vec![12, 3, 0, 0]);

    // 12 extents of 1 MiB at 2 MiB/s: about 6 s; killed after 2.5 s.
    let ran = move_killed(
        &loops,
        &[&loops.devices[0], &loops.devices[3], "--max-rate", "2048"],
        Duration::from_millis(2500),
    );
    let mid = lv_names(&loops);
    assert!(mid.contains("[pvmove0]"), "lvm2 lists no pvmove0:\n{mid}");
    lvm(&list, &["vgck", "vg"]);
    let backup = loops.dir.path().join("mid.vg");
    lvm(
        &list,
        &["vgcfgbackup", "-q", "-f", backup.to_str().unwrap(), "vg"],
    );
    let text = std::fs::read_to_string(&backup).unwrap();
    assert!(text.contains("\"PVMOVE\", \"LOCKED\""), "{text}");
    let moved: u64 = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("extents_moved = "))
        .map(|v| v.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        moved > 0 && moved < 12,
        "checkpointed {moved} of 12 extents"
    );
    // Both sides of the move are in use while it runs, as lvm2 counts them.
    assert_eq!(pv_used(&loops), vec![12, 3, 0, 12]);
    // tessera reads the VG it left as lvm2 does, pvmove0 and all.
    let out = tessera(
        &list,
        &state,
        &["lv", "list", "-a", "--noheadings", "-o", "lv_name", "vg"],
    );
    assert!(out.contains("[pvmove0]"), "{out}");

    let out = tessera(&list, &state, &["pv", "move"]);
    let (total, copied, resumed) = report(&out);
    assert_eq!((total, resumed), (12, moved), "{out}");
    assert_eq!(copied, total - resumed, "{out}");
    // At 2 MiB/s the first run had copied about 2 extents a second when it was killed.
    let copied_before_kill = (ran.as_secs_f64() * 2.0).floor() as u64;
    println!(
        "killed after {:.2} s (about {copied_before_kill} extents copied), checkpoint at {moved} \
         extents: {} extent(s) copied again on resume; resumed run copied {copied}",
        ran.as_secs_f64(),
        copied_before_kill.saturating_sub(moved)
    );

    lvm(&list, &["vgck", "vg"]);
    assert_eq!(pv_used(&loops), vec![0, 3, 0, 12]);
    let after = lv_names(&loops);
    assert!(!after.contains("pvmove"), "{after}");
    assert_eq!(sums(&loops), before, "LV bytes after the move");
    // tessera lists the VG as lvm2 does: nothing left on the source.
    let out = tessera(
        &list,
        &state,
        &[
            "pv",
            "list",
            "--noheadings",
            "-o",
            "pv_name,pv_pe_alloc_count",
        ],
    );
    let src = out
        .lines()
        .find(|l| l.contains(&loops.devices[0]))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(src.split_whitespace().last(), Some("0"), "{out}");
}

#[test]
fn a_killed_move_aborted_leaves_the_data_whole_and_no_pvmove() {
    let loops = setup();
    let list = loops.list();
    let state = loops.state_dir();
    let before = sums(&loops);
    // A destination in use: refused before anything is written.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&loops.devices[2])
            .unwrap();
        let out = tessera_output(
            &list,
            &state,
            &["pv", "move", &loops.devices[0], &loops.devices[2]],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("in use"), "{err}");
        let lvs = lv_names(&loops);
        assert!(!lvs.contains("pvmove"), "{lvs}");
    }
    // Only the striped LV.
    move_killed(
        &loops,
        &[
            &loops.devices[0],
            &loops.devices[2],
            "-n",
            "vg/str",
            "--max-rate",
            "1024",
        ],
        Duration::from_millis(1800),
    );
    let mid = lv_names(&loops);
    assert!(mid.contains("[pvmove0]"), "{mid}");
    lvm(&list, &["vgck", "vg"]);
    // A second move of another PV is refused while this one is in progress.
    let out = tessera_output(&list, &state, &["pv", "move", &loops.devices[1]]);
    assert!(!out.status.success());
    // Resuming while something holds the source (a daemon serving the LVs, the kernel) is
    // refused naming it.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&loops.devices[0])
            .unwrap();
        let out = tessera_output(&list, &state, &["pv", "move"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "resumed while the source was held");
        assert!(
            err.contains(&loops.devices[0]) && err.contains("in use"),
            "{err}"
        );
    }
    let out = tessera(&list, &state, &["pv", "move", "--abort"]);
    assert!(out.contains("aborted"), "{out}");
    lvm(&list, &["vgck", "vg"]);
    let after = lv_names(&loops);
    assert!(!after.contains("pvmove"), "{after}");
    assert_eq!(sums(&loops), before, "LV bytes after the abort");
    let used = pv_used(&loops);
    assert_eq!(used[0] + used[2], 12, "{used:?}");
    assert_eq!(used[1], 3, "{used:?}");
    // Nothing is left to resume or abort.
    let out = tessera(&list, &state, &["pv", "move"]);
    assert!(out.contains("No move in progress"), "{out}");
    let out = tessera_output(&list, &state, &["pv", "move", "--abort"]);
    assert!(!out.status.success());
}
