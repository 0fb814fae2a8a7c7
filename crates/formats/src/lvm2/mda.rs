//! Metadata areas: a 512-byte header, then a circular buffer holding the VG's text.
//!
//! Header layout (little-endian): checksum_xl u32 (CRC of bytes 4..512), magic[16],
//! version u32 (1), start u64 (the header's absolute byte offset), size u64 (the whole
//! area), then `raw_locn` entries {offset u64 (from the area start), size u64 (text with its
//! trailing NUL), checksum u32 (CRC of those `size` bytes), flags u32} ending at offset 0.
//! Entry 0 is the committed text. A text runs from its offset and, past the area's end,
//! continues at offset 512 (checked against lvm2 2.03.16: size counts the NUL, and the
//! checksum covers it).

use thiserror::Error;

use tessera_block::{BlockDevice, BlockError};

use super::crc;

pub const MDA_HEADER_SIZE: u64 = 512;
pub const MDA_MAGIC: &[u8; 16] =
    b"\x20\x4c\x56\x4d\x32\x20\x78\x5b\x35\x41\x25\x72\x30\x4e\x2a\x3e";
pub const MDA_VERSION: u32 = 1;
/// raw_locn flag: this area is not used for metadata (`pvchange --metadataignore`).
pub const RAW_LOCN_IGNORED: u32 = 1;
/// Where new texts are aligned in the buffer.
const TEXT_ALIGN: u64 = 512;
/// Entries that fit in the header after its fixed part.
const MAX_LOCNS: usize = (512 - 40) / 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLocn {
    pub offset: u64,
    pub size: u64,
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
    #[error("{device}: metadata area at byte {start}: text checksum is {found:#010x}, expected {expected:#010x}")]
    TextChecksum {
        device: String,
        start: u64,
        found: u32,
        expected: u32,
    },
    #[error("{device}: metadata area at byte {start} ({size} bytes) is too small for {len} bytes of metadata next to the current copy; the VG's metadata has outgrown it")]
    TooSmall {
        device: String,
        start: u64,
        size: u64,
        len: u64,
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

impl MdaHeader {
    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[4..20].copy_from_slice(MDA_MAGIC);
        b[20..24].copy_from_slice(&MDA_VERSION.to_le_bytes());
        b[24..32].copy_from_slice(&self.start.to_le_bytes());
        b[32..40].copy_from_slice(&self.size.to_le_bytes());
        for (i, l) in self.raw_locns.iter().take(MAX_LOCNS).enumerate() {
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

    /// Reads a header expected at byte `start` of `device`.
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
        let size = le_u64(b, 32);
        let mut raw_locns = Vec::new();
        for i in 0..MAX_LOCNS {
            let at = 40 + i * 24;
            let l = RawLocn {
                offset: le_u64(b, at),
                size: le_u64(b, at + 8),
                checksum: le_u32(b, at + 16),
                flags: le_u32(b, at + 20),
            };
            if l.offset == 0 {
                break;
            }
            raw_locns.push(l);
        }
        Ok(MdaHeader {
            start,
            size,
            raw_locns,
        })
    }

    fn buffer_len(&self) -> u64 {
        self.size.saturating_sub(MDA_HEADER_SIZE)
    }
}

/// Reads and checks the header of the area at byte `start`.
pub fn read_mda_header(dev: &dyn BlockDevice, start: u64) -> Result<MdaHeader, MdaError> {
    let mut b = [0u8; 512];
    dev.read_at(&mut b, start)?;
    MdaHeader::decode(&b, start, dev.name())
}

pub fn write_mda_header(dev: &dyn BlockDevice, header: &MdaHeader) -> Result<(), MdaError> {
    dev.write_at(&header.encode(), header.start)?;
    Ok(())
}

/// The pieces (device offset, length) a text of `len` bytes at `offset` occupies.
fn pieces(h: &MdaHeader, offset: u64, len: u64) -> [(u64, u64); 2] {
    let first = len.min(h.size - offset);
    [
        (h.start + offset, first),
        (h.start + MDA_HEADER_SIZE, len - first),
    ]
}

/// Reads the text `locn` points at, with its trailing NUL, after checking that it lies in
/// the area and its checksum matches. Sizes are checked before anything is allocated.
pub fn read_text(
    dev: &dyn BlockDevice,
    h: &MdaHeader,
    locn: &RawLocn,
) -> Result<Vec<u8>, MdaError> {
    let malformed = |why: String| MdaError::Malformed {
        device: dev.name().to_string(),
        start: h.start,
        why,
    };
    let area_end = h
        .start
        .checked_add(h.size)
        .filter(|&e| e <= dev.size_bytes());
    if h.size <= MDA_HEADER_SIZE || area_end.is_none() {
        return Err(malformed(format!(
            "the area's size {} does not fit the device ({} bytes) past its header",
            h.size,
            dev.size_bytes()
        )));
    }
    if locn.offset < MDA_HEADER_SIZE || locn.offset >= h.size {
        return Err(malformed(format!(
            "text at offset {} lies outside the area's {} bytes",
            locn.offset, h.size
        )));
    }
    if locn.size == 0 || locn.size > h.buffer_len() {
        return Err(malformed(format!(
            "text of {} bytes does not fit in the area's {} bytes",
            locn.size,
            h.buffer_len()
        )));
    }
    let [(a_at, a_len), (b_at, b_len)] = pieces(h, locn.offset, locn.size);
    if b_len > locn.offset - MDA_HEADER_SIZE {
        return Err(malformed(format!(
            "text at offset {} of {} bytes wraps around onto itself",
            locn.offset, locn.size
        )));
    }
    let mut text = vec![0u8; locn.size as usize];
    dev.read_at(&mut text[..a_len as usize], a_at)?;
    if b_len > 0 {
        dev.read_at(&mut text[a_len as usize..], b_at)?;
    }
    let found = crc::checksum(&text);
    if found != locn.checksum {
        return Err(MdaError::TextChecksum {
            device: dev.name().to_string(),
            start: h.start,
            found,
            expected: locn.checksum,
        });
    }
    Ok(text)
}

/// Where lvm2 places the next copy of `len` bytes: after the current copy's end, aligned to
/// 512; back at 512 when that is at or past the area's end. Refuses when the new copy would
/// overlap the current one, which must stay intact until the header points away from it.
pub fn next_text_offset(device: &str, h: &MdaHeader, len: u64) -> Result<u64, MdaError> {
    let too_small = || MdaError::TooSmall {
        device: device.into(),
        start: h.start,
        size: h.size,
        len,
    };
    let buffer = h.buffer_len();
    if len == 0 || len > buffer {
        return Err(too_small());
    }
    let Some(old) = h.raw_locns.first().filter(|l| {
        l.offset >= MDA_HEADER_SIZE && l.offset < h.size && l.size > 0 && l.size <= buffer
    }) else {
        return Ok(MDA_HEADER_SIZE);
    };
    // Positions within the circular buffer, 0 = area offset 512.
    let old_start = old.offset - MDA_HEADER_SIZE;
    let old_end = (old_start + old.size) % buffer;
    let mut new_start = old_end.div_ceil(TEXT_ALIGN) * TEXT_ALIGN;
    if new_start >= buffer {
        new_start = 0;
    }
    // Circular distances: from the new start to the old start must leave room for `len`,
    // and the old copy must end before the new one starts.
    let to_old = (old_start + buffer - new_start) % buffer;
    let from_old = (new_start + buffer - old_start) % buffer;
    let free_ahead = if to_old == 0 { 0 } else { to_old };
    if free_ahead < len || from_old < old.size {
        return Err(too_small());
    }
    Ok(new_start + MDA_HEADER_SIZE)
}

/// Writes `text` (a NUL is appended) at `offset` in the area, wrapping past its end, and
/// returns the entry that points at it.
pub fn write_text(
    dev: &dyn BlockDevice,
    h: &MdaHeader,
    offset: u64,
    text: &[u8],
) -> Result<RawLocn, MdaError> {
    let mut data = Vec::with_capacity(text.len() + 1);
    data.extend_from_slice(text);
    data.push(0);
    let len = data.len() as u64;
    if offset < MDA_HEADER_SIZE || offset >= h.size || len > h.buffer_len() {
        return Err(MdaError::TooSmall {
            device: dev.name().into(),
            start: h.start,
            size: h.size,
            len,
        });
    }
    let [(a_at, a_len), (b_at, _)] = pieces(h, offset, len);
    dev.write_at(&data[..a_len as usize], a_at)?;
    if a_len < len {
        dev.write_at(&data[a_len as usize..], b_at)?;
    }
    Ok(RawLocn {
        offset,
        size: len,
        checksum: crc::checksum(&data),
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

    #[test]
    fn header_round_trips() {
        let (d, mut h) = area(1 << 20);
        h.raw_locns.push(RawLocn {
            offset: 1536,
            size: 1048,
            checksum: 0xdead_beef,
            flags: 0,
        });
        write_mda_header(&d, &h).unwrap();
        assert_eq!(read_mda_header(&d, 4096).unwrap(), h);
    }

    #[test]
    fn texts_follow_each_other_and_wrap() {
        // A buffer that is not a multiple of 512, as after `pvcreate --metadatasize`.
        let buffer = 3900;
        let (d, mut h) = area(512 + buffer);
        let mut seen_wrap = false;
        for i in 0..40u32 {
            let text = format!(
                "vg{i} {{\nseqno = {i}\n{}\n}}\n",
                "#".repeat(300 + (i as usize * 37) % 700)
            );
            let offset = next_text_offset("mem0", &h, text.len() as u64 + 1).unwrap();
            if let Some(old) = h.raw_locns.first() {
                let old_end = (old.offset - 512 + old.size) % buffer;
                let aligned = old_end.div_ceil(512) * 512;
                let expected = if aligned >= buffer {
                    512
                } else {
                    aligned + 512
                };
                assert_eq!(offset, expected);
            } else {
                assert_eq!(offset, 512);
            }
            let locn = write_text(&d, &h, offset, text.as_bytes()).unwrap();
            seen_wrap |= locn.offset + locn.size > h.size;
            h.raw_locns = vec![locn];
            let back = read_text(&d, &h, &locn).unwrap();
            assert_eq!(&back[..back.len() - 1], text.as_bytes());
            assert_eq!(back.last(), Some(&0));
        }
        assert!(seen_wrap);
    }

    #[test]
    fn refuses_a_text_that_would_overwrite_the_current_one() {
        let (_, mut h) = area(512 + 4096);
        h.raw_locns = vec![RawLocn {
            offset: 512,
            size: 2500,
            checksum: 0,
            flags: 0,
        }];
        assert!(next_text_offset("mem0", &h, 1500).is_ok());
        let err = next_text_offset("mem0", &h, 2000).unwrap_err().to_string();
        assert!(
            err.contains("too small") && err.starts_with("mem0"),
            "{err}"
        );
    }

    #[test]
    fn refuses_damaged_headers_and_texts() {
        let (d, mut h) = area(8192);
        let locn = write_text(&d, &h, 512, b"vg { }").unwrap();
        h.raw_locns = vec![locn];
        let good = h.encode();
        let mut b = good;
        b[100] ^= 1;
        assert!(matches!(
            MdaHeader::decode(&b, 4096, "d"),
            Err(MdaError::Checksum { .. })
        ));
        assert!(matches!(
            MdaHeader::decode(&good, 8192, "d"),
            Err(MdaError::WrongStart { .. })
        ));
        let fix = |b: &mut [u8; 512]| {
            let s = crc::checksum(&b[4..]);
            b[..4].copy_from_slice(&s.to_le_bytes());
        };
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
            Err(MdaError::Version { .. })
        ));
        for bad in [
            RawLocn {
                offset: 100,
                ..locn
            },
            RawLocn {
                offset: 1 << 40,
                ..locn
            },
            RawLocn {
                size: 1 << 40,
                ..locn
            },
            RawLocn {
                offset: 8000,
                size: 7000,
                ..locn
            },
        ] {
            let err = read_text(&d, &h, &bad).unwrap_err().to_string();
            assert!(err.contains("metadata area at byte 4096"), "{err}");
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
        assert!(matches!(err, MdaError::TextChecksum { .. }));
        let huge = MdaHeader {
            size: 1 << 50,
            ..h.clone()
        };
        assert!(read_text(&d, &huge, &locn).is_err());
    }
}
