//! Discovery of a whole stack built by the real tools in the kernel lab: GPT partitions
//! (sfdisk) > MD raid1 (mdadm) > PV > VG > LVs (lvm2) > LUKS2 (cryptsetup, ext4 inside) and
//! ext4 and swap. `tessera show --json` on the disk images names every layer with the sizes,
//! uuids and types the tools report; `tessera serve` exports the LVs on top of the user-space
//! array byte-exact (fsck finds the ext4 whole); a second serve is refused. Then a damaged
//! copy (one PV's disk gone, one array member stale) is shown with each problem named.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const INSIDE: &str = r#"set -u
cd "$(dirname "$0")"
mkdir -p /tmp/lvmconf clean damaged
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
loops=()
for i in 0 1 2; do
  truncate -s 96M "clean/d$i.img"
  printf 'label: gpt\nsize=56M, type=A19D880F-05FC-4D3B-A006-743F0F84911E, name=raid\nsize=24M, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=lvm\n' \
    | sfdisk -q "clean/d$i.img"
  loops+=("$(losetup -P -f --show "clean/d$i.img")")
done
L0=${loops[0]} L1=${loops[1]} L2=${loops[2]}
mdadm --create /dev/md/stack --run --level 1 --raid-devices 2 --spare-devices 1 --metadata 1.2 --assume-clean ${L0}p1 ${L1}p1 ${L2}p1 >/dev/null 2>&1 || echo "mdadm-failed"
MD=$(readlink -f /dev/md/stack)
pvcreate -q "$MD" ${L2}p2
vgcreate -q -s 1M vg0 "$MD" ${L2}p2
lvcreate -q -an -Zn -L 20M -n secret vg0 "$MD"
lvcreate -q -an -Zn -L 16M -n plain vg0 "$MD"
lvcreate -q -an -Zn -L 12M -n data vg0 ${L2}p2
vgchange -q -ay vg0
dmsetup mknodes
printf 'lab-key' > /tmp/key
cryptsetup luksFormat -q --batch-mode --type luks2 --label vault --pbkdf pbkdf2 --pbkdf-force-iterations 1000 /dev/mapper/vg0-secret /tmp/key || echo "luks-failed"
cryptsetup open --key-file /tmp/key /dev/mapper/vg0-secret opened && mkfs.ext4 -q -L inside /dev/mapper/opened && cryptsetup close opened
mkfs.ext4 -q -L plainfs /dev/mapper/vg0-plain
mkdir -p /tmp/p && mount /dev/mapper/vg0-plain /tmp/p && { seq 1 200000 > /tmp/p/numbers; umount /tmp/p; } || echo "mount-failed"
mkswap -q -L dswap /dev/mapper/vg0-data
for lv in secret plain data; do
  echo "sha $lv $(sha256sum < /dev/mapper/vg0-$lv | cut -d' ' -f1)"
  echo "size $lv $(blockdev --getsize64 /dev/mapper/vg0-$lv)"
  eval "$(blkid -p -o export /dev/mapper/vg0-$lv)"; echo "blkid $lv ${TYPE:-none} ${UUID:-none} ${LABEL:-none}"; unset TYPE UUID LABEL
done
echo "size md $(blockdev --getsize64 "$MD")"
echo "size p1 $(blockdev --getsize64 ${L0}p1)"
echo "size p2 $(blockdev --getsize64 ${L2}p2)"
eval "$(mdadm --detail --export "$MD")"; echo "mduuid $MD_UUID"
echo "pvuuid md $(pvs --noheadings -o pv_uuid "$MD" | tr -d ' ')"
echo "pvuuid p2 $(pvs --noheadings -o pv_uuid ${L2}p2 | tr -d ' ')"
echo "vguuid $(vgs --noheadings -o vg_uuid vg0 | tr -d ' ')"
echo "partuuid $(blkid -p -o value -s PART_ENTRY_UUID ${L0}p1)"
vgchange -q -an vg0
mdadm --stop "$MD" >/dev/null 2>&1
# Auto-assembly in the kernel, on a copy: tessera finds the array under vg0 (no --devices:
# every block device, the kernel's partitions among them), starts it, then the VG on it.
for l in "${loops[@]}"; do losetup -d "$l"; done
mkdir -p kern && cp --sparse=always clean/d0.img clean/d1.img clean/d2.img kern/
K=()
for i in 0 1 2; do K+=("$(losetup -P -f --show "kern/d$i.img")"); done
sleep 1
KT=(./tessera --state-dir /tmp/kst)
"${KT[@]}" activate --all > kact.out 2>&1; echo "kact rc $?"
sed 's/^/kact: /' kact.out
echo "kmdstat $(grep -c '^md_stack : active.* raid1 ' /proc/mdstat)"
echo "kspare $(grep '^md_stack : ' /proc/mdstat | grep -c '(S)')"
for lv in secret plain data; do echo "ksha $lv $(sha256sum < /dev/mapper/vg0-$lv | cut -d' ' -f1)"; done
"${KT[@]}" show --json > kshow.json 2> kshow.err; echo "kshow rc $?"
"${KT[@]}" show 2>&1 | sed 's/^/kshow: /'
"${KT[@]}" deactivate vg0 > /dev/null; "${KT[@]}" deactivate md/stack > /dev/null
echo "kleft-lv $(dmsetup ls | grep -c vg0)"
echo "kleft-md $(grep -c md_stack /proc/mdstat)"
for l in "${K[@]}"; do losetup -d "$l"; done
# The damaged copy: member 1 misses writes (the array runs on member 0 alone), disk 2 is gone.
cp --sparse=always clean/d0.img clean/d1.img damaged/
D0=$(losetup -P -f --show damaged/d0.img)
mdadm --assemble --run /dev/md/stack ${D0}p1 >/dev/null 2>&1 || echo "degraded-assemble-failed"
mdadm --readwrite /dev/md/stack 2>/dev/null
dd if=/dev/md/stack of=/dev/md/stack bs=4096 count=1 skip=4000 seek=4000 conv=notrunc oflag=direct status=none
mdadm --stop /dev/md/stack >/dev/null 2>&1
losetup -d "$D0"
echo discovery-lab-done
"#;

fn lab_values(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

fn find<'a>(node: &'a Value, name: &str) -> Option<&'a Value> {
    if node["name"] == name {
        return Some(node);
    }
    node["children"]
        .as_array()?
        .iter()
        .find_map(|c| find(c, name))
}

fn node<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|d| find(d, name))
        .unwrap_or_else(|| panic!("no node {name} in {report:#}"))
}

/// How many nodes of the report are called `name`.
fn count(report: &Value, name: &str) -> usize {
    fn go(node: &Value, name: &str) -> usize {
        usize::from(node["name"] == name)
            + node["children"]
                .as_array()
                .map_or(0, |c| c.iter().map(|n| go(n, name)).sum())
    }
    report["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| go(d, name))
        .sum()
}

fn show(dir: &Path, devices: &str) -> Value {
    let out = Command::new(common::tessera_path())
        .args(["--devices", devices, "--state-dir"])
        .arg(dir.join("state"))
        .args(["show", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_lab_built_stack_is_shown_layer_by_layer_and_served() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // TESSERA_DISCOVERY_LAB names a folder a run of the lab part left (with its lab.txt),
    // to work on the checks without booting the lab again.
    let kept = std::env::var("TESSERA_DISCOVERY_LAB").ok();
    let d = kept.as_deref().map(Path::new).unwrap_or(dir.path());
    let text = match &kept {
        Some(k) => std::fs::read_to_string(Path::new(k).join("lab.txt")).unwrap(),
        None => {
            std::fs::copy(common::tessera_path(), d.join("tessera")).unwrap();
            common::lab_script(d, INSIDE, 600)
        }
    };
    assert!(text.contains("discovery-lab-done"), "lab:\n{text}");
    assert!(!text.contains("-failed"), "lab:\n{text}");
    let lab = lab_values(&text);
    let v = |k: &str| -> &str { lab.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}")) };
    let clean = format!("{}/clean/*.img", d.display());
    let img = |n: u32, p: u32| format!("{}/clean/d{n}.img{p}", d.display());
    let report = show(d, &clean);

    // disk > partition: the GPT as sfdisk wrote it.
    let d0 = node(&report, &format!("{}/clean/d0.img", d.display()));
    assert_eq!(d0["format"], "gpt", "{d0:#}");
    assert_eq!(d0["children"].as_array().unwrap().len(), 2, "{d0:#}");
    let p1 = node(&report, &img(0, 1));
    assert_eq!(p1["kind"], "partition");
    assert_eq!(p1["size_bytes"].as_u64().unwrap().to_string(), v("size p1"));
    assert_eq!(p1["format"], "linux_raid_member");
    assert_eq!(p1["state"], "active");
    // > array: mdadm's uuid and size, clean.
    let md = &p1["children"][0];
    assert_eq!(md["kind"], "md", "{p1:#}");
    assert_eq!(md["name"], "md/stack");
    assert_eq!(md["state"], "clean");
    assert_eq!(md["detail"]["uuid"], v("mduuid"));
    assert_eq!(md["size_bytes"].as_u64().unwrap().to_string(), v("size md"));
    // The third disk's first partition is the array's spare.
    assert_eq!(node(&report, &img(2, 1))["state"], "spare");
    assert!(
        md["summary"].as_str().unwrap().contains("1 spare(s)"),
        "{md:#}"
    );
    // > PV > VG: lvm2's uuids; the VG complete with both PVs.
    assert_eq!(md["format"], "LVM2_member", "{md:#}");
    assert_eq!(md["detail"]["content"]["pv_uuid"], v("pvuuid md"));
    let vg = &md["children"][0];
    assert_eq!(vg["kind"], "vg");
    assert_eq!(vg["name"], "vg0");
    assert_eq!(vg["state"], "complete");
    assert_eq!(vg["detail"]["uuid"], v("vguuid"));
    let p2 = node(&report, &img(2, 2));
    assert_eq!(p2["format"], "LVM2_member");
    assert_eq!(p2["detail"]["pv_uuid"], v("pvuuid p2"));
    assert_eq!(p2["size_bytes"].as_u64().unwrap().to_string(), v("size p2"));
    // A VG over several PVs is shown once, under its first PV; the others name it.
    assert_eq!(count(&report, "vg0"), 1, "{report:#}");
    assert!(p2["children"].as_array().unwrap().is_empty(), "{p2:#}");
    assert!(
        p2["summary"]
            .as_str()
            .unwrap()
            .contains("in VG vg0 (shown under md/stack)"),
        "{p2:#}"
    );
    assert!(
        vg["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("also on {}", img(2, 2))),
        "{vg:#}"
    );
    assert_eq!(count(&report, "md/stack"), 1, "{report:#}");
    // > LV > LUKS / filesystem / swap, as blkid names them.
    for lv in ["secret", "plain", "data"] {
        let n = find(vg, &format!("vg0/{lv}")).unwrap();
        assert_eq!(n["kind"], "lv");
        assert_eq!(
            n["size_bytes"].as_u64().unwrap().to_string(),
            v(&format!("size {lv}"))
        );
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("blkid {lv} ")))
            .unwrap();
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(n["format"], fields[2], "{lv}: {n:#}");
    }
    let secret = find(vg, "vg0/secret").unwrap();
    assert_eq!(secret["detail"]["label"], "vault", "{secret:#}");
    assert_eq!(secret["detail"]["version"], 2);
    let luks_uuid = text
        .lines()
        .find(|l| l.starts_with("blkid secret "))
        .unwrap()
        .split(' ')
        .nth(3)
        .unwrap();
    assert_eq!(secret["detail"]["uuid"], luks_uuid);
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{:#}",
        report["problems"]
    );

    // The text tree names every layer too.
    let tree = common::run_ok(
        Command::new(common::tessera_path())
            .args(["--devices", &clean, "--state-dir"])
            .arg(d.join("state"))
            .arg("show"),
    );
    for word in [
        "gpt",
        "md/stack",
        "vg0/secret",
        "LUKS2",
        "ext4",
        "swap",
        "[clean]",
    ] {
        assert!(tree.contains(word), "{word} in\n{tree}");
    }
    eprintln!("{tree}");

    // Served from user space: the LVs on the array are the lab's bytes.
    let state = d.join("state");
    let served = common::serve(&clean, &state, &[]);
    for lv in ["secret", "plain", "data"] {
        let file = d.join(format!("{lv}.out"));
        common::run_ok(
            Command::new("nbdcopy")
                .arg(format!("{}/vg0/{lv}", served.addr))
                .arg(&file),
        );
        let sha = common::run_ok(Command::new("sha256sum").arg(&file));
        assert_eq!(
            sha.split(' ').next().unwrap(),
            v(&format!("sha {lv}")),
            "vg0/{lv}"
        );
    }
    common::run_ok(
        Command::new("fsck.ext4")
            .args(["-n", "-f"])
            .arg(d.join("plain.out")),
    );
    // A second daemon over the same disks is refused, naming the disk file and the holder.
    let second = Command::new(common::tessera_path())
        .args(["--devices", &clean, "--state-dir"])
        .arg(d.join("state2"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("clean/d") && err.contains("claimed by process"),
        "{err}"
    );
    drop(served);

    // Auto-assembly in the kernel: the array, then the VG on it; the kernel reads the same
    // bytes; show names the running array by its kernel device and lists it once.
    assert_eq!(v("kact rc"), "0", "{text}");
    assert_eq!(v("kmdstat"), "1", "{text}");
    assert_eq!(
        v("kspare"),
        "1",
        "the spare joins in the kernel too:\n{text}"
    );
    for lv in ["secret", "plain", "data"] {
        assert_eq!(
            v(&format!("ksha {lv}")),
            v(&format!("sha {lv}")),
            "kernel vg0/{lv}"
        );
    }
    assert_eq!(v("kshow rc"), "0", "{text}");
    assert_eq!(v("kleft-lv"), "0", "{text}");
    assert_eq!(v("kleft-md"), "0", "{text}");
    let kshow: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("kshow.json")).unwrap()).unwrap();
    let kmd = node(&kshow, "md/stack");
    assert_eq!(kmd["detail"]["kernel_device"], "/dev/md_stack", "{kmd:#}");
    assert_eq!(kmd["format"], "LVM2_member");
    assert_eq!(node(&kshow, "vg0/plain")["format"], "ext4");
    assert_eq!(node(&kshow, "/dev/loop0p1")["state"], "active");
    assert!(
        kshow["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["name"] != "/dev/md_stack"),
        "the kernel's array is not a disk of its own: {kshow:#}"
    );

    // The damaged copy: d2 (PV p2) gone, d1's member stale.
    let damaged = format!("{}/damaged/*.img", d.display());
    let report = show(d, &damaged);
    let problems: Vec<String> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let member = format!("{}/damaged/d1.img1", d.display());
    let stale = node(&report, &member);
    assert_eq!(stale["state"], "stale", "{stale:#}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&member) && p.contains("stale") && p.contains("missed writes")),
        "{problems:#?}"
    );
    let md = node(&report, "md/stack");
    assert_eq!(md["state"], "degraded", "{md:#}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("md/stack") && p.contains("degraded")),
        "{problems:#?}"
    );
    let vg = node(&report, "vg0");
    assert_eq!(vg["state"], "partial");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("vg0") && p.contains("missing") && p.contains(v("pvuuid p2"))),
        "{problems:#?}"
    );
    // What does not need the lost PV still reads.
    assert_eq!(node(&report, "vg0/plain")["format"], "ext4");
    assert_eq!(node(&report, "vg0/data")["state"], "unreadable");
    eprintln!("damaged: {problems:#?}");

    // Served, the degraded array waits to be asked; asked, it brings up the LVs on it.
    let state = d.join("state3");
    let served = common::serve(&damaged, &state, &[]);
    let list = common::run_ok(Command::new("nbdinfo").arg("--list").arg(&served.addr));
    assert!(!list.contains("vg0/plain"), "{list}");
    let up = common::run_ok(
        Command::new(common::tessera_path())
            .args(["--devices", &damaged, "--state-dir"])
            .arg(&state)
            .args(["activate", "--userspace", "--degraded", "md/stack"]),
    );
    assert!(up.contains("vg0/plain served"), "{up}");
    let file = d.join("degraded-plain.out");
    common::run_ok(
        Command::new("nbdcopy")
            .arg(format!("{}/vg0/plain", served.addr))
            .arg(&file),
    );
    let sha = common::run_ok(Command::new("sha256sum").arg(&file));
    assert_eq!(
        sha.split(' ').next().unwrap(),
        v("sha plain"),
        "degraded vg0/plain"
    );
    drop(served);
}

const ARRAY_VG_INSIDE: &str = r#"set -u
cd "$(dirname "$0")"
mkdir -p /tmp/lvmconf
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
L=()
for i in 0 1; do L+=("$(losetup -P -f --show "d$i.img")"); done
sleep 1
mdadm --assemble /dev/md/tarr "${L[0]}p1" "${L[1]}p1" >/dev/null 2>&1; echo "assemble rc $?"
eval "$(mdadm --detail --export /dev/md/tarr)"; echo "md-state $MD_LEVEL $MD_DEVICES"
echo "mdadm-state $(mdadm --detail /dev/md/tarr | awk -F' : ' '/State :/ {print $2}' | tr -d ' ')"
vgchange -q -ay tv; echo "vgchange rc $?"
vgck tv; echo "vgck rc $?"
echo "lvs $(lvs --noheadings -o lv_name,devices tv | tr -s ' ' | tr '\n' ';')"
echo "sha-k $(sha256sum < /dev/mapper/tv-data | cut -d' ' -f1)"
vgchange -q -an tv
mdadm --stop /dev/md/tarr >/dev/null 2>&1
for l in "${L[@]}"; do losetup -d "$l"; done
echo array-vg-done
"#;

/// The other way round: tessera makes the array (over GPT partitions of image files), a PV on
/// it and a VG over it and a partition, writes an LV through `serve`; in the lab, mdadm
/// assembles the array and lvm2 activates the VG on it with the same bytes.
#[test]
fn a_vg_tessera_makes_on_its_array_is_what_mdadm_and_lvm2_see() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let disks: Vec<String> = common::image_files(d, "d", 2, 64 << 20);
    for (i, disk) in disks.iter().enumerate() {
        let to = d.join(format!("d{i}.img"));
        std::fs::rename(disk, &to).unwrap();
        let mut sfdisk = Command::new("sfdisk")
            .arg("-q")
            .arg(&to)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        sfdisk
            .stdin
            .take()
            .unwrap()
            .write_all(b"label: gpt\nsize=40M, type=A19D880F-05FC-4D3B-A006-743F0F84911E\ntype=E6D6D379-F507-44C2-A23C-238F2A3DF928\n")
            .unwrap();
        assert!(sfdisk.wait().unwrap().success());
    }
    let devices = format!("{}/d*.img", d.display());
    let t = |args: &[&str]| common::tessera(&devices, &state, args);
    let p = |n: u32, part: u32| format!("{}/d{n}.img{part}", d.display());
    t(&["md", "create", "tarr", "--level", "1", &p(0, 1), &p(1, 1)]);
    t(&["pv", "create", "md/tarr", &p(1, 2)]);
    t(&["vg", "create", "tv", "md/tarr", &p(1, 2)]);
    // 40 MiB: more than the array holds, so the LV spans the array and the partition.
    t(&["lv", "create", "tv/data", "-L", "40M"]);
    let pvs = t(&["lv", "list", "-o", "lv_name,devices", "--noheadings"]);
    assert!(pvs.contains("md/tarr") && pvs.contains("d1.img2"), "{pvs}");
    let source = d.join("source");
    common::run_ok(
        Command::new("head")
            .args(["-c", "41943040", "/dev/urandom"])
            .stdout(std::fs::File::create(&source).unwrap()),
    );
    let served = common::serve(&devices, &state, &[]);
    common::run_ok(
        Command::new("nbdcopy")
            .arg(&source)
            .arg(format!("{}/tv/data", served.addr)),
    );
    // Stopped at once after the last write, the array is recorded clean all the same.
    assert!(served.stop().success());
    let examine = t(&["md", "examine", &p(0, 1)]);
    assert!(examine.contains("State : clean"), "{examine}");
    let sha = common::run_ok(Command::new("sha256sum").arg(&source));
    let sha = sha.split(' ').next().unwrap();

    let text = common::lab_script(d, ARRAY_VG_INSIDE, 300);
    assert!(text.contains("array-vg-done"), "lab:\n{text}");
    let value = |k: &str| -> &str {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in\n{text}"))
            .trim()
    };
    assert_eq!(value("assemble rc"), "0", "{text}");
    assert_eq!(value("md-state"), "raid1 2", "{text}");
    assert_eq!(value("mdadm-state"), "clean", "{text}");
    assert_eq!(value("vgchange rc"), "0", "{text}");
    assert_eq!(value("vgck rc"), "0", "{text}");
    assert_eq!(
        value("sha-k"),
        sha,
        "the kernel reads what tessera wrote:\n{text}"
    );
}
