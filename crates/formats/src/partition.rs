//! Partition tables: MBR (the four primary entries of sector 0) and GPT (the header at LBA 1
//! with its CRC32, the entry array with its own, and the backup header at the last LBA).
//! Decoding checks what the kernel's `efi.c` and `msdos.c` check; a damaged primary GPT
//! falls back to the backup, as the kernel and parted do, and says so.

use thiserror::Error;

const SECTOR: u64 = 512;
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xaa];
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// MBR type of the protective entry that covers a GPT disk.
pub const MBR_GPT_PROTECTIVE: u8 = 0xee;
/// The most GPT entries tessera reads (the usual is 128).
const MAX_ENTRIES: u32 = 4096;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PartitionError {
    #[error("{device}: {what}")]
    Malformed { device: String, what: String },
}

/// One partition: where it lies on the disk, in 512-byte sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as the kernel numbers them (sda1...).
    pub number: u32,
    pub start_sector: u64,
    pub sectors: u64,
    /// "0x83" for MBR, the type GUID for GPT.
    pub kind: String,
    /// GPT's partition name; empty for MBR.
    pub name: String,
    /// GPT's unique partition GUID; empty for MBR.
    pub uuid: String,
}

/// A partition table as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    pub scheme: Scheme,
    pub partitions: Vec<Partition>,
    /// Why the primary GPT was passed over for the backup, if it was.
    pub warning: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Mbr,
    Gpt,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A GUID in its mixed-endian text form, as blkid and parted print it.
pub fn guid_string(g: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        le32(g, 0),
        le16(g, 4),
        le16(g, 6),
        g[8],
        g[9],
        g[10..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Reads sectors of a disk of `sectors` sectors: `read(lba, count)`.
pub trait SectorReader {
    fn read(&self, lba: u64, count: u64) -> Option<Vec<u8>>;
}

impl<F: Fn(u64, u64) -> Option<Vec<u8>>> SectorReader for F {
    fn read(&self, lba: u64, count: u64) -> Option<Vec<u8>> {
        self(lba, count)
    }
}

/// Byte reads over a [`SectorReader`], for the boot-sector checks.
struct SectorBytes<'a> {
    read: &'a dyn SectorReader,
    disk_sectors: u64,
}

impl crate::bootsector::ByteReader for SectorBytes<'_> {
    fn size_bytes(&self) -> u64 {
        self.disk_sectors.saturating_mul(SECTOR)
    }
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let end = offset.checked_add(len as u64)?;
        if end > self.size_bytes() || len > 16 << 20 {
            return None;
        }
        let first = offset / SECTOR;
        let count = end.div_ceil(SECTOR) - first;
        let data = self.read.read(first, count)?;
        let start = (offset - first * SECTOR) as usize;
        data.get(start..start + len).map(<[u8]>::to_vec)
    }
}

/// The partition table of a disk of `disk_sectors`, if it has one. A disk whose MBR holds
/// a protective entry is read as GPT.
pub fn read_table(
    device: &str,
    disk_sectors: u64,
    read: &dyn SectorReader,
) -> Result<Option<PartitionTable>, PartitionError> {
    let bad = |what: String| PartitionError::Malformed {
        device: device.to_string(),
        what,
    };
    let Some(mbr) = read.read(0, 1) else {
        return Ok(None);
    };
    if mbr.len() < 512 || mbr[510..512] != MBR_SIGNATURE {
        return Ok(None);
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..462 + 16 * i]).collect();
    if entries.iter().any(|e| e[4] == MBR_GPT_PROTECTIVE) {
        return read_gpt(device, disk_sectors, read).map(Some);
    }
    // The boot sector of a FAT, exFAT or NTFS filesystem on the whole device also ends in
    // 55aa: blkid passes over it, and so does tessera, by the same checks.
    let bytes = SectorBytes { read, disk_sectors };
    if crate::bootsector::not_a_partition_table(&bytes).is_some() {
        return Ok(None);
    }
    // Only entries that make sense count.
    let mut partitions = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let (status, kind) = (e[0], e[4]);
        let start = u64::from(le32(e, 8));
        let sectors = u64::from(le32(e, 12));
        if kind == 0 || sectors == 0 {
            continue;
        }
        if status & 0x7f != 0 {
            return Ok(None);
        }
        if start == 0 || start.saturating_add(sectors) > disk_sectors {
            return Err(bad(format!(
                "MBR entry {} ({} sectors at sector {start}) ends past the disk's {disk_sectors} sectors",
                i + 1,
                sectors
            )));
        }
        partitions.push(Partition {
            number: i as u32 + 1,
            start_sector: start,
            sectors,
            kind: format!("0x{kind:02x}"),
            name: String::new(),
            uuid: String::new(),
        });
    }
    if partitions.is_empty() {
        return Ok(None);
    }
    for (i, a) in partitions.iter().enumerate() {
        for b in &partitions[i + 1..] {
            if a.start_sector < b.start_sector + b.sectors
                && b.start_sector < a.start_sector + a.sectors
            {
                return Err(bad(format!(
                    "MBR partitions {} and {} overlap",
                    a.number, b.number
                )));
            }
        }
    }
    // The logical partitions of the (first) extended partition, numbered from 5 as the
    // kernel numbers them. The kernel shows the container itself as a 1 KiB device.
    let mut logical = Vec::new();
    if let Some(ext) = partitions.iter_mut().find(|p| is_extended(&p.kind)) {
        logical = read_logical(device, ext, read)?;
        ext.sectors = ext.sectors.min(2);
    }
    partitions.extend(logical);
    Ok(Some(PartitionTable {
        scheme: Scheme::Mbr,
        partitions,
        warning: None,
    }))
}

/// The most logical partitions read from one extended partition's chain (a loop in the chain
/// stops there too).
const MAX_LOGICAL: u32 = 128;

fn is_extended(kind: &str) -> bool {
    matches!(kind, "0x05" | "0x0f" | "0x85")
}

/// Follows the chain of extended boot records in `ext`: each holds one logical partition
/// (its start relative to that record) and a link to the next record (relative to the
/// extended partition's start).
fn read_logical(
    device: &str,
    ext: &Partition,
    read: &dyn SectorReader,
) -> Result<Vec<Partition>, PartitionError> {
    let bad = |what: String| PartitionError::Malformed {
        device: device.to_string(),
        what,
    };
    let ext_end = ext.start_sector + ext.sectors;
    let mut out = Vec::new();
    let mut ebr = ext.start_sector;
    let mut seen = std::collections::HashSet::new();
    for number in 5..5 + MAX_LOGICAL {
        if !seen.insert(ebr) {
            return Err(bad(format!(
                "the extended partition's chain loops back to sector {ebr}"
            )));
        }
        let Some(sector) = read.read(ebr, 1) else {
            return Err(bad(format!(
                "extended boot record at sector {ebr} cannot be read"
            )));
        };
        if sector.len() < 512 || sector[510..512] != MBR_SIGNATURE {
            // An empty extended partition, or the end of a chain that lost its link.
            break;
        }
        let entry = |i: usize| &sector[446 + 16 * i..462 + 16 * i];
        let (data, link) = (entry(0), entry(1));
        let (kind, start, sectors) = (data[4], u64::from(le32(data, 8)), u64::from(le32(data, 12)));
        if kind != 0 && sectors != 0 {
            let first = ebr + start;
            if start == 0 || first + sectors > ext_end {
                return Err(bad(format!(
                    "logical partition {number} ({sectors} sectors at sector {first}) lies outside \
                     the extended partition (sectors {}-{})",
                    ext.start_sector,
                    ext_end - 1
                )));
            }
            out.push(Partition {
                number,
                start_sector: first,
                sectors,
                kind: format!("0x{kind:02x}"),
                name: String::new(),
                uuid: String::new(),
            });
        }
        let next = u64::from(le32(link, 8));
        if !is_extended(&format!("0x{:02x}", link[4])) || next == 0 {
            break;
        }
        ebr = ext.start_sector + next;
        if ebr >= ext_end {
            return Err(bad(format!(
                "the extended partition's chain points to sector {ebr}, past its end"
            )));
        }
    }
    Ok(out)
}

fn read_gpt(
    device: &str,
    disk_sectors: u64,
    read: &dyn SectorReader,
) -> Result<PartitionTable, PartitionError> {
    let primary = gpt_at(device, disk_sectors, 1, read);
    match primary {
        Ok(t) => Ok(t),
        Err(first) => {
            let last = disk_sectors.checked_sub(1).ok_or_else(|| first.clone())?;
            match gpt_at(device, disk_sectors, last, read) {
                Ok(mut t) => {
                    t.warning = Some(format!(
                        "the primary GPT is damaged ({first}); read the backup"
                    ));
                    Ok(t)
                }
                Err(_) => Err(first),
            }
        }
    }
}

fn gpt_at(
    device: &str,
    disk_sectors: u64,
    lba: u64,
    read: &dyn SectorReader,
) -> Result<PartitionTable, PartitionError> {
    let bad = |what: String| PartitionError::Malformed {
        device: device.to_string(),
        what: format!("GPT header at sector {lba}: {what}"),
    };
    let h = read
        .read(lba, 1)
        .ok_or_else(|| bad("cannot be read".into()))?;
    if h.len() < 92 || &h[0..8] != GPT_SIGNATURE {
        return Err(bad("no \"EFI PART\" signature".into()));
    }
    let header_size = le32(&h, 12) as usize;
    if !(92..=512).contains(&header_size) {
        return Err(bad(format!("header size {header_size} is not 92 to 512")));
    }
    let mut copy = h[..header_size].to_vec();
    copy[16..20].fill(0);
    let want = le32(&h, 16);
    let got = crc32fast::hash(&copy);
    if got != want {
        return Err(bad(format!(
            "header CRC32 {got:#010x}, the header says {want:#010x}"
        )));
    }
    if le64(&h, 24) != lba {
        return Err(bad(format!("it says it lies at sector {}", le64(&h, 24))));
    }
    let first_usable = le64(&h, 40);
    let last_usable = le64(&h, 48);
    if first_usable > last_usable || last_usable >= disk_sectors {
        return Err(bad(format!(
            "usable sectors {first_usable}..={last_usable} do not fit the disk's {disk_sectors}"
        )));
    }
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80);
    let entry_size = le32(&h, 84);
    if count > MAX_ENTRIES || !(128..=4096).contains(&entry_size) || entry_size % 8 != 0 {
        return Err(bad(format!("{count} entries of {entry_size} bytes")));
    }
    let bytes = u64::from(count) * u64::from(entry_size);
    let array = read
        .read(entries_lba, bytes.div_ceil(SECTOR))
        .ok_or_else(|| {
            bad(format!(
                "the entries at sector {entries_lba} cannot be read"
            ))
        })?;
    if (array.len() as u64) < bytes {
        return Err(bad("the entry array is cut short".into()));
    }
    let array = &array[..bytes as usize];
    let want = le32(&h, 88);
    let got = crc32fast::hash(array);
    if got != want {
        return Err(bad(format!(
            "entries CRC32 {got:#010x}, the header says {want:#010x}"
        )));
    }
    let mut partitions = Vec::new();
    for (i, e) in array.chunks(entry_size as usize).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let first = le64(e, 32);
        let last = le64(e, 40);
        if first < first_usable || last > last_usable || first > last {
            return Err(bad(format!(
                "entry {} (sectors {first}..={last}) lies outside the usable {first_usable}..={last_usable}",
                i + 1
            )));
        }
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        partitions.push(Partition {
            number: i as u32 + 1,
            start_sector: first,
            sectors: last - first + 1,
            kind: guid_string(&e[0..16]),
            name: String::from_utf16_lossy(&name),
            uuid: guid_string(&e[16..32]),
        });
    }
    Ok(PartitionTable {
        scheme: Scheme::Gpt,
        partitions,
        warning: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk image in memory with a GPT of `parts` (first, last, name), written as
    /// sgdisk lays one out: protective MBR, header at 1, 128 entries from 2, backups at the end.
    fn gpt_disk(sectors: u64, parts: &[(u64, u64, &str)]) -> Vec<u8> {
        let mut d = vec![0u8; (sectors * SECTOR) as usize];
        d[446 + 4] = MBR_GPT_PROTECTIVE;
        d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        d[446 + 12..446 + 16].copy_from_slice(&((sectors - 1) as u32).to_le_bytes());
        d[510] = 0x55;
        d[511] = 0xaa;
        let mut entries = vec![0u8; 128 * 128];
        for (i, (first, last, name)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(&[
                0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47,
                0x7d, 0xe4,
            ]);
            e[16] = i as u8 + 1;
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (k, c) in name.encode_utf16().enumerate() {
                e[56 + 2 * k..58 + 2 * k].copy_from_slice(&c.to_le_bytes());
            }
        }
        let entries_crc = crc32fast::hash(&entries);
        let header = |my: u64, alt: u64, entries_at: u64| {
            let mut h = vec![0u8; 92];
            h[0..8].copy_from_slice(GPT_SIGNATURE);
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&my.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[40..48].copy_from_slice(&34u64.to_le_bytes());
            h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
            h[72..80].copy_from_slice(&entries_at.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
            let crc = crc32fast::hash(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            h
        };
        let at = |lba: u64| (lba * SECTOR) as usize;
        d[at(1)..at(1) + 92].copy_from_slice(&header(1, sectors - 1, 2));
        d[at(2)..at(2) + entries.len()].copy_from_slice(&entries);
        d[at(sectors - 33)..at(sectors - 33) + entries.len()].copy_from_slice(&entries);
        d[at(sectors - 1)..at(sectors - 1) + 92].copy_from_slice(&header(
            sectors - 1,
            1,
            sectors - 33,
        ));
        d
    }

    /// Writes MBR-style entry `i` (kind, start, sectors) into the sector at `at`.
    fn entry(d: &mut [u8], at: u64, i: usize, kind: u8, start: u32, sectors: u32) {
        let e = (at * SECTOR) as usize + 446 + 16 * i;
        d[e + 4] = kind;
        d[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        d[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
        let sig = (at * SECTOR) as usize + 510;
        d[sig..sig + 2].copy_from_slice(&MBR_SIGNATURE);
    }

    #[test]
    fn logical_partitions_follow_the_chain_and_a_loop_is_named() {
        let mut d = vec![0u8; 4096 * SECTOR as usize];
        entry(&mut d, 0, 0, 0x83, 64, 100);
        entry(&mut d, 0, 1, 0x05, 1000, 2000);
        // EBR 1 at 1000: logical at +10 for 100, next EBR at ext+500.
        entry(&mut d, 1000, 0, 0x83, 10, 100);
        entry(&mut d, 1000, 1, 0x05, 500, 300);
        // EBR 2 at 1500: logical at +10 for 200, end of chain.
        entry(&mut d, 1500, 0, 0x82, 10, 200);
        let t = read_table("d", 4096, &reader(&d)).unwrap().unwrap();
        let got: Vec<(u32, u64, u64)> = t
            .partitions
            .iter()
            .map(|p| (p.number, p.start_sector, p.sectors))
            .collect();
        assert_eq!(
            got,
            [(1, 64, 100), (2, 1000, 2), (5, 1010, 100), (6, 1510, 200)]
        );
        // A link back to the first record.
        entry(&mut d, 1500, 1, 0x05, 0, 300);
        d[1500 * 512 + 446 + 16 + 8..1500 * 512 + 446 + 16 + 12]
            .copy_from_slice(&500u32.to_le_bytes());
        let err = read_table("d", 4096, &reader(&d)).unwrap_err();
        assert!(err.to_string().contains("loops back"), "{err}");
        // A logical partition outside its container.
        entry(&mut d, 1500, 1, 0, 0, 0);
        entry(&mut d, 1500, 0, 0x82, 10, 5000);
        let err = read_table("d", 4096, &reader(&d)).unwrap_err();
        assert!(err.to_string().contains("logical partition 6"), "{err}");
    }

    fn reader(d: &[u8]) -> impl Fn(u64, u64) -> Option<Vec<u8>> + '_ {
        move |lba, count| {
            let from = (lba * SECTOR) as usize;
            let to = from.checked_add((count * SECTOR) as usize)?;
            d.get(from..to).map(<[u8]>::to_vec)
        }
    }

    #[test]
    fn gpt_partitions_read_with_names_and_guids() {
        let d = gpt_disk(4096, &[(2048, 3071, "boot"), (3072, 4000, "data")]);
        let t = read_table("disk", 4096, &reader(&d)).unwrap().unwrap();
        assert_eq!(t.scheme, Scheme::Gpt);
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.partitions[0].start_sector, 2048);
        assert_eq!(t.partitions[0].sectors, 1024);
        assert_eq!(t.partitions[1].name, "data");
        assert_eq!(t.partitions[0].kind, "0fc63daf-8483-4772-8e79-3d69d8477de4");
        assert!(t.warning.is_none());
    }

    #[test]
    fn a_damaged_primary_gpt_falls_back_to_the_backup_and_says_so() {
        let mut d = gpt_disk(4096, &[(2048, 3071, "boot")]);
        d[512 + 40] ^= 1; // first usable LBA: the header CRC no longer matches
        let t = read_table("disk", 4096, &reader(&d)).unwrap().unwrap();
        assert_eq!(t.partitions.len(), 1);
        let w = t.warning.unwrap();
        assert!(w.contains("CRC32") && w.contains("backup"), "{w}");
        // Both damaged: the error names the disk and the primary's fault.
        let last = 4095 * 512 + 40;
        d[last] ^= 1;
        let e = read_table("disk", 4096, &reader(&d))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("disk: GPT header at sector 1") && e.contains("CRC32"),
            "{e}"
        );
    }

    #[test]
    fn mbr_partitions_read_and_bad_ones_are_named() {
        let mut d = vec![0u8; 2048 * 512];
        d[510] = 0x55;
        d[511] = 0xaa;
        let mut entry = |i: usize, kind: u8, start: u32, len: u32| {
            let e = &mut d[446 + 16 * i..462 + 16 * i];
            e[4] = kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&len.to_le_bytes());
        };
        entry(0, 0x83, 63, 1000);
        entry(1, 0xfd, 1063, 900);
        let t = read_table("disk", 2048, &reader(&d)).unwrap().unwrap();
        assert_eq!(t.scheme, Scheme::Mbr);
        assert_eq!(t.partitions[1].kind, "0xfd");
        assert_eq!(t.partitions[1].number, 2);
        let mut past = d.clone();
        past[446 + 16 + 12..446 + 16 + 16].copy_from_slice(&5000u32.to_le_bytes());
        let e = read_table("disk", 2048, &reader(&past))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("MBR entry 2") && e.contains("past the disk"),
            "{e}"
        );
        let mut overlap = d.clone();
        overlap[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&500u32.to_le_bytes());
        let e = read_table("disk", 2048, &reader(&overlap))
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlap"), "{e}");
    }

    #[test]
    fn no_signature_is_no_table() {
        let d = vec![0u8; 64 * 512];
        assert_eq!(read_table("disk", 64, &reader(&d)).unwrap(), None);
    }
}
