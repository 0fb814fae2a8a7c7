//! The kernel path of a VG in the middle of a move, in the kernel lab, one boot. lvm2 makes a
//! VG of four PVs (the fourth behind dm-delay, so its move takes seconds): a linear LV of two
//! segments around another, a striped LV with a stripe on the first PV and a raid1 LV with an
//! image there, writes random bytes through them and records their sha256. lvm2's `pvmove`
//! to the fourth PV is killed with SIGKILL once it has moved a segment and its devices are
//! removed, as after a crash. Then:
//! - lvm2 activates the VG (`vgchange -ay --poll n`, so nothing moves on): its tables
//!   (`VG-pvmove0` with linear rows for the segments moved, a `mirror` row with a core log
//!   for the one being copied, linear rows on the source for the rest; the moved LVs on
//!   `VG-pvmove0`) are recorded with device numbers replaced by names, and its uuids;
//! - with lvm2's devices removed, `tessera activate` of the same metadata loads the same
//!   tables under the same names and uuids, and the LVs read the bytes from the start;
//! - `tessera lv table` shows the pvmove device's rows and the LV's on it;
//! - `tessera deactivate` leaves none of the VG's devices behind (pvmove0 goes with the last
//!   LV on it).

mod common;

use common::lab_line as line;

const INSIDE: &str = r#"set -u
cd "$(dirname "$0")"
mkdir -p /tmp/lvmconf /tmp/st
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { global_filter = [ "r|^/dev/loop3$|", "a|.*|" ] obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
devs=()
for i in 0 1 2 3; do truncate -s 16M "/tmp/pv$i.img"; devs+=("$(losetup -f --show "/tmp/pv$i.img")"); done
sz=$(blockdev --getsz ${devs[3]})
dmsetup create slow --table "0 $sz delay ${devs[3]} 0 100"
dmsetup mknodes
p0=${devs[0]} p1=${devs[1]} p2=${devs[2]} p3=/dev/mapper/slow
T=(./tessera --state-dir /tmp/st --devices $p0 --devices $p1 --devices $p2 --devices $p3)
pvcreate -q $p0 $p1 $p2 $p3
vgcreate -q -s 1M vg $p0 $p1 $p2 $p3
lvcreate -q -an -Zn -L 3M -n lin vg $p0
lvcreate -q -an -Zn -L 2M -n gap vg $p0
lvextend -q -L +2M vg/lin $p0
lvcreate -q -an -Zn -i2 -I64k -L 4M -n str vg $p0 $p1
lvcreate -q --type raid1 -m1 -L 2M -n r1 vg $p0 $p2 2>/dev/null
vgchange -q -ay vg; dmsetup mknodes
for lv in lin gap str r1; do dd if=/dev/urandom of=/dev/mapper/vg-$lv bs=64k oflag=direct status=none 2>/dev/null; done
sums() { for lv in lin gap str r1; do printf '%s ' "$(sha256sum < /dev/mapper/vg-$lv | cut -c1-16)"; done; echo; }
moved() { vgcfgbackup -q -f /tmp/b.txt vg >/dev/null; grep -o 'extents_moved = [0-9]*' /tmp/b.txt | awk '{s+=$3} END {print s+0}'; }
# The VG's tables, device numbers replaced by device names, one line each, sorted.
tables() {
  local map=(-e 's/^/ /')
  # (no /dev/fd in the lab, so no process substitution)
  dmsetup info -c --noheadings --separator ' ' -o major,minor,name > /tmp/devs.txt
  while read -r maj min name; do map+=(-e "s/ $maj:$min / $name /g" -e "s/ $maj:$min\$/ $name/"); done < /tmp/devs.txt
  map+=(-e 's/^ //')
  dmsetup table | grep -E '^vg-' | sed "${map[@]}" | sort | tr '\n' ';'; echo
}
uuids() { dmsetup info -c --noheadings --separator ' ' -o name,uuid | grep -E '^vg-' | sort | tr '\n' ';'; echo; }
clear_vg() { for _ in 1 2 3 4 5; do for d in $(dmsetup ls | cut -f1 | grep '^vg-'); do dmsetup remove "$d" 2>/dev/null; done; done; }
echo "sums-before $(sums)"
vgchange -q -an vg
vgchange -q -ay vg
pvmove -i1 $p0 $p3 > pm.out 2>&1 &
pid=$!
for _ in $(seq 240); do [ "$(moved)" -gt 0 ] && break; sleep 0.3; done
kill -9 $pid; wait $pid 2>/dev/null
echo "moved $(moved)"
clear_vg
echo "left-after-crash $(dmsetup ls | cut -f1 | grep -c '^vg-')"
vgchange -q -ay --poll n vg; echo "lvm2-activate rc $?"
dmsetup mknodes
echo "lvm2-tables $(tables)"
echo "lvm2-uuids $(uuids)"
echo "lvm2-sums $(sums)"
clear_vg
echo "left-after-lvm2 $(dmsetup ls | cut -f1 | grep -c '^vg-')"
"${T[@]}" activate vg; echo "tessera-activate rc $?"
echo "tessera-tables $(tables)"
echo "tessera-uuids $(uuids)"
echo "tessera-sums $(sums)"
echo "lv-table-lin $("${T[@]}" lv table vg/lin | tr '\n' ';')"
"${T[@]}" deactivate vg; echo "tessera-deactivate rc $?"
echo "left-after-tessera $(dmsetup ls | cut -f1 | grep '^vg-' | tr '\n' ' ')."
"#;

#[test]
fn tessera_activates_a_vg_mid_move_with_lvm2s_pvmove_tables() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    std::fs::copy(common::tessera_path(), d.join("tessera")).unwrap();
    let started = std::time::Instant::now();
    let text = common::lab_script(d, INSIDE, 900);
    println!("{text}\nlab run: {:.0} s", started.elapsed().as_secs_f64());
    let before = line(&text, "sums-before ");
    assert_eq!(before.split_whitespace().count(), 4, "{text}");
    let moved: u64 = line(&text, "moved ").parse().expect("a count");
    assert!(moved > 0 && moved < 12, "lvm2 moved {moved} of 12\n{text}");
    assert_eq!(line(&text, "left-after-crash "), "0", "{text}");
    assert_eq!(line(&text, "lvm2-activate rc"), "0", "{text}");
    let lvm2 = line(&text, "lvm2-tables ");
    // What lvm2 loads mid-move: pvmove0 with a mirror row and the moved LVs on it.
    assert!(
        lvm2.contains("vg-pvmove0: ") && lvm2.contains(" mirror core 1 "),
        "{text}"
    );
    assert!(
        lvm2.contains("vg-lin: 0 6144 linear vg-pvmove0 0;"),
        "{text}"
    );
    assert_eq!(line(&text, "lvm2-sums "), before, "{text}");
    assert_eq!(line(&text, "left-after-lvm2 "), "0", "{text}");
    assert_eq!(line(&text, "tessera-activate rc"), "0", "{text}");
    assert_eq!(line(&text, "tessera-tables "), lvm2, "{text}");
    assert_eq!(
        line(&text, "tessera-uuids "),
        line(&text, "lvm2-uuids "),
        "{text}"
    );
    assert_eq!(line(&text, "tessera-sums "), before, "{text}");
    let shown = line(&text, "lv-table-lin ");
    assert!(
        shown.contains("vg-pvmove0: ") && shown.contains("mirror core 1 4096 2 /dev/loop0 "),
        "{text}"
    );
    assert!(
        shown.contains("vg-lin: 0 6144 linear vg-pvmove0 0;"),
        "{text}"
    );
    assert_eq!(line(&text, "tessera-deactivate rc"), "0", "{text}");
    assert_eq!(line(&text, "left-after-tessera "), ".", "{text}");
}
