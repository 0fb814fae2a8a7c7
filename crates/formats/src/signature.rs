//! Signatures of the formats a device may already hold, so that making it a PV can refuse
//! to destroy them without `--force`. Names are blkid's TYPE (or PTTYPE) values; offsets
//! point at the magic, so zeroing the 512-byte sector holding it removes the signature.
//! Every probe reads a few bytes at a fixed place and is skipped when the device is too
//! small for it.

use std::fmt;

use tessera_block::{BlockDevice, BlockError};

use crate::bootsector;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// blkid's name: LVM2_member, linux_raid_member, crypto_LUKS, ext2/ext3/ext4/jbd, xfs,
    /// btrfs, swap, vfat, gpt, dos.
    pub kind: &'static str,
    /// Byte offset of the magic.
    pub offset: u64,
    /// What else was found (version, label, UUID); may be empty.
    pub detail: String,
    /// The UUID as blkid prints it (lowercase dashed hex; XXXX-XXXX for FAT; LUKS's own
    /// text), or "" when the format has none or it is all zeroes.
    pub uuid: String,
    /// The label, or "".
    pub label: String,
    /// The creation time mdadm compares between RAID superblocks (seconds, cut to 32
    /// bits as mdadm's `array.ctime`), 0 for formats without one.
    pub created: u32,
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
    firmware_raid(dev, &mut found)?;
    ext(dev, &mut found)?;
    btrfs_and_swap(dev, &mut found)?;
    boot_filesystems(dev, &mut found)?;
    partition_tables(dev, &mut found)?;
    Ok(found)
}

/// The device as [`bootsector::ByteReader`]: a read error reads as nothing there, as a
/// probe past the end does.
struct DeviceBytes<'a>(&'a dyn BlockDevice);

impl bootsector::ByteReader for DeviceBytes<'_> {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        if offset.checked_add(len as u64)? > self.0.size_bytes() || len > 16 << 20 {
            return None;
        }
        let mut b = vec![0u8; len];
        self.0.read_at(&mut b, offset).ok()?;
        Some(b)
    }
}

/// Intel Matrix Storage (IMSM) and SNIA DDF, where blkid looks for them: the IMSM
/// signature in the second-to-last sector, the DDF anchor in the last (or 257th from the
/// end) sector, in either byte order, whose primary header (when it names one) starts with
/// the same signature.
fn firmware_raid(dev: &dyn BlockDevice, found: &mut Vec<Signature>) -> Result<(), BlockError> {
    let size = dev.size_bytes();
    if size >= 0x10000 {
        if let Some(b) = read::<0x58>(dev, (size / 512 - 2) * 512)? {
            if &b[..24] == b"Intel Raid ISM Cfg Sig. " {
                let version = name_field(&b[24..30]);
                // mdadm's container ctime: the MPB's creation_time (0 where older
                // writers left it unset).
                let created = u32_le(&b, 0x50);
                push(
                    found,
                    "isw_raid_member",
                    (size / 512 - 2) * 512,
                    format!("IMSM {version}"),
                    String::new(),
                    String::new(),
                );
                set_created(found, created);
            }
        }
    }
    if size >= 0x30000 {
        for from_end in [1, 257] {
            let at = (size / 512 - from_end) * 512;
            let Some(b) = read::<104>(dev, at)? else {
                continue;
            };
            let be = b[..4] == 0xde11_de11u32.to_be_bytes();
            if !be && b[..4] != 0xde11_de11u32.to_le_bytes() {
                continue;
            }
            let lba = if be {
                u64::from_be_bytes(b[96..104].try_into().unwrap_or([0; 8]))
            } else {
                u64::from_le_bytes(b[96..104].try_into().unwrap_or([0; 8]))
            };
            if lba > 0 {
                let primary = lba.checked_mul(512).map(|o| read::<4>(dev, o));
                match primary {
                    Some(Ok(Some(p))) if p == b[..4] => {}
                    Some(Err(e)) => return Err(e),
                    _ => break,
                }
            }
            let revision = name_field(&b[32..40]);
            push(
                found,
                "ddf_raid_member",
                at,
                format!("DDF {revision}"),
                String::new(),
                String::new(),
            );
            // mdadm's container ctime: the timestamp in the GUID's bytes 16..20 (big
            // endian, counted from 1980), plus the decade to 1980.
            const DECADE: u32 = 3600 * 24 * (365 * 10 + 2);
            let stamp = u32::from_be_bytes([b[24], b[25], b[26], b[27]]);
            set_created(found, DECADE.wrapping_add(stamp));
            break;
        }
    }
    Ok(())
}

/// Two or more formats on one device (leftover metadata), and which one is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The format taken: its signatures (LUKS2 and GPT have two). Empty when blkid refuses
    /// to choose between the filesystems found (its "ambivalent result").
    pub taken: Vec<Signature>,
    /// Each other format found there, with its signatures.
    pub others: Vec<Vec<Signature>>,
    /// Why the one taken wins, as blkid and (for RAID members) mdadm decide it.
    pub why: String,
}

impl Conflict {
    /// The blkid name of the format taken, if one is.
    pub fn taken_kind(&self) -> Option<&'static str> {
        self.taken.first().map(|s| s.kind)
    }

    /// Whether every other format lies where the taken one keeps its data: a RAID member
    /// with its superblock at the end (MD 0.90 and 1.0, DDF, IMSM) shows its array's own
    /// content from byte 0 (a mirror shows the array's table, PV or filesystem), so there
    /// the others are that content, or leftovers only the assembled array can tell apart.
    pub fn in_data_area(&self) -> bool {
        let Some(first) = self.taken.first() else {
            return false;
        };
        let at_end = match first.kind {
            "linux_raid_member" => {
                first.detail.starts_with("MD superblock 0.90")
                    || first.detail.starts_with("MD superblock 1.0")
            }
            "ddf_raid_member" | "isw_raid_member" => true,
            _ => false,
        };
        let start = self.taken.iter().map(|s| s.offset).min().unwrap_or(0);
        at_end
            && self.others.iter().flatten().all(|s| {
                s.offset < start
                    && !matches!(
                        s.kind,
                        "linux_raid_member" | "ddf_raid_member" | "isw_raid_member"
                    )
            })
    }

    /// The commands that clear the other formats from `device`: wipefs erasing each
    /// magic at the offset blkid reports it at (wipefs lists them all, also those blkid's
    /// answer hides), or for an LVM2 label tessera's own `pv remove`.
    pub fn clear_commands(&self, device: &str) -> Vec<String> {
        let mut out = Vec::new();
        // When blkid is undecided, every format is listed: the user keeps one.
        for group in &self.others {
            for s in group {
                out.push(format!("wipefs --offset 0x{:x} {device}", s.offset));
            }
        }
        out
    }
}

/// Where blkid's superblock probes try a format: RAID members, then LVM2, LUKS, and the
/// filesystems in its order. The lower wins; RAID members, LVM2 and LUKS win outright,
/// two filesystems leave blkid undecided.
fn blkid_rank(s: &Signature) -> Option<u32> {
    Some(match s.kind {
        // blkid's MD probe tries 0.90 and 1.0 at the end before 1.1 and 1.2 at the start.
        "linux_raid_member" => match s.detail.as_str() {
            d if d.starts_with("MD superblock 0.90") => 0,
            d if d.starts_with("MD superblock 1.0") => 1,
            d if d.starts_with("MD superblock 1.1") => 2,
            _ => 3,
        },
        "ddf_raid_member" => 10,
        "isw_raid_member" => 11,
        "LVM2_member" => 20,
        "crypto_LUKS" => 30,
        "vfat" => 40,
        "swap" => 41,
        "xfs" => 42,
        "ext4" => 43,
        "ext3" => 44,
        "ext2" => 45,
        "jbd" => 46,
        "ntfs" => 47,
        "btrfs" => 48,
        "exfat" => 49,
        _ => return None,
    })
}

/// Formats whose first find ends blkid's superblock probing (its RAID and crypto usage).
fn wins_outright(kind: &str) -> bool {
    matches!(
        kind,
        "linux_raid_member" | "ddf_raid_member" | "isw_raid_member" | "LVM2_member" | "crypto_LUKS"
    )
}

fn is_raid_member(kind: &str) -> bool {
    matches!(
        kind,
        "linux_raid_member" | "ddf_raid_member" | "isw_raid_member" | "LVM2_member"
    )
}

/// One format's key: its kind, and for MD each superblock version on its own (two
/// versions are two arrays).
fn format_key(s: &Signature) -> String {
    if s.kind == "linux_raid_member" {
        s.detail.clone()
    } else {
        s.kind.to_string()
    }
}

/// What `found` (all the signatures on one device, from [`probe`]) comes to when it holds
/// more than one format. `covered` says whether a byte offset lies inside a partition of
/// the device's partition table: an MD superblock at the end inside a partition belongs to
/// that partition, and blkid passes over it on the whole disk.
pub fn decide(found: &[Signature], covered: &dyn Fn(u64) -> bool) -> Option<Conflict> {
    let mut groups: Vec<Vec<Signature>> = Vec::new();
    let md_at_end = |s: &Signature| {
        s.kind == "linux_raid_member"
            && (s.detail.starts_with("MD superblock 0.90")
                || s.detail.starts_with("MD superblock 1.0"))
    };
    for s in found {
        if md_at_end(s) && covered(s.offset) {
            continue;
        }
        match groups
            .iter_mut()
            .find(|g| format_key(&g[0]) == format_key(s))
        {
            Some(g) => g.push(s.clone()),
            None => groups.push(vec![s.clone()]),
        }
    }
    if groups.len() < 2 {
        return None;
    }
    let mut superblocks: Vec<Vec<Signature>> = Vec::new();
    let mut tables: Vec<Vec<Signature>> = Vec::new();
    for g in groups {
        if blkid_rank(&g[0]).is_some() {
            superblocks.push(g);
        } else {
            tables.push(g);
        }
    }
    superblocks.sort_by_key(|g| blkid_rank(&g[0]));
    let names = |gs: &[Vec<Signature>]| {
        gs.iter()
            .map(|g| format_name(&g[0]))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    let Some(first) = superblocks.first() else {
        // Only partition tables (a GPT and a DOS table both): blkid takes the GPT.
        tables.sort_by_key(|g| g[0].kind != "gpt");
        let taken = tables.remove(0);
        let why = format!(
            "blkid takes {} over {}, whose sector it passes over",
            format_name(&taken[0]),
            names(&tables)
        );
        return Some(Conflict {
            taken,
            others: tables,
            why,
        });
    };
    let kind = first[0].kind;
    if !wins_outright(kind) && superblocks.len() > 1 {
        // Two filesystems: blkid names neither ("ambivalent result"), nor does tessera.
        let why = format!(
            "{} each claim the device and blkid -p refuses to choose (ambivalent \
             result) until the stale one is cleared",
            names(&superblocks)
        );
        let mut others = superblocks;
        others.extend(tables);
        return Some(Conflict {
            taken: Vec::new(),
            others,
            why,
        });
    }
    let mut why = Vec::new();
    let blkid_pick = format_name(&superblocks[0][0]);
    let md_ddf_imsm = |k: &str| k != "LVM2_member" && is_raid_member(k);
    // mdadm (guess_super) loads 0.90, 1.x, DDF, IMSM in that order and keeps the first
    // unless a later one has a strictly newer creation time.
    let mut pick = 0;
    if md_ddf_imsm(kind) {
        for (i, g) in superblocks.iter().enumerate() {
            if md_ddf_imsm(g[0].kind) && g[0].created > superblocks[pick][0].created {
                pick = i;
            }
        }
    }
    let taken = superblocks.remove(pick);
    if !superblocks.is_empty() {
        let rivals_raid = superblocks.iter().any(|g| md_ddf_imsm(g[0].kind));
        why.push(if md_ddf_imsm(kind) && rivals_raid {
            let mdadm = format!(
                "mdadm takes {}: of the RAID superblocks it keeps the first it reads (0.90, \
                 1.x, DDF, IMSM) unless a later one was created later (creation times {})",
                format_name(&taken[0]),
                std::iter::once(&taken)
                    .chain(superblocks.iter().filter(|g| md_ddf_imsm(g[0].kind)))
                    .map(|g| format!("{} {}", g[0].kind, g[0].created))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if pick == 0 {
                format!("{mdadm}; blkid -p also reports it, probing MD, DDF, IMSM in that order")
            } else {
                format!("{mdadm}; blkid -p reports {blkid_pick} instead (it probes MD, DDF, IMSM in that order)")
            }
        } else if is_raid_member(kind) || kind == "crypto_LUKS" {
            format!(
                "blkid probes RAID members, LVM2 and LUKS before filesystems and stops at \
                 the first, {}",
                format_name(&taken[0])
            )
        } else {
            format!(
                "blkid stops at {}, found before {}",
                format_name(&taken[0]),
                names(&superblocks)
            )
        });
    }
    if !tables.is_empty() {
        if is_raid_member(kind) {
            why.push(format!(
                "blkid ignores {} on a RAID or LVM member (a mirror shows its array's table)",
                names(&tables)
            ));
        } else {
            // The kernel reads the table and makes partitions whatever else is there, so
            // the table is what the device is used as.
            let table = tables.remove(0);
            let mut others = vec![taken];
            others.extend(superblocks);
            others.extend(tables);
            let why = format!(
                "blkid -p reports both, and the kernel makes the partitions of the table, \
             so {} on the whole device is stale or hidden by them",
                names(&others)
            );
            return Some(Conflict {
                taken: table,
                others,
                why,
            });
        }
    }
    let mut others = superblocks;
    others.extend(tables);
    Some(Conflict {
        taken,
        others,
        why: why.join("; "),
    })
}

/// A format named for a sentence: its blkid name and what distinguishes it.
pub fn format_name(s: &Signature) -> String {
    let what = s.detail.split(',').next().unwrap_or_default().trim();
    if what.is_empty() {
        s.kind.to_string()
    } else {
        format!("{} ({what})", s.kind)
    }
}

/// The conflict on `dev`, if it holds more than one format; `covered` as for [`decide`].
pub fn conflict(
    dev: &dyn BlockDevice,
    covered: &dyn Fn(u64) -> bool,
) -> Result<Option<Conflict>, BlockError> {
    Ok(decide(&probe(dev)?, covered))
}

/// Records a signature; its detail is `what` followed by the label and UUID when known.
fn push(
    found: &mut Vec<Signature>,
    kind: &'static str,
    offset: u64,
    what: String,
    label: String,
    uuid: String,
) {
    let mut parts = Vec::new();
    if !what.is_empty() {
        parts.push(what);
    }
    if !label.is_empty() {
        parts.push(format!("label '{label}'"));
    }
    if !uuid.is_empty() {
        parts.push(format!("uuid {uuid}"));
    }
    found.push(Signature {
        kind,
        offset,
        detail: parts.join(", "),
        uuid,
        label,
        created: 0,
    });
}

/// Sets the creation time of the signature just pushed.
fn set_created(found: &mut [Signature], created: u32) {
    if let Some(s) = found.last_mut() {
        s.created = created;
    }
}

/// A 16-byte binary UUID as 8-4-4-4-12 lowercase hex, or "" when it is all zeroes (blkid
/// reports no UUID then).
fn uuid_text(b: &[u8]) -> String {
    if b.iter().all(|&c| c == 0) {
        return String::new();
    }
    let hex: String = b.iter().map(|c| format!("{c:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A label in one of the first four sectors.
fn lvm2(dev: &dyn BlockDevice, found: &mut Vec<Signature>) -> Result<(), BlockError> {
    for sector in 0..4u64 {
        if let Some(b) = read::<32>(dev, sector * 512)? {
            if &b[0..8] == b"LABELONE" {
                let detail = format!("label type '{}'", name_field(&b[24..32]));
                push(
                    found,
                    "LVM2_member",
                    sector * 512,
                    detail,
                    String::new(),
                    String::new(),
                );
            }
        }
    }
    Ok(())
}

/// LUKS: the UUID is text at 168 in both versions; LUKS2 adds a label at 24.
fn luks_names(b: &[u8; 208], version: u16) -> (String, String) {
    let label = if version == 2 {
        name_field(&b[24..72])
    } else {
        String::new()
    };
    (label, name_field(&b[168..208]))
}

fn luks_and_xfs(dev: &dyn BlockDevice, found: &mut Vec<Signature>) -> Result<(), BlockError> {
    if let Some(b) = read::<208>(dev, 0)? {
        if &b[0..6] == b"LUKS\xba\xbe" {
            let version = u16::from_be_bytes([b[6], b[7]]);
            let (label, uuid) = luks_names(&b, version);
            push(
                found,
                "crypto_LUKS",
                0,
                format!("LUKS{version}"),
                label,
                uuid,
            );
        }
        // The superblock: UUID at 32, 12-byte label at 108.
        if &b[0..4] == b"XFSB" {
            let (label, uuid) = (name_field(&b[108..120]), uuid_text(&b[32..48]));
            push(found, "xfs", 0, String::new(), label, uuid);
        }
    } else if let Some(b) = read::<8>(dev, 0)? {
        // Too small for the names, but the magic alone is still a signature.
        if &b[0..6] == b"LUKS\xba\xbe" {
            let version = u16::from_be_bytes([b[6], b[7]]);
            push(
                found,
                "crypto_LUKS",
                0,
                format!("LUKS{version}"),
                String::new(),
                String::new(),
            );
        }
        if &b[0..4] == b"XFSB" {
            push(found, "xfs", 0, String::new(), String::new(), String::new());
        }
    }
    // blkid finds LUKS2 by its second header too, so that must go as well.
    for at in LUKS2_SECONDARY {
        if let Some(b) = read::<208>(dev, at)? {
            if &b[0..6] == b"SKUL\xba\xbe" && b[6..8] == [0, 2] {
                let (label, uuid) = luks_names(&b, 2);
                push(
                    found,
                    "crypto_LUKS",
                    at,
                    "LUKS2 secondary header".into(),
                    label,
                    uuid,
                );
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
            // ctime: a 32-bit word at 24 in 0.90 (in the superblock's byte order), the
            // low 40 bits of a 64-bit field at 64 in 1.x.
            let ctime_at = if major == 0 { 24 } else { 64 };
            let be = major == 0
                && u32::from_be_bytes([b[0], b[1], b[2], b[3]]) == MD_MAGIC
                && b[4..8] == [0; 4];
            if le || be {
                push(
                    found,
                    "linux_raid_member",
                    at,
                    format!("MD superblock {version}"),
                    String::new(),
                    String::new(),
                );
                if let Some(t) = read::<4>(dev, at + ctime_at)? {
                    let created = if be {
                        u32::from_be_bytes(t)
                    } else {
                        u32::from_le_bytes(t)
                    };
                    set_created(found, created);
                }
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
    let (label, uuid) = (name_field(&sb[120..136]), uuid_text(&sb[104..120]));
    push(found, kind, 1080, String::new(), label, uuid);
    Ok(())
}

/// btrfs: the superblock at 64 KiB, magic at its byte 64, fsid at 32, label at 299 (256).
/// swap: magic at the end of the first page; a version-1 header (SWAPSPACE2) keeps its
/// UUID at 1024+12 and its label at 1024+28 (16).
fn btrfs_and_swap(dev: &dyn BlockDevice, found: &mut Vec<Signature>) -> Result<(), BlockError> {
    if let Some(b) = read::<72>(dev, 65536)? {
        if &b[64..72] == b"_BHRfS_M" {
            let (label, uuid) = match read::<555>(dev, 65536)? {
                Some(sb) => (name_field(&sb[299..555]), uuid_text(&sb[32..48])),
                None => (String::new(), String::new()),
            };
            push(found, "btrfs", 65536 + 64, String::new(), label, uuid);
        }
    }
    for page in SWAP_PAGES {
        if let Some(b) = read::<10>(dev, page - 10)? {
            if &b == b"SWAPSPACE2" || &b == b"SWAP-SPACE" {
                let (label, uuid) = match read::<44>(dev, 1024)? {
                    Some(h) if &b == b"SWAPSPACE2" => {
                        (name_field(&h[28..44]), uuid_text(&h[12..28]))
                    }
                    _ => (String::new(), String::new()),
                };
                push(
                    found,
                    "swap",
                    page - 10,
                    format!("{} KiB pages", page >> 10),
                    label,
                    uuid,
                );
            }
        }
    }
    Ok(())
}

/// FAT12/16/32, NTFS and exFAT in sector 0, by blkid's own checks (see
/// [`bootsector`]), so a partition table is not taken for one and the reverse.
fn boot_filesystems(dev: &dyn BlockDevice, found: &mut Vec<Signature>) -> Result<(), BlockError> {
    let Some(fs) = bootsector::probe(&DeviceBytes(dev)) else {
        return Ok(());
    };
    let mut what = fs.version.clone();
    if !fs.boot_label.is_empty() && fs.boot_label != fs.label {
        if !what.is_empty() {
            what.push_str(", ");
        }
        what.push_str(&format!("boot sector label '{}'", fs.boot_label));
    }
    push(found, fs.kind, fs.magic_offset, what, fs.label, fs.uuid);
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
                    push(
                        found,
                        "gpt",
                        at,
                        detail.into(),
                        String::new(),
                        String::new(),
                    );
                    gpt = true;
                }
            }
        }
    }
    let Some(mbr) = read::<512>(dev, 0)? else {
        return Ok(());
    };
    if mbr[510..512] != [0x55, 0xaa] || gpt || mbr[..4] == [0xc9, 0xc2, 0xd4, 0xc1] {
        return Ok(());
    }
    // blkid's DOS probe: every boot flag 0 or 0x80, a protective entry is GPT's, and the
    // boot sector of a FAT, exFAT or NTFS filesystem also ends in 0x55AA.
    let entries: Vec<&[u8]> = mbr[446..510].chunks_exact(16).collect();
    if !entries.iter().all(|e| e[0] == 0 || e[0] == 0x80) {
        return Ok(());
    }
    let protective = entries.iter().any(|e| e[4] == 0xee);
    if !protective && bootsector::not_a_partition_table(&DeviceBytes(dev)).is_some() {
        return Ok(());
    }
    let used = entries.iter().filter(|e| u32_le(e, 12) != 0).count();
    // An MBR without partitions on a PV is boot code for booting from LVM, not a table.
    if used == 0 && found.iter().any(|s| s.kind == "LVM2_member") {
        return Ok(());
    }
    let (kind, detail) = if protective {
        ("gpt", "protective MBR".to_string())
    } else {
        ("dos", format!("{used} partition(s)"))
    };
    push(found, kind, 510, detail, String::new(), String::new());
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
        // 0x55AA without partitions is an empty DOS table (blkid's PTTYPE=dos); with a bad
        // boot flag, or on a FAT boot sector, it is no table.
        assert_eq!(kinds(&mbr(&[], &[])), vec![("dos", 510)]);
        assert!(kinds(&mbr(&[(0x80, 0x83, 100), (0x12, 0, 0)], &[])).is_empty());
        // A filesystem's name without a boot sector whose numbers add up does not hide
        // the table (blkid checks the BPB, not the name).
        for (at, name) in [(82, b"FAT32   "), (3, b"NTFS    "), (3, b"EXFAT   ")] {
            let d = mbr(&[(0, 0x83, 100)], &[(at, name)]);
            assert_eq!(kinds(&d), vec![("dos", 510)], "{at}");
        }
        // A GPT disk reports its header, not its protective MBR as well.
        let d = mbr(&[(0, 0xee, u32::MAX)], &[]);
        d.write_at(b"EFI PART", 512).unwrap();
        assert_eq!(kinds(&d), vec![("gpt", 512)]);
    }

    const UUID: [u8; 16] = [
        0x4e, 0xd4, 0x22, 0xfe, 0x88, 0x17, 0x41, 0xe9, 0xad, 0x25, 0x67, 0x86, 0x6c, 0xff, 0xbe,
        0x8e,
    ];
    const UUID_TEXT: &str = "4ed422fe-8817-41e9-ad25-67866cffbe8e";

    fn only(d: &MemoryDevice) -> Signature {
        let mut found = probe(d).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        found.remove(0)
    }

    fn names(s: &Signature) -> (&'static str, &str, &str) {
        (s.kind, s.label.as_str(), s.uuid.as_str())
    }

    #[test]
    fn filesystem_labels_and_uuids() {
        let mut sb = [0u8; 256];
        sb[56..58].copy_from_slice(&0xef53u16.to_le_bytes());
        sb[96] = 0x40; // incompat EXTENTS
        sb[104..120].copy_from_slice(&UUID);
        sb[120..126].copy_from_slice(b"rootfs");
        let ext = only(&with(1024, &sb));
        assert_eq!(names(&ext), ("ext4", "rootfs", UUID_TEXT));
        assert_eq!(
            ext.to_string(),
            format!("an ext4 signature at byte 1080 (label 'rootfs', uuid {UUID_TEXT})")
        );

        let mut xfs = [0u8; 120];
        xfs[..4].copy_from_slice(b"XFSB");
        xfs[32..48].copy_from_slice(&UUID);
        xfs[108..114].copy_from_slice(b"xlabel");
        assert_eq!(names(&only(&with(0, &xfs))), ("xfs", "xlabel", UUID_TEXT));

        let mut btrfs = vec![0u8; 555];
        btrfs[32..48].copy_from_slice(&UUID);
        btrfs[64..72].copy_from_slice(b"_BHRfS_M");
        btrfs[299..305].copy_from_slice(b"blabel");
        let found = only(&with(65536, &btrfs));
        assert_eq!(names(&found), ("btrfs", "blabel", UUID_TEXT));
        assert_eq!(found.offset, 65600);

        let d = with(4086, b"SWAPSPACE2");
        let mut header = [0u8; 44];
        header[12..28].copy_from_slice(&UUID);
        header[28..34].copy_from_slice(b"swappy");
        d.write_at(&header, 1024).unwrap();
        let swap = only(&d);
        assert_eq!(names(&swap), ("swap", "swappy", UUID_TEXT));
        assert_eq!(
            swap.detail,
            format!("4 KiB pages, label 'swappy', uuid {UUID_TEXT}")
        );
        // The old format has no names; the same bytes there are not read as them.
        d.write_at(b"SWAP-SPACE", 4086).unwrap();
        assert_eq!(names(&only(&d)), ("swap", "", ""));

        // An all-zero UUID is no UUID.
        let mut xfs = [0u8; 120];
        xfs[..4].copy_from_slice(b"XFSB");
        assert_eq!(names(&only(&with(0, &xfs))), ("xfs", "", ""));
    }

    #[test]
    fn luks_labels_and_uuids() {
        let uuid = b"68d218ce-6030-4ff2-874d-2023f458592d";
        let mut h = [0u8; 208];
        h[..8].copy_from_slice(b"LUKS\xba\xbe\x00\x02");
        h[24..29].copy_from_slice(b"vault");
        h[168..204].copy_from_slice(uuid);
        let d = with(0, &h);
        h[..4].copy_from_slice(b"SKUL");
        d.write_at(&h, 0x4000).unwrap();
        let found = probe(&d).unwrap();
        assert_eq!(found.len(), 2);
        for s in &found {
            assert_eq!(
                names(s),
                (
                    "crypto_LUKS",
                    "vault",
                    "68d218ce-6030-4ff2-874d-2023f458592d"
                )
            );
        }
        assert_eq!(
            found[0].detail,
            "LUKS2, label 'vault', uuid 68d218ce-6030-4ff2-874d-2023f458592d"
        );
        // LUKS1 has no label: bytes 24.. are its cipher name.
        let mut h = [0u8; 208];
        h[..8].copy_from_slice(b"LUKS\xba\xbe\x00\x01");
        h[8..11].copy_from_slice(b"aes");
        h[168..204].copy_from_slice(uuid);
        assert_eq!(names(&only(&with(0, &h))).1, "");
    }

    /// A boot sector as mkfs.fat writes it for `sectors` sectors of 512 bytes.
    fn fat_boot_sector(fat32: bool, sectors: u32, fat_sectors: u16, label: &[u8]) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..3].copy_from_slice(&[0xeb, 0x3c, 0x90]);
        b[3..11].copy_from_slice(b"mkfs.fat");
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 4;
        b[14..16].copy_from_slice(&(if fat32 { 32u16 } else { 4 }).to_le_bytes());
        b[16] = 2;
        b[21] = 0xf8;
        if sectors < 65536 {
            b[19..21].copy_from_slice(&(sectors as u16).to_le_bytes());
        } else {
            b[32..36].copy_from_slice(&sectors.to_le_bytes());
        }
        let ebr = if fat32 {
            b[36..40].copy_from_slice(&u32::from(fat_sectors).to_le_bytes());
            b[82..90].copy_from_slice(b"FAT32   ");
            64
        } else {
            b[17..19].copy_from_slice(&512u16.to_le_bytes());
            b[22..24].copy_from_slice(&fat_sectors.to_le_bytes());
            b[54..62].copy_from_slice(if sectors / 4 < 4085 {
                b"FAT12   "
            } else {
                b"FAT16   "
            });
            36
        };
        b[ebr + 2] = 0x29;
        b[ebr + 3..ebr + 7].copy_from_slice(&0xf03a_b858u32.to_le_bytes());
        b[ebr + 7..ebr + 18].copy_from_slice(label);
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    #[test]
    fn vfat_boot_sectors() {
        // blkid's LABEL is the root directory's label entry (none here); the boot
        // sector's own label is its LABEL_FATBOOT, kept in the detail.
        let cases = [
            (
                fat_boot_sector(false, 8192, 12, b"NO NAME    "),
                54,
                "FAT12, uuid F03A-B858",
            ),
            (
                fat_boot_sector(false, 200000, 200, b"BOOTPART   "),
                54,
                "FAT16, boot sector label 'BOOTPART', uuid F03A-B858",
            ),
            (
                fat_boot_sector(true, 614400, 1200, b"EFI        "),
                82,
                "FAT32, boot sector label 'EFI', uuid F03A-B858",
            ),
        ];
        for (bs, offset, detail) in cases {
            let s = only(&with(0, &bs));
            assert_eq!(names(&s), ("vfat", "", "F03A-B858"), "{detail}");
            assert_eq!((s.offset, s.detail.as_str()), (offset, detail));
        }
        // No type name but a jump at byte 0 and a BPB whose numbers add up: still FAT (16
        // by its cluster count), found by that jump.
        let mut bs = fat_boot_sector(false, 200000, 200, b"NO NAME    ");
        bs[54..62].fill(b' ');
        let s = only(&with(0, &bs));
        assert_eq!(
            (s.kind, s.offset, s.detail.as_str()),
            ("vfat", 0, "FAT16, uuid F03A-B858")
        );
        // FAT32 without the extended boot record: blkid still reads the serial there, but
        // no boot sector label.
        let mut bs = fat_boot_sector(true, 614400, 1200, b"EFI        ");
        bs[66] = 0;
        let s = only(&with(0, &bs));
        assert_eq!(
            (names(&s), s.detail.as_str()),
            (("vfat", "", "F03A-B858"), "FAT32, uuid F03A-B858")
        );
        // FAT16 without it: neither serial nor label.
        let mut bs = fat_boot_sector(false, 200000, 200, b"BOOTPART   ");
        bs[38] = 0;
        assert_eq!(names(&only(&with(0, &bs))), ("vfat", "", ""));
        // A FAT name on a sector whose BPB is nonsense is not a filesystem, and with
        // partition entries all zero it is an empty DOS table, as blkid says.
        for (at, value) in [(11, 100u8), (13, 3), (16, 0), (21, 0x12)] {
            let mut bs = fat_boot_sector(false, 200000, 200, b"X          ");
            bs[at] = value;
            if at == 11 {
                bs[12] = 0;
            }
            assert_eq!(kinds(&with(0, &bs)), vec![("dos", 510)], "byte {at}");
        }
        // Too many clusters for FAT16: blkid rejects it.
        let bs = fat_boot_sector(false, 614400, 600, b"X          ");
        assert_eq!(kinds(&with(0, &bs)), vec![("dos", 510)]);
        // A DOS partition table with a FAT-looking OEM name stays a partition table when
        // its BPB is not sane.
        let d = mbr(&[(0x80, 0x83, 100)], &[(3, b"MSDOS5.0")]);
        assert_eq!(kinds(&d), vec![("dos", 510)]);
        // An empty MBR on a PV is boot code for booting from LVM, not a table.
        let d = mbr(&[], &[]);
        d.write_at(b"LABELONE", 512).unwrap();
        assert_eq!(kinds(&d), vec![("LVM2_member", 512)]);
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

#[cfg(test)]
mod conflict_tests {
    use super::*;

    fn sig(kind: &'static str, offset: u64, detail: &str, created: u32) -> Signature {
        Signature {
            kind,
            offset,
            detail: detail.into(),
            uuid: String::new(),
            label: String::new(),
            created,
        }
    }

    const NOWHERE: &dyn Fn(u64) -> bool = &|_| false;

    #[test]
    fn raid_superblocks_are_decided_as_mdadm_decides() {
        let md = sig(
            "linux_raid_member",
            4096,
            "MD superblock 1.2",
            1_700_000_000,
        );
        let imsm = sig("isw_raid_member", 1 << 30, "IMSM 1.3.00", 1_800_000_000);
        // A newer IMSM creation time: mdadm takes IMSM, blkid MD; the reason says both.
        let c = decide(&[md.clone(), imsm.clone()], NOWHERE).unwrap();
        assert_eq!(c.taken_kind(), Some("isw_raid_member"));
        assert!(
            c.why.contains("blkid -p reports linux_raid_member"),
            "{}",
            c.why
        );
        assert_eq!(c.clear_commands("d"), ["wipefs --offset 0x1000 d"]);
        // An older one (or none, as older mdadm writes it): MD, as blkid too.
        let old = sig("isw_raid_member", 1 << 30, "IMSM 1.3.00", 0);
        let c = decide(&[md.clone(), old], NOWHERE).unwrap();
        assert_eq!(c.taken_kind(), Some("linux_raid_member"));
        assert!(c.why.contains("blkid -p also reports it"), "{}", c.why);
        // One format alone, or the same format twice, is no conflict.
        assert!(decide(std::slice::from_ref(&md), NOWHERE).is_none());
        let luks = sig("crypto_LUKS", 0, "LUKS2", 0);
        let luks2 = sig("crypto_LUKS", 0x4000, "LUKS2 secondary header", 0);
        assert!(decide(&[luks, luks2], NOWHERE).is_none());
    }

    #[test]
    fn tables_filesystems_and_members() {
        let dos = sig("dos", 510, "1 partition(s)", 0);
        let ext4 = sig("ext4", 1080, "", 0);
        let vfat = sig("vfat", 82, "FAT32", 0);
        // A table and a filesystem: the table, as the kernel reads it.
        let c = decide(&[ext4.clone(), dos.clone()], NOWHERE).unwrap();
        assert_eq!(c.taken_kind(), Some("dos"));
        // Two filesystems: none.
        let c = decide(&[ext4.clone(), vfat], NOWHERE).unwrap();
        assert_eq!(c.taken_kind(), None);
        assert_eq!(c.others.len(), 2);
        // An MD 0.90 member at the end of a whole disk: the member, the table inside it
        // is its array's; unless a partition holds that superblock.
        let md = sig("linux_raid_member", 1 << 20, "MD superblock 0.90", 5);
        let c = decide(&[md.clone(), dos.clone()], NOWHERE).unwrap();
        assert_eq!(c.taken_kind(), Some("linux_raid_member"));
        assert!(c.in_data_area());
        let inside = |at: u64| (2048 * 512..4 << 20).contains(&at);
        assert!(decide(&[md, dos], &inside).is_none());
        // LUKS wins over a filesystem.
        let luks = sig("crypto_LUKS", 0, "LUKS1", 0);
        let c = decide(&[luks, ext4], NOWHERE).unwrap();
        assert_eq!(c.taken_kind(), Some("crypto_LUKS"));
        assert!(!c.in_data_area());
    }
}
