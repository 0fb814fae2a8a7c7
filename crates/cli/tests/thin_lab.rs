//! Thin pools in the kernel lab, tessera beside lvm2:
//! (a) lvm2 makes two pools (64 KiB chunks with zeroing and passdown; 256 KiB without
//!     zeroing, nopassdown), thin LVs, a thin snapshot and a snapshot of that snapshot, and
//!     writes through them. tessera lists them as lvs does (attrs, Pool, Origin, Data%,
//!     Meta%), and `tessera activate -K` loads the same devices with the same tables, uuids
//!     and bytes (sha256) as lvm2's `vgchange -ay -K`; `tessera deactivate` leaves none.
//! (b) tessera makes a pool, a thin LV, a snapshot and a snapshot of it: `vgck` passes,
//!     lvm2 activates them (its thin_check on the pool's metadata passing) and writes, then
//!     makes a thin LV of its own in tessera's pool (transaction ids in step); tessera lists
//!     and activates lvm2's LV with lvm2's bytes, removes it, and lvm2 goes on.

mod common;

use common::lab_line as line;

const INSIDE: &str = r#"set -u
cd "$(dirname "$0")"
mkdir -p /tmp/lvmconf /tmp/st
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
json() { tr -d ' \n'; echo; }
w() { dd if=/dev/urandom of="/dev/mapper/$1" bs="$2" count="$3" seek="$4" oflag=direct status=none; }
devs=()
for i in 0 1; do truncate -s 64M "/tmp/pv$i.img"; devs+=("$(losetup -f --show "/tmp/pv$i.img")"); done
pvcreate -q "${devs[@]}"
vgcreate -q -s 1M vg "${devs[@]}"
lvcreate -q --type thin-pool -L 16M -c 64k -n pool vg
lvcreate -q --type thin-pool -L 12M -c 256k -Zn --discards nopassdown -n pool2 vg
lvcreate -q -V 32M -T vg/pool -n thin1 2>/dev/null
dmsetup mknodes
w vg-thin1 64k 64 0
lvcreate -q -s vg/thin1 -n snap1 2>/dev/null
w vg-thin1 64k 8 3
lvcreate -q -s vg/snap1 -n snap2 2>/dev/null
lvchange -q -ay -K vg/snap2 && dmsetup mknodes
w vg-snap2 4k 5 700
lvcreate -q -V 8M -T vg/pool2 -n thin2
dmsetup mknodes
w vg-thin2 256k 5 0
# Activated afresh, so the kernel's counts are those of the last commit.
vgchange -q -an vg
vgchange -q -ay -K vg
dmsetup mknodes
echo "lvs $(lvs -a --reportformat json -o lv_name,lv_attr,pool_lv,origin,data_percent,metadata_percent vg | json)"
T=(./tessera --state-dir /tmp/st)
for d in "${devs[@]}"; do T+=(--devices "$d"); done
echo "tlist $("${T[@]}" lv list -a --json -o lv_name,lv_attr,pool_lv,origin,data_percent,metadata_percent vg | json)"
names="pool pool-tpool pool_tmeta pool_tdata pool2 pool2-tpool pool2_tmeta pool2_tdata thin1 snap1 snap2 thin2"
show() { # who
  for n in $names; do
    if dmsetup info "vg-$n" >/dev/null 2>&1; then
      t=$(dmsetup table "vg-$n" | tr ' ' _ | tr '\n' '|')
      u=$(dmsetup info -c --noheadings -o uuid,attr "vg-$n" | tr -d ' ' | tr ':' _)
      s=$(sha256sum < "/dev/mapper/vg-$n" | cut -d' ' -f1)
      echo "$1 $n $t $u $s"
    else
      echo "$1 $n absent"
    fi
  done
}
show lvm
vgchange -q -an vg
echo "lvm-left $(dmsetup ls | tr '\n\t' '  ')"
lvchange -q -ay vg/thin2 && echo "lvmone $(dmsetup ls | cut -f1 | sort | tr '\n' ' ')"
vgchange -q -an vg
vgchange -q -ay vg && echo "lvmnoK $(dmsetup ls | cut -f1 | sort | tr '\n' ' ')"
vgchange -q -an vg
dmsetup remove_all
"${T[@]}" activate -K vg || echo "activate-failed"
show tessera
for lv in thin1 snap1 snap2 thin2; do [ -b "/dev/vg/$lv" ] && echo "link $lv"; done
[ -e /dev/vg/pool ] && echo "link pool"
"${T[@]}" deactivate vg || echo "deactivate-failed"
echo "left $(dmsetup ls | tr '\n\t' '  ')"
# Only the pool, then one thin LV: the devices lvm2 loads for each.
"${T[@]}" activate vg/thin2 && echo "one $(dmsetup ls | cut -f1 | sort | tr '\n' ' ')"
"${T[@]}" deactivate vg/thin2
echo "one-left $(dmsetup ls | tr '\n\t' '  ')"
# Activation skip: the VG without -K leaves the snapshots.
"${T[@]}" activate vg >/dev/null && echo "noK $(dmsetup ls | cut -f1 | sort | tr '\n' ' ')"
"${T[@]}" deactivate vg
dmsetup remove_all
for d in "${devs[@]}"; do losetup -d "$d"; done
echo "== b"
# (b) tessera makes the pool and LVs.
tdevs=()
for i in 0 1; do truncate -s 64M "/tmp/t$i.img"; tdevs+=("$(losetup -f --show "/tmp/t$i.img")"); done
U=(./tessera --state-dir /tmp/st)
for d in "${tdevs[@]}"; do U+=(--devices "$d"); done
"${U[@]}" pv create "${tdevs[@]}" >/dev/null
"${U[@]}" vg create tv "${tdevs[@]}" -s 1M >/dev/null
"${U[@]}" lv create --type thin-pool -L 24M tv/pool >/dev/null || echo "tpool-failed"
"${U[@]}" lv create --thin -V 16M -n t1 tv/pool >/dev/null || echo "tthin-failed"
"${U[@]}" lv create --snapshot tv/t1 -n ts >/dev/null || echo "tsnap-failed"
"${U[@]}" lv create --snapshot tv/ts -n ts2 >/dev/null || echo "tsnap2-failed"
vgck tv && echo "vgck-ok"
echo "blvs $(lvs -a --reportformat json -o lv_name,lv_attr,pool_lv,origin,transaction_id,thin_id tv | json)"
vgchange -q -ay -K tv && echo "lvm-activates"
dmsetup mknodes
w tv-t1 64k 20 0
w tv-ts 4k 3 9
echo "bsum ts2 $(sha256sum < /dev/mapper/tv-ts2 | cut -d' ' -f1)"
lvcreate -q -V 8M -T tv/pool -n lt 2>/dev/null && echo "lvm-thin-ok"
dmsetup mknodes
w tv-lt 64k 16 0
for lv in t1 ts lt; do echo "bsum $lv $(sha256sum < /dev/mapper/tv-$lv | cut -d' ' -f1)"; done
vgchange -q -an tv
echo "bafter $(lvs -a --reportformat json -o lv_name,transaction_id,thin_id tv | json)"
echo "btlist $("${U[@]}" lv list -a --json -o lv_name,transaction_id,thin_id,pool_lv tv | json)"
"${U[@]}" activate tv/lt tv/t1 tv/ts >/dev/null || echo "tact-failed"
for lv in t1 ts lt; do echo "tsum $lv $(sha256sum < /dev/mapper/tv-$lv | cut -d' ' -f1)"; done
"${U[@]}" deactivate tv >/dev/null
dmsetup remove_all
"${U[@]}" lv remove tv/lt && echo "tremove-ok"
"${U[@]}" thin check tv/pool && echo "tcheck-ok"
vgck tv && echo "vgck2-ok"
vgchange -q -ay -K tv && echo "lvm-activates2"
echo "bfinal $(lvs -a --reportformat json -o lv_name,transaction_id,thin_id tv | json)"
lvcreate -q -V 4M -T tv/pool -n lt2 2>/dev/null && echo "lvm-thin2-ok"
vgchange -q -an tv
"${U[@]}" thin check tv/pool && echo "tcheck2-ok"
dmsetup remove_all
for d in "${tdevs[@]}"; do losetup -d "$d"; done
echo thin-lab-done
"#;

/// Device numbers of dm devices (not loop devices, major 7) differ between activations.
fn normalise(t: &str) -> String {
    t.split(['_', ' ', '|'])
        .map(|w| match w.split_once(':') {
            Some((major, minor))
                if major != "7" && major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok() =>
            {
                "DM"
            }
            _ => w,
        })
        .collect::<Vec<_>>()
        .join("_")
}

fn rows(json_line: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(json_line).unwrap_or_else(|e| panic!("bad JSON ({e}): {json_line}"));
    let mut rows = v["report"][0]["lv"].as_array().unwrap().clone();
    rows.sort_by_key(|r| r["lv_name"].as_str().unwrap().to_string());
    rows
}

fn find<'a>(rows: &'a [serde_json::Value], lv: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["lv_name"] == lv)
        .unwrap_or_else(|| panic!("no {lv} in {rows:?}"))
}

/// lvs's attr with the activation state and open flag blanked (tessera lists from the
/// disks, not the kernel's devices).
fn inactive(attr: &str) -> String {
    attr.chars()
        .enumerate()
        .map(|(i, c)| if i == 4 || i == 5 { '-' } else { c })
        .collect()
}

#[test]
fn tessera_reads_makes_and_activates_thin_pools_as_lvm2_does() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    std::fs::copy(common::tessera_path(), d.join("tessera")).unwrap();
    let text = common::lab_script(d, INSIDE, 900);
    // Kept for a look after a failure.
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("thin_lab.txt"),
        &text,
    );
    assert!(text.contains("thin-lab-done"), "lab:\n{text}");
    for bad in [
        "activate-failed",
        "deactivate-failed",
        "tpool-failed",
        "tthin-failed",
        "tsnap-failed",
        "tsnap2-failed",
        "tact-failed",
    ] {
        assert!(!text.contains(bad), "{bad}\n{text}");
    }

    // (a) Listing: lvm2's names, attrs, pools, origins, Data% and Meta%.
    let (lvm, tes) = (rows(line(&text, "lvs ")), rows(line(&text, "tlist ")));
    assert_eq!(lvm.len(), tes.len(), "{text}");
    for (l, t) in lvm.iter().zip(&tes) {
        eprintln!("{l} | {t}");
        assert_eq!(l["lv_name"], t["lv_name"]);
        assert_eq!(
            inactive(l["lv_attr"].as_str().unwrap()),
            t["lv_attr"].as_str().unwrap(),
            "{l} {t}"
        );
        for key in ["pool_lv", "origin", "data_percent", "metadata_percent"] {
            assert_eq!(l[key], t[key], "{key}: {l} {t}");
        }
    }
    // Devices: every one lvm2 loads, with its table, uuid, read-only flag and bytes.
    let names = [
        "pool",
        "pool-tpool",
        "pool_tmeta",
        "pool_tdata",
        "pool2",
        "pool2-tpool",
        "pool2_tmeta",
        "pool2_tdata",
        "thin1",
        "snap1",
        "snap2",
        "thin2",
    ];
    for n in names {
        let field = |who: &str| -> Vec<String> {
            line(&text, &format!("{who} {n} "))
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        let (lvm, tessera) = (field("lvm"), field("tessera"));
        assert_eq!(lvm.len(), 3, "{n} as lvm2 loads it: {lvm:?}\n{text}");
        assert_eq!(
            tessera.len(),
            3,
            "{n} as tessera loads it: {tessera:?}\n{text}"
        );
        assert_eq!(
            normalise(&tessera[0]),
            normalise(&lvm[0]),
            "{n}: dmsetup table\n{text}"
        );
        assert_eq!(tessera[1], lvm[1], "{n}: uuid and attr");
        assert_eq!(tessera[2], lvm[2], "{n}: the bytes");
        eprintln!("{n}: {} {}", tessera[0], tessera[1]);
    }
    for lv in ["thin1", "snap1", "snap2", "thin2"] {
        assert!(text.contains(&format!("link {lv}")), "/dev/vg/{lv}\n{text}");
    }
    assert!(
        !text.contains("link pool"),
        "lvm2 makes no /dev/vg/pool for a used pool"
    );
    for l in ["left", "one-left"] {
        let rest = line(&text, &format!("{l} "));
        assert!(
            rest.is_empty() || rest == "No devices found",
            "{l}: {rest}\n{text}"
        );
    }
    assert_eq!(
        line(&text, "one "),
        line(&text, "lvmone "),
        "a thin LV alone: the devices lvm2 loads for it"
    );
    let nok = line(&text, "noK ");
    assert_eq!(nok, line(&text, "lvmnoK "), "the VG without -K");
    assert!(
        nok.contains("vg-thin1") && !nok.contains("vg-snap1") && !nok.contains("vg-snap2"),
        "{nok}"
    );

    // (b) tessera's pool under lvm2.
    assert!(text.contains("vgck-ok"), "vgck of tessera's VG\n{text}");
    let b = rows(line(&text, "blvs "));
    for (lv, attr, tid, id) in [
        ("pool", "twi---tz--", "3", ""),
        ("t1", "Vwi---tz--", "0", "1"),
        ("ts", "Vwi---tz-k", "1", "2"),
        ("ts2", "Vwi---tz-k", "2", "3"),
    ] {
        let r = find(&b, lv);
        assert_eq!(r["lv_attr"], attr, "{lv}: {r}");
        assert_eq!(r["transaction_id"], tid, "{lv}: {r}");
        assert_eq!(r["thin_id"], id, "{lv}: {r}");
    }
    assert_eq!(find(&b, "ts2")["origin"], "ts");
    assert!(
        text.contains("lvm-activates"),
        "lvm2 activates tessera's pool\n{text}"
    );
    assert!(
        text.contains("lvm-thin-ok"),
        "lvm2 makes a thin LV in tessera's pool\n{text}"
    );
    let after = rows(line(&text, "bafter "));
    let tlist = rows(line(&text, "btlist "));
    for lv in ["pool", "t1", "ts", "ts2", "lt"] {
        assert_eq!(
            find(&after, lv)["transaction_id"],
            find(&tlist, lv)["transaction_id"],
            "{lv}"
        );
        assert_eq!(
            find(&after, lv)["thin_id"],
            find(&tlist, lv)["thin_id"],
            "{lv}"
        );
    }
    assert_eq!(find(&tlist, "lt")["thin_id"], "4");
    assert_eq!(find(&tlist, "pool")["transaction_id"], "4");
    for lv in ["t1", "ts", "lt"] {
        assert_eq!(
            line(&text, &format!("tsum {lv} ")),
            line(&text, &format!("bsum {lv} ")),
            "{lv}: tessera's activation reads what lvm2 wrote"
        );
    }
    assert!(
        text.contains("tremove-ok") && text.contains("tcheck-ok"),
        "{text}"
    );
    assert!(
        text.contains("vgck2-ok") && text.contains("lvm-activates2"),
        "{text}"
    );
    let fin = rows(line(&text, "bfinal "));
    assert!(fin.iter().all(|r| r["lv_name"] != "lt"), "{fin:?}");
    assert_eq!(find(&fin, "pool")["transaction_id"], "5");
    assert!(
        text.contains("lvm-thin2-ok") && text.contains("tcheck2-ok"),
        "{text}"
    );
}
