//! The LVM2 label (one 512-byte sector among the first four) and the PV header inside it:
//! the PV's id, the device size, where data starts and where the metadata areas are.
//!
//! Layout (all little-endian): `label_header` = "LABELONE", sector_xl u64, crc_xl u32 (CRC
//! of bytes 20..512), offset_xl u32 (32), type "LVM2 001"; then at offset_xl the
//! `pv_header` = pv_uuid[32], device_size_xl u64, data-area list and metadata-area list
//! (each `{u64 offset, u64 size}`, ending in an all-zero entry), then the extension: version
//! u32, flags u32, bootloader-area list.
//!
//! As lvm2 2.03's scan does, the first sector holding a valid label wins and damaged
//! LABELONE sectors are passed over; a device whose only labels are damaged is an error.

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
/// pvcreate's default first extent: 1 MiB.
pub const DEFAULT_PE_START: u64 = 1 << 20;
/// The bytes the label may occupy; no area may start inside them.
pub const LABEL_SCAN_BYTES: u64 = LABEL_SCAN_SECTORS * SECTOR as u64;
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
    /// A new orphan PV laid out as lvm2 2.03's pvcreate does by default: label in sector 1,
    /// one data area `{pe_start, 0}`, one metadata area from 4096 up to the first extent,
    /// extension version 2 with no flags. With `pe_start_bytes` = [`DEFAULT_PE_START`] its
    /// encoding equals pvcreate's byte for byte (checked in tests/lvm2_real.rs).
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

    /// True if the lists fit in the sector with their terminators (at most 24 entries in
    /// all); [`write_label`] refuses labels that do not.
    pub fn fits(&self) -> bool {
        let entries = self.data_areas.len() + self.metadata_areas.len() + 2;
        let ext = if self.ext_version > 0 {
            8 + 16 * (self.bootloader_areas.len() + 1)
        } else {
            0
        };
        72 + 16 * entries + ext <= SECTOR
    }

    /// The label sector's bytes, checksum included. Lists are cut where the sector ends
    /// (see [`PvLabel::fits`]).
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

    /// Reads the label sector found at `sector` of `device`, checking signature, sector,
    /// checksum, type and header offset; `device_size` bounds the areas it lists.
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

    /// Every area must lie inside the device and past the label sectors, and metadata
    /// areas must be big enough for their header.
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
        let lists = [
            ("data", &self.data_areas),
            ("metadata", &self.metadata_areas),
            ("bootloader", &self.bootloader_areas),
        ];
        for (what, list) in lists {
            for a in list {
                let fits = a
                    .offset
                    .checked_add(a.size)
                    .is_some_and(|e| e <= device_size);
                if a.offset < LABEL_SCAN_BYTES || !fits {
                    return Err(malformed(format!(
                        "{what} area at byte {} of {} bytes does not fit in the device \
                         (bytes {LABEL_SCAN_BYTES} to {device_size})",
                        a.offset, a.size
                    )));
                }
            }
        }
        if let Some(m) = self.metadata_areas.iter().find(|m| m.size <= SECTOR as u64) {
            return Err(malformed(format!(
                "metadata area at byte {} of {} bytes has no room for text",
                m.offset, m.size
            )));
        }
        Ok(())
    }
}

/// Finds and reads the label among the first four sectors (as many as the device has).
/// `Ok(None)`: no LABELONE at all. The first valid label wins; if every LABELONE found is
/// damaged, the first one's error is returned.
pub fn read_label(dev: &dyn BlockDevice) -> Result<Option<PvLabel>, LabelError> {
    let size = dev.size_bytes();
    let sectors = (size / SECTOR as u64).min(LABEL_SCAN_SECTORS) as usize;
    let mut buf = vec![0u8; sectors * SECTOR];
    dev.read_at(&mut buf, 0)?;
    let mut first_error = None;
    for (s, b) in buf.chunks_exact(SECTOR).enumerate() {
        if &b[0..8] != LABEL_ID {
            continue;
        }
        match PvLabel::decode(b, s as u64, dev.name(), size) {
            Ok(label) => return Ok(Some(label)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(None), Err)
}

/// Writes the label and clears any other LABELONE among the first four sectors, as
/// pvcreate does, so a scan never finds two.
pub fn write_label(dev: &dyn BlockDevice, label: &PvLabel) -> Result<(), LabelError> {
    if label.sector >= LABEL_SCAN_SECTORS || !label.fits() {
        return Err(LabelError::Malformed {
            device: dev.name().into(),
            sector: label.sector,
            why: "cannot write a label outside sectors 0-3 or with more areas than fit".into(),
        });
    }
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

    const SIZE: u64 = 64 << 20;

    fn dev() -> MemoryDevice {
        MemoryDevice::new("mem0", SIZE)
    }

    fn label() -> PvLabel {
        PvLabel::new_pv(Id::random(), SIZE, DEFAULT_PE_START)
    }

    /// Recomputes the checksum so damage gets past it.
    fn fix(b: &mut [u8; 512]) {
        let sum = crc::checksum(&b[20..]);
        b[16..20].copy_from_slice(&sum.to_le_bytes());
    }

    fn put_u64(b: &mut [u8; 512], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn error_of(b: &[u8; 512]) -> String {
        PvLabel::decode(b, 1, "/dev/loop3", SIZE)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn new_pv_matches_pvcreate_layout() {
        let l = label();
        let b = l.encode();
        // Bytes as lvm2 2.03.16's pvcreate wrote them on a 64 MiB device (id aside).
        assert_eq!(&b[0..16], b"LABELONE\x01\0\0\0\0\0\0\0");
        assert_eq!(&b[20..32], b"\x20\0\0\0LVM2 001");
        let words: Vec<u64> = (64..144).step_by(8).map(|at| le_u64(&b, at)).collect();
        assert_eq!(words, [SIZE, 1 << 20, 0, 0, 0, 4096, 1_044_480, 0, 0, 2]);
        assert!(b[144..].iter().all(|&x| x == 0));
    }

    #[test]
    fn round_trips_through_a_device() {
        let d = dev();
        let mut l = label();
        l.ext_flags = PV_EXT_USED;
        l.metadata_areas.push(DiskLocn {
            offset: SIZE - (1 << 20),
            size: 1 << 20,
        });
        l.bootloader_areas.push(DiskLocn {
            offset: 1 << 20,
            size: 1 << 20,
        });
        write_label(&d, &l).unwrap();
        assert_eq!(read_label(&d).unwrap(), Some(l.clone()));
        assert_eq!(PvLabel::decode(&l.encode(), 1, "x", SIZE).unwrap(), l);
        wipe_label(&d).unwrap();
        assert_eq!(read_label(&d).unwrap(), None);
        // Labels from before the extension (version 0) read back without one.
        let old = PvLabel {
            ext_version: 0,
            ext_flags: 0,
            bootloader_areas: vec![],
            ..l
        };
        assert_eq!(PvLabel::decode(&old.encode(), 1, "x", SIZE).unwrap(), old);
    }

    #[test]
    fn writing_clears_labels_in_other_sectors() {
        let d = dev();
        let mut l = label();
        for sector in [0, 3, 1] {
            l.sector = sector;
            write_label(&d, &l).unwrap();
        }
        let mut b = vec![0u8; 2048];
        d.read_at(&mut b, 0).unwrap();
        let found: Vec<usize> = (0..4)
            .filter(|s| &b[s * 512..s * 512 + 8] == LABEL_ID)
            .collect();
        assert_eq!(found, [1]);
        assert_eq!(read_label(&d).unwrap().unwrap().sector, 1);
        l.sector = 4;
        assert!(write_label(&d, &l).is_err());
        l.sector = 1;
        l.data_areas = vec![
            DiskLocn {
                offset: 1 << 20,
                size: 0
            };
            24
        ];
        assert!(!l.fits() && write_label(&d, &l).is_err());
    }

    #[test]
    fn a_damaged_label_does_not_hide_a_good_one() {
        let d = dev();
        let good = label();
        write_label(&d, &good).unwrap();
        let mut bad = PvLabel {
            sector: 0,
            ..good.clone()
        }
        .encode();
        bad[100] ^= 1;
        d.write_at(&bad, 0).unwrap();
        assert_eq!(read_label(&d).unwrap(), Some(good));
        // With only the damaged one left, its error comes out.
        d.write_at(&[0u8; 512], 512).unwrap();
        let err = read_label(&d).unwrap_err();
        assert!(
            matches!(err, LabelError::Checksum { sector: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn small_devices_have_no_label_and_no_panic() {
        for size in [0, 100, 512, 1000, 2047] {
            let d = MemoryDevice::new("tiny", size);
            assert_eq!(read_label(&d).unwrap(), None);
            assert!(wipe_label(&d).is_ok());
        }
        let d = MemoryDevice::new("tiny", 1024);
        d.write_at(&label().encode(), 512).unwrap();
        let err = read_label(&d).unwrap_err().to_string();
        assert!(
            err.starts_with("tiny: LVM2 label in sector 1") && err.contains("does not fit"),
            "{err}"
        );
    }

    #[test]
    fn refuses_damaged_labels() {
        let good = label().encode();
        let mut b = good;
        b[100] ^= 1;
        let err = error_of(&b);
        assert!(
            err.starts_with("/dev/loop3: LVM2 label in sector 1 has checksum 0x")
                && err.contains(", expected 0x"),
            "{err}"
        );
        assert!(matches!(
            PvLabel::decode(&good, 2, "d", SIZE),
            Err(LabelError::WrongSector {
                sector: 2,
                claimed: 1,
                ..
            })
        ));
        let mut b = good;
        b[24..32].copy_from_slice(b"LVM1 001");
        fix(&mut b);
        assert!(error_of(&b).contains("type 'LVM1 001'"));
        let mut b = good;
        b[20] = 40;
        fix(&mut b);
        assert!(error_of(&b).contains("offset 40"));
        let mut b = good;
        b[40] = b'$';
        fix(&mut b);
        assert!(error_of(&b).contains("PV id"));
        let mut b = good;
        put_u64(&mut b, 64, u64::MAX);
        fix(&mut b);
        assert!(error_of(&b).contains("device size"));
        // A list without its terminating entry runs off the sector.
        let mut b = good;
        for at in (72..512).step_by(16) {
            put_u64(&mut b, at, 1 << 20);
        }
        fix(&mut b);
        assert!(error_of(&b).contains("data area list runs off the end of the sector"));
        let mut b = good;
        for at in (104..496).step_by(16) {
            put_u64(&mut b, at, 4096);
            put_u64(&mut b, at + 8, 4096);
        }
        fix(&mut b);
        assert!(error_of(&b).contains("metadata area list runs off"));
        // Areas past the device end, inside the label sectors, or too small for a header.
        for (at, value, what) in [
            (104, 1 << 40, "metadata area at byte 1099511627776"),
            (112, u64::MAX, "metadata area at byte 4096"),
            (104, 1024, "metadata area at byte 1024"),
            (112, 512, "no room for text"),
            (72, SIZE + 1, "data area"),
            (80, SIZE, "data area"),
        ] {
            let mut b = good;
            put_u64(&mut b, at, value);
            fix(&mut b);
            let err = error_of(&b);
            assert!(
                err.starts_with("/dev/loop3: LVM2 label in sector 1: ") && err.contains(what),
                "{err}"
            );
        }
        // Areas past the end of a device smaller than the label says.
        let err = PvLabel::decode(&good, 1, "d", 512 << 10)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("d: ") && err.contains("does not fit in the device"),
            "{err}"
        );
    }

    #[test]
    fn decode_never_panics_on_noise() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for i in 0..20_000 {
            let mut b = [0u8; 512];
            for x in b.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *x = seed as u8;
            }
            // Mostly zero lists, so that decoding gets past them now and then.
            for x in b[72 + (i % 400)..].iter_mut() {
                *x = 0;
            }
            b[0..8].copy_from_slice(LABEL_ID);
            b[8..16].copy_from_slice(&1u64.to_le_bytes());
            b[20..24].copy_from_slice(&32u32.to_le_bytes());
            b[24..32].copy_from_slice(LABEL_TYPE);
            fix(&mut b);
            if let Ok(l) = PvLabel::decode(&b, 1, "noise", 1 << 30) {
                assert_eq!(
                    PvLabel::decode(&l.encode(), 1, "noise", 1 << 30).unwrap(),
                    l
                );
            }
        }
    }
}
