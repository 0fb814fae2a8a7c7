//! Snapshots in the kernel lab: lvm2 makes an origin with two snapshots of different chunk
//! sizes and writes through all of them; tessera lists them as lvs does (Origin, attrs),
//! and `tessera activate` loads the same stack of devices (`-real`, `-cow`, `snapshot`,
//! `snapshot-origin`) with the same tables, uuids and bytes as `vgchange -ay`. Then a
//! snapshot made by tessera is activated by lvm2 and holds the origin's data as it was,
//! and `tessera lv merge` leaves lvm2's MERGING state, activated as `snapshot-merge`.

mod common;

const INSIDE: &str = r#"set -u
cd "$(dirname "$0")"
mkdir -p /tmp/lvmconf /tmp/st
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
devs=()
for i in 0 1; do truncate -s 64M "/tmp/pv$i.img"; devs+=("$(losetup -f --show "/tmp/pv$i.img")"); done
pvcreate -q "${devs[@]}"
vgcreate -q -s 1M vg "${devs[@]}"
lvcreate -q -an -Zn -L 16M -n origin vg
lvchange -ay vg/origin
dmsetup mknodes
dd if=/dev/urandom of=/dev/mapper/vg-origin bs=1M count=16 oflag=direct status=none
lvcreate -q -s -L 8M -n snap vg/origin
lvcreate -q -s -L 6M -c 16k -n snap2 vg/origin
dmsetup mknodes
dd if=/dev/urandom of=/dev/mapper/vg-origin bs=4k count=10 seek=3 oflag=direct status=none
dd if=/dev/urandom of=/dev/mapper/vg-snap bs=4k count=3 seek=100 oflag=direct status=none
echo "lvs $(lvs --reportformat json -o lv_name,origin,lv_attr,data_percent vg | tr -d ' \n')"
T=(./tessera --state-dir /tmp/st)
for d in "${devs[@]}"; do T+=(--devices "$d"); done
echo "tlist $("${T[@]}" lv list --json -o lv_name,origin,lv_attr,data_percent vg | tr -d ' \n')"
names="origin origin-real snap snap-cow snap2 snap2-cow"
show() { # who
  for n in $names; do
    t=$(dmsetup table "vg-$n" | tr ' ' _ | tr '\n' '|')
    u=$(dmsetup info -c --noheadings -o uuid "vg-$n")
    s=$(sha256sum < "/dev/mapper/vg-$n" | cut -d' ' -f1)
    echo "$1 $n $t $u $s"
  done
}
show lvm
vgchange -q -an vg
dmsetup remove_all
"${T[@]}" activate vg || echo "activate-failed"
show tessera
for lv in origin snap snap2; do [ -b "/dev/vg/$lv" ] && echo "link $lv"; done
"${T[@]}" lv table vg/origin | sed 's/^/ttable /'
"${T[@]}" deactivate vg
echo "left $(dmsetup ls | tr '\n' ' ')"
# A snapshot made by tessera, activated by lvm2.
sum0=$(grep '^lvm origin ' <(show lvm 2>/dev/null) | cut -d' ' -f5)
"${T[@]}" lv create --snapshot vg/origin -n tsnap -L 4M -c 8k || echo "tcreate-failed"
vgck vg && echo "vgck-ok"
vgchange -q -ay vg && dmsetup mknodes
echo "tsnap-table $(dmsetup table vg-tsnap)"
echo "tsnap-origin $(lvs --noheadings -o origin vg/tsnap | tr -d ' ') $(lvs --noheadings -o lv_attr vg/tsnap | tr -d ' ')"
a=$(sha256sum < /dev/mapper/vg-origin | cut -d' ' -f1)
b=$(sha256sum < /dev/mapper/vg-tsnap | cut -d' ' -f1)
dd if=/dev/urandom of=/dev/mapper/vg-origin bs=64k count=4 oflag=direct status=none
c=$(sha256sum < /dev/mapper/vg-tsnap | cut -d' ' -f1)
echo "tsnap-sums $a $b $c"
vgchange -q -an vg
# tessera's merge: lvm2 sees MERGING, tessera activates snapshot-merge as lvm2 would.
"${T[@]}" lv merge vg/snap2; echo "merge rc $?"
echo "mlvs $(lvs -a --reportformat json -o lv_name,origin,lv_attr vg | tr -d ' \n')"
vgchange -q -ay --poll n vg
echo "== lvm merge"; dmsetup table | sed 's/^/mlvm /'
vgchange -q -an vg
dmsetup remove_all
"${T[@]}" activate vg || echo "mactivate-failed"
echo "== tessera merge"; dmsetup table | sed 's/^/mtes /'
"${T[@]}" deactivate vg
for d in "${devs[@]}"; do losetup -d "$d"; done
echo snapshot-lab-done
"#;

/// Device numbers of dm devices (not loop devices, major 7) differ between activations.
fn normalise(t: &str) -> String {
    t.split(['_', ' '])
        .map(|w| match w.split_once(':') {
            Some((major, minor))
                if major != "7"
                    && major.parse::<u32>().is_ok()
                    && minor.trim_end_matches('|').parse::<u32>().is_ok() =>
            {
                "DM"
            }
            _ => w,
        })
        .collect::<Vec<_>>()
        .join("_")
}

fn rows(json_line: &str) -> Vec<serde_json::Value> {
    let json = json_line.split_once(' ').unwrap().1;
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut rows = v["report"][0]["lv"].as_array().unwrap().clone();
    rows.sort_by_key(|r| r["lv_name"].as_str().unwrap().to_string());
    rows
}

#[test]
fn tessera_activates_origins_and_snapshots_as_lvm2_does() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    std::fs::copy(common::tessera_path(), d.join("tessera")).unwrap();
    let text = common::lab_script(d, INSIDE, 500);
    assert!(text.contains("snapshot-lab-done"), "lab:\n{text}");
    assert!(!text.contains("activate-failed"), "{text}");
    let line = |p: &str| -> &str {
        text.lines()
            .find(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("no {p} line:\n{text}"))
    };
    // Listing: lvm2's names, origins and attrs (tessera's lists inactive LVs).
    let (lvm, tes) = (rows(line("lvs ")), rows(line("tlist ")));
    assert_eq!(lvm.len(), tes.len(), "{text}");
    for (l, t) in lvm.iter().zip(&tes) {
        assert_eq!(l["lv_name"], t["lv_name"]);
        assert_eq!(l["origin"], t["origin"]);
        let active = l["lv_attr"].as_str().unwrap().replace("-a-", "---");
        assert_eq!(active, t["lv_attr"].as_str().unwrap(), "{l} {t}");
        eprintln!("{l} | {t}");
    }
    for n in [
        "origin",
        "origin-real",
        "snap",
        "snap-cow",
        "snap2",
        "snap2-cow",
    ] {
        let field = |who: &str| -> Vec<String> {
            line(&format!("{who} {n} "))
                .split_whitespace()
                .skip(2)
                .map(str::to_string)
                .collect()
        };
        let (lvm, tessera) = (field("lvm"), field("tessera"));
        assert_eq!(lvm.len(), 3, "{n}: {lvm:?}\n{text}");
        assert_eq!(
            normalise(&tessera[0]),
            normalise(&lvm[0]),
            "{n}: dmsetup table\n{text}"
        );
        assert_eq!(tessera[1], lvm[1], "{n}: uuid");
        assert_eq!(tessera[2], lvm[2], "{n}: the bytes");
        eprintln!("{n}: {} {} {}", tessera[0], tessera[1], &tessera[2][..16]);
    }
    for lv in ["origin", "snap", "snap2"] {
        assert!(text.contains(&format!("link {lv}")), "/dev/vg/{lv}\n{text}");
    }
    assert!(text.contains("ttable vg-origin: 0 32768 snapshot-origin vg-origin-real"));
    assert!(
        line("left ").trim() == "left No devices found" || line("left ").trim() == "left",
        "{text}"
    );
    // tessera's snapshot under lvm2.
    assert!(
        !text.contains("tcreate-failed") && text.contains("vgck-ok"),
        "{text}"
    );
    let t = line("tsnap-table ");
    assert!(t.contains(" snapshot ") && t.ends_with(" P 16"), "{t}");
    assert_eq!(
        line("tsnap-origin ").trim(),
        "tsnap-origin origin swi-a-s---"
    );
    let sums: Vec<&str> = line("tsnap-sums ").split_whitespace().skip(1).collect();
    assert_eq!(sums[0], sums[1], "the new snapshot holds the origin's data");
    assert_eq!(sums[1], sums[2], "and keeps it when the origin changes");
    // Merge.
    assert!(text.contains("merge rc 0"), "{text}");
    let m = rows(line("mlvs "));
    let attr = |n: &str| {
        m.iter()
            .find(|r| r["lv_name"] == n)
            .map(|r| r["lv_attr"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {n} in {m:?}"))
    };
    assert_eq!(attr("origin"), "Owi---s---");
    assert_eq!(attr("[snap2]"), "Swi---s---");
    let pick = |p: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(p))
            .map(normalise)
            .collect();
        v.sort();
        v
    };
    let (mlvm, mtes) = (pick("mlvm "), pick("mtes "));
    assert!(mlvm.iter().any(|l| l.contains("snapshot-merge")), "{text}");
    assert_eq!(mtes, mlvm, "tables while merging\n{text}");
}
