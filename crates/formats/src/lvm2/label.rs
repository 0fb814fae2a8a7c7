//! The LVM2 label (one 512-byte sector among the first four) and the PV header inside it:
//! the PV's id, the device size, where data starts and where the metadata areas are.
//!
//! Layout (all little-endian): `label_header` = "LABELONE", sector_xl u64, crc_xl u32 (CRC
//! of bytes 20..512), offset_xl u32 (32), type "LVM2 001"; then at offset_xl the
//! `pv_header` = pv_uuid[32], device_size_xl u64, data-area list and metadata-area list
//! (each `{u64 offset, u64 size}`, ending in an all-zero entry), then the extension: version
//! u32, flags u32, bootloader-area list.

use thiserror::Error;

use tessera_block::{BlockDevice, BlockError};

use super::crc;
use super::id::Id;

pub const LABEL_ID: &[u8; 8] = b"LABELONE";
pub const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
pub const SECTOR: usize = 512;
/// The label may be in any of the first four sectors.
pub const LABEL_SCAN_SECTORS: u64 = 4;
/// The sector pvcreate writes the label to.
pub const DEFAULT_LABEL_SECTOR: u64 = 1;
/// The PV header starts this far into the label sector.
pub const PV_HEADER_OFFSET: u32 = 32;
/// The first metadata area's usual place.
pub const DEFAULT_MDA_OFFSET: u64 = 4096;
pub const PV_EXT_VERSION: u32 = 2;
/// Extension flag: the PV belongs to a VG.
pub const PV_EXT_USED: u32 = 1;

/// An `{offset, size}` pair in bytes from the start of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLocn {
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvLabel {
    /// The sector the label is in.
    pub sector: u64,
    pub pv_id: Id,
    pub device_size_bytes: u64,
    pub data_areas: Vec<DiskLocn>,
    pub metadata_areas: Vec<DiskLocn>,
    /// 0 when the header has no extension (labels written before lvm2 2.02.122).
    pub ext_version: u32,
    pub ext_flags: u32,
    pub bootloader_areas: Vec<DiskLocn>,
}

#[derive(Debug, Error)]
pub enum LabelError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("{device}: LVM2 label in sector {sector} has checksum {found:#010x}, expected {expected:#010x}")]
    Checksum {
        device: String,
        sector: u64,
        found: u32,
        expected: u32,
    },
    #[error("{device}: LVM2 label in sector {sector} says it belongs in sector {claimed}")]
    WrongSector {
        device: String,
        sector: u64,
        claimed: u64,
    },
    #[error("{device}: LVM2 label in sector {sector} has type '{kind}', not 'LVM2 001'")]
    UnknownType {
        device: String,
        sector: u64,
        kind: String,
    },
    #[error("{device}: LVM2 label in sector {sector}: PV header offset {offset} is not 32")]
    BadOffset {
        device: String,
        sector: u64,
        offset: u32,
    },
    #[error("{device}: LVM2 label in sector {sector}: {why}")]
    Malformed {
        device: String,
        sector: u64,
        why: String,
    },
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(raw)
}

impl PvLabel {
    /// A new orphan PV laid out as lvm2's pvcreate does by default: label in sector 1, one
    /// metadata area from 4096 up to the first extent, data from `pe_start_bytes`.
    pub fn new_pv(pv_id: Id, device_size_bytes: u64, pe_start_bytes: u64) -> PvLabel {
        PvLabel {
            sector: DEFAULT_LABEL_SECTOR,
            pv_id,
            device_size_bytes,
            data_areas: vec![DiskLocn {
                offset: pe_start_bytes,
                size: 0,
            }],
            metadata_areas: vec![DiskLocn {
                offset: DEFAULT_MDA_OFFSET,
                size: pe_start_bytes.saturating_sub(DEFAULT_MDA_OFFSET),
            }],
            ext_version: PV_EXT_VERSION,
            ext_flags: 0,
            bootloader_areas: Vec::new(),
        }
    }

    /// The label sector's bytes, checksum included.
    pub fn encode(&self) -> [u8; SECTOR] {
        let mut b = [0u8; SECTOR];
        b[0..8].copy_from_slice(LABEL_ID);
        b[8..16].copy_from_slice(&self.sector.to_le_bytes());
        b[20..24].copy_from_slice(&PV_HEADER_OFFSET.to_le_bytes());
        b[24..32].copy_from_slice(LABEL_TYPE);
        b[32..64].copy_from_slice(self.pv_id.raw());
        b[64..72].copy_from_slice(&self.device_size_bytes.to_le_bytes());
        let mut at = 72;
        let put_list = |b: &mut [u8; SECTOR], list: &[DiskLocn], at: &mut usize| {
            // Lists that would run off the sector are cut; encode is only given lists
            // built by tessera, which hold one or two entries.
            for l in list
                .iter()
                .chain(std::iter::once(&DiskLocn { offset: 0, size: 0 }))
            {
                if *at + 16 > SECTOR {
                    break;
                }
                b[*at..*at + 8].copy_from_slice(&l.offset.to_le_bytes());
                b[*at + 8..*at + 16].copy_from_slice(&l.size.to_le_bytes());
                *at += 16;
            }
        };
        put_list(&mut b, &self.data_areas, &mut at);
        put_list(&mut b, &self.metadata_areas, &mut at);
        if self.ext_version > 0 && at + 8 <= SECTOR {
            b[at..at + 4].copy_from_slice(&self.ext_version.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&self.ext_flags.to_le_bytes());
            at += 8;
            put_list(&mut b, &self.bootloader_areas, &mut at);
        }
        let sum = crc::checksum(&b[20..]);
        b[16..20].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Reads a label sector found at `sector`; `device_size` bounds the areas it lists.
    pub fn decode(
        b: &[u8],
        sector: u64,
        device: &str,
        device_size: u64,
    ) -> Result<PvLabel, LabelError> {
        let malformed = |why: String| LabelError::Malformed {
            device: device.to_string(),
            sector,
            why,
        };
        if b.len() < SECTOR || &b[0..8] != LABEL_ID {
            return Err(malformed("no LABELONE signature".into()));
        }
        let claimed = le_u64(b, 8);
        if claimed != sector {
            return Err(LabelError::WrongSector {
                device: device.into(),
                sector,
                claimed,
            });
        }
        let found = le_u32(b, 16);
        let expected = crc::checksum(&b[20..SECTOR]);
        if found != expected {
            return Err(LabelError::Checksum {
                device: device.into(),
                sector,
                found,
                expected,
            });
        }
        let offset = le_u32(b, 20);
        if &b[24..32] != LABEL_TYPE {
            let kind = String::from_utf8_lossy(&b[24..32]).into_owned();
            return Err(LabelError::UnknownType {
                device: device.into(),
                sector,
                kind,
            });
        }
        if offset != PV_HEADER_OFFSET {
            return Err(LabelError::BadOffset {
                device: device.into(),
                sector,
                offset,
            });
        }
        let pv_id = Id::from_raw(&b[32..64]).map_err(|e| malformed(format!("PV id: {e}")))?;
        let device_size_bytes = le_u64(b, 64);
        let mut at = 72;
        let read_list = |at: &mut usize, what: &str| -> Result<Vec<DiskLocn>, LabelError> {
            let mut list = Vec::new();
            loop {
                if *at + 16 > SECTOR {
                    return Err(malformed(format!(
                        "the {what} list runs off the end of the sector"
                    )));
                }
                let l = DiskLocn {
                    offset: le_u64(b, *at),
                    size: le_u64(b, *at + 8),
                };
                *at += 16;
                if l.offset == 0 {
                    return Ok(list);
                }
                list.push(l);
            }
        };
        let data_areas = read_list(&mut at, "data area")?;
        let metadata_areas = read_list(&mut at, "metadata area")?;
        let (mut ext_version, mut ext_flags, mut bootloader_areas) = (0, 0, Vec::new());
        if at + 8 <= SECTOR {
            ext_version = le_u32(b, at);
            if ext_version > 0 {
                ext_flags = le_u32(b, at + 4);
                at += 8;
                bootloader_areas = read_list(&mut at, "bootloader area")?;
            }
        }
        let label = PvLabel {
            sector,
            pv_id,
            device_size_bytes,
            data_areas,
            metadata_areas,
            ext_version,
            ext_flags,
            bootloader_areas,
        };
        label.check_bounds(device, device_size)?;
        Ok(label)
    }

    /// Every area must lie inside the device, and metadata areas must hold a header.
    fn check_bounds(&self, device: &str, device_size: u64) -> Result<(), LabelError> {
        let malformed = |why: String| LabelError::Malformed {
            device: device.to_string(),
            sector: self.sector,
            why,
        };
        if self.device_size_bytes == 0 || self.device_size_bytes > (1u64 << 62) {
            return Err(malformed(format!(
                "device size {} bytes is absurd",
                self.device_size_bytes
            )));
        }
        for m in &self.metadata_areas {
            let end = m.offset.checked_add(m.size);
            if m.size < SECTOR as u64 || end.is_none_or(|e| e > device_size) {
                return Err(malformed(format!(
                    "metadata area at byte {} of {} bytes does not fit in the device ({device_size} bytes)",
                    m.offset, m.size
                )));
            }
        }
        for d in &self.data_areas {
            if d.offset > device_size {
                return Err(malformed(format!(
                    "data area starts at byte {}, past the device end ({device_size} bytes)",
                    d.offset
                )));
            }
        }
        Ok(())
    }
}

/// Finds and reads the label among the first four sectors. `Ok(None)`: no LVM2 label.
pub fn read_label(dev: &dyn BlockDevice) -> Result<Option<PvLabel>, LabelError> {
    let size = dev.size_bytes();
    let sectors = (size / SECTOR as u64).min(LABEL_SCAN_SECTORS);
    if sectors == 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; sectors as usize * SECTOR];
    dev.read_at(&mut buf, 0)?;
    for s in 0..sectors as usize {
        let b = &buf[s * SECTOR..(s + 1) * SECTOR];
        if &b[0..8] == LABEL_ID {
            return PvLabel::decode(b, s as u64, dev.name(), size).map(Some);
        }
    }
    Ok(None)
}

/// Writes the label and clears any other LABELONE among the first four sectors, as
/// pvcreate does, so a scan never finds two.
pub fn write_label(dev: &dyn BlockDevice, label: &PvLabel) -> Result<(), LabelError> {
    let size = dev.size_bytes();
    let sectors = (size / SECTOR as u64).min(LABEL_SCAN_SECTORS);
    let mut buf = vec![0u8; sectors as usize * SECTOR];
    dev.read_at(&mut buf, 0)?;
    for s in 0..sectors {
        let at = s as usize * SECTOR;
        if s != label.sector && &buf[at..at + 8] == LABEL_ID {
            dev.write_at(&[0u8; SECTOR], s * SECTOR as u64)?;
        }
    }
    dev.write_at(&label.encode(), label.sector * SECTOR as u64)?;
    Ok(())
}

/// Clears every LVM2 label among the first four sectors.
pub fn wipe_label(dev: &dyn BlockDevice) -> Result<(), LabelError> {
    let sectors = (dev.size_bytes() / SECTOR as u64).min(LABEL_SCAN_SECTORS);
    let mut buf = vec![0u8; sectors as usize * SECTOR];
    dev.read_at(&mut buf, 0)?;
    for s in 0..sectors {
        let at = s as usize * SECTOR;
        if &buf[at..at + 8] == LABEL_ID {
            dev.write_at(&[0u8; SECTOR], s * SECTOR as u64)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    fn dev() -> MemoryDevice {
        MemoryDevice::new("mem0", 64 << 20)
    }

    #[test]
    fn round_trips_through_a_device() {
        let d = dev();
        let mut label = PvLabel::new_pv(Id::random(), 64 << 20, 1 << 20);
        label.ext_flags = PV_EXT_USED;
        write_label(&d, &label).unwrap();
        assert_eq!(read_label(&d).unwrap(), Some(label.clone()));
        let encoded = label.encode();
        assert_eq!(PvLabel::decode(&encoded, 1, "x", 64 << 20).unwrap(), label);
        wipe_label(&d).unwrap();
        assert_eq!(read_label(&d).unwrap(), None);
    }

    #[test]
    fn writing_clears_labels_in_other_sectors() {
        let d = dev();
        let mut label = PvLabel::new_pv(Id::random(), 64 << 20, 1 << 20);
        label.sector = 0;
        write_label(&d, &label).unwrap();
        label.sector = 1;
        write_label(&d, &label).unwrap();
        assert_eq!(read_label(&d).unwrap().unwrap().sector, 1);
    }

    #[test]
    fn refuses_damaged_labels() {
        let label = PvLabel::new_pv(Id::random(), 64 << 20, 1 << 20);
        let good = label.encode();
        let fix = |b: &mut [u8; 512]| {
            let sum = crc::checksum(&b[20..]);
            b[16..20].copy_from_slice(&sum.to_le_bytes());
        };
        let mut b = good;
        b[100] ^= 1;
        assert!(matches!(
            PvLabel::decode(&b, 1, "d", 64 << 20),
            Err(LabelError::Checksum { .. })
        ));
        assert!(matches!(
            PvLabel::decode(&good, 2, "d", 64 << 20),
            Err(LabelError::WrongSector { .. })
        ));
        let mut b = good;
        b[24..32].copy_from_slice(b"LVM1 001");
        fix(&mut b);
        assert!(matches!(
            PvLabel::decode(&b, 1, "d", 64 << 20),
            Err(LabelError::UnknownType { .. })
        ));
        // A list without its terminating entry runs off the sector.
        let mut b = good;
        for at in (72..496).step_by(16) {
            b[at..at + 8].copy_from_slice(&4096u64.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&4096u64.to_le_bytes());
        }
        fix(&mut b);
        let err = PvLabel::decode(&b, 1, "d", 64 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("runs off"), "{err}");
        // A metadata area past the end of a smaller device.
        let err = PvLabel::decode(&good, 1, "d", 512 << 10)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("d: ") && err.contains("metadata area"),
            "{err}"
        );
    }

    #[test]
    fn decode_never_panics_on_noise() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            let mut b = [0u8; 512];
            for x in b.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *x = seed as u8;
            }
            b[0..8].copy_from_slice(LABEL_ID);
            b[8..16].copy_from_slice(&1u64.to_le_bytes());
            b[20..24].copy_from_slice(&32u32.to_le_bytes());
            b[24..32].copy_from_slice(LABEL_TYPE);
            let sum = crc::checksum(&b[20..]);
            b[16..20].copy_from_slice(&sum.to_le_bytes());
            let _ = PvLabel::decode(&b, 1, "noise", 1 << 30);
        }
    }
}
