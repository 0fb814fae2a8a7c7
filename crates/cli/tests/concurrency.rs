//! Concurrent changes to one VG from many processes: the VG lock serialises them, so none
//! is lost and no two LVs share an extent.

mod common;

use std::process::Command;

#[test]
fn concurrent_lv_creates_all_land() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = dir.path().join("state");
    let imgs: Vec<String> = (0..2)
        .map(|i| {
            let p = dir.path().join(format!("c{i}.img"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(128 << 20)
                .unwrap();
            p.to_string_lossy().into_owned()
        })
        .collect();
    let devices = imgs.join(",");
    common::tessera(
        &devices,
        &state,
        &["vg", "create", "conc", &imgs[0], &imgs[1]],
    );
    let (workers, each) = (6, 4);
    let children: Vec<_> = (0..workers)
        .map(|w| {
            let script = (0..each)
                .map(|i| {
                    format!(
                        "{} --devices {devices} --state-dir {} lv create conc/w{w}_{i} -L 4M || exit 1",
                        common::tessera_path(),
                        state.display()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            Command::new("sh").args(["-c", &script]).spawn().unwrap()
        })
        .collect();
    for mut child in children {
        assert!(
            child.wait().unwrap().success(),
            "a worker's lv create failed"
        );
    }
    let rows = common::report_rows(&common::tessera(
        &devices,
        &state,
        &[
            "lv",
            "list",
            "--segments",
            "-o",
            "lv_name,seg_pe_ranges",
            "--json",
        ],
    ));
    assert_eq!(rows.len(), workers * each, "{rows:?}");
    let mut ranges: Vec<&str> = rows
        .iter()
        .map(|r| r["seg_pe_ranges"].as_str().unwrap())
        .collect();
    ranges.sort();
    ranges.dedup();
    assert_eq!(ranges.len(), workers * each, "two LVs share extents");
    let vgs = common::report_rows(&common::tessera(
        &devices,
        &state,
        &["vg", "list", "-o", "vg_seqno", "--json"],
    ));
    assert_eq!(vgs[0]["vg_seqno"], format!("{}", 1 + workers * each));
}
