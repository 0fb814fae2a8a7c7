//! Partition tables sfdisk writes (GPT; MBR with primary, extended and logical partitions)
//! read as sfdisk itself reads them back (`sfdisk -J`): numbers, starts, sizes and types.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use tessera_block::{BlockDevice, FileDevice, OpenOptions};
use tessera_formats::partition::{read_table, Scheme};

fn sfdisk(file: &std::path::Path, script: &str) {
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(file)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk (package fdisk) runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk {script}");
}

fn compare(script: &str, scheme: Scheme) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    sfdisk(&file, script);
    let out = Command::new("sfdisk")
        .arg("-J")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs = json["partitiontable"]["partitions"].as_array().unwrap();

    let dev = FileDevice::open(
        &file,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let read = |lba: u64, count: u64| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; (count * 512) as usize];
        dev.read_at(&mut buf, lba * 512).ok()?;
        Some(buf)
    };
    let table = read_table("disk.img", dev.size_bytes() / 512, &read)
        .unwrap()
        .expect("a table");
    assert_eq!(table.scheme, scheme);
    assert_eq!(table.partitions.len(), theirs.len(), "{table:#?}\n{json:#}");
    for (ours, theirs) in table.partitions.iter().zip(theirs) {
        let node = theirs["node"].as_str().unwrap();
        assert!(
            node.ends_with(&ours.number.to_string()),
            "{node} vs {ours:?}"
        );
        assert_eq!(
            ours.start_sector,
            theirs["start"].as_u64().unwrap(),
            "{node}"
        );
        let kind = theirs["type"].as_str().unwrap().to_ascii_lowercase();
        match scheme {
            Scheme::Mbr => {
                assert_eq!(ours.kind, format!("0x{kind:0>2}"), "{node}");
                // sfdisk gives an extended partition its whole extent; the kernel (and
                // tessera) its first sector or two.
                if kind == "5" || kind == "f" {
                    assert!(ours.sectors <= 2, "{node}");
                } else {
                    assert_eq!(ours.sectors, theirs["size"].as_u64().unwrap(), "{node}");
                }
            }
            Scheme::Gpt => {
                assert_eq!(ours.kind, kind, "{node}");
                assert_eq!(ours.sectors, theirs["size"].as_u64().unwrap(), "{node}");
                if let Some(uuid) = theirs["uuid"].as_str() {
                    assert_eq!(ours.uuid, uuid.to_ascii_lowercase(), "{node}");
                }
                if let Some(name) = theirs["name"].as_str() {
                    assert_eq!(ours.name, name, "{node}");
                }
            }
        }
    }
}

#[test]
fn gpt_as_sfdisk_reads_it() {
    compare(
        "label: gpt\nsize=40M, type=A19D880F-05FC-4D3B-A006-743F0F84911E, name=raid\n\
         size=20M, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=lvm\n\
         type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
        Scheme::Gpt,
    );
}

#[test]
fn mbr_with_logical_partitions_as_sfdisk_reads_it() {
    compare(
        "label: dos\nsize=30M, type=83\nsize=150M, type=5\nsize=20M, type=8e\n\
         size=40M, type=fd\nsize=30M, type=82\nsize=20M, type=83\n",
        Scheme::Mbr,
    );
}

#[test]
fn mbr_with_primaries_only_as_sfdisk_reads_it() {
    compare(
        "label: dos\nsize=30M, type=83\nsize=50M, type=8e\ntype=fd\n",
        Scheme::Mbr,
    );
}
