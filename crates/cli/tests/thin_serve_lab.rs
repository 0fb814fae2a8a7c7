//! Thin pools between lvm2 in the kernel lab and `tessera serve`, byte-exact (sha256):
//! - lvm2 makes two pools (64 KiB and 256 KiB chunks): a thin volume written full (512
//!   mappings: a btree of more than one level), snapshots of it and a snapshot of that
//!   snapshot, each written after it was taken, and a sparse 1 GiB volume written in three
//!   far-apart places. tessera serves every one of them (the activation-skip snapshots too)
//!   with the kernel's bytes and lists Data% and Meta% as lvs does.
//! - tessera makes a pool, a thin volume and a snapshot and writes both through `serve`;
//!   lvm2 activates them (running thin_check on the pool's metadata as it does), reads the
//!   same bytes (and the pool's errorwhenfull tessera set), makes a thin volume of its own in tessera's pool and removes tessera's
//!   snapshot; tessera then serves lvm2's volume with the bytes lvm2 wrote, and makes one
//!   more thin volume in step with lvm2's transaction ids.

mod common;

use std::time::Instant;

use common::{export_sum, images_in, lab_line as line, patch, random, serve, sha, tessera};

/// What the scripts share beyond the common prelude.
const PRELUDE: &str = r#"w() { dd if=/dev/urandom of="/dev/mapper/vg-$1" bs="$2" count="$3" seek="$4" oflag=direct status=none; }
"#;

const LVM2_MAKES: &str = r#"
attach p1
pvcreate -q "${devs[@]}"
vgcreate -q -s 1M vg "${devs[@]}"
lvcreate -q --type thin-pool -L 64M -n pool vg
lvcreate -q -V 32M -T vg/pool -n full
lvcreate -q --type thin-pool -L 64M -c 256k -n pool2 vg
lvcreate -q -V 1G -T vg/pool2 -n sparse
dmsetup mknodes
w full 1M 32 0
lvcreate -q -s vg/full -n s1
w full 4k 10 3
w full 64k 3 100
lvchange -q -ay -K vg/s1
dmsetup mknodes
lvcreate -q -s vg/s1 -n s2
w s1 4k 10 300
lvchange -q -ay -K vg/s2
dmsetup mknodes
w s2 512 7 20001
w sparse 4k 1 0
w sparse 1M 2 500
w sparse 64k 5 16000
# Activated afresh: the kernel counts the metadata blocks of the last commit only then
# (a running pool's count includes its open transaction's shadow copies).
vgchange -q -an vg
vgchange -q -ay -K vg
dmsetup mknodes
for lv in full s1 s2 sparse; do echo "sum $lv $(sum $lv)"; done
echo "lvs $(lvs -a --reportformat json -o lv_name,lv_attr,pool_lv,origin,data_percent,metadata_percent vg | json)"
vgchange -q -an vg
detach
echo lab-part1-done
"#;

#[test]
fn lvm2_thin_pools_are_served_by_tessera() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("p1")).unwrap();
    common::image_files(&d.join("p1"), "pv", 2, 160 << 20);
    let t = Instant::now();
    let text = common::lab_script(
        d,
        &format!("{}{PRELUDE}{LVM2_MAKES}", common::LVM_LAB_PRELUDE),
        300,
    );
    eprintln!("lab, part 1: {:?}", t.elapsed());
    assert!(text.contains("lab-part1-done"), "lab:\n{text}");
    let lvs = line(&text, "lvs ");
    eprintln!("lvs: {lvs}");

    let devs = images_in(&d.join("p1"));
    let state = d.join("state1");
    let server = serve(&devs, &state, &[]);
    for lv in ["full", "s1", "s2", "sparse"] {
        assert_eq!(
            export_sum(&server.addr, &format!("vg/{lv}"), d),
            line(&text, &format!("sum {lv} ")),
            "vg/{lv} served by tessera reads as the kernel's /dev/mapper/vg-{lv}"
        );
    }
    server.stop();

    let list = tessera(
        &devs,
        &state,
        &[
            "lv",
            "list",
            "-a",
            "-o",
            "lv_name,lv_attr,pool_lv,origin,data_percent,metadata_percent",
            "--json",
        ],
    );
    let mine = common::report_rows(&list);
    let theirs = common::report_rows(lvs);
    for lv in ["pool", "pool2", "full", "s1", "s2", "sparse"] {
        let find = |rows: &[serde_json::Value]| {
            rows.iter()
                .find(|r| r["lv_name"] == lv)
                .unwrap_or_else(|| panic!("no {lv} in {list}\n{lvs}"))
                .clone()
        };
        let (m, t) = (find(&mine), find(&theirs));
        // lvs ran with the pools active, tessera's list without: the state and open
        // columns of the attrs (5th and 6th) differ by that alone.
        let attr = |v: &serde_json::Value| -> String {
            v["lv_attr"]
                .as_str()
                .unwrap_or_default()
                .char_indices()
                .map(|(i, c)| if i == 4 || i == 5 { '-' } else { c })
                .collect()
        };
        assert_eq!(
            attr(&m),
            attr(&t),
            "lv_attr of {lv} but for activity\n{list}\n{lvs}"
        );
        for key in ["pool_lv", "origin", "data_percent", "metadata_percent"] {
            assert_eq!(
                m[key], t[key],
                "{key} of {lv}: tessera's lv list, then lvs\n{list}\n{lvs}"
            );
        }
    }
}

const LVM2_READS_TESSERA: &str = r#"
attach p2
vgck vg && echo "vgck-ok"
vgchange -q -ay -K vg; echo "vgchange rc $?"
dmsetup mknodes
for lv in t ts; do echo "sum $lv $(sum $lv)"; done
echo "whenfull $(lvs --noheadings -o lv_when_full vg/pool | tr -d ' ')"
echo "pooltable $(dmsetup table vg-pool-tpool)"
echo "before $(lvs -a --reportformat json -o lv_name,transaction_id,thin_id vg | json)"
lvcreate -q -V 16M -T vg/pool -n fromlvm; echo "lvcreate rc $?"
dmsetup mknodes
w fromlvm 64k 40 7
echo "sum fromlvm $(sum fromlvm)"
lvremove -q -f vg/ts; echo "lvremove rc $?"
echo "after $(lvs -a --reportformat json -o lv_name,transaction_id,thin_id vg | json)"
vgck vg && echo "vgck2-ok"
vgchange -q -an vg
detach
echo lab-part2-done
"#;

const LVM2_AFTER_TESSERA: &str = r#"
attach p2
vgchange -q -ay -K vg; echo "vgchange rc $?"
dmsetup mknodes
for lv in t fromlvm last; do echo "sum $lv $(sum $lv)"; done
echo "lvs $(lvs -a --reportformat json -o lv_name,transaction_id,thin_id vg | json)"
vgck vg && echo "vgck-ok"
vgchange -q -an vg
detach
echo lab-part3-done
"#;

/// The row of `lv` in an lvm2-shaped JSON report.
fn row(json: &str, lv: &str) -> serde_json::Value {
    common::report_rows(json)
        .into_iter()
        .find(|r| r["lv_name"] == lv)
        .unwrap_or_else(|| panic!("no {lv} in {json}"))
}

#[test]
fn tessera_thin_pools_are_used_by_lvm2_and_back() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("p2")).unwrap();
    common::image_files(&d.join("p2"), "pv", 2, 64 << 20);
    let devs = images_in(&d.join("p2"));
    let state = d.join("state2");
    let pvs: Vec<&str> = devs.split(',').collect();
    let mut args = vec!["vg", "create", "-s", "1M", "vg"];
    args.extend(&pvs);
    tessera(&devs, &state, &args);
    tessera(
        &devs,
        &state,
        &[
            "lv",
            "create",
            "--type",
            "thin-pool",
            "-L",
            "48M",
            "vg/pool",
        ],
    );
    tessera(
        &devs,
        &state,
        &["lv", "create", "--thin", "-V", "32M", "-n", "t", "vg/pool"],
    );
    let size = 32 << 20;
    // Written in part: the rest of t stays unprovisioned and reads as zeroes.
    let mut t = vec![0u8; size];
    let server = serve(&devs, &state, &[]);
    for (i, (offset, len)) in [(0, 1 << 20), (5 << 20, 70_000), (31 << 20, 1 << 20)]
        .into_iter()
        .enumerate()
    {
        let data = random(len, 1 + i as u64);
        patch(&server.addr, "vg/t", d, offset, &data);
        t[offset..offset + len].copy_from_slice(&data);
    }
    server.stop();
    tessera(
        &devs,
        &state,
        &["lv", "create", "--snapshot", "vg/t", "-n", "ts"],
    );
    let mut ts = t.clone();
    let server = serve(&devs, &state, &[]);
    let data = random(200_000, 10);
    patch(&server.addr, "vg/t", d, 100_000, &data);
    t[100_000..300_000].copy_from_slice(&data);
    let data = random(9000, 11);
    patch(&server.addr, "vg/ts", d, (31 << 20) + 512, &data);
    ts[(31 << 20) + 512..(31 << 20) + 9512].copy_from_slice(&data);
    assert_eq!(export_sum(&server.addr, "vg/t", d), sha(&t), "tessera's t");
    assert_eq!(
        export_sum(&server.addr, "vg/ts", d),
        sha(&ts),
        "tessera's ts"
    );
    server.stop();

    tessera(
        &devs,
        &state,
        &["lv", "change", "--errorwhenfull", "y", "vg/pool"],
    );

    let t0 = Instant::now();
    let text = common::lab_script(
        d,
        &format!("{}{PRELUDE}{LVM2_READS_TESSERA}", common::LVM_LAB_PRELUDE),
        300,
    );
    eprintln!("lab, part 2: {:?}\n{text}", t0.elapsed());
    assert!(text.contains("lab-part2-done"), "lab:\n{text}");
    assert!(text.contains("vgck-ok"), "vgck of tessera's VG\n{text}");
    assert!(
        text.contains("vgchange rc 0"),
        "lvm2 activates tessera's pool (thin_check passing)\n{text}"
    );
    assert_eq!(
        line(&text, "whenfull "),
        "error",
        "lvm2 reads tessera's errorwhenfull\n{text}"
    );
    assert!(
        line(&text, "pooltable ").ends_with("error_if_no_space"),
        "lvm2 loads the pool with error_if_no_space\n{text}"
    );
    assert_eq!(
        line(&text, "sum t "),
        sha(&t),
        "the kernel reads tessera's t"
    );
    assert_eq!(
        line(&text, "sum ts "),
        sha(&ts),
        "the kernel reads tessera's ts"
    );
    assert!(
        text.contains("lvcreate rc 0"),
        "lvm2 makes a thin volume in tessera's pool\n{text}"
    );
    assert!(text.contains("lvremove rc 0"), "lvm2 removes ts\n{text}");
    assert!(
        text.contains("vgck2-ok"),
        "vgck after lvm2's changes\n{text}"
    );
    let fromlvm = line(&text, "sum fromlvm ").to_string();
    let after = line(&text, "after ").to_string();

    // tessera reads what lvm2 changed, and goes on from lvm2's transaction id.
    let list = tessera(
        &devs,
        &state,
        &[
            "lv",
            "list",
            "-a",
            "-o",
            "lv_name,transaction_id,thin_id",
            "--json",
        ],
    );
    assert!(
        !common::report_rows(&list)
            .iter()
            .any(|r| r["lv_name"] == "ts"),
        "ts is gone: {list}"
    );
    assert_eq!(
        row(&list, "pool")["transaction_id"],
        row(&after, "pool")["transaction_id"],
        "the pool's transaction id, tessera then lvm2\n{list}\n{after}"
    );
    let server = serve(&devs, &state, &[]);
    assert_eq!(export_sum(&server.addr, "vg/t", d), sha(&t), "t after lvm2");
    assert_eq!(
        export_sum(&server.addr, "vg/fromlvm", d),
        fromlvm,
        "lvm2's thin volume served by tessera"
    );
    server.stop();
    tessera(
        &devs,
        &state,
        &[
            "lv", "create", "--thin", "-V", "8M", "-n", "last", "vg/pool",
        ],
    );
    let last = vec![0u8; 8 << 20];

    let t0 = Instant::now();
    let text = common::lab_script(
        d,
        &format!("{}{PRELUDE}{LVM2_AFTER_TESSERA}", common::LVM_LAB_PRELUDE),
        300,
    );
    eprintln!("lab, part 3: {:?}\n{text}", t0.elapsed());
    assert!(text.contains("lab-part3-done"), "lab:\n{text}");
    assert!(text.contains("vgchange rc 0"), "vgchange -ay\n{text}");
    assert_eq!(line(&text, "sum t "), sha(&t));
    assert_eq!(line(&text, "sum fromlvm "), fromlvm);
    assert_eq!(
        line(&text, "sum last "),
        sha(&last),
        "tessera's new volume reads as zeroes"
    );
    assert!(text.contains("vgck-ok"), "vgck\n{text}");
    let lvs = line(&text, "lvs ");
    let ids: Vec<String> = ["t", "fromlvm", "last"]
        .iter()
        .map(|lv| row(lvs, lv)["thin_id"].to_string())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "distinct thin ids: {ids:?}\n{lvs}");
}
