//! Snapshot verbs on image files: `lv create --snapshot` writes lvm2's metadata (COW LV,
//! hidden snapshotN LV) and zeroes the store's first chunk; lvm2's tools read it back;
//! refusals name the cause; remove, --force, extend, merge and rename keep the ties.

mod common;

use common::{tessera, tessera_output};

fn fails_with(devices: &str, state: &std::path::Path, args: &[&str], expected: &str) {
    let out = tessera_output(devices, state, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        err.contains(expected),
        "{args:?}: '{err}' lacks '{expected}'"
    );
}

#[test]
fn snapshots_are_made_and_changed_as_lvm2_keeps_them() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let imgs = common::image_files(dir.path(), "pv", 1, 64 << 20);
    let devices = imgs.join(",");
    let state = dir.path().join("state");
    let t = |args: &[&str]| tessera(&devices, &state, args);
    t(&["pv", "create", &imgs[0]]);
    t(&["vg", "create", "vg", &imgs[0], "-s", "1m"]);
    t(&["lv", "create", "vg/origin", "-L", "16m"]);
    t(&["lv", "create", "vg/plain", "-L", "1m"]);
    // Fill where the COW LV will go, to see its first chunk zeroed.
    t(&["lv", "create", "vg/fill", "-L", "8m"]);
    let pe_start = 1 << 20;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&imgs[0])
            .unwrap();
        f.write_all_at(&vec![0xaa; 8 << 20], pe_start + (17 << 20))
            .unwrap();
    }
    t(&["lv", "remove", "vg/fill"]);
    let out = t(&[
        "lv",
        "create",
        "--snapshot",
        "vg/origin",
        "-n",
        "snap",
        "-L",
        "8m",
        "-c",
        "16k",
    ]);
    assert!(out.contains("Logical volume \"snap\" created."), "{out}");
    let img = std::fs::read(&imgs[0]).unwrap();
    let cow = (pe_start + (17 << 20)) as usize;
    assert!(
        img[cow..cow + 16384].iter().all(|&b| b == 0),
        "first chunk zeroed"
    );
    assert_eq!(img[cow + 16384], 0xaa, "only the first chunk");
    t(&["lv", "create", "-s", "vg/origin", "-n", "snap2", "-L", "4m"]);
    // (lvm2 itself reads these in the kernel lab: snapshot_lab.rs.)
    let list = t(&[
        "lv",
        "list",
        "-o",
        "lv_name,origin,lv_attr",
        "--noheadings",
        "vg",
    ]);
    let rows: Vec<String> = list
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        rows,
        [
            "origin owi---s---",
            "plain -wi-------",
            "snap origin swi---s---",
            "snap2 origin swi---s---"
        ],
        "{list}"
    );
    let table = t(&["lv", "table", "vg/origin"]);
    assert!(table.contains("vg-origin-real: 0 32768 linear "), "{table}");
    assert!(
        table.contains("vg-snap: 0 32768 snapshot vg-origin-real vg-snap-cow P 32"),
        "{table}"
    );
    assert!(
        table.contains("vg-snap2: 0 32768 snapshot vg-origin-real vg-snap2-cow P 8"),
        "{table}"
    );
    assert!(
        table
            .trim_end()
            .ends_with("vg-origin: 0 32768 snapshot-origin vg-origin-real"),
        "{table}"
    );
    // A snapshot's table is its origin's whole stack, as both are activated together.
    assert_eq!(t(&["lv", "table", "vg/snap"]), table);
    // Refusals.
    let s = |args: &[&str], e: &str| fails_with(&devices, &state, args, e);
    s(
        &["lv", "create", "-s", "vg/nope", "-n", "x", "-L", "4m"],
        "nope",
    );
    s(
        &["lv", "create", "-s", "vg/snap", "-n", "x", "-L", "4m"],
        "snapshot itself",
    );
    s(
        &[
            "lv",
            "create",
            "-s",
            "vg/origin",
            "-n",
            "x",
            "-L",
            "1m",
            "-c",
            "512k",
        ],
        "at least 3 chunks",
    );
    s(
        &[
            "lv",
            "create",
            "-s",
            "vg/origin",
            "-n",
            "x",
            "-L",
            "4m",
            "-c",
            "6k",
        ],
        "power of two",
    );
    s(
        &[
            "lv",
            "create",
            "-s",
            "vg/origin",
            "-n",
            "x",
            "-L",
            "4m",
            "-c",
            "1m",
        ],
        "power of two",
    );
    s(&["lv", "remove", "vg/origin"], "use --force");
    s(&["lv", "remove", "vg/snapshot0"], "remove 'snap' instead");
    s(
        &["lv", "extend", "vg/origin", "-L", "+1m"],
        "origin of snapshot",
    );
    // A COW LV grows like any LV.
    t(&["lv", "extend", "vg/snap", "-L", "+2m"]);
    // Rename keeps the ties.
    t(&["lv", "rename", "vg/snap2", "keep"]);
    let lvs = t(&[
        "lv",
        "list",
        "--noheadings",
        "-o",
        "lv_name,origin,lv_size",
        "--units",
        "m",
        "vg",
    ]);
    assert!(lvs.contains("keep") && lvs.contains("10.00m"), "{lvs}");
    // Merge: lvm2's MERGING state.
    let out = t(&["lv", "merge", "vg/keep"]);
    assert!(
        out.contains("will occur on next activation of vg/origin"),
        "{out}"
    );
    s(&["lv", "merge", "vg/snap"], "already merging");
    let lvs = t(&[
        "lv",
        "list",
        "-a",
        "--noheadings",
        "-o",
        "lv_name,lv_attr",
        "vg",
    ]);
    assert!(lvs.contains("Owi"), "{lvs}");
    assert!(lvs.contains("[keep]") && lvs.contains("Swi"), "{lvs}");
    // Removing a snapshot takes its snapshotN; --force takes an origin's.
    t(&["lv", "remove", "vg/snap"]);
    let out = t(&["lv", "remove", "--force", "vg/origin"]);
    assert!(out.contains("\"keep\" successfully removed"), "{out}");
    let lvs = t(&["lv", "list", "-a", "--noheadings", "-o", "lv_name", "vg"]);
    assert_eq!(lvs.trim(), "plain", "{lvs}");
}
