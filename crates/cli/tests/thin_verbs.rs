//! Thin verbs on image files: `lv create --type thin-pool`, `--thin`, thin snapshots (and
//! a snapshot of a snapshot), removal and growth write lvm2's metadata (pool, `_tmeta`,
//! `_tdata`, `lvolN_pmspare`, transaction ids, ACTIVATION_SKIP) and the pool's metadata in
//! step; `thin_check` passes on the `_tmeta` extents read out of the image and `thin_dump`
//! shows the devices and transaction id lvm2 expects; bad input is refused naming the cause;
//! a change cut short between its two VG commits is finished by the next one.

mod common;

use std::path::Path;

use common::{check_and_dump, lv_bytes, report_rows, tessera, tessera_output};

fn fails_with(devices: &str, state: &Path, args: &[&str], expected: &str) {
    let out = tessera_output(devices, state, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        err.contains(expected),
        "{args:?}: '{err}' lacks '{expected}'"
    );
}

/// The dev_ids `thin_dump` lists.
fn dumped_devices(xml: &str) -> Vec<u32> {
    xml.lines()
        .filter_map(|l| l.trim().strip_prefix("<device dev_id=\""))
        .filter_map(|l| l.split('"').next()?.parse().ok())
        .collect()
}

fn attr(rows: &[serde_json::Value], lv: &str, key: &str) -> String {
    rows.iter()
        .find(|r| r["lv_name"] == lv)
        .unwrap_or_else(|| panic!("no {lv} in {rows:?}"))[key]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn thin_pools_thin_lvs_and_snapshots_are_made_as_lvm2_makes_them() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let imgs = common::image_files(d, "pv", 2, 64 << 20);
    let devices = imgs.join(",");
    let state = d.join("state");
    let t = |args: &[&str]| tessera(&devices, &state, args);
    t(&["pv", "create", &imgs[0], &imgs[1]]);
    t(&["vg", "create", "vg", &imgs[0], &imgs[1], "-s", "1m"]);
    let out = t(&[
        "lv",
        "create",
        "--type",
        "thin-pool",
        "-L",
        "16m",
        "-c",
        "64k",
        "vg/pool",
    ]);
    assert!(
        out.contains("chunk size 64.00 KiB can address at most <15.88 TiB")
            && out.contains("Logical volume \"pool\" created."),
        "{out}"
    );
    // A fresh pool: transaction 0, no device, thin_check clean.
    let xml = check_and_dump(&devices, &state, d, "vg/pool");
    assert!(xml.contains("transaction=\"0\""), "{xml}");
    assert!(
        xml.contains("data_block_size=\"128\" nr_data_blocks=\"256\""),
        "{xml}"
    );
    assert!(dumped_devices(&xml).is_empty(), "{xml}");

    // Thin LVs, overprovisioned as lvm2 allows (and warns).
    let out = tessera_output(
        &devices,
        &state,
        &[
            "lv", "create", "--thin", "-V", "32m", "-n", "thin1", "vg/pool",
        ],
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARNING: Sum of all thin volume sizes (32.00 MiB) exceeds the size of thin pool vg/pool (16.00 MiB)."),
        "{err}"
    );
    t(&["lv", "create", "--snapshot", "vg/thin1", "-n", "snap1"]);
    t(&["lv", "create", "-s", "vg/snap1", "-n", "snap2"]);
    t(&[
        "lv",
        "create",
        "--type",
        "thin-pool",
        "-L",
        "12m",
        "-c",
        "256k",
        "--zero",
        "n",
        "--discards",
        "nopassdown",
        "vg/pool2",
    ]);
    t(&[
        "lv",
        "create",
        "-T",
        "-V",
        "8m",
        "-n",
        "thin2",
        "--thinpool",
        "vg/pool2",
    ]);

    // As lvs lists them (inactive): attrs, pools, origins, transaction and device ids.
    let rows = report_rows(&t(&[
        "lv", "list", "-a", "--json", "-o",
        "lv_name,lv_attr,pool_lv,origin,data_percent,metadata_percent,transaction_id,thin_id,lv_size",
        "--units", "b", "--nosuffix",
    ]));
    let expected = [
        ("pool", "twi---tz--", "", "", "3", ""),
        ("pool2", "twi---t---", "", "", "1", ""),
        ("thin1", "Vwi---tz--", "pool", "", "0", "1"),
        ("snap1", "Vwi---tz-k", "pool", "thin1", "1", "2"),
        ("snap2", "Vwi---tz-k", "pool", "snap1", "2", "3"),
        ("thin2", "Vwi---t---", "pool2", "", "0", "1"),
        ("[lvol0_pmspare]", "ewi-------", "", "", "", ""),
        ("[pool_tmeta]", "ewi-------", "", "", "", ""),
        ("[pool_tdata]", "Twi-------", "", "", "", ""),
        ("[pool2_tmeta]", "ewi-------", "", "", "", ""),
        ("[pool2_tdata]", "Twi-------", "", "", "", ""),
    ];
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for (lv, a, pool, origin, tid, id) in expected {
        assert_eq!(attr(&rows, lv, "lv_attr"), a, "{lv}");
        assert_eq!(attr(&rows, lv, "pool_lv"), pool, "{lv}");
        assert_eq!(attr(&rows, lv, "origin"), origin, "{lv}");
        assert_eq!(attr(&rows, lv, "transaction_id"), tid, "{lv}");
        assert_eq!(attr(&rows, lv, "thin_id"), id, "{lv}");
    }
    assert_eq!(attr(&rows, "pool", "data_percent"), "0.00");
    assert_eq!(attr(&rows, "thin1", "data_percent"), "0.00");
    assert!(!attr(&rows, "pool", "metadata_percent").is_empty());
    assert_eq!(
        attr(&rows, "[pool_tmeta]", "lv_size"),
        (2 << 20).to_string()
    );
    assert_eq!(
        attr(&rows, "[lvol0_pmspare]", "lv_size"),
        (2 << 20).to_string()
    );
    // The hidden LVs only with -a.
    let shown = report_rows(&t(&["lv", "list", "--json", "-o", "lv_name"]));
    assert_eq!(shown.len(), 6, "{shown:?}");

    // The VG as written: no message left, lvm2's keys.
    let backup = d.join("backup.txt");
    t(&["vg", "backup", "vg", "-f", backup.to_str().unwrap()]);
    let text = std::fs::read_to_string(&backup).unwrap();
    assert!(!text.contains("message1"), "{text}");
    for key in [
        "type = \"thin-pool\"",
        "metadata = \"pool_tmeta\"",
        "pool = \"pool_tdata\"",
        "transaction_id = 3",
        "chunk_size = 128",
        "discards = \"passdown\"",
        "zero_new_blocks = 1",
        "discards = \"nopassdown\"",
        "chunk_size = 512",
        "flags = [\"ACTIVATION_SKIP\"]",
        "origin = \"snap1\"",
    ] {
        assert!(text.contains(key), "{key} missing:\n{text}");
    }
    // The pool's metadata: what lvm2 expects from these transactions.
    let xml = check_and_dump(&devices, &state, d, "vg/pool");
    assert!(xml.contains("transaction=\"3\""), "{xml}");
    assert_eq!(dumped_devices(&xml), [1, 2, 3], "{xml}");
    let xml = check_and_dump(&devices, &state, d, "vg/pool2");
    assert!(
        xml.contains("transaction=\"1\"") && xml.contains("data_block_size=\"512\""),
        "{xml}"
    );
    assert_eq!(dumped_devices(&xml), [1]);
    // tessera's own check agrees.
    let out = t(&["thin", "check", "vg/pool"]);
    assert!(
        out.contains("3 thin device(s)") && out.contains("no faults found"),
        "{out}"
    );

    // Removing a thin snapshot deletes its device; its snapshot keeps its blocks.
    t(&["lv", "remove", "vg/snap1"]);
    let xml = check_and_dump(&devices, &state, d, "vg/pool");
    assert!(xml.contains("transaction=\"4\""), "{xml}");
    assert_eq!(dumped_devices(&xml), [1, 3]);
    let rows = report_rows(&t(&[
        "lv",
        "list",
        "--json",
        "-o",
        "lv_name,origin,transaction_id",
    ]));
    assert_eq!(attr(&rows, "snap2", "origin"), "");
    assert_eq!(attr(&rows, "pool", "transaction_id"), "4");
    // A new thin LV takes the next device id after the highest in use.
    t(&[
        "lv", "create", "--thin", "-V", "4m", "-n", "thin3", "vg/pool",
    ]);
    let rows = report_rows(&t(&["lv", "list", "--json", "-o", "lv_name,thin_id"]));
    assert_eq!(attr(&rows, "thin3", "thin_id"), "4");
    assert_eq!(
        dumped_devices(&check_and_dump(&devices, &state, d, "vg/pool")),
        [1, 3, 4]
    );

    // Growth: data (the space map follows), then metadata (the spare follows).
    t(&["lv", "extend", "vg/pool", "-L", "+8m"]);
    let xml = check_and_dump(&devices, &state, d, "vg/pool");
    assert!(xml.contains("nr_data_blocks=\"384\""), "{xml}");
    t(&["lv", "extend", "vg/pool", "--poolmetadatasize", "+2m"]);
    let rows = report_rows(&t(&[
        "lv",
        "list",
        "-a",
        "--json",
        "-o",
        "lv_name,lv_size",
        "--units",
        "b",
        "--nosuffix",
    ]));
    assert_eq!(attr(&rows, "pool", "lv_size"), (24 << 20).to_string());
    assert_eq!(
        attr(&rows, "[pool_tdata]", "lv_size"),
        (24 << 20).to_string()
    );
    assert_eq!(
        attr(&rows, "[pool_tmeta]", "lv_size"),
        (4 << 20).to_string()
    );
    assert_eq!(
        attr(&rows, "[lvol0_pmspare]", "lv_size"),
        (4 << 20).to_string()
    );
    let meta = lv_bytes(&devices, &state, "vg/pool_tmeta");
    assert_eq!(meta.len(), 4 << 20);
    check_and_dump(&devices, &state, d, "vg/pool");

    // A pool with thin LVs goes only with --force, its hidden LVs with it; the spare goes
    // with the last pool.
    fails_with(
        &devices,
        &state,
        &["lv", "remove", "vg/pool"],
        "thin1, snap2, thin3",
    );
    fails_with(&devices, &state, &["lv", "remove", "vg/pool"], "--force");
    fails_with(
        &devices,
        &state,
        &["lv", "remove", "vg/pool_tmeta"],
        "remove the pool instead",
    );
    let out = t(&["lv", "remove", "vg/pool", "--force"]);
    assert!(
        out.contains("\"thin1\"") && out.contains("\"pool\""),
        "{out}"
    );
    assert!(!out.contains("_tmeta"), "{out}");
    let rows = report_rows(&t(&["lv", "list", "-a", "--json", "-o", "lv_name"]));
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["lv_name"].as_str().unwrap())
        .collect();
    // (report_rows sorts them.)
    assert_eq!(
        names,
        [
            "[lvol0_pmspare]",
            "[pool2_tdata]",
            "[pool2_tmeta]",
            "pool2",
            "thin2"
        ]
    );
    t(&["lv", "remove", "vg/thin2"]);
    t(&["lv", "remove", "vg/pool2"]);
    let rows = report_rows(&t(&["lv", "list", "-a", "--json", "-o", "lv_name"]));
    assert!(rows.is_empty(), "{rows:?}");
    let vgs = report_rows(&t(&["vg", "list", "--json", "-o", "vg_free_count"]));
    assert_eq!(vgs[0]["vg_free_count"], "126");
}

#[test]
fn bad_thin_requests_are_refused_naming_the_cause() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let imgs = common::image_files(d, "pv", 1, 64 << 20);
    let devices = imgs.join(",");
    let state = d.join("state");
    let t = |args: &[&str]| tessera(&devices, &state, args);
    let no = |args: &[&str], why: &str| fails_with(&devices, &state, args, why);
    t(&["pv", "create", &imgs[0]]);
    t(&["vg", "create", "vg", &imgs[0], "-s", "1m"]);
    t(&["lv", "create", "vg/plain", "-L", "4m"]);
    no(
        &[
            "lv",
            "create",
            "--type",
            "thin-pool",
            "-L",
            "8m",
            "-c",
            "100k",
            "vg/p",
        ],
        "multiple of 64 KiB",
    );
    no(
        &[
            "lv",
            "create",
            "--type",
            "thin-pool",
            "-L",
            "1m",
            "-c",
            "2m",
            "vg/p",
        ],
        "cannot be smaller than its chunk",
    );
    no(
        &["lv", "create", "--type", "thin-pool", "-L", "1g", "vg/p"],
        "insufficient free space",
    );
    no(
        &[
            "lv",
            "create",
            "--type",
            "thin-pool",
            "-L",
            "8m",
            "--zero",
            "maybe",
            "vg/p",
        ],
        "expected y or n",
    );
    no(
        &[
            "lv",
            "create",
            "--type",
            "thin-pool",
            "-L",
            "8m",
            "--discards",
            "all",
            "vg/p",
        ],
        "ignore, nopassdown or passdown",
    );
    no(
        &[
            "lv",
            "create",
            "--type",
            "thin-pool",
            "-L",
            "8m",
            "vg/plain",
        ],
        "already exists",
    );
    no(
        &[
            "lv",
            "create",
            "--type",
            "thin-pool",
            "-L",
            "8m",
            "vg/x_tdata",
        ],
        "reserved",
    );
    no(
        &["lv", "create", "-L", "8m", "vg/q", "--zero", "y"],
        "apply to thin pools",
    );
    t(&["lv", "create", "--type", "thin-pool", "-L", "8m", "vg/pool"]);
    no(
        &["lv", "create", "--thin", "-V", "8m", "-n", "t", "vg/plain"],
        "is not a thin pool",
    );
    no(
        &["lv", "create", "--thin", "-V", "8m", "-n", "t", "vg/nopool"],
        "not found",
    );
    no(&["lv", "create", "--thin", "-n", "t", "vg/pool"], "-V SIZE");
    no(
        &["lv", "create", "--thin", "-V", "8m", "vg/pool"],
        "-n NAME",
    );
    no(
        &[
            "lv", "create", "--thin", "-V", "8m", "-n", "plain", "vg/pool",
        ],
        "already exists",
    );
    no(
        &[
            "lv",
            "create",
            "--thin",
            "-V",
            "8m",
            "-L",
            "8m",
            "-n",
            "t",
            "--thinpool",
            "vg/pool",
        ],
        "-V, not -L",
    );
    no(
        &["lv", "create", "--snapshot", "vg/plain", "-n", "s"],
        "not a thin LV",
    );
    t(&["lv", "create", "--thin", "-V", "8m", "-n", "t", "vg/pool"]);
    no(
        &["lv", "create", "--snapshot", "vg/t", "-n", "t"],
        "already exists",
    );
    no(&["lv", "extend", "vg/pool", "-L", "-1m"], "cannot shrink");
    no(&["lv", "extend", "vg/pool", "-L", "4m"], "must be larger");
    no(&["lv", "remove", "vg/lvol0_pmspare"], "spare");
    no(&["lv", "reduce", "vg/t", "-L", "4m", "--force"], "thin");
    // Nothing of the refused requests was written.
    let rows = report_rows(&t(&["lv", "list", "-a", "--json", "-o", "lv_name"]));
    assert_eq!(rows.len(), 6, "{rows:?}");
}

/// A VG as the first commit of `lv create --thin -V 8m -n b vg/pool` leaves it: the pool
/// one transaction ahead in the VG with the creation queued, its metadata not yet changed.
/// Returns the devices and the state folder.
fn cut_thin_creation(d: &Path) -> (String, std::path::PathBuf) {
    let imgs = common::image_files(d, "pv", 1, 64 << 20);
    let devices = imgs.join(",");
    let state = d.join("state");
    let t = |args: &[&str]| tessera(&devices, &state, args);
    t(&["pv", "create", &imgs[0]]);
    t(&["vg", "create", "vg", &imgs[0], "-s", "1m"]);
    t(&["lv", "create", "--type", "thin-pool", "-L", "8m", "vg/pool"]);
    t(&["lv", "create", "--thin", "-V", "8m", "-n", "a", "vg/pool"]);
    // The VG as its first commit of `lv create --thin ... -n b` leaves it: the pool one
    // transaction ahead with the creation queued, the pool's metadata not yet changed.
    let backup = d.join("b.txt");
    t(&["vg", "backup", "vg", "-f", backup.to_str().unwrap()]);
    let text = std::fs::read_to_string(&backup).unwrap();
    let a_start = text.find("\t\ta {").expect("LV a");
    let a_end = a_start + text[a_start..].find("\n\t\t}\n").unwrap() + 5;
    let b = text[a_start..a_end]
        .replacen("\t\ta {", "\t\tb {", 1)
        .replacen("device_id = 1", "device_id = 2", 1)
        .replacen("transaction_id = 0", "transaction_id = 1", 1);
    let b = {
        // A fresh id for b.
        let id_at = b.find("id = \"").unwrap() + 6;
        let mut b = b.clone();
        b.replace_range(id_at..id_at + 6, "bbbbbb");
        b
    };
    let mut cut = text.clone();
    cut.insert_str(a_end, &b);
    let cut = cut
        .replacen(
            "transaction_id = 1\n\t\t\t\tchunk_size",
            "transaction_id = 2\n\t\t\t\tchunk_size",
            1,
        )
        .replacen(
            "zero_new_blocks = 1\n",
            "zero_new_blocks = 1\n\t\t\t\tmessage1 {\n\t\t\t\t\tcreate = \"b\"\n\t\t\t\t}\n",
            1,
        );
    assert!(cut.contains("create = \"b\""), "{cut}");
    std::fs::write(&backup, &cut).unwrap();
    t(&["vg", "restore", "vg", "-f", backup.to_str().unwrap()]);
    (devices, state)
}

#[test]
fn a_change_cut_between_its_commits_is_finished_by_the_next() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let (devices, state) = cut_thin_creation(d);
    let t = |args: &[&str]| tessera(&devices, &state, args);
    let backup = d.join("b.txt");
    let xml = check_and_dump(&devices, &state, d, "vg/pool");
    assert_eq!(dumped_devices(&xml), [1], "the pool has not seen b yet");
    // The next change replays the queued creation first, as lvm2's next activation would.
    t(&["lv", "create", "--thin", "-V", "8m", "-n", "c", "vg/pool"]);
    let xml = check_and_dump(&devices, &state, d, "vg/pool");
    assert_eq!(dumped_devices(&xml), [1, 2, 3], "{xml}");
    assert!(xml.contains("transaction=\"3\""), "{xml}");
    t(&["vg", "backup", "vg", "-f", backup.to_str().unwrap()]);
    let text = std::fs::read_to_string(&backup).unwrap();
    assert!(!text.contains("message1"), "{text}");
    let out = t(&["thin", "check", "vg/pool"]);
    assert!(out.contains("no faults found"), "{out}");
}

#[test]
fn a_daemon_finishes_a_change_cut_short_before_it_serves_the_pool() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let (devices, state) = cut_thin_creation(d);
    let server = common::serve(&devices, &state, &[]);
    let list = common::run_ok(std::process::Command::new("nbdinfo").args(["--list", &server.addr]));
    assert!(list.contains("vg/a") && list.contains("vg/b"), "{list}");
    server.stop();
    let xml = check_and_dump(&devices, &state, d, "vg/pool");
    assert_eq!(dumped_devices(&xml), [1, 2], "{xml}");
    assert!(xml.contains("transaction=\"2\""), "{xml}");
}

#[test]
fn thin_lvs_grow_and_pools_and_thin_lvs_are_renamed_with_their_ties() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let imgs = common::image_files(d, "pv", 1, 64 << 20);
    let devices = imgs.join(",");
    let state = d.join("state");
    let t = |args: &[&str]| tessera(&devices, &state, args);
    t(&["pv", "create", &imgs[0]]);
    t(&["vg", "create", "vg", &imgs[0], "-s", "1m"]);
    t(&["lv", "create", "--type", "thin-pool", "-L", "8m", "vg/pool"]);
    t(&["lv", "create", "--thin", "-V", "8m", "-n", "a", "vg/pool"]);
    t(&["lv", "create", "--snapshot", "vg/a", "-n", "s"]);
    t(&["lv", "extend", "vg/a", "-L", "+4m"]);
    t(&["lv", "rename", "vg/a", "b"]);
    t(&["lv", "rename", "vg/pool", "tank"]);
    fails_with(
        &devices,
        &state,
        &["lv", "rename", "vg/tank_tmeta", "x"],
        "rename its pool",
    );
    let rows = report_rows(&t(&[
        "lv",
        "list",
        "-a",
        "--json",
        "-o",
        "lv_name,pool_lv,origin,lv_size",
        "--units",
        "m",
        "--nosuffix",
    ]));
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["lv_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "[lvol0_pmspare]",
            "[tank_tdata]",
            "[tank_tmeta]",
            "b",
            "s",
            "tank"
        ]
    );
    assert_eq!(attr(&rows, "b", "lv_size"), "12.00");
    assert_eq!(attr(&rows, "b", "pool_lv"), "tank");
    assert_eq!(attr(&rows, "s", "origin"), "b");
    // The pool's metadata is untouched by names: same devices, same transaction.
    let xml = check_and_dump(&devices, &state, d, "vg/tank");
    assert_eq!(dumped_devices(&xml), [1, 2]);
    assert!(xml.contains("transaction=\"2\""), "{xml}");
    t(&["lv", "create", "--thin", "-V", "4m", "-n", "c", "vg/tank"]);
    assert_eq!(
        dumped_devices(&check_and_dump(&devices, &state, d, "vg/tank")),
        [1, 2, 3]
    );
}
