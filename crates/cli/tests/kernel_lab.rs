//! In the kernel lab (a VM with a stock Debian kernel): the real lvm2 activates a VG that
//! tessera made, the kernel's device-mapper tables equal `tessera lv table`, and data the
//! kernel writes through the LV lands where tessera's table says.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tessera_block::{BlockDevice, FileDevice, OpenOptions, SharedDevice};
use tessera_engine::{activate, Engine};
use tessera_mapper::TargetRegistry;

/// Activates `lv` of VG kv in user space over the images in `dir`, named as the table names them.
fn activate(dir: &Path, lv: &str) -> tessera_mapper::MappedDevice {
    let devices: Vec<(String, SharedDevice)> = (0..3)
        .map(|i| {
            let name = format!("p{i}.img");
            let dev = FileDevice::open(dir.join(&name), OpenOptions::default()).unwrap();
            (name, Arc::new(dev) as SharedDevice)
        })
        .collect();
    let engine = Engine::with_devices(dir.join("state"), devices);
    let scan = engine.scan().unwrap();
    let state = scan.vg("kv").unwrap();
    activate::activate_lv(&scan, state, lv, Arc::new(TargetRegistry::new())).unwrap()
}

fn sha256(data: &[u8], dir: &Path) -> String {
    let path = dir.join("sha-input.bin");
    std::fs::write(&path, data).unwrap();
    let out = Command::new("sha256sum").arg(&path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The kernel lab's runner: `$TESSERA_KERNEL_LAB/vm-run`, by default the shared one.
fn vm_run() -> String {
    let dir =
        std::env::var("TESSERA_KERNEL_LAB").unwrap_or_else(|_| "/work/shared/kernel-lab".into());
    format!("{dir}/vm-run")
}

const INSIDE: &str = r#"set -e
mkdir -p /tmp/lvmconf
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
for i in 0 1 2; do losetup /dev/loop$i p$i.img; done
vgchange -ay kv
dmsetup mknodes
for lv in lin st; do
  dmsetup table kv-$lv | sed -e 's#7:0#p0.img#g; s#7:1#p1.img#g; s#7:2#p2.img#g' > $lv.kernel
done
sha256sum < /dev/mapper/kv-st | cut -d' ' -f1 > st.before.sha
dd if=pattern.bin of=/dev/mapper/kv-lin bs=1M oflag=direct status=none
dd if=pattern.bin of=/dev/mapper/kv-st bs=1M count=24 oflag=direct status=none
vgchange -an kv
for i in 0 1 2; do losetup -d /dev/loop$i; done
echo kernel-lab-done
"#;

/// Reads an LV through linear table rows (`start len linear dev offset`), from the images.
fn read_linear(dir: &Path, table: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for row in table.lines() {
        let f: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(f[2], "linear", "{row}");
        let (len, dev, offset): (u64, &str, u64) =
            (f[1].parse().unwrap(), f[3], f[4].parse().unwrap());
        let data = std::fs::read(dir.join(dev)).unwrap();
        out.extend_from_slice(&data[(offset * 512) as usize..((offset + len) * 512) as usize]);
    }
    out
}

#[test]
fn lvm2_activates_a_tessera_vg_with_tessera_tables() {
    let vm_run = vm_run();
    assert!(
        Path::new(&vm_run).exists(),
        "the kernel lab is missing: {vm_run} (scripts/test.sh installs it)"
    );
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    for i in 0..3 {
        std::fs::File::create(d.join(format!("p{i}.img")))
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
    }
    let state = d.join("state");
    let devs = "p0.img,p1.img,p2.img";
    let t = |args: &[&str]| {
        let out = Command::new(common::tessera_path())
            .current_dir(d)
            .args(["--devices", devs, "--state-dir"])
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tessera {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    t(&["vg", "create", "kv", "p0.img", "p1.img", "p2.img"]);
    t(&["lv", "create", "kv/lin", "-L", "12M"]);
    t(&["lv", "create", "kv/st", "-L", "24M", "-i", "3", "-I", "32k"]);
    // A second and third segment on other PVs.
    t(&["lv", "extend", "kv/lin", "-L", "+40M"]);
    let lin = t(&["lv", "table", "kv/lin"]);
    let st = t(&["lv", "table", "kv/st"]);
    assert_eq!(lin.lines().count(), 3, "{lin}");

    let size = 52usize << 20;
    let pattern: Vec<u8> = (0..size)
        .map(|i| ((i / 512) as u8) ^ ((i % 251) as u8))
        .collect();
    std::fs::write(d.join("pattern.bin"), &pattern).unwrap();
    std::fs::write(d.join("inside.sh"), INSIDE).unwrap();
    // tessera writes the striped LV first, through its own activation; the kernel reads it.
    let st_dev = activate(d, "st");
    assert_eq!(st_dev.size_bytes(), 24 << 20);
    let before: Vec<u8> = (0..24usize << 20)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 12) as u8)
        .collect();
    st_dev.write_at(&before, 0).unwrap();
    st_dev.flush().unwrap();
    drop(st_dev);
    let out = Command::new(&vm_run)
        .args(["-t", "300", "-w"])
        .arg(d)
        .args(["--", "bash inside.sh"])
        .output()
        .expect("vm-run starts");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("kernel-lab-done"),
        "kernel lab run failed:\n{text}"
    );

    assert_eq!(
        std::fs::read_to_string(d.join("lin.kernel")).unwrap(),
        lin,
        "kernel table of kv/lin"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("st.kernel")).unwrap(),
        st,
        "kernel table of kv/st"
    );
    // What the kernel wrote through /dev/mapper/kv-lin is where tessera's table says.
    assert!(
        read_linear(d, &lin) == pattern,
        "data written by the kernel is not where tessera maps it"
    );
    // The kernel read what tessera wrote to the striped LV.
    let kernel_saw = std::fs::read_to_string(d.join("st.before.sha")).unwrap();
    assert_eq!(
        kernel_saw.trim(),
        sha256(&before, d),
        "the kernel read other bytes than tessera wrote to kv/st"
    );
    // tessera's activation reads what the kernel wrote, linear and striped.
    for (lv, len) in [("lin", 52usize << 20), ("st", 24 << 20)] {
        let dev = activate(d, lv);
        let mut back = vec![0u8; len];
        dev.read_at(&mut back, 0).unwrap();
        assert!(
            back == pattern[..len],
            "kv/{lv} read through tessera differs from what the kernel wrote"
        );
    }
    // And lvm2 left the VG as tessera reads it.
    let lvs = common::report_rows(&t(&["lv", "list", "--json"]));
    assert_eq!(lvs.len(), 2);
}

const NBD_INSIDE: &str = r#"set -eu
mkdir -p /tmp/lvmconf
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
ip link set lo up 2>/dev/null || true
# The state directory (with the control socket) on the guest's own /tmp: the shared folder
# cannot hold sockets.
serve() {
  "$TESSERA" --devices q0.img,q1.img,q2.img --state-dir /tmp/tessera-state serve --listen 127.0.0.1:10809 > serve.log 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q serving serve.log && break; sleep 0.1; done
}
attach() { nbd-client 127.0.0.1 10809 /dev/nbd0 -N "$1" -b 4096 >/dev/null; }
detach() { nbd-client -d /dev/nbd0 >/dev/null 2>&1; }
# 1. The kernel's NBD client writes through tessera's export into kn/st.
serve
attach kn/st
dd if=st.pattern of=/dev/nbd0 bs=1M oflag=direct status=none
sync
detach
# 2. A filesystem on kn/fs through the kernel NBD client.
attach kn/fs
mkfs.ext4 -q -F /dev/nbd0
mkdir -p /tmp/m && mount /dev/nbd0 /tmp/m
cp -a /usr/share/doc/lvm2 /tmp/m/ && echo hello > /tmp/m/hello
umount /tmp/m
fsck.ext4 -fn /dev/nbd0 > fsck.log 2>&1; echo "fsck=$?" > fsck.rc
detach
kill $pid; wait $pid 2>/dev/null || true
# 3. The real lvm2 activates the VG: what the export took is on /dev/mapper/kn-st, and the
# kernel writes kn-lin itself.
for i in 0 1 2; do losetup /dev/loop$i q$i.img; done
vgchange -ay kn >/dev/null
dmsetup mknodes
sha256sum < /dev/mapper/kn-st | cut -d' ' -f1 > st.lvm2.sha
dd if=lin.pattern of=/dev/mapper/kn-lin bs=1M oflag=direct status=none
vgchange -an kn >/dev/null
for i in 0 1 2; do losetup -d /dev/loop$i; done
# 4. The kernel NBD client reads kn-lin back through tessera's export.
serve
attach kn/lin
sha256sum < /dev/nbd0 | cut -d' ' -f1 > lin.nbd.sha
detach
kill $pid; wait $pid 2>/dev/null || true
echo nbd-lab-done
"#;

/// The kernel's own NBD client on tessera's export (in the lab VM): data it writes through
/// the export is what the real lvm2's `vgchange -ay` then shows at /dev/mapper/VG-LV, data the
/// kernel writes to /dev/mapper/VG-LV is what it reads back through the export, and mkfs,
/// mount and fsck work on an exported LV.
#[test]
fn the_kernel_nbd_client_and_lvm2_see_the_same_bytes_as_tessera_serve() {
    let vm_run = vm_run();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    for i in 0..3 {
        std::fs::File::create(d.join(format!("q{i}.img")))
            .unwrap()
            .set_len(48 << 20)
            .unwrap();
    }
    let state = d.join("state");
    let t = |args: &[&str]| {
        let out = Command::new(common::tessera_path())
            .current_dir(d)
            .args(["--devices", "q0.img,q1.img,q2.img", "--state-dir"])
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tessera {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    t(&["vg", "create", "kn", "q0.img", "q1.img", "q2.img"]);
    t(&["lv", "create", "kn/lin", "-L", "12M"]);
    t(&["lv", "create", "kn/st", "-L", "24M", "-i", "3", "-I", "64k"]);
    t(&["lv", "create", "kn/fs", "-L", "64M"]);
    t(&["lv", "extend", "kn/lin", "-L", "+20M"]);
    let st: Vec<u8> = (0..24usize << 20)
        .map(|i| (i as u8).wrapping_mul(13) ^ (i >> 11) as u8)
        .collect();
    let lin: Vec<u8> = (0..32usize << 20)
        .map(|i| (i as u8).wrapping_mul(7) ^ (i >> 9) as u8)
        .collect();
    std::fs::write(d.join("st.pattern"), &st).unwrap();
    std::fs::write(d.join("lin.pattern"), &lin).unwrap();
    std::fs::write(d.join("inside.sh"), NBD_INSIDE).unwrap();
    // The guest sees the host's files but not its /tmp, where a checkout may live: the
    // binary goes into the shared working folder.
    let tessera = d.join("tessera");
    std::fs::copy(common::tessera_path(), &tessera).unwrap();
    let out = Command::new(&vm_run)
        .args(["-t", "400", "-w"])
        .arg(d)
        .args([
            "--",
            &format!("TESSERA={} bash inside.sh", tessera.display()),
        ])
        .output()
        .expect("vm-run starts");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("nbd-lab-done"),
        "kernel lab run failed:\n{text}\nserve.log:\n{}",
        std::fs::read_to_string(d.join("serve.log")).unwrap_or_default()
    );
    let read = |f: &str| {
        std::fs::read_to_string(d.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(
        read("st.lvm2.sha"),
        sha256(&st, d),
        "lvm2 shows other bytes than the NBD client wrote"
    );
    assert_eq!(
        read("lin.nbd.sha"),
        sha256(&lin, d),
        "the export shows other bytes than the kernel wrote"
    );
    assert_eq!(read("fsck.rc"), "fsck=0", "{}", read("fsck.log"));
}
