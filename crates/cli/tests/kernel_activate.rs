//! Kernel activation in the kernel lab: lvm2 makes a VG with linear, striped and
//! two-segment LVs and `vgchange -ay` activates it; then `tessera activate` does the same
//! with its own device-mapper ioctls. The tables (`dmsetup table`), the uuids and the bytes
//! at each device are the same, and /dev/VG/LV exists. A table the kernel refuses leaves no
//! device behind; removing an open device is refused naming the cause; `tessera deactivate`
//! removes them all.

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
for i in 0 1 2; do truncate -s 64M "/tmp/pv$i.img"; devs+=("$(losetup -f --show "/tmp/pv$i.img")"); done
pvcreate -q "${devs[@]}"
vgcreate -q -s 1M ka "${devs[@]}"
lvcreate -q -an -Zn -L 8M -n lin ka
lvcreate -q -an -Zn -i 3 -I 64k -L 12M -n st ka
lvcreate -q -an -Zn -L 4M -n seg ka
lvcreate -q -an -Zn -L 4M -n pad ka
lvextend -q -L +6M ka/seg
lvcreate -q -y -Wn --type raid1 -m 1 -L 4M -n r1 ka
lvcreate -q -y -Wn --type raid5 -i 2 -I 64k -L 4M -n r5 ka
vgchange -q -ay ka
dmsetup mknodes
for lv in r1 r5; do
  for _ in $(seq 300); do
    [ "$(lvs --noheadings -o sync_percent ka/$lv | tr -d ' ')" = 100.00 ] && break
    sleep 0.5
  done
done
names="lin st seg pad r1 r5 r1_rmeta_0 r1_rimage_0 r1_rmeta_1 r1_rimage_1 r5_rmeta_0 r5_rimage_0 r5_rmeta_1 r5_rimage_1 r5_rmeta_2 r5_rimage_2"
show() { # who
  for lv in $names; do
    t=$(dmsetup table "ka-$lv" | tr ' ' _ | tr '\n' '|')
    u=$(dmsetup info -c --noheadings -o uuid "ka-$lv")
    s=$(sha256sum < "/dev/mapper/ka-$lv" | cut -d' ' -f1)
    echo "$1 $lv $t $u $s"
  done
}
for lv in lin st seg pad r1 r5; do dd if=/dev/urandom of="/dev/mapper/ka-$lv" bs=1M oflag=direct status=none 2>/dev/null; done
show lvm
vgchange -q -an ka
dmsetup remove_all
T=(./tessera --state-dir /tmp/st)
for d in "${devs[@]}"; do T+=(--devices "$d"); done
"${T[@]}" activate ka || echo "activate-failed"
show tessera
for lv in lin st seg pad r1 r5; do [ -L "/dev/ka/$lv" ] && [ -b "/dev/ka/$lv" ] && echo "link $lv"; done
"${T[@]}" dm --kernel version --interface 4.0.0; echo "v-old rc $?"
"${T[@]}" dm --kernel version --interface 4.999.0 2> vnew.err; echo "v-new rc $? $(cat vnew.err)"
"${T[@]}" dm --kernel version --interface 5.0.0 2> vmaj.err; echo "v-major rc $? $(cat vmaj.err)"
# Messages reach the kernel's targets: dm-raid's check.
"${T[@]}" dm --kernel message ka-r1 0 check; echo "msg rc $?"
sleep 1
echo "raid-status $("${T[@]}" dm --kernel status ka-r1)"
# A table the kernel refuses: nothing is left.
if "${T[@]}" dm --kernel create bad --table '0 100 linear /dev/nonexistent 0' 2> bad.err; then
  echo "bad-accepted"
fi
echo "bad-error $(tr '\n' ' ' < bad.err)"
dmsetup info bad >/dev/null 2>&1 || echo "bad-absent"
# An open device cannot go.
exec 3< /dev/mapper/ka-lin
"${T[@]}" deactivate ka/lin 2> busy.err && echo "busy-removed"
echo "busy-error $(tr '\n' ' ' < busy.err)"
exec 3<&-
"${T[@]}" deactivate ka
echo "left $(dmsetup ls | tr '\n' ' ')"
"${T[@]}" dm --kernel ls
for d in "${devs[@]}"; do losetup -d "$d"; done
echo kernel-activate-done
"#;

#[test]
fn tessera_activates_lvs_in_the_kernel_as_vgchange_does() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    std::fs::copy(common::tessera_path(), d.join("tessera")).unwrap();
    let text = common::lab_script(d, INSIDE, 400);
    assert!(text.contains("kernel-activate-done"), "lab:\n{text}");
    assert!(!text.contains("activate-failed"), "{text}");
    // Devices the tables name that are dm devices themselves (raid sub-LVs) get other
    // minors in each activation: those numbers are normalised.
    let normalise = |t: &str| -> String {
        t.split('_')
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
    };
    for lv in [
        "lin",
        "st",
        "seg",
        "pad",
        "r1",
        "r5",
        "r1_rmeta_0",
        "r1_rimage_0",
        "r1_rmeta_1",
        "r1_rimage_1",
        "r5_rmeta_0",
        "r5_rimage_0",
        "r5_rmeta_1",
        "r5_rimage_1",
        "r5_rmeta_2",
        "r5_rimage_2",
    ] {
        let field = |who: &str| -> Vec<String> {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{who} {lv} ")))
                .unwrap_or_else(|| panic!("no {who} line for {lv}:\n{text}"));
            line.split_whitespace()
                .skip(2)
                .map(str::to_string)
                .collect()
        };
        let (lvm, tessera) = (field("lvm"), field("tessera"));
        assert_eq!(
            normalise(&tessera[0]),
            normalise(&lvm[0]),
            "{lv}: dmsetup table\n{text}"
        );
        assert_eq!(tessera[1], lvm[1], "{lv}: uuid");
        // The kernel rewrites the dm-raid superblock in rmeta at each activation.
        if !lv.contains("_rmeta_") {
            assert_eq!(tessera[2], lvm[2], "{lv}: the bytes");
        }
        if !lv.contains("_r") {
            assert!(
                text.contains(&format!("link {lv}")),
                "/dev/ka/{lv}:\n{text}"
            );
        }
        eprintln!(
            "{lv}: table {} uuid {} sha {}",
            tessera[0],
            tessera[1],
            &tessera[2][..16]
        );
    }
    assert!(text.contains("msg rc 0"), "{text}");
    let status = text.lines().find(|l| l.starts_with("raid-status")).unwrap();
    assert!(status.contains(" raid raid1 2 AA "), "{status}");
    assert!(
        status.contains(" check ") || status.contains(" idle "),
        "{status}"
    );
    assert!(text.contains("Interface 4.0.0: served"), "{text}");
    assert!(text.contains("v-old rc 0"), "{text}");
    let newer = text.lines().find(|l| l.starts_with("v-new")).unwrap();
    assert!(
        newer.starts_with("v-new rc 1") && newer.contains("refused interface 4.999.0"),
        "{newer}"
    );
    let major = text.lines().find(|l| l.starts_with("v-major")).unwrap();
    assert!(
        major.starts_with("v-major rc 1") && major.contains("refused interface 5.0.0"),
        "{major}"
    );
    eprintln!("{newer}\n{major}");
    assert!(text.contains("bad-absent"), "{text}");
    assert!(!text.contains("bad-accepted"), "{text}");
    let bad = text.lines().find(|l| l.starts_with("bad-error")).unwrap();
    assert!(
        bad.contains("DM_TABLE_LOAD") && bad.contains("bad"),
        "{bad}"
    );
    let busy = text.lines().find(|l| l.starts_with("busy-error")).unwrap();
    assert!(!text.contains("busy-removed"), "{text}");
    assert!(busy.contains("in use") || busy.contains("busy"), "{busy}");
    assert!(text.contains("No devices found"), "{text}");
    eprintln!("{bad}\n{busy}");
}

const STATIC_INSIDE: &str = r#"set -u
cd "$(dirname "$0")"
mkdir -p /tmp/lvmconf
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
devs=()
for i in 0 1; do truncate -s 32M "/tmp/pv$i.img"; devs+=("$(losetup -f --show "/tmp/pv$i.img")"); done
pvcreate -q "${devs[@]}"
vgcreate -q -s 1M boot "${devs[@]}"
mds=()
for i in 0 1; do truncate -s 32M "/tmp/md$i.img"; mds+=("$(losetup -f --show "/tmp/md$i.img")"); done
yes | mdadm --create /dev/md0 --run --assume-clean -l 1 -n 2 --name=sr1 --homehost=lab "${mds[@]}" >/dev/null 2>&1
mdadm --stop /dev/md0 >/dev/null 2>&1
lvcreate -q -an -Zn -L 8M -n root boot
lvcreate -q -an -Zn -i 2 -I 64k -L 8M -n data boot
echo "ldd: $(ldd ./tessera-static 2>&1 | tr '\n' ' ')"
# A root holding nothing but the binary, as an initramfs would.
root=/tmp/root
mkdir -p $root/dev $root/proc $root/sys $root/run
cp ./tessera-static $root/tessera
mount --bind /dev $root/dev
mount -t proc proc $root/proc
mount -t sysfs sys $root/sys
args=(/tessera --state-dir /run)
for d in "${devs[@]}" "${mds[@]}"; do args+=(--devices "$d"); done
echo "files: $(cd $root && find . -path ./dev -prune -o -path ./proc -prune -o -path ./sys -prune -o -type f -print | tr '\n' ' ')"
chroot $root "${args[@]}" activate boot; echo "rc $?"
chroot $root "${args[@]}" activate md/sr1; echo "md rc $?"
echo "mdstat $(grep '^md_sr1' /proc/mdstat)"
chroot $root "${args[@]}" deactivate md/sr1; echo "md stop rc $?"
umount $root/dev $root/proc $root/sys
for lv in root data; do echo "table $lv $(dmsetup table boot-$lv | tr ' ' _)"; done
[ -b /dev/mapper/boot-root ] && echo "node ok"
dmsetup remove_all
for d in "${devs[@]}" "${mds[@]}"; do losetup -d "$d"; done
echo static-done
"#;

/// The static binary (`-C target-feature=+crt-static`, built by scripts/test.sh) runs in a
/// root that holds nothing else, as in an initramfs, and activates a VG and an MD array.
#[test]
fn the_static_binary_alone_activates_a_vg_and_an_array() {
    let bin = std::env::var("TESSERA_STATIC_BIN").unwrap_or_else(|_| {
        panic!(
            "TESSERA_STATIC_BIN is not set: scripts/test.sh builds the static binary \
             (RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target \
             x86_64-unknown-linux-gnu -p tessera-cli) and sets it"
        )
    });
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    std::fs::copy(&bin, d.join("tessera-static")).unwrap();
    let text = common::lab_script(d, STATIC_INSIDE, 300);
    assert!(text.contains("static-done"), "lab:\n{text}");
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "{text}"
    );
    assert!(
        text.contains("files: ./tessera \n") || text.contains("files: ./tessera "),
        "{text}"
    );
    assert!(text.contains("\nrc 0"), "{text}");
    assert!(
        text.contains("md rc 0") && text.contains("md stop rc 0"),
        "{text}"
    );
    assert!(text.contains("mdstat md_sr1 : active"), "{text}");
    assert!(text.contains("raid1"), "{text}");
    assert!(text.contains("node ok"), "{text}");
    assert!(text.contains("table root 0_16384_linear_"), "{text}");
    assert!(text.contains("table data 0_16384_striped_2_128_"), "{text}");
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("ldd")
                || l.starts_with("table")
                || l.starts_with("mdstat")
                || l.contains("active as"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const MD_INSIDE: &str = r#"set -u
cd "$(dirname "$0")"
devs=()
for i in 0 1 2 3; do truncate -s 32M "/tmp/m$i.img"; devs+=("$(losetup -f --show "/tmp/m$i.img")"); done
yes | mdadm --create /dev/md0 --run --assume-clean -l 5 -n 3 -c 64 --name=kr5 --homehost=lab \
    "${devs[0]}" "${devs[1]}" "${devs[2]}" --spare-devices=1 "${devs[3]}" >/dev/null 2>&1
dd if=/dev/urandom of=/dev/md0 bs=1M count=40 oflag=direct status=none
echo "mdadm-sha $(sha256sum < /dev/md0 | cut -d' ' -f1)"
mdadm --stop /dev/md0 >/dev/null 2>&1
T=(./tessera --state-dir /tmp)
for d in "${devs[@]}"; do T+=(--devices "$d"); done
"${T[@]}" activate md/kr5 || echo "activate-failed"
cat /proc/mdstat
echo "tessera-sha $(sha256sum < /dev/md/kr5 | cut -d' ' -f1)"
mdadm --detail /dev/md_kr5 > detail.txt
for k in "Raid Level" "Raid Devices" "Active Devices" "Spare Devices" "State" "UUID" "Array Size"; do
  echo "mdadm $k=$(sed -n "s/^ *$k : *//p" detail.txt | head -1)"
done
"${T[@]}" md detail kr5 --json > tdetail.json
echo "tessera-json $(tr -d '\n ' < tdetail.json)"
"${T[@]}" deactivate md/kr5
echo "after $(cat /sys/block/md_kr5/md/array_state 2>/dev/null || echo gone)"
mdadm --detail /dev/md_kr5 >/dev/null 2>&1 && echo "still-there"
for d in "${devs[@]}"; do losetup -d "$d"; done
echo md-kernel-done
"#;

/// An array the real mdadm made is assembled into the kernel by tessera (sysfs, from the
/// members its own assembly chose): /proc/mdstat and `mdadm --detail` agree with `tessera md
/// detail`, the bytes are mdadm's, and `deactivate` stops it.
#[test]
fn md_arrays_assembled_into_the_kernel_agree_with_mdadm() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    std::fs::copy(common::tessera_path(), d.join("tessera")).unwrap();
    let text = common::lab_script(d, MD_INSIDE, 300);
    assert!(text.contains("md-kernel-done"), "lab:\n{text}");
    assert!(!text.contains("activate-failed"), "{text}");
    let value = |prefix: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .trim()
            .to_string()
    };
    assert_eq!(
        value("mdadm-sha "),
        value("tessera-sha "),
        "the bytes\n{text}"
    );
    // Started as mdadm starts arrays: active, read-only until the first write.
    let mdstat = text
        .lines()
        .find(|l| l.starts_with("md_kr5 : active"))
        .unwrap_or_else(|| panic!("/proc/mdstat:\n{text}"));
    assert!(
        mdstat.contains("raid5") && mdstat.contains("(S)"),
        "{mdstat}"
    );
    assert!(text.contains("[3/3] [UUU]"), "/proc/mdstat:\n{text}");
    let json: serde_json::Value = serde_json::from_str(&value("tessera-json ")).unwrap();
    assert_eq!(
        value("mdadm Raid Level="),
        json["level"].as_str().unwrap(),
        "{text}"
    );
    assert_eq!(
        value("mdadm Raid Devices="),
        json["raid_disks"].to_string(),
        "{text}"
    );
    assert_eq!(
        value("mdadm UUID="),
        json["uuid"].as_str().unwrap(),
        "{text}"
    );
    assert_eq!(value("mdadm Active Devices="), "3", "{text}");
    assert_eq!(value("mdadm Spare Devices="), "1", "{text}");
    assert_eq!(value("mdadm State="), "clean", "{text}");
    let size_kib: u64 = value("mdadm Array Size=")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        size_kib * 1024,
        json["size_bytes"].as_u64().unwrap(),
        "{text}"
    );
    assert!(!text.contains("still-there"), "{text}");
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.contains("md_kr5") || l.starts_with("mdadm ") || l.contains("-sha"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Where the kernel has no device-mapper (this machine's own kernel), activation says so
/// and names the cure; where it has one, the same command runs.
#[test]
fn without_device_mapper_activation_says_so() {
    let has_dm = std::fs::read_to_string("/proc/misc")
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim().ends_with(" device-mapper"));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = common::tessera_output(
        &dir.path().join("none.img").display().to_string(),
        &dir.path().join("state"),
        &["activate"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    if has_dm {
        assert!(out.status.success(), "{err}");
    } else {
        assert!(!out.status.success());
        assert!(
            err.contains("the kernel has no device-mapper") && err.contains("dm-mod"),
            "{err}"
        );
    }
}
