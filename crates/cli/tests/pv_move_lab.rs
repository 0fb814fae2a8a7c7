//! pvmove between tessera and lvm2 in the kernel lab, one boot. lvm2 makes a VG of four PVs
//! (the fourth behind dm-delay, so moves take seconds): a linear LV of two segments around
//! another, a striped LV with a stripe on the first PV, and a raid1 LV with an image there;
//! it writes random bytes through them and records their sha256.
//! (A) tessera moves the first PV to the fourth and is killed with SIGKILL once it has
//!     checkpointed; lvm2's vgck passes, lvm2 activates the VG and `pvmove` finishes the move.
//! (B) lvm2 moves them back and is killed once it has moved a segment; its devices removed
//!     as after a crash, `tessera pv move` (no arguments) resumes the move and finishes it.
//! Each time vgck passes, the source is empty and every LV's bytes are those from the start.

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
# The fourth PV answers every I/O 50 ms late, so lvm2's moves take seconds.
dmsetup create slow --table "0 $sz delay ${devs[3]} 0 50"
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
used() { pvs --noheadings -o pv_name,pv_pe_alloc_count | tr -s ' ' | tr '\n' ';'; echo; }
moved() { vgcfgbackup -q -f /tmp/b.txt vg >/dev/null; grep -o 'extents_moved = [0-9]*' /tmp/b.txt | awk '{s+=$3} END {print s+0}'; }
# Waits until the move run by process $1 has checkpointed some extents (or has ended).
waitmoved() {
  for _ in $(seq 240); do
    [ "$(moved)" -gt 0 ] && return
    kill -0 "$1" 2>/dev/null || { echo "the move ended first"; return; }
    sleep 0.5
  done
}
echo "sums-before $(sums)"
lvchange -q -ay vg/r1; dmsetup status vg-r1
vgchange -q -an vg

echo "== A: tessera moves, killed; lvm2 finishes"
"${T[@]}" pv move $p0 $p3 --max-rate 512 > a.out 2>&1 &
pid=$!; waitmoved $pid; kill -9 $pid; wait $pid 2>/dev/null; cat a.out
echo "A-moved $(moved)"
vgck vg && echo "A-vgck-mid ok"
lvs -a --noheadings -o lv_name,lv_attr,devices vg | tr -s ' ' | tr '\n' ';'; echo
vgchange -q -ay vg && dmsetup mknodes
dmsetup table | grep pvmove
timeout 120 pvmove -i1 > a.pvmove 2>&1; echo "A-pvmove rc $?"; tail -2 a.pvmove
echo "A-sums $(sums)"
vgck vg && echo "A-vgck ok"
echo "A-used $(used)"
echo "A-lvs $(lvs -a --noheadings -o lv_name vg | tr -s ' ' | tr '\n' ';')"
vgchange -q -an vg

echo "== B: lvm2 moves back, killed; tessera finishes"
vgchange -q -ay vg
pvmove -i1 $p3 $p0 > b.pvmove 2>&1 &
pid=$!; waitmoved $pid; kill -9 $pid; wait $pid 2>/dev/null
echo "B-moved-lvm2 $(moved)"
# As after a crash: lvm2's devices gone (their users first), the copy stopped.
for _ in 1 2 3 4; do for d in $(dmsetup ls | cut -f1 | grep '^vg-'); do dmsetup remove "$d" 2>/dev/null; done; done
dmsetup ls | cut -f1 | tr '\n' ' '; echo
timeout 120 "${T[@]}" pv move; echo "B-tessera rc $?"
vgck vg && echo "B-vgck ok"
echo "B-used $(used)"
vgchange -q -ay vg && dmsetup mknodes
echo "B-sums $(sums)"
vgchange -q -an vg

"#;

fn number(text: &str, prefix: &str) -> u64 {
    line(text, prefix)
        .parse()
        .unwrap_or_else(|_| panic!("{prefix} is not a number in:\n{text}"))
}

#[test]
fn tessera_and_lvm2_finish_or_abort_each_others_moves() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    std::fs::copy(common::tessera_path(), d.join("tessera")).unwrap();
    let started = std::time::Instant::now();
    let text = common::lab_script(d, INSIDE, 1200);
    println!("{text}\nlab run: {:.0} s", started.elapsed().as_secs_f64());
    let before = line(&text, "sums-before ");
    assert_eq!(before.split_whitespace().count(), 4, "{text}");
    // (A) tessera's checkpoint, then lvm2's pvmove.
    let a = number(&text, "A-moved ");
    assert!(
        a > 0 && a < 12,
        "tessera checkpointed {a} of 12 extents\n{text}"
    );
    assert!(text.contains("A-vgck-mid ok"), "{text}");
    assert_eq!(line(&text, "A-pvmove rc"), "0", "{text}");
    assert_eq!(line(&text, "A-sums "), before, "{text}");
    assert!(text.contains("A-vgck ok"), "{text}");
    assert!(line(&text, "A-used ").contains("/dev/loop0 0;"), "{text}");
    assert!(
        line(&text, "A-used ").contains("/dev/mapper/slow 12;"),
        "{text}"
    );
    // (B) lvm2's checkpoint, then tessera.
    let b = number(&text, "B-moved-lvm2 ");
    assert!(b > 0 && b < 12, "lvm2 moved {b} of 12 extents\n{text}");
    assert_eq!(line(&text, "B-tessera rc"), "0", "{text}");
    assert!(text.contains("were moved before it"), "{text}");
    assert!(text.contains("B-vgck ok"), "{text}");
    assert!(
        line(&text, "B-used ").contains("/dev/mapper/slow 0;"),
        "{text}"
    );
    assert!(line(&text, "B-used ").contains("/dev/loop0 12;"), "{text}");
    assert_eq!(line(&text, "B-sums "), before, "{text}");
}
