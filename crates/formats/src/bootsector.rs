//! Filesystems whose first sector is a DOS boot sector ending in 0x55AA, as an MBR does:
//! FAT12/16/32, NTFS and exFAT. They are told apart from a DOS partition table, and named
//! (TYPE, UUID, LABEL, VERSION), by the rules libblkid applies: its vfat, ntfs and exfat
//! probes, and their use in its DOS partition table probe, which ignores sector 0 when one
//! of them accepts it. Each check below is one of blkid's, so `blkid -p` and tessera agree
//! on what a whole-device filesystem is.

/// Reads bytes of the device: `read(offset, len)` is None when they do not lie inside it.
pub trait ByteReader {
    fn size_bytes(&self) -> u64;
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>>;
}

/// A filesystem found in a boot sector, named as `blkid -p -o export` names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootFilesystem {
    /// blkid's TYPE: vfat, ntfs or exfat.
    pub kind: &'static str,
    /// blkid's VERSION: FAT12, FAT16, FAT32 for vfat (none when the cluster count fits
    /// neither FAT12 nor FAT16), `MAJOR.MINOR` for exFAT, empty for NTFS.
    pub version: String,
    /// blkid's UUID: FAT's and exFAT's volume serial as XXXX-XXXX, NTFS's 64-bit serial as
    /// 16 hex digits; empty when the serial is absent or all zeroes.
    pub uuid: String,
    /// blkid's LABEL: FAT's volume label entry of the root directory, NTFS's $VOLUME_NAME,
    /// exFAT's label entry; empty when there is none.
    pub label: String,
    /// blkid's LABEL_FATBOOT: the label in a FAT boot sector, unless "NO NAME".
    pub boot_label: String,
    /// Byte offset of the magic that named it (the FAT type name, "NTFS", "EXFAT", or the
    /// 0x55AA signature when a FAT boot sector has no name).
    pub magic_offset: u64,
}

const FAT12_MAX: u32 = 0xff4;
const FAT16_MAX: u32 = 0xfff4;
const FAT32_MAX: u32 = 0x0fff_fff6;
/// Devices up to a 1.44 MB floppy, which blkid reads entry by entry.
const TINY_BYTES: u64 = 1_474_560;
/// The most of an MFT record tessera reads: real records are 1 to 4 KiB.
const MFT_READ_LIMIT: u32 = 64 << 10;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// Text of a label field: blkid copies the bytes and trims trailing white space.
fn label_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
        .trim_end()
        .to_string()
}

/// UTF-16LE up to the first NUL, trimmed as blkid trims labels.
fn utf16_label(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units).trim_end().to_string()
}

/// A 4-byte serial as blkid prints FAT's and exFAT's: the bytes high to low, XXXX-XXXX;
/// none when all zeroes (blkid sets no UUID then).
fn serial_text(b: &[u8]) -> String {
    if b.iter().all(|&c| c == 0) {
        return String::new();
    }
    format!("{:02X}{:02X}-{:02X}{:02X}", b[3], b[2], b[1], b[0])
}

/// Which of the vfat probe's magics sector 0 matches first, as (offset, length): the FAT
/// type names, then a jump instruction at byte 0, then the 0x55AA signature.
fn vfat_magic(bs: &[u8]) -> Option<(u64, usize)> {
    let named: [(&[u8], usize); 6] = [
        (b"MSWIN", 0x52),
        (b"FAT32   ", 0x52),
        (b"MSDOS", 0x36),
        (b"FAT16   ", 0x36),
        (b"FAT12   ", 0x36),
        (b"FAT     ", 0x36),
    ];
    for (magic, at) in named {
        if &bs[at..at + magic.len()] == magic {
            return Some((at as u64, magic.len()));
        }
    }
    if bs[0] == 0xeb || bs[0] == 0xe9 {
        return Some((0, 1));
    }
    if bs[510..512] == [0x55, 0xaa] {
        return Some((510, 2));
    }
    None
}

/// BitLocker's volume header also carries a FAT-like BPB (Vista and Windows 7 magics).
fn is_bitlocker(bs: &[u8]) -> bool {
    (bs[..3] == [0xeb, 0x52, 0x90] || bs[..3] == [0xeb, 0x58, 0x90]) && &bs[3..11] == b"-FVE-FS-"
}

/// The checks of blkid's `fat_valid_superblock`: the BPB's numbers are those of a FAT, and
/// its cluster count fits the FAT type. Returns (cluster count, sectors of all FATs). The
/// arithmetic wraps at 32 bits, as blkid's does.
fn fat_valid(bs: &[u8], magic_len: usize) -> Option<(u32, u32)> {
    if magic_len <= 2 {
        // Without a type name: the signature, and not the pseudo-BPB OS/2 puts on JFS/HPFS.
        if bs[510..512] != [0x55, 0xaa] || &bs[0x36..0x3e] == b"JFS     " {
            return None;
        }
        if &bs[0x36..0x3e] == b"HPFS    " {
            return None;
        }
    }
    let (cluster_size, reserved, fats, media) = (bs[13], le16(bs, 14), bs[16], bs[21]);
    if fats == 0 || reserved == 0 || !(media >= 0xf8 || media == 0xf0) {
        return None;
    }
    if !cluster_size.is_power_of_two() {
        return None;
    }
    let sector_size = le16(bs, 11);
    if !sector_size.is_power_of_two() || !(512..=4096).contains(&sector_size) {
        return None;
    }
    let dir_entries = u32::from(le16(bs, 17));
    let sect_count = match le16(bs, 19) {
        0 => le32(bs, 32),
        n => u32::from(n),
    };
    let fat16_length = le16(bs, 22);
    let fat32_length = le32(bs, 36);
    let fat_length = if fat16_length == 0 {
        fat32_length
    } else {
        u32::from(fat16_length)
    };
    let fat_size = fat_length.wrapping_mul(u32::from(fats));
    let dir_size = (dir_entries * 32).div_ceil(u32::from(sector_size));
    let cluster_count = sect_count.wrapping_sub(
        u32::from(reserved)
            .wrapping_add(fat_size)
            .wrapping_add(dir_size),
    ) / u32::from(cluster_size);
    let max_count = if fat16_length == 0 && fat32_length != 0 {
        FAT32_MAX
    } else if cluster_count > FAT12_MAX {
        FAT16_MAX
    } else {
        FAT12_MAX
    };
    if cluster_count > max_count || is_bitlocker(bs) {
        return None;
    }
    Some((cluster_count, fat_size))
}

/// Whether blkid's vfat probe accepts sector 0 (`blkid_probe_is_vfat`).
pub fn is_vfat(r: &dyn ByteReader) -> bool {
    let Some(bs) = r.read(0, 512) else {
        return false;
    };
    vfat_magic(&bs).is_some_and(|(_, len)| fat_valid(&bs, len).is_some())
}

/// blkid's `search_fat_label`: the first volume-label entry of a directory of `entries`
/// entries at `offset`, before the end marker.
fn fat_dir_label(r: &dyn ByteReader, offset: u64, entries: u32) -> Option<[u8; 11]> {
    let whole = if r.size_bytes() > TINY_BYTES {
        Some(r.read(offset, entries as usize * 32)?)
    } else {
        None
    };
    for i in 0..entries as usize {
        let entry = match &whole {
            Some(dir) => dir[i * 32..i * 32 + 32].to_vec(),
            None => r.read(offset + i as u64 * 32, 32)?,
        };
        if entry[0] == 0 {
            return None;
        }
        let attr = entry[11];
        let cluster_high = le16(&entry, 20);
        let cluster_low = le16(&entry, 26);
        // Deleted entries, entries with data and long-name pieces are passed over.
        if entry[0] == 0xe5 || cluster_high != 0 || cluster_low != 0 || attr & 0x3f == 0x0f {
            continue;
        }
        // Volume label and not a directory.
        if attr & (0x08 | 0x10) == 0x08 {
            let mut name = [0u8; 11];
            name.copy_from_slice(&entry[..11]);
            if name[0] == 0x05 {
                name[0] = 0xe5;
            }
            return Some(name);
        }
    }
    None
}

/// blkid's vfat probe of sector 0.
pub fn probe_vfat(r: &dyn ByteReader) -> Option<BootFilesystem> {
    let bs = r.read(0, 512)?;
    let (magic_offset, magic_len) = vfat_magic(&bs)?;
    let (cluster_count, fat_size) = fat_valid(&bs, magic_len)?;
    let sector_size = le16(&bs, 11);
    let reserved = le16(&bs, 14);
    let cluster_size = bs[13];
    let mut fs = BootFilesystem {
        kind: "vfat",
        magic_offset,
        ..BootFilesystem::default()
    };
    let vol_label;
    let mut boot_label = None;
    let mut serial = None;
    if le16(&bs, 22) != 0 {
        // FAT12/16: the root directory follows the FATs.
        let root_start = u32::from(reserved)
            .wrapping_add(fat_size)
            .wrapping_mul(u32::from(sector_size));
        vol_label = fat_dir_label(r, u64::from(root_start), u32::from(le16(&bs, 17)));
        if bs[0x26] == 0x29 {
            boot_label = Some(&bs[0x2b..0x36]);
        }
        if bs[0x26] == 0x28 || bs[0x26] == 0x29 {
            serial = Some(&bs[0x27..0x2b]);
        }
        fs.version = if cluster_count < FAT12_MAX {
            "FAT12".into()
        } else if cluster_count < FAT16_MAX {
            "FAT16".into()
        } else {
            String::new()
        };
    } else if le32(&bs, 36) != 0 {
        // FAT32: the root directory is a cluster chain, followed for at most 99 clusters.
        let buf_size = u32::from(cluster_size).wrapping_mul(u32::from(sector_size));
        let start_data_sect = u32::from(reserved).wrapping_add(fat_size);
        let entries = (u64::from(le32(&bs, 36)) * u64::from(sector_size) / 4) as u32;
        let mut next = le32(&bs, 44);
        let mut label = None;
        let mut loops = 100;
        loop {
            loops -= 1;
            if next == 0 || next >= entries || loops == 0 {
                break;
            }
            let sect_off = next.wrapping_sub(2).wrapping_mul(u32::from(cluster_size));
            let dir_off =
                u64::from(start_data_sect.wrapping_add(sect_off)) * u64::from(sector_size);
            label = fat_dir_label(r, dir_off, buf_size / 32);
            if label.is_some() {
                break;
            }
            let fat_entry = u64::from(reserved) * u64::from(sector_size) + u64::from(next) * 4;
            // blkid reads a cluster's worth there; past the end it stops.
            if fat_entry.saturating_add(u64::from(buf_size)) > r.size_bytes() {
                break;
            }
            let Some(e) = r.read(fat_entry, 4) else {
                break;
            };
            next = le32(&e, 0) & 0x0fff_ffff;
        }
        vol_label = label;
        fs.version = "FAT32".into();
        if bs[0x42] == 0x29 {
            boot_label = Some(&bs[0x47..0x52]);
        }
        serial = Some(&bs[0x43..0x47]);
        // The FS information sector's signatures, or zeroes where a formatter left none.
        let fsinfo = le16(&bs, 0x30);
        if fsinfo != 0 {
            let info = r.read(u64::from(fsinfo) * u64::from(sector_size), 512)?;
            let first_ok = [&b"RRaA"[..], b"RRdA", &[0; 4]].contains(&&info[..4]);
            let second_ok = [&b"rrAa"[..], &[0; 4]].contains(&&info[484..488]);
            if !first_ok || !second_ok {
                return None;
            }
        }
    } else {
        vol_label = None;
    }
    if let Some(b) = boot_label {
        if b != b"NO NAME    " {
            fs.boot_label = label_text(b);
        }
    }
    if let Some(l) = vol_label {
        fs.label = label_text(&l);
    }
    if let Some(s) = serial {
        fs.uuid = serial_text(s);
    }
    Some(fs)
}

/// blkid's NTFS probe: the BPB of an NTFS boot sector and the MFT records it points at.
/// With `names`, also the label ($VOLUME_NAME of the $Volume record) and the serial.
fn ntfs(r: &dyn ByteReader, names: bool) -> Option<BootFilesystem> {
    let bs = r.read(0, 512)?;
    if &bs[3..11] != b"NTFS    " {
        return None;
    }
    let sector_size = le16(&bs, 11);
    if !(256..=4096).contains(&sector_size) {
        return None;
    }
    let sectors_per_cluster: u32 = match bs[13] {
        n @ (1 | 2 | 4 | 8 | 16 | 32 | 64 | 128) => u32::from(n),
        n @ 240..=249 => 1 << (256 - u32::from(n)),
        _ => return None,
    };
    if u32::from(sector_size) * sectors_per_cluster > 2 << 20 {
        return None;
    }
    // The fields FAT uses must be zero.
    if le16(&bs, 14) != 0
        || le16(&bs, 17) != 0
        || le16(&bs, 19) != 0
        || le16(&bs, 22) != 0
        || le32(&bs, 32) != 0
        || bs[16] != 0
    {
        return None;
    }
    let per_record = bs[64] as i8;
    let mft_record_size: u32 = match per_record {
        1 | 2 | 4 | 8 | 16 | 32 | 64 => {
            per_record as u32 * sectors_per_cluster * u32::from(sector_size)
        }
        -31..=-9 => 1 << (-per_record) as u32,
        _ => return None,
    };
    let nr_clusters = le64(&bs, 40) / u64::from(sectors_per_cluster);
    let (mft, mirror) = (le64(&bs, 48), le64(&bs, 56));
    if mft > nr_clusters || mirror > nr_clusters {
        return None;
    }
    let mut off = mft
        .wrapping_mul(u64::from(sector_size))
        .wrapping_mul(u64::from(sectors_per_cluster));
    let readable = mft_record_size.min(MFT_READ_LIMIT) as usize;
    let record = |at: u64| -> Option<Vec<u8>> {
        // blkid reads the whole record: it must lie inside the device.
        if at.checked_add(u64::from(mft_record_size))? > r.size_bytes() {
            return None;
        }
        r.read(at, readable)
    };
    if &record(off)?[..4] != b"FILE" {
        return None;
    }
    off = off.wrapping_add(3 * u64::from(mft_record_size));
    let volume = record(off)?;
    if &volume[..4] != b"FILE" {
        return None;
    }
    let mut fs = BootFilesystem {
        kind: "ntfs",
        magic_offset: 3,
        ..BootFilesystem::default()
    };
    if !names {
        return Some(fs);
    }
    if volume.len() >= 0x20 {
        let bytes_allocated = u64::from(le32(&volume, 0x1c));
        let size = volume.len() as u64;
        let mut attr_off = u64::from(le16(&volume, 0x14));
        while attr_off + 22 <= u64::from(mft_record_size) && attr_off <= bytes_allocated {
            if attr_off + 22 > size {
                break;
            }
            let a = attr_off as usize;
            let (kind, len) = (le32(&volume, a), le32(&volume, a + 4));
            if len == 0 || kind == 0xffff_ffff {
                break;
            }
            if kind == 0x60 {
                let value_len = u64::from(le32(&volume, a + 16));
                let value_off = u64::from(le16(&volume, a + 20));
                let end = attr_off + value_off + value_len;
                if end <= u64::from(mft_record_size) && end <= size {
                    fs.label = utf16_label(&volume[(attr_off + value_off) as usize..end as usize]);
                }
                break;
            }
            attr_off += u64::from(len);
        }
    }
    let serial = le64(&bs, 72);
    if serial != 0 {
        fs.uuid = format!("{serial:016X}");
    }
    Some(fs)
}

/// Whether blkid's NTFS probe accepts sector 0 (`blkid_probe_is_ntfs`).
pub fn is_ntfs(r: &dyn ByteReader) -> bool {
    ntfs(r, false).is_some()
}

/// blkid's NTFS probe.
pub fn probe_ntfs(r: &dyn ByteReader) -> Option<BootFilesystem> {
    ntfs(r, true)
}

/// The exFAT boot checksum over the first 11 sectors, skipping the volume flags and the
/// percent-in-use byte (which change without the checksum being rewritten).
fn exfat_checksum(sectors: &[u8]) -> u32 {
    let mut sum: u32 = 0;
    for (i, &b) in sectors.iter().enumerate() {
        if i == 106 || i == 107 || i == 112 {
            continue;
        }
        sum = sum.rotate_right(1).wrapping_add(u32::from(b));
    }
    sum
}

/// The checks of blkid's `exfat_valid_superblock` (util-linux 2.39 and later): the fixed
/// fields, the layout's ranges, and the boot region's checksum.
fn exfat_valid(r: &dyn ByteReader, bs: &[u8]) -> bool {
    let (sector_shift, cluster_shift, fats) = (bs[108], bs[109], bs[110]);
    let (fat_offset, fat_length) = (le32(bs, 80), le32(bs, 84));
    let (heap_offset, cluster_count, root) = (le32(bs, 88), le32(bs, 92), le32(bs, 96));
    let fats_end = fat_length.wrapping_mul(u32::from(fats));
    let fields_ok = bs[510..512] == [0x55, 0xaa]
        && bs[..3] == [0xeb, 0x76, 0x90]
        && &bs[3..11] == b"EXFAT   "
        && bs[11..64].iter().all(|&c| c == 0)
        && (1..=2).contains(&fats)
        && (9..=12).contains(&sector_shift)
        && cluster_shift <= 25 - sector_shift
        && (24..=heap_offset.wrapping_sub(fats_end)).contains(&fat_offset)
        && (fat_offset.wrapping_add(fats_end)..=1 << 31).contains(&heap_offset)
        && (2..=cluster_count.wrapping_add(1)).contains(&root);
    if !fields_ok {
        return false;
    }
    let sector = 1usize << sector_shift;
    let Some(region) = r.read(0, sector * 12) else {
        return false;
    };
    let sum = exfat_checksum(&region[..sector * 11]);
    region[sector * 11..]
        .chunks_exact(4)
        .all(|c| le32(c, 0) == sum)
}

/// Whether blkid's exFAT check accepts sector 0 (`blkid_probe_is_exfat`).
pub fn is_exfat(r: &dyn ByteReader) -> bool {
    r.read(0, 512).is_some_and(|bs| exfat_valid(r, &bs))
}

/// blkid's exFAT probe: the label entry of the root directory, the serial, the revision.
pub fn probe_exfat(r: &dyn ByteReader) -> Option<BootFilesystem> {
    let bs = r.read(0, 512)?;
    if !exfat_valid(r, &bs) {
        return None;
    }
    let (sector_shift, cluster_shift) = (u32::from(bs[108]), u32::from(bs[109]));
    let cluster_bytes = 1u64 << (sector_shift + cluster_shift);
    let heap = u64::from(le32(&bs, 88));
    let fat = u64::from(le32(&bs, 80)) << sector_shift;
    let cluster_offset =
        |c: u32| (heap + (u64::from(c.wrapping_sub(2)) << cluster_shift)) << sector_shift;
    let mut cluster = le32(&bs, 96);
    let mut offset = cluster_offset(cluster);
    let mut label = String::new();
    // blkid looks at no more than 10000 entries.
    for _ in 0..10_000 {
        let Some(entry) = r.read(offset, 32) else {
            break;
        };
        match entry[0] {
            0 => break,
            0x83 => {
                let len = (usize::from(entry[1]) * 2).min(22);
                label = utf16_label(&entry[2..2 + len]);
                break;
            }
            _ => {}
        }
        offset += 32;
        if offset % cluster_bytes == 0 {
            let Some(next) = r.read(fat + u64::from(cluster) * 4, 4) else {
                break;
            };
            cluster = le32(&next, 0);
            if !(2..=0x0fff_fff6).contains(&cluster) {
                break;
            }
            offset = cluster_offset(cluster);
        }
    }
    Some(BootFilesystem {
        kind: "exfat",
        version: format!("{}.{}", bs[105], bs[104]),
        uuid: serial_text(&bs[100..104]),
        label,
        boot_label: String::new(),
        magic_offset: 3,
    })
}

/// The filesystem in sector 0, in blkid's probing order (vfat, ntfs, exfat), if any.
pub fn probe(r: &dyn ByteReader) -> Option<BootFilesystem> {
    probe_vfat(r)
        .or_else(|| probe_ntfs(r))
        .or_else(|| probe_exfat(r))
}

/// Why blkid's DOS partition table probe passes over sector 0 although it ends in 0x55AA:
/// it is the boot sector of a FAT, exFAT or NTFS filesystem.
pub fn not_a_partition_table(r: &dyn ByteReader) -> Option<&'static str> {
    if is_vfat(r) {
        Some("vfat")
    } else if is_exfat(r) {
        Some("exfat")
    } else if is_ntfs(r) {
        Some("ntfs")
    } else {
        None
    }
}

/// A byte reader over memory, for tests and fuzzing.
impl ByteReader for &[u8] {
    fn size_bytes(&self) -> u64 {
        self.len() as u64
    }
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        self.get(start..end).map(<[u8]>::to_vec)
    }
}

impl ByteReader for Vec<u8> {
    fn size_bytes(&self) -> u64 {
        self.len() as u64
    }
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        self.as_slice().read(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FAT16 boot sector for `sectors` sectors, one sector per cluster, root directory
    /// of 512 entries.
    fn fat16(sectors: u16) -> Vec<u8> {
        let mut d = vec![0u8; usize::from(sectors) * 512];
        d[..3].copy_from_slice(&[0xeb, 0x3c, 0x90]);
        d[3..11].copy_from_slice(b"mkfs.fat");
        d[11..13].copy_from_slice(&512u16.to_le_bytes());
        d[13] = 4;
        d[14] = 4; // reserved
        d[16] = 2;
        d[17..19].copy_from_slice(&512u16.to_le_bytes());
        d[19..21].copy_from_slice(&sectors.to_le_bytes());
        d[21] = 0xf8;
        d[22..24].copy_from_slice(&32u16.to_le_bytes());
        d[0x26] = 0x29;
        d[0x27..0x2b].copy_from_slice(&0x1234_abcdu32.to_le_bytes());
        d[0x2b..0x36].copy_from_slice(b"BOOTLABEL  ");
        d[0x36..0x3e].copy_from_slice(b"FAT16   ");
        d[510] = 0x55;
        d[511] = 0xaa;
        d
    }

    #[test]
    fn fat16_with_a_root_directory_label() {
        let mut d = fat16(20000);
        let root = (4 + 64) * 512;
        d[root..root + 11].copy_from_slice(b"DIRLABEL   ");
        d[root + 11] = 0x08;
        let fs = probe(&d).unwrap();
        assert_eq!(
            (fs.kind, fs.version.as_str(), fs.uuid.as_str()),
            ("vfat", "FAT16", "1234-ABCD")
        );
        assert_eq!(
            (fs.label.as_str(), fs.boot_label.as_str()),
            ("DIRLABEL", "BOOTLABEL")
        );
        assert_eq!(fs.magic_offset, 0x36);
        assert_eq!(not_a_partition_table(&d), Some("vfat"));
        // A deleted entry and a long-name piece before it are passed over; the end marker
        // stops the search.
        d[root..root + 32].fill(0);
        assert_eq!(probe(&d).unwrap().label, "");
    }

    #[test]
    fn fat_numbers_that_do_not_add_up_are_no_filesystem() {
        for (at, value) in [(16, 0u8), (14, 0), (21, 0x12), (13, 3), (12, 1)] {
            let mut d = fat16(20000);
            d[at] = value;
            if at == 14 {
                d[15] = 0;
            }
            assert!(probe(&d).is_none(), "byte {at}");
            assert_eq!(not_a_partition_table(&d), None, "byte {at}");
        }
        // Too many clusters for FAT16.
        let mut d = fat16(20000);
        d[19..21].fill(0);
        d[32..36].copy_from_slice(&2_000_000u32.to_le_bytes());
        assert!(probe(&d).is_none());
    }

    #[test]
    fn an_mbr_is_not_a_boot_sector() {
        let mut d = vec![0u8; 1 << 20];
        d[446 + 4] = 0x83;
        d[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        d[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
        d[510] = 0x55;
        d[511] = 0xaa;
        assert!(probe(&d).is_none());
        assert_eq!(not_a_partition_table(&d), None);
    }

    #[test]
    fn exfat_checksum_is_checked() {
        let mut d = vec![0u8; 4 << 20];
        d[..3].copy_from_slice(&[0xeb, 0x76, 0x90]);
        d[3..11].copy_from_slice(b"EXFAT   ");
        d[72..80].copy_from_slice(&8192u64.to_le_bytes());
        d[80..84].copy_from_slice(&128u32.to_le_bytes());
        d[84..88].copy_from_slice(&8u32.to_le_bytes());
        d[88..92].copy_from_slice(&256u32.to_le_bytes());
        d[92..96].copy_from_slice(&1000u32.to_le_bytes());
        d[96..100].copy_from_slice(&4u32.to_le_bytes());
        d[100..104].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        d[104] = 0;
        d[105] = 1;
        d[108] = 9;
        d[109] = 3;
        d[110] = 1;
        d[510] = 0x55;
        d[511] = 0xaa;
        let sum = exfat_checksum(&d[..512 * 11]);
        for i in 0..128 {
            d[512 * 11 + i * 4..512 * 11 + i * 4 + 4].copy_from_slice(&sum.to_le_bytes());
        }
        // The root directory: cluster 4, at (256 + 2 * 8) sectors.
        let root = (256 + 2 * 8) * 512;
        d[root] = 0x83;
        d[root + 1] = 3;
        for (i, c) in "usb".encode_utf16().enumerate() {
            d[root + 2 + i * 2..root + 4 + i * 2].copy_from_slice(&c.to_le_bytes());
        }
        let fs = probe(&d).unwrap();
        assert_eq!(
            (
                fs.kind,
                fs.version.as_str(),
                fs.uuid.as_str(),
                fs.label.as_str()
            ),
            ("exfat", "1.0", "DEAD-BEEF", "usb")
        );
        assert_eq!(not_a_partition_table(&d), Some("exfat"));
        d[200] = 1;
        assert!(probe(&d).is_none());
    }

    #[test]
    fn short_and_hostile_input_never_panics() {
        for len in [0usize, 100, 511, 512, 4096] {
            for fill in [0u8, 0xff, 0x55] {
                let mut d = vec![fill; len];
                if len >= 512 {
                    d[510] = 0x55;
                    d[511] = 0xaa;
                }
                let _ = probe(&d);
                let _ = not_a_partition_table(&d);
            }
        }
        let mut d = vec![0u8; 4096];
        d[3..11].copy_from_slice(b"NTFS    ");
        d[11..13].copy_from_slice(&512u16.to_le_bytes());
        d[13] = 1;
        d[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        d[48..56].copy_from_slice(&u64::MAX.to_le_bytes());
        d[64] = 0xe1;
        assert!(probe(&d).is_none());
    }
}
