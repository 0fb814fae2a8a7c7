//! Partition tables (MBR with its extended partitions, GPT): the format module whose
//! partitions become devices of their own, probed in turn.

use std::sync::Arc;

use tessera_block::{BlockDevice, SharedDevice, SliceDevice};
use tessera_formats::partition::{self, PartitionTable, Scheme};

use crate::format::{Finding, FormatModule, Inner};

/// Partition tables (MBR, GPT): the partitions become devices of their own.
pub struct PartitionTables;

/// A partition's name as the kernel would give it: `sda1`, `loop0p1`, `disk.img1`.
pub fn partition_name(disk: &str, number: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

/// The partition table on `device`, if any.
pub fn read_partition_table(
    name: &str,
    device: &dyn BlockDevice,
) -> Result<Option<PartitionTable>, String> {
    let sectors = device.size_bytes() / 512;
    let reader = |lba: u64, count: u64| -> Option<Vec<u8>> {
        let len = count.checked_mul(512)?;
        let offset = lba.checked_mul(512)?;
        if offset.checked_add(len)? > device.size_bytes() || len > (64 << 20) {
            return None;
        }
        let mut buf = vec![0u8; len as usize];
        device.read_at(&mut buf, offset).ok()?;
        Some(buf)
    };
    partition::read_table(name, sectors, &reader).map_err(|e| e.to_string())
}

impl FormatModule for PartitionTables {
    fn name(&self) -> &'static str {
        "partition-tables"
    }
    fn contains_devices(&self) -> bool {
        true
    }
    fn probe(&self, name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        let table = match read_partition_table(name, device.as_ref()) {
            Ok(Some(t)) => t,
            Ok(None) => return None,
            Err(e) => return Finding::damaged("partition table", "a damaged partition table", e),
        };
        let scheme = match table.scheme {
            Scheme::Mbr => "dos",
            Scheme::Gpt => "gpt",
        };
        let mut finding = Finding::new(
            scheme,
            format!("{} partition(s) ({scheme})", table.partitions.len()),
        );
        finding.problems.extend(table.warning.clone());
        let mut inner = Vec::new();
        let mut parts = Vec::new();
        for p in &table.partitions {
            let part_name = partition_name(name, p.number);
            // An extended partition is a container of logical ones, nothing in itself.
            if p.kind == "0x05" || p.kind == "0x0f" || p.kind == "0x85" {
                continue;
            }
            let slice = SliceDevice::new(
                part_name.clone(),
                device.clone(),
                p.start_sector * 512,
                p.sectors * 512,
            );
            parts.push(serde_json::json!({
                "number": p.number, "start_sector": p.start_sector, "sectors": p.sectors,
                "type": p.kind, "name": p.name, "uuid": p.uuid,
            }));
            match slice {
                Some(slice) => inner.push(Inner {
                    name: part_name,
                    device: Arc::new(slice),
                    what: format!("partition {} ({})", p.number, partition_kind(&p.kind)),
                }),
                None => finding.problems.push(format!(
                    "{name}: partition {} lies past the end of the device",
                    p.number
                )),
            }
        }
        finding.detail = serde_json::json!({ "scheme": scheme, "partitions": parts });
        Some((finding, inner))
    }
}

/// A partition type in words, where it is a common one.
fn partition_kind(kind: &str) -> &str {
    match kind.to_ascii_lowercase().as_str() {
        "0x83" | "0fc63daf-8483-4772-8e79-3d69d8477de4" => "Linux filesystem",
        "0xfd" | "a19d880f-05fc-4d3b-a006-743f0f84911e" => "Linux RAID",
        "0x8e" | "e6d6d379-f507-44c2-a23c-238f2a3df928" => "Linux LVM",
        "0x82" | "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => "Linux swap",
        "0xef" | "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => "EFI system",
        "0x07" | "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" => "basic data",
        _ => kind,
    }
}
