//! Intel IMSM containers made by the real mdadm in the kernel lab, read and served by
//! tessera on the host:
//! - `show --json` lists each container and its volumes (names, levels, sizes), and
//!   `serve --read-only` gives every volume byte-exact (sha256 through NBD): raid5 and
//!   raid0 sharing a container of four disks, raid10 over four, raid1 over two;
//! - with a member left out, the raid5 volume runs degraded, byte-exact; the raid0 one is
//!   refused, saying why;
//! - `serve` writable: tessera writes to the volumes, records them dirty then clean in the
//!   MPB as mdmon does, and back in the lab mdadm assembles the containers, finds them
//!   clean (no resync) and reads the same bytes.

mod common;
#[path = "common/subarray_detail.rs"]
mod subarray_detail;

use std::path::Path;
use std::process::Command;

use common::{export_sum, lab_line, patch, random, serve, tessera};
use serde_json::Value;

/// In the lab: containers over loop devices (serials `/dev/loopN`, as mdadm records them
/// with IMSM_DEVNAME_AS_SERIAL): imsm0 over d0-d3 with a raid5 volume of 8 MiB per member
/// and a raid0 in the space left, imsm1 over d4-d7 with a raid10, imsm2 over d8-d9 with a
/// raid1; each volume filled with random data and summed; then all stopped.
const MAKE: &str = r#"
export IMSM_NO_PLATFORM=1 IMSM_DEVNAME_AS_SERIAL=1
mkdir -p /run/mdadm
command -v mdmon >/dev/null && echo "mdmon present"
for i in $(seq 0 9); do
  truncate -s 32M d$i.img
  [ -e /dev/loop$i ] || mknod /dev/loop$i b 7 $i
  losetup /dev/loop$i d$i.img || exit 1
done
L() { for i in "$@"; do echo /dev/loop$i; done; }
mdadm --create /dev/md/imsm0 -e imsm -n 4 --run $(L 0 1 2 3) || exit 1
mdadm --create /dev/md/vol5 -l 5 -n 4 --size=8M --chunk=64 --run /dev/md/imsm0 || exit 1
mdadm --create /dev/md/vol0 -l 0 -n 4 --chunk=32 --run /dev/md/imsm0 || exit 1
mdadm --create /dev/md/imsm1 -e imsm -n 4 --run $(L 4 5 6 7) || exit 1
mdadm --create /dev/md/vol10 -l 10 -n 4 --size=8M --chunk=64 --run /dev/md/imsm1 || exit 1
mdadm --create /dev/md/imsm2 -e imsm -n 2 --run $(L 8 9) || exit 1
mdadm --create /dev/md/vol1 -l 1 -n 2 --size=12M --run /dev/md/imsm2 || exit 1
for v in vol5 vol10 vol1; do mdadm --wait /dev/md/$v; done
cat /proc/mdstat
for v in vol5 vol0 vol10 vol1; do
  sz=$(blockdev --getsize64 /dev/md/$v)
  echo "size $v $sz"
  dd if=/dev/urandom of=/dev/md/$v bs=64k count=$((sz/65536)) oflag=direct status=none || exit 1
  echo "sum $v $(sha256sum < /dev/md/$v | cut -d' ' -f1)"
done
sync
for v in vol5 vol0 vol10 vol1; do
  mdadm --wait-clean /dev/md/$v >/dev/null 2>&1
  mdadm --detail /dev/md/$v | sed "s|^|detail $v |"
done
mdadm --stop /dev/md/vol5 /dev/md/vol0 /dev/md/vol10 /dev/md/vol1 || exit 1
mdadm --stop /dev/md/imsm0 /dev/md/imsm1 /dev/md/imsm2 || exit 1
echo "family imsm0 $(mdadm -E /dev/loop0 | awk '/^ *Family :/ {print $NF}')"
for i in $(seq 0 9); do losetup -d /dev/loop$i; done
echo lab-done
"#;

/// Back in the lab, on the images tessera wrote to: mdadm assembles the containers and
/// starts their volumes; their state and sums.
const CHECK: &str = r#"
export IMSM_NO_PLATFORM=1 IMSM_DEVNAME_AS_SERIAL=1
mkdir -p /run/mdadm
for i in $(seq 0 9); do
  [ -e /dev/loop$i ] || mknod /dev/loop$i b 7 $i
  losetup /dev/loop$i loop$i.img || exit 1
done
L() { for i in "$@"; do echo /dev/loop$i; done; }
mdadm --assemble /dev/md/imsm0 $(L 0 1 2 3) || exit 1
mdadm --assemble /dev/md/imsm1 $(L 4 5 6 7) || exit 1
mdadm --assemble /dev/md/imsm2 $(L 8 9) || exit 1
for c in imsm0 imsm1 imsm2; do mdadm -I /dev/md/$c; done
sleep 1
cat /proc/mdstat
for d in 0 4 8; do mdadm -E /dev/loop$d | grep -E "^\[|Dirty State|Map State|Checksum"; done
# mdadm -I names them NAME_0 when the names are taken or not this host's.
for v in vol5 vol0 vol10 vol1; do
  dev=$(ls -d /dev/md/$v /dev/md/${v}_* 2>/dev/null | head -1)
  echo "sum $v $(sha256sum < $dev | cut -d' ' -f1)"
done
grep -q resync /proc/mdstat && echo "resync-started"
for v in vol5 vol0 vol10 vol1; do mdadm --stop $(ls -d /dev/md/$v /dev/md/${v}_* 2>/dev/null); done
mdadm --stop /dev/md/imsm0 /dev/md/imsm1 /dev/md/imsm2
for i in $(seq 0 9); do losetup -d /dev/loop$i; done
echo lab-done
"#;

/// The IMSM container nodes of `show --json`'s tree.
fn containers(v: &Value, out: &mut Vec<Value>) {
    if v["kind"] == "md" && v["detail"]["container"] == "imsm" {
        out.push(v.clone());
    }
    for key in ["children", "devices"] {
        for c in v[key].as_array().into_iter().flatten() {
            containers(c, out);
        }
    }
    for c in v.as_array().into_iter().flatten() {
        containers(c, out);
    }
}

fn shown(devices: &str, state: &Path) -> Vec<Value> {
    let text = tessera(devices, state, &["show", "--json"]);
    let json: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    containers(&json, &mut out);
    out
}

/// The container holding volume `name`.
fn holding<'a>(cs: &'a [Value], name: &str) -> &'a Value {
    cs.iter()
        .find(|c| {
            c["detail"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == name)
        })
        .unwrap_or_else(|| panic!("no container holds {name}: {cs:#?}"))
}

fn volume<'a>(cs: &'a [Value], name: &str) -> &'a Value {
    holding(cs, name)["detail"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap()
}

fn exports(addr: &str) -> Vec<String> {
    let out = Command::new("nbdinfo")
        .args(["--list", "--json", addr])
        .output()
        .expect("nbdinfo runs");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut names: Vec<String> = json["exports"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|x| x["export-name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn devices(dir: &Path, disks: impl IntoIterator<Item = usize>) -> String {
    disks
        .into_iter()
        .map(|i| dir.join(format!("loop{i}.img")).display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

const VOLUMES: [(&str, &str, u64); 4] = [
    ("vol5", "raid5", 4),
    ("vol0", "raid0", 4),
    ("vol10", "raid10", 4),
    ("vol1", "raid1", 2),
];

#[test]
fn mdadm_imsm_containers_are_shown_and_served_byte_exact() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let out = common::lab_script(d, MAKE, 580);
    assert!(out.contains("lab-done"), "the lab did not finish:\n{out}");
    // The images named as the loop devices mdadm recorded as their serials: tessera
    // tells the disks apart by those names.
    for i in 0..10 {
        std::fs::rename(d.join(format!("d{i}.img")), d.join(format!("loop{i}.img"))).unwrap();
    }
    let all = devices(d, 0..10);
    let state = d.join("state");
    let size = |v: &str| -> u64 { lab_line(&out, &format!("size {v} ")).parse().unwrap() };
    let sum = |v: &str| lab_line(&out, &format!("sum {v} ")).to_string();

    let cs = shown(&all, &state);
    assert_eq!(cs.len(), 3, "{cs:#?}");
    // md detail says what mdadm --detail said of each volume in the lab.
    for (v, _, _) in VOLUMES {
        let ours: Value =
            serde_json::from_str(&tessera(&all, &state, &["md", "detail", v, "--json"])).unwrap();
        subarray_detail::compare(&subarray_detail::mdadm_lines(&out, v), &ours, &|p| {
            format!(
                "/dev/{}",
                Path::new(p).file_stem().unwrap().to_string_lossy()
            )
        });
    }
    for c in &cs {
        assert_eq!(c["state"], "complete", "{c}");
    }
    let c0 = holding(&cs, "md/vol5");
    assert_eq!(
        c0["detail"]["family"],
        lab_line(&out, "family imsm0 "),
        "{c0}"
    );
    let names: Vec<&str> = c0["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["md/vol5", "md/vol0"], "{c0}");
    for (name, level, members) in VOLUMES {
        let v = volume(&cs, &format!("md/{name}"));
        assert_eq!(v["level"], level, "{v}");
        assert_eq!(v["size_bytes"], size(name), "{v}");
        assert_eq!(v["members"], members, "{v}");
        assert_eq!(v["state"], "clean", "{v}");
        assert_eq!(v["dirty"], false, "{v}");
    }

    // Whole, read-only: every volume byte-exact.
    {
        let server = serve(&all, &state, &["--read-only"]);
        assert_eq!(
            exports(&server.addr),
            ["md/vol0", "md/vol1", "md/vol10", "md/vol5"]
        );
        for (v, _, _) in VOLUMES {
            assert_eq!(
                export_sum(&server.addr, &format!("md/{v}"), d),
                sum(v),
                "md/{v}"
            );
        }
    }
    // A member left out of each container (loop0 is in both of imsm0's volumes): the
    // redundant volumes run degraded, byte-exact; the raid0 cannot.
    {
        let some = devices(d, [1, 2, 3, 4, 5, 6, 8]);
        let cs = shown(&some, &state);
        let c0 = holding(&cs, "md/vol5");
        assert_eq!(c0["state"], "degraded", "{c0}");
        assert_eq!(volume(&cs, "md/vol5")["state"], "degraded");
        assert_eq!(volume(&cs, "md/vol10")["state"], "degraded");
        assert_eq!(volume(&cs, "md/vol1")["state"], "degraded");
        assert_eq!(volume(&cs, "md/vol0")["state"], "failed");
        let text = c0.to_string();
        assert!(text.contains("md/vol0: cannot start: slot(s)"), "{c0}");
        assert!(text.contains("(/dev/loop0) is missing"), "{c0}");
        let server = serve(&some, &state, &["--read-only"]);
        assert_eq!(exports(&server.addr), ["md/vol1", "md/vol10", "md/vol5"]);
        for v in ["vol5", "vol10", "vol1"] {
            assert_eq!(
                export_sum(&server.addr, &format!("md/{v}"), d),
                sum(v),
                "md/{v}"
            );
        }
        // (Served writable, a degraded volume records its missing member failed: that,
        // and rebuilds onto spares, imsm_rebuild_lab shows.)
        drop(server);
    }
    // Writable: tessera writes, records dirty then clean; mdadm reads the same back.
    let generation = holding(&cs, "md/vol5")["detail"]["generation"]
        .as_u64()
        .unwrap();
    let mut sums = Vec::new();
    {
        let server = serve(&all, &state, &[]);
        assert_eq!(
            exports(&server.addr),
            ["md/vol0", "md/vol1", "md/vol10", "md/vol5"]
        );
        for (i, (v, _, _)) in VOLUMES.iter().enumerate() {
            let export = format!("md/{v}");
            patch(
                &server.addr,
                &export,
                d,
                4096 * 7 + 512 * i,
                &random(300_000, i as u64 + 1),
            );
            patch(
                &server.addr,
                &export,
                d,
                size(v) as usize - 70_000,
                &random(70_000, 9),
            );
            let now = export_sum(&server.addr, &export, d);
            assert_ne!(now, sum(v), "{export} changed");
            sums.push(now);
        }
        assert!(server.stop().success());
    }
    let cs = shown(&all, &state);
    for (v, _, _) in VOLUMES {
        let vol = volume(&cs, &format!("md/{v}"));
        assert_eq!(vol["dirty"], false, "{vol}");
        assert_eq!(vol["state"], "clean", "{vol}");
    }
    let now = holding(&cs, "md/vol5")["detail"]["generation"]
        .as_u64()
        .unwrap();
    assert!(now >= generation + 2, "generation {generation} -> {now}");

    let out = common::lab_script(d, CHECK, 580);
    assert!(out.contains("lab-done"), "the lab did not finish:\n{out}");
    assert!(!out.contains("resync-started"), "{out}");
    assert!(!out.contains("Dirty State : dirty"), "{out}");
    assert!(!out.contains("incorrect"), "{out}");
    for ((v, _, _), want) in VOLUMES.iter().zip(&sums) {
        assert_eq!(
            lab_line(&out, &format!("sum {v} ")),
            want,
            "md/{v} in mdadm:\n{out}"
        );
    }
}
