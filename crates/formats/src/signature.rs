//! Signatures of the formats a device may already hold, so that making it a PV can refuse
//! to destroy them without `--force`. Names are blkid's TYPE (or PTTYPE) values; offsets
//! point at the magic, so zeroing the 512-byte sector holding it removes the signature.
//! Every probe reads a few bytes at a fixed place and is skipped when the device is too
//! small for it.

use std::fmt;

use tessera_block::{BlockDevice, BlockError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// blkid's name: LVM2_member, linux_raid_member, crypto_LUKS, ext2/ext3/ext4/jbd, xfs,
    /// btrfs, swap, gpt, dos.
    pub kind: &'static str,
    /// Byte offset of the magic.
    pub offset: u64,
    /// What else was found (version, label); may be empty.
    pub detail: String,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let article = if self.kind.starts_with(['e', 'x']) {
            "an"
        } else {
            "a"
        };
        write!(
            f,
            "{article} {} signature at byte {}",
            self.kind, self.offset
        )?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

const MD_MAGIC: u32 = 0xa92b_4efc;
/// Where LUKS2 keeps its secondary header (cryptsetup's list, as blkid probes it).
const LUKS2_SECONDARY: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
/// Page sizes whose swap magic blkid looks for; the magic ends the first page.
const SWAP_PAGES: [u64; 4] = [4096, 8192, 16384, 65536];

/// `N` bytes at `offset`, or None when they do not lie inside the device.
fn read<const N: usize>(dev: &dyn BlockDevice, offset: u64) -> Result<Option<[u8; N]>, BlockError> {
    match offset.checked_add(N as u64) {
        Some(end) if end <= dev.size_bytes() => {
            let mut b = [0u8; N];
            dev.read_at(&mut b, offset)?;
            Ok(Some(b))
        }
        _ => Ok(None),
    }
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// A NUL-padded name field as text, or "" when empty.
fn name_field(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim().to_string()
}

/// Every known signature on the device, in probe order.
pub fn probe(dev: &dyn BlockDevice) -> Result<Vec<Signature>, BlockError> {
    let mut found = Vec::new();
    lvm2(dev, &mut found)?;
    luks_and_xfs(dev, &mut found)?;
    md(dev, &mut found)?;
    ext(dev, &mut found)?;
    btrfs_and_swap(dev, &mut found)?;
    partition_tables(dev, &mut found)?;
    Ok(found)
}

fn push(found: &mut Vec<Signature>, kind: &'static str, offset: u64, detail: String) {
    found.push(Signature {
        kind,
        offset,
        detail,
    });
}

/// A label in one of the first four sectors.
fn lvm2(dev: &dyn BlockDevice, found: &mut Vec<Signature>) -> Result<(), BlockError> {
    for sector in 0..4u64 {
        if let Some(b) = read::<32>(dev, sector * 512)? {
            if &b[0..8] == b"LABELONE" {
                let detail = format!("label type '{}'", name_field(&b[24..32]));
                push(found, "LVM2_member", sector * 512, detail);
            }
        }
    }
    Ok(())
}

fn luks_and_xfs(dev: &dyn BlockDevice, found: &mut Vec<Signature>) -> Result<(), BlockError> {
    if let Some(b) = read::<8>(dev, 0)? {
        if &b[0..6] == b"LUKS\xba\xbe" {
            let version = u16::from_be_bytes([b[6], b[7]]);
            push(found, "crypto_LUKS", 0, format!("LUKS{version}"));
        }
        if &b[0..4] == b"XFSB" {
            push(found, "xfs", 0, String::new());
        }
    }
    // blkid finds LUKS2 by its second header too, so that must go as well.
    for at in LUKS2_SECONDARY {
        if let Some(b) = read::<8>(dev, at)? {
            if &b[0..6] == b"SKUL\xba\xbe" && b[6..8] == [0, 2] {
                push(found, "crypto_LUKS", at, "LUKS2 secondary header".into());
            }
        }
    }
    Ok(())
}

/// v1.1 at 0, v1.2 at 4 KiB, v1.0 8 KiB before the end (4 KiB aligned), v0.90 in the last
/// 64 KiB-aligned 64 KiB (host-endian, so either byte order). Magic and major version
/// must both match.
fn md(dev: &dyn BlockDevice, found: &mut Vec<Signature>) -> Result<(), BlockError> {
    let size = dev.size_bytes();
    let mut places = vec![(0, 1, "1.1"), (4096, 1, "1.2")];
    if size >= 12 << 10 {
        places.push(((size - 8192) & !4095, 1, "1.0"));
    }
    if size >= 128 << 10 {
        places.push(((size & !0xffff) - 0x10000, 0, "0.90"));
    }
    // On tiny devices the end-relative places can coincide with the fixed ones.
    places.dedup_by_key(|p| p.0);
    for (at, major, version) in places {
        if let Some(b) = read::<8>(dev, at)? {
            let le = u32_le(&b, 0) == MD_MAGIC && u32_le(&b, 4) == major;
            let be = major == 0
                && u32::from_be_bytes([b[0], b[1], b[2], b[3]]) == MD_MAGIC
                && b[4..8] == [0; 4];
            if le || be {
                push(
                    found,
                    "linux_raid_member",
                    at,
                    format!("MD superblock {version}"),
                );
            }
        }
    }
    Ok(())
}

/// The superblock at 1024, magic 0xEF53 at its byte 56; the kind from the features, as
/// blkid tells them apart.
fn ext(dev: &dyn BlockDevice, found: &mut Vec<Signature>) -> Result<(), BlockError> {
    let Some(sb) = read::<256>(dev, 1024)? else {
        return Ok(());
    };
    // A plausible block size (1 KiB << 0..=6) weeds out two stray bytes.
    if u16::from_le_bytes([sb[56], sb[57]]) != 0xef53 || u32_le(&sb, 24) > 6 {
        return Ok(());
    }
    let (compat, incompat, ro_compat) = (u32_le(&sb, 92), u32_le(&sb, 96), u32_le(&sb, 100));
    // What ext3 supports: incompat FILETYPE, RECOVER, META_BG; ro_compat SPARSE_SUPER,
    // LARGE_FILE, BTREE_DIR. Anything more is ext4.
    let kind = if incompat & 0x8 != 0 {
        "jbd"
    } else if incompat & !0x16 != 0 || ro_compat & !0x7 != 0 {
        "ext4"
    } else if compat & 0x4 != 0 {
        "ext3"
    } else {
        "ext2"
    };
    let label = name_field(&sb[120..136]);
    let detail = if label.is_empty() {
        String::new()
    } else {
        format!("label '{label}'")
    };
    push(found, kind, 1080, detail);
    Ok(())
}

fn btrfs_and_swap(dev: &dyn BlockDevice, found: &mut Vec<Signature>) -> Result<(), BlockError> {
    if let Some(b) = read::<8>(dev, 65536 + 64)? {
        if &b == b"_BHRfS_M" {
            push(found, "btrfs", 65536 + 64, String::new());
        }
    }
    for page in SWAP_PAGES {
        if let Some(b) = read::<10>(dev, page - 10)? {
            if &b == b"SWAPSPACE2" || &b == b"SWAP-SPACE" {
                push(
                    found,
                    "swap",
                    page - 10,
                    format!("{} KiB pages", page >> 10),
                );
            }
        }
    }
    Ok(())
}

/// GPT headers (primary at 512, backup in the last sector) and DOS partition tables: 0x55AA
/// at 510, every entry's boot flag 0 or 0x80, at least one entry in use, and not the boot
/// sector of a FAT, NTFS or exFAT filesystem (which also ends in 0x55AA).
fn partition_tables(dev: &dyn BlockDevice, found: &mut Vec<Signature>) -> Result<(), BlockError> {
    let size = dev.size_bytes();
    let mut gpt = false;
    for at in [512, size.saturating_sub(512)] {
        if at >= 512 && !(gpt && at == 512) {
            if let Some(b) = read::<8>(dev, at)? {
                if &b == b"EFI PART" {
                    let detail = if at == 512 {
                        "primary header"
                    } else {
                        "backup header"
                    };
                    push(found, "gpt", at, detail.into());
                    gpt = true;
                }
            }
        }
    }
    let Some(mbr) = read::<512>(dev, 0)? else {
        return Ok(());
    };
    if mbr[510..512] != [0x55, 0xaa] || gpt {
        return Ok(());
    }
    let entries: Vec<&[u8]> = mbr[446..510].chunks_exact(16).collect();
    let flags_ok = entries.iter().all(|e| e[0] == 0 || e[0] == 0x80);
    let used = entries
        .iter()
        .filter(|e| e[4] != 0 && u32_le(e, 12) != 0)
        .count();
    let fs_boot_sector = &mbr[3..11] == b"NTFS    "
        || &mbr[3..11] == b"EXFAT   "
        || &mbr[54..62] == b"FAT12   "
        || &mbr[54..62] == b"FAT16   "
        || &mbr[82..90] == b"FAT32   ";
    if flags_ok && used > 0 && !fs_boot_sector {
        let protective = entries.iter().any(|e| e[4] == 0xee);
        let (kind, detail) = if protective {
            ("gpt", "protective MBR".to_string())
        } else {
            ("dos", format!("{used} partition(s)"))
        };
        push(found, kind, 510, detail);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    const SIZE: u64 = 8 << 20;

    fn with(at: u64, bytes: &[u8]) -> MemoryDevice {
        let d = MemoryDevice::new("mem0", SIZE);
        d.write_at(bytes, at).unwrap();
        d
    }

    fn kinds(d: &MemoryDevice) -> Vec<(&'static str, u64)> {
        probe(d)
            .unwrap()
            .iter()
            .map(|s| (s.kind, s.offset))
            .collect()
    }

    fn ext_sb(compat: u32, incompat: u32, ro_compat: u32) -> MemoryDevice {
        let mut sb = [0u8; 256];
        sb[56..58].copy_from_slice(&0xef53u16.to_le_bytes());
        sb[24..28].copy_from_slice(&2u32.to_le_bytes());
        sb[92..96].copy_from_slice(&compat.to_le_bytes());
        sb[96..100].copy_from_slice(&incompat.to_le_bytes());
        sb[100..104].copy_from_slice(&ro_compat.to_le_bytes());
        sb[120..124].copy_from_slice(b"root");
        with(1024, &sb)
    }

    fn mbr(entries: &[(u8, u8, u32)], extra: &[(usize, &[u8])]) -> MemoryDevice {
        let mut s = [0u8; 512];
        for (i, &(flag, kind, len)) in entries.iter().enumerate() {
            let e = 446 + i * 16;
            s[e] = flag;
            s[e + 4] = kind;
            s[e + 8..e + 12].copy_from_slice(&2048u32.to_le_bytes());
            s[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
        }
        for &(at, bytes) in extra {
            s[at..at + bytes.len()].copy_from_slice(bytes);
        }
        s[510] = 0x55;
        s[511] = 0xaa;
        with(0, &s)
    }

    #[test]
    fn finds_each_format() {
        let md1 = [&MD_MAGIC.to_le_bytes()[..], &1u32.to_le_bytes()].concat();
        let md0 = [&MD_MAGIC.to_le_bytes()[..], &0u32.to_le_bytes()].concat();
        let cases: Vec<(MemoryDevice, &str, u64)> = vec![
            (with(512, b"LABELONE"), "LVM2_member", 512),
            (with(1536, b"LABELONE"), "LVM2_member", 1536),
            (with(0, b"LUKS\xba\xbe\x00\x02"), "crypto_LUKS", 0),
            (with(0x4000, b"SKUL\xba\xbe\x00\x02"), "crypto_LUKS", 0x4000),
            (with(0, b"XFSB"), "xfs", 0),
            (with(65600, b"_BHRfS_M"), "btrfs", 65600),
            (with(4086, b"SWAPSPACE2"), "swap", 4086),
            (with(65526, b"SWAP-SPACE"), "swap", 65526),
            (with(512, b"EFI PART"), "gpt", 512),
            (with(SIZE - 512, b"EFI PART"), "gpt", SIZE - 512),
            (with(4096, &md1), "linux_raid_member", 4096),
            (with(0, &md1), "linux_raid_member", 0),
            (with(SIZE - 65536, &md0), "linux_raid_member", SIZE - 65536),
            (
                with(SIZE - 65536, &MD_MAGIC.to_be_bytes()),
                "linux_raid_member",
                SIZE - 65536,
            ),
            (with(SIZE - 8192, &md1), "linux_raid_member", SIZE - 8192),
            (ext_sb(0, 0x2, 0x3), "ext2", 1080),
            (ext_sb(0x4, 0x2, 0x3), "ext3", 1080),
            (ext_sb(0x4, 0x2c2, 0x3), "ext4", 1080),
            (ext_sb(0, 0x8, 0), "jbd", 1080),
            (mbr(&[(0x80, 0x83, 100)], &[]), "dos", 510),
            (mbr(&[(0, 0xee, u32::MAX)], &[]), "gpt", 510),
        ];
        for (dev, kind, offset) in cases {
            assert_eq!(kinds(&dev), vec![(kind, offset)]);
        }
        let ext = probe(&ext_sb(0, 0, 0)).unwrap();
        assert_eq!(
            ext[0].to_string(),
            "an ext2 signature at byte 1080 (label 'root')"
        );
    }

    #[test]
    fn look_alikes_are_not_signatures() {
        // An MD magic with the wrong version, a 0xEF53 with an absurd block size.
        let md = [&MD_MAGIC.to_le_bytes()[..], &7u32.to_le_bytes()].concat();
        assert!(kinds(&with(4096, &md)).is_empty());
        let mut sb = [0u8; 64];
        sb[56..58].copy_from_slice(&0xef53u16.to_le_bytes());
        sb[24] = 40;
        assert!(kinds(&with(1024, &sb)).is_empty());
        // 0x55AA without partitions, with a bad boot flag, or on a FAT boot sector.
        assert!(kinds(&mbr(&[], &[])).is_empty());
        assert!(kinds(&mbr(&[(0x80, 0x83, 100), (0x12, 0, 0)], &[])).is_empty());
        assert!(kinds(&mbr(&[(0, 0x83, 100)], &[(82, b"FAT32   ")])).is_empty());
        assert!(kinds(&mbr(&[(0, 0x83, 100)], &[(3, b"NTFS    ")])).is_empty());
        // A GPT disk reports its header, not its protective MBR as well.
        let d = mbr(&[(0, 0xee, u32::MAX)], &[]);
        d.write_at(b"EFI PART", 512).unwrap();
        assert_eq!(kinds(&d), vec![("gpt", 512)]);
    }

    #[test]
    fn empty_and_small_devices_hold_nothing() {
        for size in [
            0,
            1,
            8,
            511,
            512,
            700,
            1100,
            4096,
            12 << 10,
            65 << 10,
            128 << 10,
            SIZE,
        ] {
            let d = MemoryDevice::new("z", size);
            assert!(probe(&d).unwrap().is_empty(), "{size}");
            // Every byte 0xff: no magic matches, no read is out of range.
            d.write_at(&vec![0xff; size as usize], 0).unwrap();
            assert!(probe(&d).unwrap().is_empty(), "{size}");
        }
        // A small device still shows what fits in it.
        let d = MemoryDevice::new("t", 1024);
        d.write_at(b"LABELONE", 512).unwrap();
        assert_eq!(kinds(&d), vec![("LVM2_member", 512)]);
    }
}
