//! Metadata areas: a 512-byte header, then a circular buffer holding the VG's text.
//!
//! Header layout (little-endian): checksum_xl u32 (CRC of bytes 4..512), magic[16],
//! version u32 (1), start u64 (the header's absolute byte offset), size u64 (the whole
//! area), then `raw_locn` entries {offset u64 (from the area start), size u64, checksum u32,
//! flags u32} ending at offset 0. Slot 0 is the committed text, slot 1 the precommitted one.
//!
//! Checked against lvm2 2.03.16: a raw_locn's size counts the text's trailing NUL and its
//! checksum covers those `size` bytes, NUL included. A text runs from its offset and, past
//! the area's end, continues at offset 512 (the checksum chains over both pieces). New
//! copies go after the current one, rounded up to 512 (see [`next_text_offset`]), and no
//! copy may exceed `(size - 512) / 2 - 512` bytes so that two always fit.

use thiserror::Error;

use tessera_block::{BlockDevice, BlockError};

use super::crc;

pub const MDA_HEADER_SIZE: u64 = 512;
pub const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
pub const MDA_VERSION: u32 = 1;
/// raw_locn flag: this area is not used for metadata (`pvchange --metadataignore`).
pub const RAW_LOCN_IGNORED: u32 = 1;
/// Where copies start in the buffer (lvm2's MDA_ORIGINAL_ALIGNMENT).
const TEXT_ALIGN: u64 = 512;
/// raw_locn slots in the header: (512 - 40) / 24, the last one only when it is full.
const LOCN_SLOTS: usize = (512 - 40) / 24;
/// Most entries `encode` writes: one slot stays free for the terminating zero entry.
pub const MAX_RAW_LOCNS: usize = LOCN_SLOTS - 1;
/// Largest text `read_text` allocates for, whatever a (corrupt) header on a big device
/// claims. lvm2's own texts stay far below: 1 MiB areas hold at most 521,216 bytes.
pub const MAX_TEXT_READ: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLocn {
    /// From the start of the area; 512 or more.
    pub offset: u64,
    /// Bytes stored, the trailing NUL included.
    pub size: u64,
    /// lvm2's CRC of the `size` stored bytes.
    pub checksum: u32,
    pub flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdaHeader {
    /// Absolute byte offset of the header on the device.
    pub start: u64,
    /// Size of the whole area in bytes, header included.
    pub size: u64,
    pub raw_locns: Vec<RawLocn>,
}

#[derive(Debug, Error)]
pub enum MdaError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("{device}: metadata area at byte {start}: header checksum is {found:#010x}, expected {expected:#010x}")]
    Checksum {
        device: String,
        start: u64,
        found: u32,
        expected: u32,
    },
    #[error("{device}: metadata area at byte {start}: header has the wrong magic (not an LVM2 metadata area)")]
    Magic { device: String, start: u64 },
    #[error("{device}: metadata area at byte {start}: header version {version} is not 1")]
    Version {
        device: String,
        start: u64,
        version: u32,
    },
    #[error("{device}: metadata area at byte {start}: header says it is at byte {claimed}")]
    WrongStart {
        device: String,
        start: u64,
        claimed: u64,
    },
    #[error("{device}: metadata area at byte {start}: {why}")]
    Malformed {
        device: String,
        start: u64,
        why: String,
    },
    #[error("{device}: metadata area at byte {start}: text at offset {offset} of {size} bytes has checksum {found:#010x}, expected {expected:#010x}")]
    TextChecksum {
        device: String,
        start: u64,
        offset: u64,
        size: u64,
        found: u32,
        expected: u32,
    },
    #[error("{device}: metadata area at byte {start}: metadata of {len} bytes exceeds the area's maximum of {max} bytes (two copies must fit in its {size} bytes); the VG's metadata has outgrown it")]
    TooLarge {
        device: String,
        start: u64,
        size: u64,
        len: u64,
        max: u64,
    },
    #[error("{device}: metadata area at byte {start}: a copy of {len} bytes at offset {offset} would overwrite the current one at offset {old_offset} ({old_size} bytes)")]
    Overlap {
        device: String,
        start: u64,
        len: u64,
        offset: u64,
        old_offset: u64,
        old_size: u64,
    },
}

fn le_u32(b: &[u8; 512], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn le_u64(b: &[u8; 512], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(raw)
}

impl MdaHeader {
    /// The header sector. At most [`MAX_RAW_LOCNS`] entries are written (tessera uses two);
    /// [`write_mda_header`] refuses more.
    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[4..20].copy_from_slice(MDA_MAGIC);
        b[20..24].copy_from_slice(&MDA_VERSION.to_le_bytes());
        b[24..32].copy_from_slice(&self.start.to_le_bytes());
        b[32..40].copy_from_slice(&self.size.to_le_bytes());
        for (i, l) in self.raw_locns.iter().take(MAX_RAW_LOCNS).enumerate() {
            let at = 40 + i * 24;
            b[at..at + 8].copy_from_slice(&l.offset.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&l.size.to_le_bytes());
            b[at + 16..at + 20].copy_from_slice(&l.checksum.to_le_bytes());
            b[at + 20..at + 24].copy_from_slice(&l.flags.to_le_bytes());
        }
        let sum = crc::checksum(&b[4..]);
        b[0..4].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Reads a header expected at byte `start` of `device`, with lvm2's checks: checksum,
    /// magic, version and start.
    pub fn decode(b: &[u8; 512], start: u64, device: &str) -> Result<MdaHeader, MdaError> {
        let found = le_u32(b, 0);
        let expected = crc::checksum(&b[4..]);
        if found != expected {
            return Err(MdaError::Checksum {
                device: device.into(),
                start,
                found,
                expected,
            });
        }
        if &b[4..20] != MDA_MAGIC {
            return Err(MdaError::Magic {
                device: device.into(),
                start,
            });
        }
        let version = le_u32(b, 20);
        if version != MDA_VERSION {
            return Err(MdaError::Version {
                device: device.into(),
                start,
                version,
            });
        }
        let claimed = le_u64(b, 24);
        if claimed != start {
            return Err(MdaError::WrongStart {
                device: device.into(),
                start,
                claimed,
            });
        }
        let raw_locns = (0..LOCN_SLOTS)
            .map(|i| {
                let at = 40 + i * 24;
                RawLocn {
                    offset: le_u64(b, at),
                    size: le_u64(b, at + 8),
                    checksum: le_u32(b, at + 16),
                    flags: le_u32(b, at + 20),
                }
            })
            .take_while(|l| l.offset != 0)
            .collect();
        Ok(MdaHeader {
            start,
            size: le_u64(b, 32),
            raw_locns,
        })
    }

    /// Bytes of the circular text buffer (the area after its header).
    pub fn buffer_len(&self) -> u64 {
        self.size.saturating_sub(MDA_HEADER_SIZE)
    }

    /// Largest text (NUL included) lvm2 2.03 writes to this area: half the buffer, less
    /// one alignment unit, so the new copy never overlaps the old one.
    pub fn max_text_size(&self) -> u64 {
        (self.buffer_len() / 2).saturating_sub(TEXT_ALIGN)
    }

    /// The committed copy (slot 0) unless it is absent or the area is ignored.
    pub fn committed(&self) -> Option<&RawLocn> {
        self.raw_locns
            .first()
            .filter(|l| l.flags & RAW_LOCN_IGNORED == 0 && (l.offset != 0 || l.size != 0))
    }

    fn malformed(&self, device: &str, why: String) -> MdaError {
        MdaError::Malformed {
            device: device.into(),
            start: self.start,
            why,
        }
    }

    /// The area must hold a header and some text, and lie inside the device.
    fn check_area(&self, dev: &dyn BlockDevice) -> Result<(), MdaError> {
        let dev_size = dev.size_bytes();
        if self.size <= MDA_HEADER_SIZE {
            return Err(self.malformed(
                dev.name(),
                format!(
                    "the area's size of {} bytes leaves no room for text",
                    self.size
                ),
            ));
        }
        match self.start.checked_add(self.size) {
            Some(end) if end <= dev_size => Ok(()),
            _ => Err(self.malformed(
                dev.name(),
                format!(
                    "the area's {} bytes run past the end of the device ({dev_size} bytes)",
                    self.size
                ),
            )),
        }
    }

    /// Where a copy of `len` bytes at `offset` lies: the first piece up to the area's end,
    /// the rest from offset 512, as (area offset, length) pairs.
    fn pieces(&self, offset: u64, len: u64) -> [(u64, u64); 2] {
        let first = len.min(self.size.saturating_sub(offset));
        [(offset, first), (MDA_HEADER_SIZE, len - first)]
    }
}

/// Reads and checks the header of the area at byte `start`, and that the area it
/// describes fits in the device.
pub fn read_mda_header(dev: &dyn BlockDevice, start: u64) -> Result<MdaHeader, MdaError> {
    let mut b = [0u8; 512];
    dev.read_at(&mut b, start)?;
    let header = MdaHeader::decode(&b, start, dev.name())?;
    header.check_area(dev)?;
    Ok(header)
}

/// Writes the header sector.
pub fn write_mda_header(dev: &dyn BlockDevice, header: &MdaHeader) -> Result<(), MdaError> {
    if header.raw_locns.len() > MAX_RAW_LOCNS {
        return Err(header.malformed(
            dev.name(),
            format!(
                "cannot write {} text locations; at most {MAX_RAW_LOCNS} fit",
                header.raw_locns.len()
            ),
        ));
    }
    dev.write_at(&header.encode(), header.start)?;
    Ok(())
}

/// Reads the text `locn` points at and checks its checksum. Returns the text WITHOUT its
/// trailing NUL (the NUL is part of `locn.size` and of the checksum, not of the text).
/// Offsets and sizes are checked against the area and [`MAX_TEXT_READ`] before anything is
/// allocated.
pub fn read_text(
    dev: &dyn BlockDevice,
    h: &MdaHeader,
    locn: &RawLocn,
) -> Result<Vec<u8>, MdaError> {
    h.check_area(dev)?;
    if locn.offset < MDA_HEADER_SIZE || locn.offset >= h.size {
        return Err(h.malformed(
            dev.name(),
            format!(
                "text at offset {} lies outside the area's text buffer (offsets 512 to {})",
                locn.offset, h.size
            ),
        ));
    }
    if locn.size == 0 || locn.size > h.buffer_len() || locn.size > MAX_TEXT_READ {
        return Err(h.malformed(
            dev.name(),
            format!(
                "text at offset {} of {} bytes does not fit in the area's {}-byte text buffer",
                locn.offset,
                locn.size,
                h.buffer_len().min(MAX_TEXT_READ)
            ),
        ));
    }
    // size <= buffer_len, so a wrapped second piece ends before the first one starts.
    let mut text = vec![0u8; locn.size as usize];
    let mut crc = crc::INITIAL_CRC;
    let mut filled = 0usize;
    for (offset, len) in h.pieces(locn.offset, locn.size) {
        let piece = &mut text[filled..filled + len as usize];
        dev.read_at(piece, h.start + offset)?;
        crc = crc::update(crc, piece);
        filled += len as usize;
    }
    if crc != locn.checksum {
        return Err(MdaError::TextChecksum {
            device: dev.name().into(),
            start: h.start,
            offset: locn.offset,
            size: locn.size,
            found: crc,
            expected: locn.checksum,
        });
    }
    if text.last() == Some(&0) {
        text.pop();
    }
    Ok(text)
}

/// Inclusive area-offset ranges a copy of `len` bytes at `offset` covers, with the zero
/// padding written up to the next 512-byte boundary of the device.
fn covered(h: &MdaHeader, offset: u64, len: u64, padded: bool) -> Vec<(u64, u64)> {
    h.pieces(offset, len)
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(at, n)| {
            let end = if padded {
                padded_end(h, at + n)
            } else {
                at + n
            };
            (at, end - 1)
        })
        .collect()
}

/// `end` (exclusive, in the area) moved to the next 512-byte boundary of the device, as
/// lvm2 does when it zeroes the rest of the last sector; never past the area's end.
fn padded_end(h: &MdaHeader, end: u64) -> u64 {
    let abs = h.start.saturating_add(end);
    let pad = (TEXT_ALIGN - abs % TEXT_ALIGN) % TEXT_ALIGN;
    (end + pad).min(h.size)
}

/// Where lvm2 2.03 (`_next_rlocn_offset`) puts the next copy of `len` bytes (the stored
/// size, NUL included): at 512 if there is no committed copy; otherwise just after the
/// committed copy's last byte, rounded up to 512, or back at 512 when that is past
/// `size - 512` or the old copy ends within 512 bytes of the area's end. Refuses `len`
/// over [`MdaHeader::max_text_size`], and (as lvm2's sanity check) a copy that would
/// overlap the committed one. `device` names the device in errors.
pub fn next_text_offset(device: &str, h: &MdaHeader, len: u64) -> Result<u64, MdaError> {
    let max = h.max_text_size();
    if len == 0 || len > max {
        return Err(MdaError::TooLarge {
            device: device.into(),
            start: h.start,
            size: h.size,
            len,
            max,
        });
    }
    // A committed copy outside the buffer holds nothing worth keeping: start afresh.
    let Some(old) = h.committed().filter(|l| {
        l.offset >= MDA_HEADER_SIZE && l.offset < h.size && l.size > 0 && l.size <= h.buffer_len()
    }) else {
        return Ok(MDA_HEADER_SIZE);
    };
    let old_end = old.offset + old.size;
    let old_last = if old_end > h.size {
        old_end - h.size + MDA_HEADER_SIZE - 1
    } else {
        old_end - 1
    };
    let new_start = if h.size - old_last < TEXT_ALIGN {
        MDA_HEADER_SIZE
    } else {
        let next = (old_last + 1).next_multiple_of(TEXT_ALIGN);
        if next > h.size - TEXT_ALIGN {
            MDA_HEADER_SIZE
        } else {
            next
        }
    };
    let old_ranges = covered(h, old.offset, old.size, false);
    let overlaps = covered(h, new_start, len, true)
        .iter()
        .any(|&(a, b)| old_ranges.iter().any(|&(c, d)| a <= d && c <= b));
    if overlaps {
        return Err(MdaError::Overlap {
            device: device.into(),
            start: h.start,
            len,
            offset: new_start,
            old_offset: old.offset,
            old_size: old.size,
        });
    }
    Ok(new_start)
}

/// Writes `text` with a trailing NUL at `offset` in the area, wrapping past its end to
/// offset 512, and zeroes the rest of the last sector written, as lvm2 does. Returns the
/// entry that points at it (size with the NUL, checksum over it, flags 0).
pub fn write_text(
    dev: &dyn BlockDevice,
    h: &MdaHeader,
    offset: u64,
    text: &[u8],
) -> Result<RawLocn, MdaError> {
    h.check_area(dev)?;
    let len = text.len() as u64 + 1;
    let max = h.max_text_size();
    if len > max {
        return Err(MdaError::TooLarge {
            device: dev.name().into(),
            start: h.start,
            size: h.size,
            len,
            max,
        });
    }
    if offset < MDA_HEADER_SIZE || offset >= h.size {
        return Err(h.malformed(
            dev.name(),
            format!(
                "cannot write text at offset {offset}, outside the text buffer (512 to {})",
                h.size
            ),
        ));
    }
    let mut data = Vec::with_capacity(text.len() + 1 + TEXT_ALIGN as usize);
    data.extend_from_slice(text);
    data.push(0);
    let checksum = crc::checksum(&data);
    let [(at1, len1), (at2, len2)] = h.pieces(offset, len);
    // Only the piece that ends inside the area gets padding.
    let padded_len = if len2 > 0 {
        len1 + padded_end(h, at2 + len2) - at2
    } else {
        padded_end(h, at1 + len1) - at1
    };
    data.resize(padded_len as usize, 0);
    let (first, second) = data.split_at(if len2 > 0 { len1 as usize } else { data.len() });
    dev.write_at(first, h.start + at1)?;
    if !second.is_empty() {
        dev.write_at(second, h.start + at2)?;
    }
    Ok(RawLocn {
        offset,
        size: len,
        checksum,
        flags: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    fn area(size: u64) -> (MemoryDevice, MdaHeader) {
        (
            MemoryDevice::new("mem0", 4096 + size + 4096),
            MdaHeader {
                start: 4096,
                size,
                raw_locns: vec![],
            },
        )
    }

    fn fix(b: &mut [u8; 512]) {
        let s = crc::checksum(&b[4..]);
        b[..4].copy_from_slice(&s.to_le_bytes());
    }

    #[test]
    fn header_round_trips() {
        let (d, mut h) = area(1 << 20);
        h.raw_locns.push(RawLocn {
            offset: 1536,
            size: 1048,
            checksum: 0xdead_beef,
            flags: 0,
        });
        h.raw_locns.push(RawLocn {
            offset: 512,
            size: 900,
            checksum: 7,
            flags: RAW_LOCN_IGNORED,
        });
        write_mda_header(&d, &h).unwrap();
        assert_eq!(read_mda_header(&d, 4096).unwrap(), h);
        assert_eq!(MdaHeader::decode(&h.encode(), 4096, "x").unwrap(), h);
        let full = MdaHeader {
            raw_locns: vec![h.raw_locns[0]; MAX_RAW_LOCNS + 1],
            ..h
        };
        assert!(write_mda_header(&d, &full)
            .unwrap_err()
            .to_string()
            .contains("at most 18"));
    }

    #[test]
    fn max_size_and_placement_follow_lvm2() {
        // pvcreate's default area: 1 MiB - 4 KiB.
        let (_, mut h) = area(1_044_480);
        assert_eq!(h.max_text_size(), 521_472);
        assert_eq!(next_text_offset("d", &h, 720).unwrap(), 512);
        // lvm2 put seqno 2 (1051 bytes) at 1536 after seqno 1 (720 bytes) at 512.
        h.raw_locns = vec![RawLocn {
            offset: 512,
            size: 720,
            checksum: 0,
            flags: 0,
        }];
        assert_eq!(next_text_offset("d", &h, 1051).unwrap(), 1536);
        // Ending exactly on a boundary: the next copy starts right there.
        h.raw_locns[0].size = 1024;
        assert_eq!(next_text_offset("d", &h, 100).unwrap(), 1536);
        // Ending within 512 bytes of the end, or rounding past size - 512: back to 512.
        h.raw_locns[0] = RawLocn {
            offset: 1_043_456,
            size: 600,
            checksum: 0,
            flags: 0,
        };
        assert_eq!(next_text_offset("d", &h, 100).unwrap(), 512);
        h.raw_locns[0] = RawLocn {
            offset: 1_043_456,
            size: 513,
            checksum: 0,
            flags: 0,
        };
        assert_eq!(next_text_offset("d", &h, 100).unwrap(), 512);
        // A wrapped copy: the next one follows its second piece.
        h.raw_locns[0] = RawLocn {
            offset: 1_043_968,
            size: 1000,
            checksum: 0,
            flags: 0,
        };
        assert_eq!(next_text_offset("d", &h, 100).unwrap(), 1024);
        // An ignored area has no committed copy.
        h.raw_locns[0].flags = RAW_LOCN_IGNORED;
        assert_eq!(next_text_offset("d", &h, 100).unwrap(), 512);
        let err = next_text_offset("d", &h, 521_473).unwrap_err().to_string();
        assert!(
            err.starts_with("d: metadata area at byte 4096") && err.contains("521472"),
            "{err}"
        );
    }

    #[test]
    fn texts_follow_each_other_and_wrap() {
        let (d, mut h) = area(512 + 8192);
        let mut wraps = 0;
        for i in 0..60usize {
            let text = format!(
                "vg{i} {{\nseqno = {i}\n{}\n}}\n",
                "#".repeat(300 + i * 37 % 3000)
            );
            let offset = next_text_offset("mem0", &h, text.len() as u64 + 1).unwrap();
            assert_eq!(offset % 512, 0);
            let locn = write_text(&d, &h, offset, text.as_bytes()).unwrap();
            assert_eq!(locn.size, text.len() as u64 + 1);
            if locn.offset + locn.size > h.size {
                wraps += 1;
            }
            // The old copy is intact until the header moves on.
            if let Some(old) = h.committed().copied() {
                read_text(&d, &h, &old).unwrap();
            }
            h.raw_locns = vec![locn];
            assert_eq!(read_text(&d, &h, &locn).unwrap(), text.as_bytes());
        }
        assert!(wraps > 2, "{wraps}");
    }

    #[test]
    fn writes_zero_the_rest_of_the_last_sector() {
        let (d, h) = area(8192);
        d.write_at(&[0xaa; 8192], 4096).unwrap();
        write_text(&d, &h, 512, b"vg").unwrap();
        let mut b = [0u8; 1100];
        d.read_at(&mut b, 4096 + 512).unwrap();
        assert_eq!(&b[..3], b"vg\0");
        assert!(b[3..512].iter().all(|&x| x == 0));
        assert!(b[512..].iter().all(|&x| x == 0xaa));
        // A wrapped copy: the first piece runs to the area's end, the second is padded.
        let text = vec![b'x'; 700];
        let locn = write_text(&d, &h, 7680, &text).unwrap();
        d.read_at(&mut b, 4096 + 512).unwrap();
        assert!(b[..188].iter().all(|&x| x == b'x') && b[188..512].iter().all(|&x| x == 0));
        assert_eq!(b[512], 0xaa);
        assert_eq!(read_text(&d, &h, &locn).unwrap(), text);
    }

    #[test]
    fn refuses_damaged_headers() {
        let (d, mut h) = area(8192);
        let locn = write_text(&d, &h, 512, b"vg { }").unwrap();
        h.raw_locns = vec![locn];
        let good = h.encode();
        let mut b = good;
        b[100] ^= 1;
        let err = MdaHeader::decode(&b, 4096, "d").unwrap_err();
        assert!(matches!(err, MdaError::Checksum { .. }));
        assert!(err
            .to_string()
            .starts_with("d: metadata area at byte 4096: header checksum"));
        assert!(matches!(
            MdaHeader::decode(&good, 8192, "d"),
            Err(MdaError::WrongStart { claimed: 4096, .. })
        ));
        let mut b = good;
        b[5] = b'X';
        fix(&mut b);
        assert!(matches!(
            MdaHeader::decode(&b, 4096, "d"),
            Err(MdaError::Magic { .. })
        ));
        let mut b = good;
        b[20] = 2;
        fix(&mut b);
        assert!(matches!(
            MdaHeader::decode(&b, 4096, "d"),
            Err(MdaError::Version { version: 2, .. })
        ));
        // Areas that leave no room for text or run past the device.
        for size in [0u64, 512, 1 << 40, u64::MAX] {
            let mut b = good;
            b[32..40].copy_from_slice(&size.to_le_bytes());
            fix(&mut b);
            d.write_at(&b, 4096).unwrap();
            let err = read_mda_header(&d, 4096).unwrap_err().to_string();
            assert!(
                err.starts_with("mem0: metadata area at byte 4096: the area"),
                "{err}"
            );
        }
        // A header past the device end is a block error naming the device.
        let err = read_mda_header(&d, 1 << 30).unwrap_err().to_string();
        assert!(err.starts_with("mem0: "), "{err}");
    }

    #[test]
    fn refuses_damaged_texts() {
        let (d, mut h) = area(8192);
        let locn = write_text(&d, &h, 512, b"vg { }").unwrap();
        h.raw_locns = vec![locn];
        for (bad, what) in [
            (
                RawLocn {
                    offset: 100,
                    ..locn
                },
                "outside",
            ),
            (
                RawLocn {
                    offset: 8192,
                    ..locn
                },
                "outside",
            ),
            (
                RawLocn {
                    offset: 1 << 40,
                    ..locn
                },
                "outside",
            ),
            (RawLocn { size: 0, ..locn }, "does not fit"),
            (RawLocn { size: 7681, ..locn }, "does not fit"),
            (
                RawLocn {
                    size: u64::MAX,
                    ..locn
                },
                "does not fit",
            ),
        ] {
            let err = read_text(&d, &h, &bad).unwrap_err().to_string();
            assert!(
                err.starts_with("mem0: metadata area at byte 4096: text at offset")
                    && err.contains(what),
                "{err}"
            );
        }
        let err = read_text(
            &d,
            &h,
            &RawLocn {
                checksum: 1,
                ..locn
            },
        )
        .unwrap_err();
        assert!(matches!(err, MdaError::TextChecksum { found, .. } if found == locn.checksum));
        // A header claiming more than the device holds never gets to allocate.
        let huge = MdaHeader {
            size: 1 << 50,
            ..h.clone()
        };
        let big = RawLocn {
            size: 1 << 45,
            ..locn
        };
        assert!(read_text(&d, &huge, &big)
            .unwrap_err()
            .to_string()
            .contains("past the end of the device"));
        // Writes outside the buffer or over the maximum are refused.
        assert!(write_text(&d, &h, 100, b"x").is_err());
        assert!(matches!(
            write_text(&d, &h, 512, &[b'x'; 3328]),
            Err(MdaError::TooLarge { max: 3328, .. })
        ));
    }

    #[test]
    fn refuses_to_overwrite_an_oversized_current_copy() {
        // A copy bigger than lvm2 2.03 would write (older versions allowed it).
        let (_, mut h) = area(512 + 4096);
        h.raw_locns = vec![RawLocn {
            offset: 512,
            size: 3500,
            checksum: 0,
            flags: 0,
        }];
        let err = next_text_offset("mem0", &h, 1000).unwrap_err();
        assert!(
            matches!(err, MdaError::Overlap { offset: 4096, .. }),
            "{err}"
        );
        h.raw_locns[0].size = 3000;
        assert_eq!(next_text_offset("mem0", &h, 1000).unwrap(), 3584);
    }
}
