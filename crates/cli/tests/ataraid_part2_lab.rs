//! Silicon Image, VIA, JMicron, HighPoint 37x and 45x sets that tessera's writers lay out,
//! read two ways: tessera's `show --json` and read-only `serve` on the host, and the real
//! dmraid in the kernel lab. dmraid only looks at whole SCSI/ATA disks that answer with a
//! serial number, which loop devices do not, so the members are scsi_debug disks there.
//! `show --json` must list every set with its members in order and blkid's type names, and
//! agree with `dmraid -r` on every member's name, type, size and data offset and with
//! `dmraid -s` on every set's size, stride, type and members; the set tessera serves and the
//! set dmraid maps in device-mapper must both hold the bytes tessera's layout put on the
//! members.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::Value;
use tessera_block::{FileDevice, OpenOptions};
use tessera_formats::ataraid::{self, Level, Member, SetSpec, Vendor};

/// Bytes of each member disk (scsi_debug's dev_size_mb).
const DISK_MIB: u64 = 4;
const DISK_SECTORS: u64 = DISK_MIB * 2048;

/// A set to lay out: vendor, level, members, stripe sectors, name, id.
type Planned = (Vendor, Level, u32, u32, &'static str, u32);

type Writer =
    fn(&dyn tessera_block::BlockDevice, &SetSpec, u32) -> Result<(), ataraid::AtaraidError>;

struct Set {
    vendor: Vendor,
    spec: SetSpec,
    writer: Writer,
    /// Image paths, by member index.
    images: Vec<String>,
    members: Vec<Member>,
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

fn writer(vendor: Vendor) -> Writer {
    match vendor {
        Vendor::Sil => ataraid::sil::write_member,
        Vendor::Via => ataraid::via::write_member,
        Vendor::Jmicron => ataraid::jmicron::write_member,
        Vendor::Hpt37x => ataraid::hpt37x::write_member,
        Vendor::Hpt45x => ataraid::hpt45x::write_member,
        other => panic!("{other} is not written here"),
    }
}

fn open(path: &str) -> FileDevice {
    FileDevice::open(path, OpenOptions::default()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Where virtual sector `v` of the set lives: (member index, sector within its data area)
/// for every copy.
fn locate(level: Level, members: &[Member], stripe: u64, v: u64) -> Vec<(usize, u64)> {
    let n = members.len();
    let striped = |width: usize| {
        let chunk = v / stripe;
        (
            (chunk % width as u64) as usize,
            (chunk / width as u64) * stripe + v % stripe,
        )
    };
    match level {
        Level::Raid0 => vec![striped(n)],
        Level::Raid1 => (0..n).map(|m| (m, v)).collect(),
        Level::Raid01 => {
            let (pos, rel) = striped(n / 2);
            vec![(pos, rel), (n / 2 + pos, rel)]
        }
        Level::Raid10 => {
            let (pair, rel) = striped(n / 2);
            vec![(2 * pair, rel), (2 * pair + 1, rel)]
        }
        Level::Jbod => {
            let mut rest = v;
            for (m, member) in members.iter().enumerate() {
                if rest < member.data_sectors {
                    return vec![(m, rest)];
                }
                rest -= member.data_sectors;
            }
            panic!("sector {v} past the end of the span")
        }
        other => panic!("level {other:?} is not laid out here"),
    }
}

/// The set's size in sectors as dmraid builds its table: stripes cut to whole units of the
/// smallest member.
fn set_sectors(level: Level, members: &[Member], stripe: u64) -> u64 {
    let smallest = members.iter().map(|m| m.data_sectors).min().unwrap();
    let units = |width: usize| width as u64 * (smallest / stripe * stripe);
    match level {
        Level::Raid0 => units(members.len()),
        Level::Raid01 | Level::Raid10 => units(members.len() / 2),
        Level::Raid1 => smallest,
        Level::Jbod => members.iter().map(|m| m.data_sectors).sum(),
        other => panic!("level {other:?}"),
    }
}

fn read_sector(path: &str, sector: u64) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, sector * 512)
        .unwrap();
    b
}

fn write_sector(path: &str, sector: u64, b: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(b, sector * 512)
        .unwrap();
}

impl Set {
    /// The set `planned` describes, on images `disk-FIRST.img` on.
    fn new(dir: &Path, planned: &Planned, first: usize) -> Set {
        let &(vendor, level, count, stripe, name, id) = planned;
        let member_data_sectors = match vendor {
            // HighPoint 37x counts the first member's data from sector 0, the rest from 10.
            Vendor::Hpt37x => 6000,
            _ => 6144,
        };
        let spec = SetSpec {
            level,
            member_count: count,
            stripe_sectors: stripe,
            member_data_sectors,
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
        let mut set = Set {
            vendor,
            spec,
            writer: writer(vendor),
            images,
            members: Vec::new(),
        };
        set.write_metadata();
        set.members = set
            .images
            .iter()
            .map(|p| {
                (ataraid::probers()
                    .iter()
                    .find(|(v, _)| *v == vendor)
                    .unwrap()
                    .1)(&open(p))
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .unwrap_or_else(|| panic!("{p}: no {vendor} member"))
            })
            .collect();
        for (i, m) in set.members.iter().enumerate() {
            assert_eq!(m.index as usize, i, "{vendor} {level:?} member order");
        }
        set
    }

    fn write_metadata(&self) {
        for (i, p) in self.images.iter().enumerate() {
            (self.writer)(&open(p), &self.spec, i as u32).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
    }

    fn stripe(&self) -> u64 {
        self.members[0].stripe_sectors.max(1).into()
    }

    fn sectors(&self) -> u64 {
        set_sectors(self.spec.level, &self.members, self.stripe())
    }

    fn scatter(&self, content: &[u8]) {
        for v in 0..self.sectors() {
            let b = &content[v as usize * 512..][..512];
            for (m, rel) in locate(self.spec.level, &self.members, self.stripe(), v) {
                write_sector(&self.images[m], self.members[m].data_offset + rel, b);
            }
        }
    }

    /// The set's bytes read from the first copy of every sector.
    fn gather(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for v in 0..self.sectors() {
            let (m, rel) = locate(self.spec.level, &self.members, self.stripe(), v)[0];
            out.extend(read_sector(
                &self.images[m],
                self.members[m].data_offset + rel,
            ));
        }
        out
    }

    /// Places pseudo-random data by the layout. Where a record sits inside a data area (the
    /// first HighPoint 37x member's sector 9), the record wins, and the copies are made
    /// equal again, as the firmware keeps them.
    fn fill(&self, seed: u64) -> Vec<u8> {
        self.scatter(&common::random(self.sectors() as usize * 512, seed));
        self.write_metadata();
        let settled = self.gather();
        self.scatter(&settled);
        self.write_metadata();
        assert_eq!(self.gather(), settled);
        settled
    }
}

#[test]
fn dmraid_reads_and_maps_the_sets_tessera_lays_out() {
    let dir = tempfile::Builder::new()
        .prefix("ataraid-part2-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let plan: &[Planned] = &[
        (Vendor::Sil, Level::Raid0, 2, 32, "", 111_111_111),
        (Vendor::Sil, Level::Raid1, 2, 0, "", 222_222_222),
        (Vendor::Via, Level::Raid0, 3, 16, "", 3),
        (Vendor::Via, Level::Raid1, 2, 0, "", 4),
        (Vendor::Jmicron, Level::Raid0, 2, 64, "Stripe", 5),
        (Vendor::Jmicron, Level::Raid1, 2, 0, "Mirror", 6),
        (Vendor::Hpt37x, Level::Raid0, 3, 32, "", 70_000),
        (Vendor::Hpt37x, Level::Raid1, 2, 0, "", 80_000),
        (Vendor::Hpt45x, Level::Raid0, 2, 16, "", 90_000),
        (Vendor::Hpt45x, Level::Raid1, 2, 0, "", 100_000),
        (Vendor::Jmicron, Level::Raid10, 4, 32, "Both", 7),
        (Vendor::Hpt45x, Level::Raid01, 4, 32, "", 110_000),
        (Vendor::Via, Level::Raid01, 4, 32, "", 8),
    ];
    let mut sets = Vec::new();
    let mut disks = 0;
    for planned in plan {
        sets.push(Set::new(dir.path(), planned, disks));
        disks += planned.2 as usize;
    }
    let mut expected_sums = BTreeMap::new();
    for (i, set) in sets.iter().enumerate() {
        let content = set.fill(0x5EED_0000 + 2 * i as u64);
        expected_sums.insert(set.members[0].set_name.clone(), common::sha(&content));
    }

    // tessera on the host: every set shown with its members and served whole, read-only.
    let all = common::images_in(dir.path());
    let state = dir.path().join("state");
    let out = common::tessera_output(&all, &state, &["show", "--json"]);
    assert!(out.status.success(), "show: {}", String::from_utf8_lossy(&out.stderr));
    // An assembled HighPoint 37x set holds its first member's record (data starts at sector
    // 0): the set must not be taken for a member of itself.
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(!warnings.contains("skipping md/"), "{warnings}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let all_nodes = nodes(&json);
    let set_node = |name: &str| -> &Value {
        all_nodes
            .iter()
            .find(|n| n["kind"] == "md" && n["name"] == name)
            .unwrap_or_else(|| panic!("no set {name} in {json:#}"))
    };
    for set in &sets {
        let name = set.members[0].set_name.as_str();
        let node = set_node(name);
        assert_eq!(node["state"], "clean", "{node:#}");
        assert_eq!(node["size_bytes"], set.sectors() * 512, "{node:#}");
        assert_eq!(
            node["detail"]["type"],
            set.spec.level.dmraid_type(),
            "{node:#}"
        );
        assert_eq!(node["detail"]["metadata"], set.vendor.dmraid_name());
        let listed: Vec<&str> = node["detail"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["device"].as_str().unwrap())
            .collect();
        assert_eq!(listed, set.images, "{name} member order");
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
            let name = &set.members[0].set_name;
            let got = common::export_sum(&server.addr, &format!("md/{name}"), dir.path());
            assert_eq!(got, expected_sums[name], "md/{name} served by tessera");
        }
    }

    let script = format!(
        r#"set -u
mkdir -p /run/lock
modprobe sd_mod
modprobe scsi_debug per_host_store=1 add_host={disks} dev_size_mb={DISK_MIB} || exit 1
for i in $(seq 50); do [ $(ls -d /sys/block/sd* 2>/dev/null | wc -l) -ge {disks} ] && break; sleep 0.2; done
i=0
for d in $(ls /sys/block | grep '^sd' | awk '{{ print length($0) " " $0 }}' | sort -n | cut -d' ' -f2); do
  mknod /dev/$d b $(tr : ' ' < /sys/block/$d/dev)
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
    );
    let started = std::time::Instant::now();
    let out = common::lab_script(dir.path(), &script, 900);
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
            (dev, dir.path().join(img).display().to_string())
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

    // dmraid -r: device:format:name:type:status:sectors:data offset, for every member.
    let listed: BTreeMap<String, Vec<String>> = section("r")
        .iter()
        .filter(|l| l.starts_with("/dev/"))
        .map(|l| {
            let f: Vec<String> = l.split(':').map(str::to_string).collect();
            (image_of[f[0].as_str()].clone(), f)
        })
        .collect();
    for set in &sets {
        for (image, m) in set.images.iter().zip(&set.members) {
            let f = listed.get(image).unwrap_or_else(|| {
                panic!(
                    "dmraid -r does not list {image} ({} {:?})",
                    set.vendor, set.spec.level
                )
            });
            assert_eq!(f[1], set.vendor.dmraid_name(), "{image}");
            match m.level {
                // A nested set's members carry the name of their half: "NAME-N".
                Level::Raid01 | Level::Raid10 => {
                    assert!(
                        f[2].starts_with(&format!("{}-", m.set_name)),
                        "{image}: {f:?} vs {}",
                        m.set_name
                    );
                    let half = if m.level == Level::Raid01 {
                        "stripe"
                    } else {
                        "mirror"
                    };
                    assert_eq!(f[3], half, "{image}");
                }
                _ => {
                    assert_eq!(f[2], m.set_name, "{image}");
                    assert_eq!(f[3], m.level.dmraid_type(), "{image}");
                }
            }
            assert_eq!(f[4], "ok", "{image}");
            assert_eq!(f[5], m.data_sectors.to_string(), "{image}: sectors");
            assert_eq!(f[6], m.data_offset.to_string(), "{image}: data offset");
            let shown = &set_node(&m.set_name)["detail"]["members"][m.index as usize];
            assert_eq!(
                f[5],
                shown["data_sectors"].to_string(),
                "{image}: shown sectors"
            );
            assert_eq!(
                f[6],
                shown["data_offset_sectors"].to_string(),
                "{image}: shown data offset"
            );
        }
    }

    // dmraid -s: name:size:stride:type:status:subsets:devs:spares for every top set.
    let shown: BTreeMap<&str, Vec<&str>> = section("s")
        .iter()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() == 8)
        .map(|f| (f[0], f))
        .collect();
    // The dm devices dmraid made: name -> (sha256, sectors).
    let mapped: BTreeMap<&str, (&str, u64)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("SUM "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0], (f[1], f[2].parse().unwrap()))
        })
        .collect();
    for set in &sets {
        let m = &set.members[0];
        let f = shown
            .get(m.set_name.as_str())
            .unwrap_or_else(|| panic!("dmraid -s does not show {}", m.set_name));
        let stride: u64 = f[2].parse().unwrap();
        let shown_sectors = match m.level {
            // dmraid -s cuts a mirror to whole units of the stride its records give (VIA and
            // JMicron keep one for mirrors too); its table maps the whole smallest member.
            Level::Raid1 if stride > 0 => set.sectors() / stride * stride,
            _ => set.sectors(),
        };
        assert_eq!(f[1], shown_sectors.to_string(), "{}: size", m.set_name);
        assert_eq!(f[3], m.level.dmraid_type(), "{}: type", m.set_name);
        assert_eq!(
            f[6],
            set.images.len().to_string(),
            "{}: devices",
            m.set_name
        );
        if matches!(m.level, Level::Raid0 | Level::Raid01 | Level::Raid10) {
            assert_eq!(f[2], m.stripe_sectors.to_string(), "{}: stride", m.set_name);
        }
        if matches!(m.level, Level::Raid01 | Level::Raid10) {
            assert_eq!(f[5], "2", "{}: subsets", m.set_name);
        }
        assert_eq!(f[4], "ok", "{}", m.set_name);
        let (sum, sectors) = mapped
            .get(m.set_name.as_str())
            .unwrap_or_else(|| panic!("dmraid -ay did not map {}", m.set_name));
        assert_eq!(*sectors, set.sectors(), "{}: mapped size", m.set_name);
        assert_eq!(
            *sum, expected_sums[&m.set_name],
            "{}: the mapped bytes are not where tessera's layout put them",
            m.set_name
        );
    }
}
