//! A DDF container served writable by tessera, its records kept as mdmon keeps them.
//!
//! In the kernel lab the real mdadm makes a container over five image files, a raid5 over
//! four of them and a raid1 over two, and fills both virtual disks through the kernel's md;
//! the fifth disk, in no virtual disk, is the container's global spare. On this machine tessera serves the
//! container writable over NBD: writes go in, a member of both virtual disks fails, both
//! rebuild onto the spare while writes go on, and the serve stops cleanly. The data read
//! through tessera is byte-exact, and tessera's own view shows the failed disk, the spare
//! active and both virtual disks optimal and consistent. Copies of the images served again
//! and killed (SIGKILL) in the middle of a write are left marked not consistent.
//!
//! Back in the lab, mdadm --examine reads tessera's records (the failed disk, the spare
//! active, the virtual disks optimal and consistent), mdadm assembles the container clean
//! (no resync) with the data byte for byte, and assembles the killed copies with a resync.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const R5_BYTES: usize = 12 << 20;
const R1_BYTES: usize = 4 << 20;

const MAKE: &str = r#"
set -e
cd "$DIR"
mkdir -p /run/mdadm
for i in 0 1 2 3 4; do
  truncate -s 48M d$i.img
  [ -e /dev/loop$i ] || mknod /dev/loop$i b 7 $i
  losetup /dev/loop$i d$i.img
done
# Five disks in the container; the virtual disks on the first four (mdadm 4.2 crashes
# adding a disk to a DDF container), so the fifth is a global spare.
mdadm --create /dev/md/ddf0 -e ddf -n 5 --run /dev/loop0 /dev/loop1 /dev/loop2 /dev/loop3 /dev/loop4
mdadm --create /dev/md/r5 -l 5 -n 4 -z 4M --chunk 64 --assume-clean --run /dev/loop0 /dev/loop1 /dev/loop2 /dev/loop3
mdadm --create /dev/md/r1 -l 1 -n 2 -z 4M --assume-clean --run /dev/loop0 /dev/loop1
pgrep -a mdmon
dd if=r5.bin of=/dev/md/r5 bs=64k oflag=direct status=none
dd if=r1.bin of=/dev/md/r1 bs=64k oflag=direct status=none
sync
echo "SIZE r5 $(blockdev --getsize64 /dev/md/r5)"
echo "SIZE r1 $(blockdev --getsize64 /dev/md/r1)"
cat /proc/mdstat
mdadm --stop /dev/md/r5 /dev/md/r1
mdadm --stop /dev/md/ddf0
mdadm --examine /dev/loop4 | sed -n '/Physical Disks/,$p'
for i in 0 1 2 3 4; do losetup -d /dev/loop$i; done
echo LAB-DONE
"#;

const CHECK: &str = r#"
cd "$DIR"
mkdir -p /run/mdadm
for i in 0 1 2 3 4 5 6 7 8 9; do [ -e /dev/loop$i ] || mknod /dev/loop$i b 7 $i; done
for i in 0 1 2 3 4; do losetup /dev/loop$i d$i.img || exit 1; done
echo "== examine"
mdadm --examine /dev/loop4
echo "== end examine"
mdadm --assemble /dev/md/ddf0 /dev/loop0 /dev/loop1 /dev/loop2 /dev/loop3 /dev/loop4
mdadm -I /dev/md/ddf0
sleep 2
cat /proc/mdstat
grep -q -E 'resync|recover' /proc/mdstat && echo "MAIN-SYNCING"
echo "MAIN-RESYNCS $(dmesg | grep -c 'resync of RAID array')"
for v in r5 r1; do
  dev=$(ls -d /dev/md/$v /dev/md/${v}_* 2>/dev/null | head -1)
  echo "STATE $v $(mdadm --detail $dev | sed -n 's/^ *State : //p')"
  echo "SUM $v $(sha256sum < $dev | cut -d' ' -f1)"
done
for v in r5 r1; do mdadm --stop $(ls -d /dev/md/$v /dev/md/${v}_* 2>/dev/null | head -1); done
mdadm --stop /dev/md/ddf0
for i in 0 1 2 3 4; do losetup -d /dev/loop$i; done
# No udev here: the links of the stopped arrays stay unless removed.
rm -f /dev/md/r5 /dev/md/r1 /dev/md/ddf0

for i in 0 1 2 3 4; do losetup /dev/loop$((i+5)) kill/d$i.img || exit 1; done
mdadm --assemble /dev/md/ddf1 /dev/loop5 /dev/loop6 /dev/loop7 /dev/loop8 /dev/loop9
mdadm -I /dev/md/ddf1
sleep 1
cat /proc/mdstat
dev=$(ls -d /dev/md/r5 /dev/md/r5_* 2>/dev/null | head -1)
md=$(basename $(readlink -f $dev))
mdadm --wait $dev
sleep 1
dmesg | grep 'resync of RAID array'
echo "KILLED-RESYNC $(dmesg | grep -c "resync of RAID array $md")"
echo "KILLED-LAST $(cat /sys/block/$md/md/last_sync_action)"
echo "KILLED-STATE $(mdadm --detail $dev | sed -n 's/^ *State : //p')"
for v in r5 r1; do mdadm --stop $(ls -d /dev/md/$v /dev/md/${v}_* 2>/dev/null | head -1); done
mdadm --stop /dev/md/ddf1
for i in 5 6 7 8 9; do losetup -d /dev/loop$i; done
echo LAB-DONE
"#;

/// The DDF container node in `show --json`.
fn container(devices: &str, state: &Path) -> Value {
    let json: Value =
        serde_json::from_str(&common::tessera(devices, state, &["show", "--json"])).unwrap();
    json["devices"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["children"].as_array().unwrap())
        .find(|c| c["detail"]["metadata"] == "ddf")
        .unwrap_or_else(|| panic!("no DDF container in {json:#}"))
        .clone()
}

fn subarray<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["detail"]["subarrays"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {c:#}"))
}

fn disk_role(c: &Value, path: &str) -> String {
    c["detail"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == path)
        .unwrap_or_else(|| panic!("no disk {path} in {c:#}"))["role"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Writes `data` at `offset` of an export and into the bytes expected of it.
fn write(addr: &str, export: &str, dir: &Path, want: &mut [u8], offset: usize, data: &[u8]) {
    common::patch(addr, export, dir, offset, data);
    want[offset..offset + data.len()].copy_from_slice(data);
}

/// Waits until the set `name` has finished a recovery.
fn wait_recovered(devices: &str, state: &Path, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let r = common::tessera(devices, state, &["dm", "message", name, "0", "report"]);
        if r.contains("last_action=recover\n") && r.contains("last_complete=true") {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: recovery never finished: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ddf_served_writable_rebuilds_onto_the_spare_and_mdadm_reads_the_records() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let mut r5 = common::random(R5_BYTES, 5);
    let mut r1 = common::random(R1_BYTES, 1);
    std::fs::write(d.join("r5.bin"), &r5).unwrap();
    std::fs::write(d.join("r1.bin"), &r1).unwrap();

    let t = Instant::now();
    let out = common::lab_script(d, &format!("DIR={}\n{MAKE}", d.display()), 600);
    eprintln!("lab (make): {:.0} s", t.elapsed().as_secs_f64());
    assert!(out.contains("LAB-DONE"), "the lab run failed:\n{out}");
    assert!(out.contains("mdmon"), "mdmon was not running:\n{out}");
    assert!(out.contains("Global-Spare"), "no global spare:\n{out}");
    assert_eq!(common::lab_line(&out, "SIZE r5 "), R5_BYTES.to_string());
    assert_eq!(common::lab_line(&out, "SIZE r1 "), R1_BYTES.to_string());

    let path = |i: usize| d.join(format!("d{i}.img")).display().to_string();
    let all = (0..5).map(path).collect::<Vec<_>>().join(",");
    let state = d.join("state");
    let c = container(&all, &state);
    assert_eq!(c["state"], "clean", "{c:#}");
    assert_eq!(disk_role(&c, &path(4)), "spare", "{c:#}");
    for name in ["r5", "r1"] {
        let s = subarray(&c, name);
        assert_eq!(s["state"], "clean", "{s:#}");
        assert_eq!(s["ddf_state"], "optimal, consistent", "{s:#}");
        assert_eq!(s["spares"][0]["device"], path(4), "{s:#}");
    }
    // The member to fail: the raid1's first, which the raid5 uses too.
    let victim = subarray(&c, "r1")["members"][0]["device"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        subarray(&c, "r5")["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["device"] == victim.as_str()),
        "{c:#}"
    );

    let t = Instant::now();
    {
        let server = common::serve(&all, &state, &[]);
        let a = &server.addr;
        assert_eq!(
            common::export_sum(a, "md/r5", d),
            common::sha(&r5),
            "md/r5 as mdadm wrote it"
        );
        assert_eq!(
            common::export_sum(a, "md/r1", d),
            common::sha(&r1),
            "md/r1 as mdadm wrote it"
        );
        write(
            a,
            "md/r5",
            d,
            &mut r5,
            1 << 20,
            &common::random(200_000, 11),
        );
        write(a, "md/r1", d, &mut r1, 300_000, &common::random(70_000, 12));
        // Slow enough that writes land during the rebuild.
        common::tessera(&all, &state, &["md", "speed", "r5", "4000", "4000"]);
        common::tessera(&all, &state, &["md", "fail", "r5", &victim]);
        common::tessera(&all, &state, &["md", "fail", "r1", &victim]);
        write(
            a,
            "md/r5",
            d,
            &mut r5,
            9 << 20,
            &common::random(300_000, 13),
        );
        write(
            a,
            "md/r1",
            d,
            &mut r1,
            3 << 20,
            &common::random(100_000, 14),
        );
        wait_recovered(&all, &state, "md-r5");
        wait_recovered(&all, &state, "md-r1");
        write(
            a,
            "md/r5",
            d,
            &mut r5,
            5 << 20,
            &common::random(123_456, 15),
        );
        write(a, "md/r1", d, &mut r1, 0, &common::random(4096, 16));
        assert_eq!(
            common::export_sum(a, "md/r5", d),
            common::sha(&r5),
            "md/r5 after the rebuild"
        );
        assert_eq!(
            common::export_sum(a, "md/r1", d),
            common::sha(&r1),
            "md/r1 after the rebuild"
        );
        let status = server.stop();
        assert!(status.success(), "serve stopped with {status}");
    }
    eprintln!("serve, fail, rebuild: {:.1} s", t.elapsed().as_secs_f64());

    let c = container(&all, &state);
    assert_eq!(disk_role(&c, &victim), "left out", "{c:#}");
    assert_eq!(disk_role(&c, &path(4)), "active", "{c:#}");
    for name in ["r5", "r1"] {
        let s = subarray(&c, name);
        assert_eq!(s["state"], "clean", "{s:#}");
        assert_eq!(s["ddf_state"], "optimal, consistent", "{s:#}");
        assert!(
            s["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["device"] == path(4).as_str() && m["state"] == "Online"),
            "{s:#}"
        );
    }
    // Read back through a read-only serve: byte-exact.
    {
        let server = common::serve(&all, &state, &["--read-only"]);
        assert_eq!(
            common::export_sum(&server.addr, "md/r5", d),
            common::sha(&r5)
        );
        assert_eq!(
            common::export_sum(&server.addr, "md/r1", d),
            common::sha(&r1)
        );
    }

    // Copies served again and killed in the middle of a write: marked not consistent.
    let kill = d.join("kill");
    std::fs::create_dir(&kill).unwrap();
    for i in 0..5 {
        common::run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(path(i))
                .arg(kill.join(format!("d{i}.img"))),
        );
    }
    let kill_all = (0..5)
        .map(|i| kill.join(format!("d{i}.img")).display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let kstate = kill.join("state");
    {
        let server = common::serve(&kill_all, &kstate, &[]);
        let big = d.join("big.bin");
        std::fs::write(&big, common::random(R5_BYTES, 21)).unwrap();
        // Writes go on until the serve dies, however fast one copy is on this machine.
        let mut copy = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while nbdcopy '{}' '{}/md/r5'; do :; done",
                big.display(),
                server.addr
            ))
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            copy.try_wait().unwrap().is_none(),
            "the writes stopped before the serve was killed"
        );
        drop(server); // SIGKILL
        let _ = copy.kill();
        let _ = copy.wait();
    }
    let kc = container(&kill_all, &kstate);
    let s = subarray(&kc, "r5");
    assert_eq!(s["ddf_state"], "optimal, not consistent", "{s:#}");
    assert!(
        kc["children"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|n| n["problems"].as_array().unwrap())
            .any(|p| p
                .as_str()
                .unwrap()
                .contains("md/r5: the DDF records say it is not consistent")),
        "{kc:#}"
    );

    let t = Instant::now();
    let out = common::lab_script(d, &format!("DIR={}\n{CHECK}", d.display()), 600);
    eprintln!("lab (check): {:.0} s", t.elapsed().as_secs_f64());
    eprintln!("{out}");
    assert!(out.contains("LAB-DONE"), "the lab run failed:\n{out}");
    let examine = out
        .split("== examine")
        .nth(1)
        .and_then(|s| s.split("== end examine").next())
        .unwrap();
    let states: Vec<&str> = examine
        .lines()
        .filter(|l| l.trim_start().starts_with("state["))
        .collect();
    assert_eq!(states.len(), 2, "{examine}");
    for l in &states {
        assert!(l.contains("Optimal, Consistent"), "{l}\n{examine}");
    }
    let pds: Vec<&str> = examine
        .lines()
        .skip_while(|l| !l.contains("Physical Disks"))
        .filter(|l| l.contains("/"))
        .collect();
    assert_eq!(
        pds.iter().filter(|l| l.contains("Failed")).count(),
        1,
        "{examine}"
    );
    assert!(
        !examine.contains("Global-Spare"),
        "the spare is still a spare:\n{examine}"
    );
    assert!(!examine.contains("Rebuilding"), "{examine}");
    assert!(
        !out.contains("MAIN-SYNCING"),
        "mdadm resynced tessera's clean records:\n{out}"
    );
    for (name, want) in [("r5", &r5), ("r1", &r1)] {
        assert_eq!(
            common::lab_line(&out, &format!("SUM {name} ")),
            common::sha(want),
            "{name}"
        );
        let st = common::lab_line(&out, &format!("STATE {name} "));
        assert!(st.starts_with("clean"), "{name}: {st}");
        assert!(!st.contains("degraded"), "{name}: {st}");
    }
    assert_eq!(common::lab_line(&out, "MAIN-RESYNCS "), "0", "{out}");
    assert_eq!(
        common::lab_line(&out, "KILLED-RESYNC "),
        "1",
        "mdadm did not resync the killed copy:\n{out}"
    );
    assert_eq!(common::lab_line(&out, "KILLED-LAST "), "resync", "{out}");
    assert!(
        common::lab_line(&out, "KILLED-STATE ").starts_with("clean"),
        "{out}"
    );
}
