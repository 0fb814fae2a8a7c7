//! Rebuilds onto spares of IMSM and DDF containers md runs in the kernel, with tessera's
//! monitor doing mdmon's part, against the real mdadm; one kernel lab boot per test.
//!
//! IMSM (external_rebuild_imsm.sh): mdadm makes a container with a raid5 volume over three
//! disks and a spare; tessera assembles it in md, a member fails (`mdadm --fail`), the
//! monitor gives md the spare and records the rebuild; at the end `mdadm --examine` shows
//! one normal map, mdadm assembles the volume with the same bytes and md's check finds no
//! mismatch. Then the failed disk comes back as a new spare, as `mdadm --add` adds it. (A
//! monitor killed mid-rebuild and the volume re-assembled by tessera is not covered yet.)
//!
//! DDF (external_rebuild_ddf.sh): mdadm makes a container with a raid5 and a raid1 and a
//! global spare; tessera runs both writable (the monitor recording them not consistent,
//! then consistent), a member of the raid5 fails and the monitor rebuilds it onto the
//! spare; `mdadm --examine` shows the spare Online and the member Failed, mdadm assembles
//! both with the same bytes and md's check finds no mismatch.
//!
//! Every wait is for a state to be reached (bounded generously), never a fixed window.

mod common;

const IMSM_SCRIPT: &str = include_str!("external_rebuild_imsm.sh");
const DDF_SCRIPT: &str = include_str!("external_rebuild_ddf.sh");

fn run_lab(script: &str) -> String {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    // A copy: the build may replace the binary while the lab runs it.
    let tessera = d.join("tessera");
    std::fs::copy(common::tessera_path(), &tessera).unwrap();
    let script = script.replace("__TESSERA__", &tessera.display().to_string());
    let started = std::time::Instant::now();
    let out = common::lab_script(d, &script, 1500);
    eprintln!("the lab took {:?}:\n{out}", started.elapsed());
    assert!(out.contains("lab-done"), "the lab did not finish:\n{out}");
    let timeouts: Vec<&str> = out.lines().filter(|l| l.starts_with("timeout|")).collect();
    assert!(timeouts.is_empty(), "waited in vain: {timeouts:?}\n{out}");
    out
}

/// The lines of `out` starting with `prefix`, the prefix cut off.
fn lines<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(str::trim)
        .collect()
}

fn has(out: &str, prefix: &str, text: &str) -> bool {
    lines(out, prefix).contains(&text)
}

#[test]
fn imsm_spare_rebuilt_by_the_monitor_as_mdmon_records_it() {
    let out = run_lab(IMSM_SCRIPT);
    // One: the rebuild onto the spare, recorded as mdmon records it.
    let before = common::lab_line(&out, "one|sum-before|");
    assert_eq!(before.len(), 64, "{out}");
    assert_eq!(common::lab_line(&out, "one|sum-after|"), before, "{out}");
    assert_eq!(common::lab_line(&out, "one-mdadm|sum|"), before, "{out}");
    assert_eq!(common::lab_line(&out, "one-mdadm|mismatch|"), "0", "{out}");
    assert_eq!(common::lab_line(&out, "one-mdadm|degraded|"), "0", "{out}");
    let log = lines(&out, "monitor-one|").join("\n");
    assert!(
        log.contains("/dev/loop3 (dev-loop3) takes slot 1: rebuilding")
            && log.contains("rebuild of slot 1 onto /dev/loop3 done"),
        "{out}"
    );
    assert!(
        log.contains(": checkpoint"),
        "no checkpoint recorded:\n{out}"
    );
    for want in [
        "Map State : normal",
        "Migrate State : idle",
        "Slots : [UUU]",
        "Failed disk : none",
        "Dirty State : clean",
        "Disk02 Serial : /dev/loop3",
    ] {
        assert!(has(&out, "one|examine|", want), "no {want:?}:\n{out}");
    }
    assert!(
        !lines(&out, "one|examine|")
            .iter()
            .any(|l| l.contains("/dev/loop1")),
        "the failed disk is still in the table:\n{out}"
    );
}

#[test]
fn ddf_runs_writable_and_its_global_spare_is_rebuilt_by_the_monitor() {
    let out = run_lab(DDF_SCRIPT);
    for v in ["dvol5", "dvol1"] {
        assert!(
            common::lab_line(&out, &format!("run|{v}|version|")).starts_with("external:/mdN/"),
            "{v} is not run writable:\n{out}"
        );
        assert_eq!(
            common::lab_line(&out, &format!("run|{v}|write|")),
            "0",
            "{out}"
        );
        let before = common::lab_line(&out, &format!("before|{v}|sum|"));
        assert_eq!(before.len(), 64, "{out}");
        assert_eq!(
            common::lab_line(&out, &format!("after|{v}|sum|")),
            before,
            "{v}:\n{out}"
        );
        assert_eq!(
            common::lab_line(&out, &format!("mdadm|{v}|sum|")),
            before,
            "{v}:\n{out}"
        );
        assert_eq!(
            common::lab_line(&out, &format!("mdadm|{v}|mismatch|")),
            "0",
            "{out}"
        );
    }
    assert_eq!(
        common::lab_line(&out, "mdadm|dvol5|degraded|"),
        "0",
        "{out}"
    );
    // Written: not consistent; idle: consistent again.
    assert!(
        lines(&out, "written|examine|")
            .iter()
            .any(|l| l.contains("Not Consistent")),
        "{out}"
    );
    let idle = lines(&out, "idle|examine|");
    assert!(
        idle.iter().filter(|l| l.contains("Optimal, Consistent")).count() == 2
            && !idle.iter().any(|l| l.contains("Not Consistent")),
        "{out}"
    );
    let log = lines(&out, "monitor|").join("\n");
    let spare = common::lab_line(&out, "fail|spare|");
    let failed = common::lab_line(&out, "fail|member|");
    assert!(
        log.contains(&format!("/dev/{spare} (dev-{spare}) takes slot")) && log.contains("done"),
        "{out}"
    );
    // mdadm numbers the physical disks in the order they joined: loop0 first.
    let stopped = lines(&out, "stopped|examine|");
    let row = |disk: &str| -> String {
        let n = disk.trim_start_matches("loop");
        stopped
            .iter()
            .find(|l| l.split_whitespace().next() == Some(n))
            .unwrap_or_else(|| panic!("no physical disk {n} in mdadm's examine:\n{out}"))
            .to_string()
    };
    assert!(
        row(failed).contains("Failed"),
        "{failed} not recorded Failed:\n{out}"
    );
    let spare_row = row(spare);
    assert!(
        spare_row.contains("active/Online") && !spare_row.contains("Rebuilding"),
        "{spare} not recorded an active member Online:\n{out}"
    );
}
