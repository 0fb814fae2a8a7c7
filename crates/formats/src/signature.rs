//! Signatures of the formats a device may already hold, so that making it a PV can refuse
//! to destroy them without `--force`. Names are blkid's TYPE values.

use std::fmt;

use tessera_block::{BlockDevice, BlockError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// blkid's name: LVM2_member, linux_raid_member, crypto_LUKS, ext4, xfs, btrfs, swap, gpt, dos.
    pub kind: &'static str,
    /// Byte offset of the magic.
    pub offset: u64,
    pub detail: String,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} signature at byte {}", self.kind, self.offset)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

const MD_MAGIC: u32 = 0xa92b_4efc;

/// Reads `len` bytes at `offset`, or None when they lie past the device's end.
fn read(dev: &dyn BlockDevice, offset: u64, len: usize) -> Result<Option<Vec<u8>>, BlockError> {
    if offset
        .checked_add(len as u64)
        .is_none_or(|e| e > dev.size_bytes())
    {
        return Ok(None);
    }
    let mut b = vec![0u8; len];
    dev.read_at(&mut b, offset)?;
    Ok(Some(b))
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Every known signature on the device.
pub fn probe(dev: &dyn BlockDevice) -> Result<Vec<Signature>, BlockError> {
    let mut found = Vec::new();
    let size = dev.size_bytes();
    let mut sig = |kind, offset, detail: String| {
        found.push(Signature {
            kind,
            offset,
            detail,
        })
    };

    if let Some(head) = read(dev, 0, 4096.min(size as usize))? {
        for s in 0..head.len() / 512 {
            if s < 4 && &head[s * 512..s * 512 + 8] == b"LABELONE" {
                sig("LVM2_member", (s * 512) as u64, String::new());
            }
        }
        if head.len() >= 6 && &head[0..6] == b"LUKS\xba\xbe" {
            let version = if head.len() >= 8 {
                u16::from_be_bytes([head[6], head[7]])
            } else {
                0
            };
            sig("crypto_LUKS", 0, format!("version {version}"));
        }
        if head.len() >= 4 && &head[0..4] == b"XFSB" {
            sig("xfs", 0, String::new());
        }
        if head.len() >= 4 && u32_le(&head, 0) == MD_MAGIC {
            sig("linux_raid_member", 0, "MD superblock 1.1".into());
        }
        if head.len() >= 1024 && &head[512..520] == b"EFI PART" {
            sig("gpt", 512, String::new());
        } else if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa {
            // A boot sector with at least one partition entry of a known shape: status 0 or
            // 0x80 and a non-zero type and length.
            let has_partition = (0..4).any(|i| {
                let e = &head[446 + i * 16..446 + (i + 1) * 16];
                (e[0] == 0 || e[0] == 0x80) && e[4] != 0 && u32_le(e, 12) != 0
            });
            if has_partition {
                sig("dos", 510, String::new());
            }
        }
        if head.len() >= 4096 {
            for magic in [&b"SWAPSPACE2"[..], &b"SWAP-SPACE"[..]] {
                if &head[4086..4096] == magic {
                    sig("swap", 4086, String::new());
                }
            }
        }
    }
    if let Some(sb) = read(dev, 1024, 1024)? {
        if u16::from_le_bytes([sb[56], sb[57]]) == 0xef53 {
            let compat = u32_le(&sb, 92);
            let incompat = u32_le(&sb, 96);
            let kind = if incompat & 0x40 != 0 || incompat & 0x200 != 0 || incompat & 0x80 != 0 {
                "ext4"
            } else if compat & 0x4 != 0 {
                "ext3"
            } else {
                "ext2"
            };
            sig(kind, 1080, String::new());
        }
    }
    if let Some(b) = read(dev, 4096, 4)? {
        if u32_le(&b, 0) == MD_MAGIC {
            sig("linux_raid_member", 4096, "MD superblock 1.2".into());
        }
    }
    if let Some(b) = read(dev, 65536 + 64, 8)? {
        if &b[..] == b"_BHRfS_M" {
            sig("btrfs", 65536 + 64, String::new());
        }
    }
    // MD 0.90 sits in the last 64 KiB-aligned 64 KiB; 1.0 8 KiB before the end, 4 KiB aligned.
    if size >= 128 << 10 {
        let at = (size & !0xffff) - 0x10000;
        if let Some(b) = read(dev, at, 4)? {
            if u32_le(&b, 0) == MD_MAGIC {
                sig("linux_raid_member", at, "MD superblock 0.90".into());
            }
        }
    }
    if size >= 16 << 10 {
        let at = ((size - 8192) & !4095).min(size - 8192);
        if let Some(b) = read(dev, at, 4)? {
            if u32_le(&b, 0) == MD_MAGIC {
                sig("linux_raid_member", at, "MD superblock 1.0".into());
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    fn with(at: u64, bytes: &[u8]) -> MemoryDevice {
        let d = MemoryDevice::new("mem0", 8 << 20);
        d.write_at(bytes, at).unwrap();
        d
    }

    #[test]
    fn finds_each_format() {
        let md = MD_MAGIC.to_le_bytes();
        let cases: Vec<(MemoryDevice, &str)> = vec![
            (with(512, b"LABELONE"), "LVM2_member"),
            (with(0, b"LUKS\xba\xbe\x00\x02"), "crypto_LUKS"),
            (with(0, b"XFSB"), "xfs"),
            (with(1080, &[0x53, 0xef]), "ext2"),
            (with(65600, b"_BHRfS_M"), "btrfs"),
            (with(4086, b"SWAPSPACE2"), "swap"),
            (with(512, b"EFI PART"), "gpt"),
            (with(4096, &md), "linux_raid_member"),
            (with(0, &md), "linux_raid_member"),
            (with((8 << 20) - 65536, &md), "linux_raid_member"),
            (with((8 << 20) - 8192, &md), "linux_raid_member"),
        ];
        for (dev, kind) in cases {
            let found = probe(&dev).unwrap();
            assert_eq!(found.iter().map(|s| s.kind).collect::<Vec<_>>(), vec![kind]);
        }
        let mbr = MemoryDevice::new("mem0", 1 << 20);
        let mut sector = [0u8; 512];
        sector[446 + 4] = 0x83;
        sector[446 + 12] = 8;
        sector[510] = 0x55;
        sector[511] = 0xaa;
        mbr.write_at(&sector, 0).unwrap();
        assert_eq!(probe(&mbr).unwrap()[0].kind, "dos");
    }

    #[test]
    fn empty_and_tiny_devices_hold_nothing() {
        assert!(probe(&MemoryDevice::new("z", 8 << 20)).unwrap().is_empty());
        assert!(probe(&MemoryDevice::new("t", 700)).unwrap().is_empty());
        assert!(probe(&MemoryDevice::new("e", 0)).unwrap().is_empty());
    }
}
