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
        write!(f, "a {} signature at byte {}", self.kind, self.offset)?;
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

/// `len` bytes at `offset`, or None when they do not lie inside the device.
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
    let mut sig = |kind, offset, detail: String| {
        found.push(Signature {
            kind,
            offset,
            detail,
        })
    };
    let size = dev.size_bytes();

    // LVM2: a label in one of the first four sectors.
    for sector in 0..4u64 {
        if let Some(b) = read::<32>(dev, sector * 512)? {
            if &b[0..8] == b"LABELONE" {
                sig(
                    "LVM2_member",
                    sector * 512,
                    format!("label type '{}'", name_field(&b[24..32])),
                );
            }
        }
    }

    if let Some(b) = read::<8>(dev, 0)? {
        if &b[0..6] == b"LUKS\xba\xbe" {
            let version = u16::from_be_bytes([b[6], b[7]]);
            sig("crypto_LUKS", 0, format!("LUKS{version}"));
        }
        if &b[0..4] == b"XFSB" {
            sig("xfs", 0, String::new());
        }
    }
    for at in LUKS2_SECONDARY {
        if let Some(b) = read::<8>(dev, at)? {
            if &b[0..6] == b"SKUL\xba\xbe" && b[6..8] == [0, 2] {
                sig("crypto_LUKS", at, "LUKS2 secondary header".into());
            }
        }
    }

    // MD: v1.1 at 0, v1.2 at 4 KiB, v1.0 8 KiB before the end (4 KiB aligned), v0.90 in
    // the last 64 KiB-aligned 64 KiB (host-endian: either byte order). Magic and major
    // version must both match.
    let mut md = |at: u64, detail: &str, major: u32| -> Result<(), BlockError> {
        if let Some(b) = read::<8>(dev, at)? {
            let le = u32_le(&b, 0) == MD_MAGIC && u32_le(&b, 4) == major;
            let be = major == 0
                && u32::from_be_bytes([b[0], b[1], b[2], b[3]]) == MD_MAGIC
                && b[4..8] == [0; 4];
            if le || be {
                found_md(&mut found_mds, at, detail);
            }
        }
        Ok(())
    };
    let mut found_mds: Vec<(u64, String)> = Vec::new();
    fn found_md(list: &mut Vec<(u64, String)>, at: u64, detail: &str) {
        list.push((at, detail.to_string()));
    }
    let _ = &mut md;
    drop(md);
    let _ = found_mds;
    Ok(found)
}
