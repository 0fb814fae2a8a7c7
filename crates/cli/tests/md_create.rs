//! Arrays that `tessera md create` makes, of every level and layout md has and every
//! superblock version, are assembled by the real mdadm and kernel in the kernel lab:
//! `mdadm --detail` shows them clean with every member active, and md's own `check` finds
//! no parity mismatch.

mod common;

use tessera_block::BlockDevice;

/// (name, level, layout, chunk, metadata, members)
const ARRAYS: &[(&str, &str, &str, &str, &str, usize)] = &[
    ("c-r0", "0", "", "64k", "1.2", 3),
    ("c-r1", "1", "", "", "1.2", 2),
    ("c-r1-3", "1", "", "", "0.90", 3),
    ("c-r4", "4", "", "32k", "1.2", 4),
    ("c-r5-la", "5", "left-asymmetric", "64k", "1.2", 4),
    ("c-r5-ra", "5", "right-asymmetric", "16k", "1.1", 3),
    ("c-r5-ls", "5", "left-symmetric", "128k", "1.0", 5),
    ("c-r5-rs", "5", "right-symmetric", "4k", "0.90", 4),
    ("c-r5-pf", "5", "parity-first", "64k", "1.2", 3),
    ("c-r5-pl", "5", "parity-last", "64k", "1.2", 4),
    ("c-r6-ls", "6", "left-symmetric", "64k", "1.2", 4),
    ("c-r6-la", "6", "left-asymmetric", "32k", "1.2", 5),
    ("c-r6-ra", "6", "right-asymmetric", "64k", "1.0", 6),
    ("c-r6-rs", "6", "right-symmetric", "16k", "0.90", 5),
    ("c-r6-pf", "6", "parity-first", "64k", "1.2", 4),
    ("c-r6-pl", "6", "parity-last", "64k", "1.1", 5),
    ("c-r6-zr", "6", "ddf-zero-restart", "64k", "1.2", 6),
    ("c-r6-nr", "6", "ddf-N-restart", "64k", "1.2", 5),
    ("c-r6-nc", "6", "ddf-N-continue", "64k", "1.2", 7),
    ("c-r6-ls6", "6", "left-symmetric-6", "64k", "1.2", 5),
    ("c-r10-n2", "10", "n2", "64k", "1.2", 4),
    ("c-r10-n2o", "10", "n2", "32k", "1.2", 3),
    ("c-r10-f2", "10", "f2", "64k", "1.2", 4),
    ("c-r10-o2", "10", "o2", "64k", "1.0", 4),
    ("c-r10-n3", "10", "n3", "16k", "0.90", 5),
];

const INSIDE: &str = r#"set -u
n=0
while read -r name members; do
  devs=()
  for ((i = 0; i < members; i++)); do devs+=("$(losetup -f --show "$name-$i.img")"); done
  if ! mdadm --assemble /dev/md0 "${devs[@]}" >"$name.assemble" 2>&1; then
    echo "$name assemble-failed"
  else
    state=$(mdadm --detail /dev/md0 | sed -n 's/^ *State : *//p' | tr -d ' ')
    active=$(mdadm --detail /dev/md0 | sed -n 's/^ *Active Devices : *//p')
    mismatch=-
    if [ -e /sys/block/md0/md/sync_action ] && [ "$(cat /sys/block/md0/md/level)" != raid0 ]; then
      echo check > /sys/block/md0/md/sync_action
      sleep 0.2
      while [ "$(cat /sys/block/md0/md/sync_action)" != idle ]; do sleep 0.2; done
      mismatch=$(cat /sys/block/md0/md/mismatch_cnt)
    fi
    size=$(blockdev --getsize64 /dev/md0)
    sha=$(sha256sum < /dev/md0 | cut -d' ' -f1)
    echo "$name ok $state $active $mismatch $size $sha"
    mdadm --stop /dev/md0 >/dev/null 2>&1
  fi
  for d in "${devs[@]}"; do losetup -d "$d"; done
done < list
echo md-create-done
"#;

#[test]
fn arrays_tessera_creates_are_assembled_clean_by_mdadm_with_no_mismatches() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let mut list = String::new();
    let mut shas = Vec::new();
    let mut registry = tessera_mapper::TargetRegistry::new();
    tessera_raid::register(&mut registry);
    let registry = std::sync::Arc::new(registry);
    for &(name, level, layout, chunk, meta, members) in ARRAYS {
        let mut paths = Vec::new();
        for i in 0..members {
            let p = d.join(format!("{name}-{i}.img"));
            std::fs::File::create(&p).unwrap().set_len(6 << 20).unwrap();
            paths.push(p.to_string_lossy().into_owned());
        }
        let mut args = vec!["md", "create", name, "--level", level, "--metadata", meta];
        if !layout.is_empty() {
            args.extend(["--layout", layout]);
        }
        if !chunk.is_empty() {
            args.extend(["--chunk", chunk]);
        }
        args.extend(["--homehost", "lab"]);
        args.extend(paths.iter().map(String::as_str));
        common::tessera(&paths.join(","), &state, &args);
        // tessera reads back what it made (0.90 arrays go by UUID: they have no name).
        let examine = common::tessera(
            &paths.join(","),
            &state,
            &["md", "examine", &paths[0], "--json"],
        );
        let uuid = serde_json::from_str::<serde_json::Value>(&examine).unwrap()["uuid"]
            .as_str()
            .unwrap()
            .to_string();
        let detail = common::tessera(&paths.join(","), &state, &["md", "detail", &uuid, "--json"]);
        let json: serde_json::Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(json["health"], "complete", "{name}: {json}");
        assert_eq!(json["raid_disks"], members, "{name}");
        // Data written through tessera's raid target, in writes of many sizes (full
        // stripes, partial ones, single sectors), for the kernel to read back.
        let engine = tessera_engine::Engine::new(state.clone(), paths.clone());
        let scan = engine.md_scan(true).unwrap();
        let array = scan.array(&uuid).unwrap();
        let dev = array.activate(name, registry.clone(), None).unwrap();
        let expected = write_pattern(&dev, name);
        shas.push((name, dev.size_bytes(), sha256_hex(&expected)));
        drop(dev);
        list.push_str(&format!("{name} {members}\n"));
    }
    std::fs::write(d.join("list"), list).unwrap();
    let text = common::lab_script(d, INSIDE, 600);
    assert!(text.contains("md-create-done"), "{text}");
    for &(name, level, _, _, _, members) in ARRAYS {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name}: no result in\n{text}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        let assemble =
            std::fs::read_to_string(d.join(format!("{name}.assemble"))).unwrap_or_default();
        assert_eq!(
            f[1], "ok",
            "{name}: mdadm could not assemble it: {assemble}"
        );
        assert_eq!(f[2], "clean", "{line}");
        assert_eq!(f[3], members.to_string(), "{name}: active members: {line}");
        // raid0 has nothing to check; every other level ran md's check.
        let want = if level == "0" { "-" } else { "0" };
        assert_eq!(f[4], want, "{name}: mismatches after check: {line}");
        let (_, size, sha) = shas.iter().find(|(n, _, _)| *n == name).unwrap();
        assert_eq!(
            f[5],
            size.to_string(),
            "{name}: array size, the kernel's and tessera's"
        );
        assert_eq!(
            f[6], sha,
            "{name}: the kernel reads other bytes than tessera wrote"
        );
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Fills the array through `dev` with pseudo-random bytes, in writes of varying sizes and
/// then scattered small overwrites; returns what it should now hold.
fn write_pattern(dev: &dyn tessera_block::BlockDevice, name: &str) -> Vec<u8> {
    let size = dev.size_bytes() as usize;
    let mut x = name.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut image = vec![0u8; size];
    for b in image.chunks_mut(8) {
        let v = next().to_le_bytes();
        b.copy_from_slice(&v[..b.len()]);
    }
    let sizes = [4096usize, 512, 65536, 1 << 20, 12288, 131072, 1536];
    let mut at = 0;
    let mut k = 0;
    while at < size {
        let n = sizes[k % sizes.len()].min(size - at);
        dev.write_at(&image[at..at + n], at as u64).unwrap();
        at += n;
        k += 1;
    }
    for _ in 0..64 {
        let sectors = (next() % 16 + 1) as usize;
        let len = sectors * 512;
        let at = (next() as usize % (size / 512 - sectors)) * 512;
        for b in &mut image[at..at + len] {
            *b = next() as u8;
        }
        dev.write_at(&image[at..at + len], at as u64).unwrap();
    }
    let mut back = vec![0u8; size];
    dev.read_at(&mut back, 0).unwrap();
    assert!(
        back == image,
        "{name}: tessera reads back other bytes than it wrote"
    );
    image
}
