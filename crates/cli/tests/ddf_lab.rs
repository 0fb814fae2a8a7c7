//! SNIA DDF containers made by the real mdadm in the kernel lab: a container over four
//! image files with three subarrays (raid5 over four, a two-level raid10 over four, raid1
//! over two, with ext4 on it), each filled and checksummed through the kernel's md with
//! mdmon running, then stopped. Back on this machine tessera shows the container and its
//! subarrays (names, levels, sizes, what lies inside) and serves every subarray over NBD
//! byte for byte as the kernel wrote it, whole and with a member missing; served writable
//! with a member missing, the raid5 takes writes degraded and its records say so.

mod common;
#[path = "common/subarray_detail.rs"]
mod subarray_detail;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

const SCRIPT: &str = r#"
set -e
cd "$DIR"
for i in 0 1 2 3; do truncate -s 48M d$i.img; losetup /dev/loop$i d$i.img; done
mdadm --create /dev/md/ddf0 -e ddf -n 4 --run /dev/loop0 /dev/loop1 /dev/loop2 /dev/loop3
mdadm --create /dev/md/r5 -l 5 -n 4 -z 4M --chunk 64 --assume-clean --run /dev/md/ddf0
mdadm --create /dev/md/r10 -l 10 -n 4 -z 2M --chunk 64 --assume-clean --run /dev/md/ddf0
mdadm --create /dev/md/r1 -l 1 -n 2 -z 3M --assume-clean --run /dev/md/ddf0
pgrep -a mdmon
cat /proc/mdstat
for a in r5 r10 r1; do
  dev=$(readlink -f /dev/md/$a)
  size=$(blockdev --getsize64 $dev)
  if [ $a = r1 ]; then
    mkfs.ext4 -q -F $dev
  else
    head -c $size /dev/urandom | dd of=$dev bs=64k iflag=fullblock oflag=direct status=none
  fi
  sync
  echo "SIZE $a $size"
  echo "SHA $a $(head -c $size $dev | sha256sum | cut -d' ' -f1)"
done
for a in r5 r10 r1; do
  mdadm --wait-clean /dev/md/$a >/dev/null 2>&1 || true
  mdadm --detail /dev/md/$a | sed "s|^|detail $a |"
  mdadm --detail --export /dev/md/$a | sed "s|^|detail $a |"
done
mdadm --stop /dev/md/r5 /dev/md/r10 /dev/md/r1
mdadm --stop /dev/md/ddf0
for i in 0 1 2 3; do losetup -d /dev/loop$i; done
echo LAB-DONE
"#;

/// The container node (a child of the disk it is shown under) in `show --json`.
fn container(json: &Value) -> &Value {
    json["devices"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["children"].as_array().unwrap())
        .find(|c| c["detail"]["metadata"] == "ddf")
        .unwrap_or_else(|| panic!("no DDF container in {json:#}"))
}

fn images(dir: &Path, which: &[usize]) -> String {
    which
        .iter()
        .map(|i| dir.join(format!("d{i}.img")).display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn mdadm_ddf_subarrays_are_shown_and_served_byte_exact() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let out = common::lab_script(d, &format!("DIR={}\n{SCRIPT}", d.display()), 600);
    assert!(out.contains("LAB-DONE"), "the lab run failed:\n{out}");
    assert!(out.contains("mdmon"), "mdmon was not running:\n{out}");
    let mut want: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for a in ["r5", "r10", "r1"] {
        let size: u64 = common::lab_line(&out, &format!("SIZE {a} "))
            .parse()
            .unwrap();
        let sha = common::lab_line(&out, &format!("SHA {a} ")).to_string();
        want.insert(a.to_string(), (size, sha));
    }
    assert_eq!(want["r5"].0, 12 << 20);
    assert_eq!(want["r10"].0, 4 << 20);
    assert_eq!(want["r1"].0, 3 << 20);

    let state = d.join("state");
    let all = images(d, &[0, 1, 2, 3]);
    let json: Value =
        serde_json::from_str(&common::tessera(&all, &state, &["show", "--json"])).unwrap();
    let c = container(&json);
    assert_eq!(c["state"], "clean", "{c:#}");
    // md detail says what mdadm --detail said of each subarray in the lab.
    for a in ["r5", "r10", "r1"] {
        let ours: Value = serde_json::from_str(&common::tessera(
            &all,
            &state,
            &["md", "detail", a, "--json"],
        ))
        .unwrap();
        subarray_detail::compare(&subarray_detail::mdadm_lines(&out, a), &ours, &|p| {
            let stem = Path::new(p).file_stem().unwrap().to_string_lossy();
            format!("/dev/loop{}", stem.trim_start_matches('d'))
        });
    }
    assert!(c["problems"].as_array().unwrap().is_empty(), "{c:#}");
    assert_eq!(c["detail"]["disks"].as_array().unwrap().len(), 4);
    let subs = c["detail"]["subarrays"].as_array().unwrap();
    for (name, level, ddf_level, disks) in [
        ("r5", "raid5", "RAID5", 4),
        ("r10", "raid10", "RAID1", 4),
        ("r1", "raid1", "RAID1", 2),
    ] {
        let s = subs
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {c:#}"));
        assert_eq!(s["level"], level, "{s}");
        assert_eq!(s["ddf_level"], ddf_level, "{s}");
        assert_eq!(s["raid_disks"], disks, "{s}");
        assert_eq!(s["size_bytes"], want[name].0, "{s}");
        assert_eq!(s["state"], "clean", "{s}");
        let node = c["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == format!("md/{name}"))
            .unwrap_or_else(|| panic!("no md/{name} under the container: {c:#}"));
        assert_eq!(node["size_bytes"], want[name].0, "{node}");
        assert_eq!(node["state"], "readable", "{node}");
    }
    let r1 = c["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "md/r1")
        .unwrap();
    assert_eq!(r1["format"], "ext4", "{r1}");
    let text = common::tessera(&all, &state, &["show"]);
    assert!(
        text.contains("DDF container, 4 disk(s), 3 virtual disk(s)"),
        "{text}"
    );

    // Every subarray through NBD, byte for byte.
    {
        let server = common::serve(&all, &state, &["--read-only"]);
        for (name, (_, sha)) in &want {
            let got = common::export_sum(&server.addr, &format!("md/{name}"), d);
            assert_eq!(&got, sha, "md/{name} served whole");
        }
    }
    // Served writable (tessera keeps the DDF records as mdmon does; see
    // ddf_rebuild_lab.rs), every subarray is exported, and reading changes nothing.
    {
        let server = common::serve(&all, &state, &[]);
        let list = std::process::Command::new("nbdinfo")
            .args(["--list", "--json", &server.addr])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&list.stdout);
        for name in want.keys() {
            assert!(text.contains(&format!("md/{name}")), "{text}");
        }
        let got = common::export_sum(&server.addr, "md/r1", d);
        assert_eq!(got, want["r1"].1, "md/r1 served writable");
    }
    // Disk 0 missing: raid5 and raid10 run degraded, raid1 lies on two others or on it.
    let three = images(d, &[1, 2, 3]);
    let json: Value =
        serde_json::from_str(&common::tessera(&three, &state, &["show", "--json"])).unwrap();
    let c = container(&json);
    assert_eq!(c["state"], "degraded", "{c:#}");
    let problems = c["children"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["problems"].as_array().unwrap())
        .map(|p| p.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        problems.contains("md/r5: degraded: slot(s)") && problems.contains("is present"),
        "{problems}"
    );
    {
        let server = common::serve(&three, &state, &["--read-only"]);
        for (name, (_, sha)) in &want {
            let got = common::export_sum(&server.addr, &format!("md/{name}"), d);
            assert_eq!(&got, sha, "md/{name} served without disk 0");
        }
    }
    // Disk 0 missing and served writable (no spare to rebuild onto): the raid5 takes a
    // write degraded, and the records say so as mdmon would: disk 0 failed and missing,
    // the raid5 degraded, consistent once the serve stops.
    let patch = common::random(100_000, 3);
    {
        let server = common::serve(&three, &state, &[]);
        common::patch(&server.addr, "md/r5", d, 4096, &patch);
        let status = server.stop();
        assert!(status.success(), "serve stopped with {status}");
    }
    let all_json: Value =
        serde_json::from_str(&common::tessera(&all, &state, &["show", "--json"])).unwrap();
    let c = container(&all_json);
    let disk0 = c["detail"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["device"] == d.join("d0.img").display().to_string())
        .unwrap_or_else(|| panic!("{c:#}"));
    assert_eq!(disk0["state"], "Failed", "{c:#}");
    let r5 = c["detail"]["subarrays"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "r5")
        .unwrap();
    assert_eq!(r5["ddf_state"], "degraded, consistent", "{r5:#}");
    assert_eq!(r5["state"], "degraded", "{r5:#}");
    let server = common::serve(&all, &state, &["--read-only"]);
    let bytes = common::read_export(&server.addr, "md/r5", d);
    assert_eq!(&bytes[4096..4096 + patch.len()], &patch[..]);
}
