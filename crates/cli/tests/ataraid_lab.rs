//! Adaptec ASR, LSI MegaRAID, NVIDIA MediaShield and Promise FastTrak sets that tessera's
//! writers lay out (metadata where the BIOS puts it, data placed by the layout), read three
//! ways: tessera's `show --json` and read-only `serve` on the host, and the real dmraid in the
//! kernel lab. dmraid only looks at whole SCSI/ATA disks that answer with a serial number,
//! which loop devices do not, so the members are scsi_debug disks there. `show --json` must
//! agree with `dmraid -r` (format, set, sectors, data offset of every member) and `dmraid -s`
//! (set name, type, size, stride, devices) field for field; the set dmraid maps in the
//! kernel's device-mapper and the set tessera serves must both hold the bytes the layout put
//! on the members; a mirror, raid5 and mirror of stripes missing a member are still served
//! whole, and serving writable is refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tessera_block::{BlockDevice, FileDevice, OpenOptions};
use tessera_formats::ataraid::{self, Level, Member, Raid5Layout, SetSpec, Vendor};

/// Bytes of each member disk (scsi_debug's dev_size_mb).
const DISK_MIB: u64 = 4;
const DISK_SECTORS: u64 = DISK_MIB * 2048;

type Writer = fn(&dyn BlockDevice, &SetSpec, u32) -> Result<(), ataraid::AtaraidError>;

fn writer(vendor: Vendor) -> Writer {
    match vendor {
        Vendor::Asr => ataraid::asr::write_member,
        Vendor::Lsi => ataraid::lsi::write_member,
        Vendor::Nvidia => ataraid::nvidia::write_member,
        Vendor::Promise => ataraid::promise::write_member,
        other => panic!("{other} is not written here"),
    }
}

fn open(path: &str) -> FileDevice {
    FileDevice::open(path, OpenOptions::default()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Set {
    vendor: Vendor,
    level: Level,
    images: Vec<String>,
    members: Vec<Member>,
    /// The set's size in sectors by the layout: whole stripes of the smallest member.
    sectors: u64,
    /// The pattern's tag.
    tag: u64,
}

impl Set {
    #[allow(clippy::too_many_arguments)]
    fn new(
        dir: &Path,
        vendor: Vendor,
        level: Level,
        count: u32,
        stripe: u32,
        name: &str,
        id: u32,
        first: usize,
    ) -> Set {
        let spec = SetSpec {
            level,
            member_count: count,
            stripe_sectors: stripe,
            member_data_sectors: 6144,
            id,
            name: name.into(),
        };
        let images: Vec<String> = (0..count as usize)
            .map(|i| {
                let p = dir.join(format!("disk-{:02}.img", first + i));
                let f = std::fs::File::create(&p).unwrap();
                f.set_len(DISK_SECTORS * 512).unwrap();
                p.display().to_string()
            })
            .collect();
        for (i, p) in images.iter().enumerate() {
            writer(vendor)(&open(p), &spec, i as u32).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
        let members: Vec<Member> = images
            .iter()
            .map(|p| {
                let probe = ataraid::probers()
                    .iter()
                    .find(|(v, _)| *v == vendor)
                    .unwrap()
                    .1;
                probe(&open(p))
                    .unwrap_or_else(|e| panic!("{p}: {e}"))
                    .unwrap_or_else(|| panic!("{p}: no {vendor} member"))
            })
            .collect();
        for (i, m) in members.iter().enumerate() {
            assert_eq!(m.index as usize, i, "{vendor} {level:?} member order");
        }
        let smallest = members.iter().map(|m| m.data_sectors).min().unwrap();
        let whole = match stripe {
            0 => smallest,
            s => smallest / u64::from(s) * u64::from(s),
        };
        let n = u64::from(count);
        let sectors = match level {
            Level::Raid0 => whole * n,
            Level::Raid1 => whole,
            Level::Raid01 | Level::Raid10 => whole * n / 2,
            Level::Raid5 { .. } => whole * (n - 1),
            Level::Jbod => members.iter().map(|m| m.data_sectors).sum(),
            Level::Spare => 0,
        };
        let tag = 0x7E55_0000 + first as u64;
        let devices: Vec<FileDevice> = images.iter().map(|p| open(p)).collect();
        let placed: Vec<(&dyn BlockDevice, u64)> = devices
            .iter()
            .zip(&members)
            .map(|(d, m)| (d as &dyn BlockDevice, m.data_offset))
            .collect();
        let sizes: Vec<u64> = members.iter().map(|m| m.data_sectors).collect();
        ataraid::write_pattern(level, stripe, &placed, &sizes, sectors, tag).unwrap();
        Set {
            vendor,
            level,
            images,
            members,
            sectors,
            tag,
        }
    }

    fn name(&self) -> &str {
        &self.members[0].set_name
    }

    /// The sha256 of the set's bytes as the layout wrote them.
    fn sum(&self) -> String {
        let mut all = Vec::with_capacity(self.sectors as usize * 512);
        for s in 0..self.sectors {
            all.extend_from_slice(&ataraid::pattern_sector(self.tag, s));
        }
        common::sha(&all)
    }
}

/// Every node of `show --json`, depth first.
fn nodes(json: &Value) -> Vec<&Value> {
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        out.push(v);
        for c in v["children"].as_array().into_iter().flatten() {
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    for d in json["devices"].as_array().expect("devices") {
        walk(d, &mut out);
    }
    out
}

fn lab_script(disks: usize) -> String {
    format!(
        r#"set -u
mkdir -p /run/lock
modprobe sd_mod
modprobe scsi_debug per_host_store=1 add_host={disks} dev_size_mb={DISK_MIB} || exit 1
for i in $(seq 50); do [ $(ls -d /sys/block/sd* 2>/dev/null | wc -l) -ge {disks} ] && break; sleep 0.2; done
i=0
for d in $(ls /sys/block | grep '^sd' | awk '{{ print length($0) " " $0 }}' | sort -n | cut -d' ' -f2); do
  [ -e /dev/$d ] || mknod /dev/$d b $(tr : ' ' < /sys/block/$d/dev)
  img=$(printf 'disk-%02d.img' $i)
  dd if=$img of=/dev/$d bs=1M oflag=direct status=none || exit 1
  echo "MAP /dev/$d $img"
  i=$((i+1))
done
echo '--- r'
dmraid -r -c -c -c
echo '--- s'
dmraid -s -c -c -c
echo '--- ay'
dmraid -ay 2>&1
dmsetup mknodes
dmsetup table
for n in $(dmsetup ls | cut -f1); do echo "SUM $n $(sha256sum < /dev/mapper/$n | cut -d' ' -f1) $(blockdev --getsz /dev/mapper/$n)"; done
echo '--- end'
"#
    )
}

#[test]
fn dmraid_and_tessera_read_the_same_sets() {
    let dir = tempfile::Builder::new()
        .prefix("ataraid-lab-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let d = dir.path();
    let raid5 = Level::Raid5 {
        layout: Raid5Layout::LeftSymmetric,
    };
    let plan: &[(Vendor, Level, u32, u32, &str, u32)] = &[
        (Vendor::Asr, Level::Raid0, 3, 32, "Fast", 0x0A5A_0001),
        (Vendor::Asr, Level::Raid1, 2, 0, "Safe", 0x0A5A_0002),
        (Vendor::Lsi, Level::Raid0, 2, 64, "", 4242),
        (Vendor::Lsi, Level::Raid1, 2, 0, "", 4343),
        (Vendor::Nvidia, Level::Raid0, 2, 32, "", 0x1111_0000),
        (Vendor::Nvidia, Level::Raid1, 2, 0, "", 0x2222_0000),
        (Vendor::Nvidia, Level::Raid01, 4, 16, "", 0x3333_0000),
        (Vendor::Nvidia, raid5, 3, 32, "", 0x4444_0000),
        (Vendor::Nvidia, Level::Jbod, 2, 0, "", 0x5555_0000),
        (Vendor::Promise, Level::Raid0, 2, 64, "", 1000),
        (Vendor::Promise, Level::Raid1, 2, 0, "", 2000),
        (Vendor::Promise, Level::Raid01, 4, 32, "", 3000),
        (Vendor::Promise, Level::Jbod, 2, 0, "", 4000),
    ];
    let mut sets = Vec::new();
    let mut disks = 0;
    for &(vendor, level, count, stripe, name, id) in plan {
        sets.push(Set::new(d, vendor, level, count, stripe, name, id, disks));
        disks += count as usize;
    }
    let all = common::images_in(d);
    let state = d.join("state");

    // tessera on the host: every set shown with its members, and served whole.
    let json: Value =
        serde_json::from_str(&common::tessera(&all, &state, &["show", "--json"])).unwrap();
    let all_nodes = nodes(&json);
    let set_node = |name: &str| -> &Value {
        all_nodes
            .iter()
            .find(|n| n["kind"] == "md" && n["name"] == name)
            .unwrap_or_else(|| panic!("no set {name} in {json:#}"))
    };
    for set in &sets {
        let node = set_node(set.name());
        assert_eq!(node["state"], "clean", "{node:#}");
        assert_eq!(node["size_bytes"], set.sectors * 512, "{node:#}");
        assert_eq!(node["detail"]["type"], set.level.dmraid_type(), "{node:#}");
        assert_eq!(node["detail"]["metadata"], set.vendor.dmraid_name());
        let listed: Vec<&str> = node["detail"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["device"].as_str().unwrap())
            .collect();
        assert_eq!(listed, set.images, "{} member order", set.name());
        for image in &set.images {
            let disk = json["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == image.as_str())
                .unwrap_or_else(|| panic!("no disk {image} in {json:#}"));
            assert_eq!(disk["format"], set.vendor.blkid_type(), "{disk:#}");
        }
    }
    {
        let server = common::serve(&all, &state, &["--read-only"]);
        for set in &sets {
            let got = common::export_sum(&server.addr, &format!("md/{}", set.name()), d);
            assert_eq!(got, set.sum(), "md/{} served whole", set.name());
        }
    }
    // Without member 1: mirrors, raid5 and mirrors of stripes are served from redundancy.
    let without: Vec<String> = sets
        .iter()
        .filter(|s| s.level.redundancy(s.members.len() as u32) > 0)
        .map(|s| s.images[1].clone())
        .collect();
    let degraded: Vec<String> = all
        .split(',')
        .filter(|p| !without.iter().any(|w| w == p))
        .map(str::to_string)
        .collect();
    {
        let server = common::serve(&degraded.join(","), &state, &["--read-only"]);
        for set in sets.iter().filter(|s| without.contains(&s.images[1])) {
            let got = common::export_sum(&server.addr, &format!("md/{}", set.name()), d);
            assert_eq!(got, set.sum(), "md/{} served without member 1", set.name());
        }
    }
    // Writable, tessera does not serve the sets: it does not keep these formats' records.
    {
        let p = &sets[10];
        let server = common::serve(&p.images.join(","), &state, &[]);
        let list = std::process::Command::new("nbdinfo")
            .args(["--list", "--json", &server.addr])
            .output()
            .expect("nbdinfo runs");
        let text = String::from_utf8_lossy(&list.stdout);
        assert!(
            !text.contains(&format!("md/{}", p.name())),
            "md/{} served writable: {text}",
            p.name()
        );
        let json: Value = serde_json::from_str(&common::tessera(
            &p.images.join(","),
            &state,
            &["show", "--json"],
        ))
        .unwrap();
        assert!(
            nodes(&json).iter().any(|n| n["name"] == p.name()),
            "{json:#}"
        );
    }

    // A member whose record was damaged (one byte inside the checksummed range): shown as
    // that vendor's member with a problem naming the device and the checksum; the set is
    // shown without it.
    {
        let p = &sets[9];
        let damaged_dir = d.join("damaged");
        std::fs::create_dir_all(&damaged_dir).unwrap();
        let copies: Vec<String> = p
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let to = damaged_dir.join(format!("pdc-{i}.img"));
                std::fs::copy(img, &to).unwrap();
                to.display().to_string()
            })
            .collect();
        let record = (DISK_SECTORS - 63) * 512 + 0x300;
        let dev = open(&copies[0]);
        let mut b = [0u8; 1];
        dev.read_at(&mut b, record).unwrap();
        dev.write_at(&[b[0] ^ 0xA5], record).unwrap();
        drop(dev);
        let out = common::tessera_output(&copies.join(","), &d.join("state-damaged"), &["show"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.lines()
                .any(|l| l.contains(&copies[0]) && l.contains("Promise") && l.contains("checksum")),
            "{text}"
        );
        assert!(text.contains("member(s) 0 missing"), "{text}");
        let json: Value = serde_json::from_str(&common::tessera(
            &copies.join(","),
            &d.join("state-damaged"),
            &["show", "--json"],
        ))
        .unwrap();
        let disk = json["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == copies[0].as_str())
            .unwrap_or_else(|| panic!("{json:#}"));
        assert_eq!(disk["format"], "promise_fasttrack_raid_member", "{disk:#}");
    }

    // dmraid in the kernel lab.
    let started = std::time::Instant::now();
    let out = common::lab_script(d, &lab_script(disks), 900);
    eprintln!(
        "kernel lab: {:.1} s\n{out}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.contains("--- end"),
        "the lab script did not finish:\n{out}"
    );
    let image_of: BTreeMap<&str, String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("MAP "))
        .map(|l| {
            let (dev, img) = l.split_once(' ').unwrap();
            (dev, d.join(img).display().to_string())
        })
        .collect();
    assert_eq!(image_of.len(), disks, "every member on a disk");
    let section = |name: &str| -> Vec<&str> {
        out.split(&format!("--- {name}\n"))
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| !l.starts_with("--- "))
            .collect()
    };
    // dmraid -r: device:format:name:type:status:sectors:data offset.
    let listed: BTreeMap<String, Vec<String>> = section("r")
        .iter()
        .filter(|l| l.starts_with("/dev/"))
        .map(|l| {
            let f: Vec<String> = l.split(':').map(str::to_string).collect();
            (image_of[f[0].as_str()].clone(), f)
        })
        .collect();
    for set in &sets {
        let node = set_node(set.name());
        for (i, image) in set.images.iter().enumerate() {
            let f = listed
                .get(image)
                .unwrap_or_else(|| panic!("dmraid -r does not list {image} ({})", set.name()));
            let shown = &node["detail"]["members"][i];
            assert_eq!(f[1], set.vendor.dmraid_name(), "{image}");
            if matches!(set.level, Level::Raid01 | Level::Raid10) {
                // A nested set's members carry the name of their half: "NAME-N".
                assert!(
                    f[2].starts_with(&format!("{}-", set.name())),
                    "{image}: {f:?}"
                );
            } else {
                assert_eq!(f[2], set.name(), "{image}");
                assert_eq!(f[3], set.level.dmraid_type(), "{image}");
            }
            assert_eq!(f[4], "ok", "{image}");
            assert_eq!(f[5], shown["data_sectors"].to_string(), "{image}: sectors");
            assert_eq!(
                f[6],
                shown["data_offset_sectors"].to_string(),
                "{image}: data offset"
            );
        }
    }
    // dmraid -s: name:size:stride:type:status:subsets:devs:spares.
    let shown_sets: BTreeMap<&str, Vec<&str>> = section("s")
        .iter()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() == 8)
        .map(|f| (f[0], f))
        .collect();
    let mapped: BTreeMap<&str, (&str, u64)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("SUM "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0], (f[1], f[2].parse().unwrap()))
        })
        .collect();
    for set in &sets {
        let node = set_node(set.name());
        let f = shown_sets
            .get(set.name())
            .unwrap_or_else(|| panic!("dmraid -s does not show {}", set.name()));
        assert_eq!(
            f[1],
            (node["size_bytes"].as_u64().unwrap() / 512).to_string(),
            "{}: size",
            set.name()
        );
        assert_eq!(
            f[3],
            node["detail"]["type"].as_str().unwrap(),
            "{}: type",
            set.name()
        );
        assert_eq!(f[4], "ok", "{}: status", set.name());
        assert_eq!(
            f[6],
            node["detail"]["member_count"].to_string(),
            "{}: devices",
            set.name()
        );
        if matches!(
            set.level,
            Level::Raid0 | Level::Raid01 | Level::Raid5 { .. }
        ) {
            assert_eq!(
                f[2],
                node["detail"]["stripe_sectors"].to_string(),
                "{}: stride",
                set.name()
            );
        }
        // dmraid maps raid5 with the kernel's dm-raid target, the others with striped,
        // mirror and linear.
        let (sum, sectors) = mapped
            .get(set.name())
            .unwrap_or_else(|| panic!("dmraid -ay did not map {}", set.name()));
        assert_eq!(*sectors, set.sectors, "{}: mapped size", set.name());
        assert_eq!(
            *sum,
            set.sum(),
            "{}: the bytes dmraid maps are not where tessera's layout put them",
            set.name()
        );
    }
}
