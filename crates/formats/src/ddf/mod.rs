//! SNIA DDF (Common RAID Disk Data Format) containers, as mdadm's external metadata
//! (`mdadm -e ddf`) and hardware RAID controllers write them.
//!
//! A DDF disk carries its metadata at its end: the anchor header in the last sector
//! points at a primary and a secondary copy of the header, each followed by its sections
//! (controller data, physical disk records, virtual disk records, configuration records,
//! this disk's own data). [`probe`] reads one disk's metadata with every CRC checked,
//! choosing between the two copies as mdadm does; [`container`] joins the disks of one
//! container (same header GUID) into their virtual disks, the newest records winning.
//! The records themselves are in [`records`], each able to encode itself back.

pub mod container;
pub mod records;

use thiserror::Error;

use tessera_block::{BlockDevice, BlockError};

pub use container::{assemble, Container, Health, Slot, Subarray};
use records::*;
pub use records::{
    Controller, DiskData, Guid, Header, HeaderType, PhysEntry, PhysRecords, VdConfig, VirtEntry,
    VirtRecords,
};

/// blkid's name for a DDF member.
pub const BLKID_TYPE: &str = "ddf_raid_member";
/// The revisions tessera reads: SNIA DDF 1.0 and 1.2 (mdadm writes 01.02.00), and 2.0,
/// whose header and records keep the same layout.
pub const REVISIONS: [&str; 3] = ["01.00.00", "01.02.00", "02.00.00"];
/// How far from the end vendor variants (LSI, PERC) put their anchor, as mdadm searches.
pub const SEARCH_BYTES: u64 = 32 << 20;
/// The largest section tessera reads (sectors): far above what any writer uses, low
/// enough that a damaged length cannot make it allocate much.
const MAX_SECTION_SECTORS: u32 = 16384;

#[derive(Debug, Error)]
pub enum DdfError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("{device}: DDF anchor at sector {lba} has a bad CRC (stored {stored:#010x}, computed {computed:#010x})")]
    AnchorCrc {
        device: String,
        lba: u64,
        stored: u32,
        computed: u32,
    },
    #[error("{device}: the first DDF header magic in the last 32 MiB is at byte {offset}, not at a sector boundary: no header can start there")]
    Misaligned { device: String, offset: u64 },
    #[error("{device}: DDF revision {revision:?} is not one tessera reads (01.00.00, 01.02.00, 02.00.00)")]
    Revision { device: String, revision: String },
    #[error("{device}: no usable DDF header: primary: {primary}; secondary: {secondary}")]
    NoHeader {
        device: String,
        primary: String,
        secondary: String,
    },
    #[error("{device}: DDF {header} header at sector {lba}: {which}: {problem}")]
    Section {
        device: String,
        header: HeaderType,
        lba: u64,
        which: &'static str,
        problem: String,
    },
}

/// One disk's DDF metadata, as read and checked.
#[derive(Debug, Clone)]
pub struct DdfMetadata {
    /// The device it was read from, for messages.
    pub device: String,
    /// The sector holding the anchor (the last one, unless found by the vendor search).
    pub anchor_lba: u64,
    pub anchor: Header,
    pub primary: Option<Header>,
    pub secondary: Option<Header>,
    /// Which copy the sections below were read from.
    pub active: HeaderType,
    pub controller: Option<Controller>,
    pub phys: PhysRecords,
    pub virt: VirtRecords,
    /// The virtual disk configuration records on this disk (valid CRC), in record order.
    pub configs: Vec<VdConfig>,
    /// Whether a spare assignment record is present (this disk is a dedicated spare).
    pub spare_assignment: bool,
    /// The configuration section's other records (spare assignment, vendor-unique), by
    /// place, kept as read so that writing the section back keeps them.
    pub other_records: Vec<(usize, Vec<u8>)>,
    pub disk: DiskData,
    /// What is wrong but does not stop the metadata being used, one sentence each naming
    /// the device (a damaged copy, a configuration record with a bad CRC).
    pub warnings: Vec<String>,
}

impl DdfMetadata {
    /// The header the sections were read from.
    pub fn header(&self) -> &Header {
        match self.active {
            HeaderType::Secondary => self.secondary.as_ref().unwrap_or(&self.anchor),
            _ => self.primary.as_ref().unwrap_or(&self.anchor),
        }
    }
    /// The sequence number of the copy in use: higher is newer.
    pub fn seq(&self) -> u32 {
        self.header().seq
    }
    /// The container this disk belongs to.
    pub fn container_guid(&self) -> Guid {
        self.anchor.guid
    }
    /// This disk's entry in the physical disk records.
    pub fn own_entry(&self) -> Option<&PhysEntry> {
        self.phys.by_refnum(self.disk.refnum)
    }
}

fn read(dev: &dyn BlockDevice, offset: u64, len: usize) -> Result<Vec<u8>, BlockError> {
    let mut buf = vec![0u8; len];
    dev.read_at(&mut buf, offset)?;
    Ok(buf)
}

/// Reads the DDF metadata of `dev` from its anchor in the last sector: None when there
/// is no anchor magic there; an error naming the device and the record when what is
/// there cannot be used.
pub fn probe(dev: &dyn BlockDevice) -> Result<Option<DdfMetadata>, DdfError> {
    let size = dev.size_bytes();
    if size < 2 * SECTOR as u64 {
        return Ok(None);
    }
    let lba = size / SECTOR as u64 - 1;
    let anchor = read(dev, lba * SECTOR as u64, SECTOR)?;
    if be32(&anchor, 0) != HEADER_MAGIC {
        return Ok(None);
    }
    read_from_anchor(dev, lba, &anchor).map(Some)
}

/// As [`probe`], and when the last sector holds no header magic, searches the last 32 MiB
/// as mdadm does for controllers (LSI, PERC) that put the anchor elsewhere (its
/// `search_for_ddf_headers`, enabled by `PROBING ddf_extended` in mdadm.conf): the first
/// place, in 4-byte steps from 32 MiB before the end, holding the header magic. That
/// header is taken as the anchor whichever type it is (mdadm follows the primary and
/// secondary LBAs of any copy) and must pass its CRC: mdadm does not search past a damaged
/// one, nor devices of 32 MiB or less. This reads 32 MiB of every device without DDF, so
/// callers ask for it.
pub fn probe_extended(dev: &dyn BlockDevice) -> Result<Option<DdfMetadata>, DdfError> {
    if let Some(m) = probe(dev)? {
        return Ok(Some(m));
    }
    let Some(offset) = find_header_magic(dev)? else {
        return Ok(None);
    };
    if offset % SECTOR as u64 != 0 {
        return Err(DdfError::Misaligned {
            device: dev.name().to_string(),
            offset,
        });
    }
    let header = read(dev, offset, SECTOR)?;
    read_from_anchor(dev, offset / SECTOR as u64, &header).map(Some)
}

/// The byte offset of the first DDF header magic in the last [`SEARCH_BYTES`] of `dev`,
/// looked for at every 4-byte step from the start of that region, as mdadm looks.
fn find_header_magic(dev: &dyn BlockDevice) -> Result<Option<u64>, BlockError> {
    let size = dev.size_bytes() / SECTOR as u64 * SECTOR as u64;
    if size <= SEARCH_BYTES {
        return Ok(None);
    }
    let start = size - SEARCH_BYTES;
    // A multiple of 4, so that no 4-byte step straddles two windows.
    const WINDOW: u64 = 1 << 20;
    let magic = HEADER_MAGIC.to_be_bytes();
    let mut at = start;
    while at < size {
        let len = WINDOW.min(size - at) as usize;
        let buf = read(dev, at, len)?;
        if let Some(i) = buf.chunks_exact(4).position(|word| word == magic) {
            return Ok(Some(at + 4 * i as u64));
        }
        at += len as u64;
    }
    Ok(None)
}

/// Reads the metadata an anchor (the sector at `lba`, already read) points at.
pub fn read_from_anchor(
    dev: &dyn BlockDevice,
    lba: u64,
    anchor_bytes: &[u8],
) -> Result<DdfMetadata, DdfError> {
    let device = dev.name().to_string();
    if let Some((stored, computed)) = crc_mismatch(anchor_bytes) {
        return Err(DdfError::AnchorCrc {
            device,
            lba,
            stored,
            computed,
        });
    }
    let anchor = Header::decode(anchor_bytes);
    if !REVISIONS.contains(&anchor.revision.as_str()) {
        return Err(DdfError::Revision {
            device,
            revision: anchor.revision.clone(),
        });
    }
    let mut warnings = Vec::new();
    if anchor.header_type != HeaderType::Anchor {
        warnings.push(format!(
            "{device}: the DDF anchor at sector {lba} says it is a {} header",
            anchor.header_type
        ));
    }
    let size_sectors = dev.size_bytes() / SECTOR as u64;
    let primary = load_header(
        dev,
        &anchor,
        anchor.primary_lba,
        HeaderType::Primary,
        size_sectors,
    );
    let secondary = load_header(
        dev,
        &anchor,
        anchor.secondary_lba,
        HeaderType::Secondary,
        size_sectors,
    );
    // mdadm's choice: the primary, unless the secondary is newer and closed, or as new
    // and the primary was left open (a write cut short).
    let use_secondary = match (&primary, &secondary) {
        (Err(_), Ok(_)) => true,
        (Ok(p), Ok(s)) => {
            (p.seq < s.seq && s.open_flag == 0)
                || (p.seq == s.seq && p.open_flag != 0 && s.open_flag == 0)
        }
        _ => false,
    };
    let (first, second) = if use_secondary {
        (HeaderType::Secondary, HeaderType::Primary)
    } else {
        (HeaderType::Primary, HeaderType::Secondary)
    };
    let pick = |t: HeaderType| match t {
        HeaderType::Secondary => &secondary,
        _ => &primary,
    };
    let (primary_ok, secondary_ok) = (primary.as_ref().ok(), secondary.as_ref().ok());
    if primary_ok.is_none() && secondary_ok.is_none() {
        let why = |r: &Result<Header, String>| r.as_ref().err().cloned().unwrap_or_default();
        return Err(DdfError::NoHeader {
            device,
            primary: why(&primary),
            secondary: why(&secondary),
        });
    }
    for (t, r) in [
        (HeaderType::Primary, &primary),
        (HeaderType::Secondary, &secondary),
    ] {
        if let Err(e) = r {
            // An anchor with no secondary (all ones) is allowed.
            if !(t == HeaderType::Secondary && anchor.secondary_lba == UNSET64) {
                warnings.push(format!("{device}: DDF {t} header unusable: {e}"));
            }
        }
    }
    if let (Some(p), Some(s)) = (primary_ok, secondary_ok) {
        if p.seq != s.seq {
            warnings.push(format!(
                "{device}: DDF primary header is at sequence {}, the secondary at {}: using the {first}",
                p.seq, s.seq
            ));
        }
    }
    // The chosen copy's sections; the other copy's when the chosen one's are damaged.
    let mut sections = Err(String::new());
    let mut errors: Vec<DdfError> = Vec::new();
    for t in [first, second] {
        let Ok(h) = pick(t) else { continue };
        match load_sections(dev, h, t, size_sectors) {
            Ok(s) => {
                sections = Ok((t, s));
                break;
            }
            Err(e) => errors.push(e),
        }
    }
    let (active, mut s) = match sections {
        Ok(found) => found,
        Err(_) => return Err(errors.remove(0)),
    };
    for e in errors {
        warnings.push(format!("{e}; using the {active} copy"));
    }
    // The copy not used, when read too and just as new, should say the same.
    if let (Some(p), Some(sd)) = (primary_ok, secondary_ok) {
        if p.seq == sd.seq {
            let other_t = if active == HeaderType::Primary {
                HeaderType::Secondary
            } else {
                HeaderType::Primary
            };
            if let Ok(Ok(other)) = pick(other_t)
                .as_ref()
                .map(|h| load_sections(dev, h, other_t, size_sectors))
            {
                let differ = if other.phys != s.phys {
                    Some("physical disk records")
                } else if other.virt != s.virt {
                    Some("virtual disk records")
                } else if other.configs != s.configs {
                    Some("configuration records")
                } else if other.disk != s.disk {
                    Some("disk data")
                } else {
                    None
                };
                if let Some(what) = differ {
                    warnings.push(format!(
                        "{device}: DDF primary and secondary copies disagree on the {what} at the same sequence number {}: using the {active}",
                        p.seq
                    ));
                }
            }
        }
    }
    warnings.append(&mut s.warnings);
    let (primary, secondary) = (primary.ok(), secondary.ok());
    Ok(DdfMetadata {
        device,
        anchor_lba: lba,
        anchor,
        primary,
        secondary,
        active,
        controller: s.controller,
        phys: s.phys,
        virt: s.virt,
        configs: s.configs,
        spare_assignment: s.spare_assignment,
        other_records: s.other_records,
        disk: s.disk,
        warnings,
    })
}

/// Reads and checks the primary or secondary header at `lba`: the reason when unusable.
fn load_header(
    dev: &dyn BlockDevice,
    anchor: &Header,
    lba: u64,
    kind: HeaderType,
    size_sectors: u64,
) -> Result<Header, String> {
    if lba == UNSET64 {
        return Err("the anchor records none".into());
    }
    if lba >= size_sectors.saturating_sub(1) {
        return Err(format!("sector {lba} lies past the device's end"));
    }
    let b = read(dev, lba * SECTOR as u64, SECTOR).map_err(|e| e.to_string())?;
    if be32(&b, 0) != HEADER_MAGIC {
        return Err(format!(
            "no header magic at sector {lba} (found {:#010x})",
            be32(&b, 0)
        ));
    }
    if let Some((stored, computed)) = crc_mismatch(&b) {
        return Err(format!(
            "bad CRC at sector {lba} (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let h = Header::decode(&b);
    if h.header_type != kind {
        return Err(format!(
            "sector {lba} holds a {} header, not a {kind} one",
            h.header_type
        ));
    }
    if let Some(what) = anchor.same_layout(&h) {
        return Err(format!(
            "its {what} differs from the anchor's (sector {lba})"
        ));
    }
    Ok(h)
}

struct Sections {
    controller: Option<Controller>,
    phys: PhysRecords,
    virt: VirtRecords,
    configs: Vec<VdConfig>,
    spare_assignment: bool,
    other_records: Vec<(usize, Vec<u8>)>,
    disk: DiskData,
    warnings: Vec<String>,
}

fn load_sections(
    dev: &dyn BlockDevice,
    h: &Header,
    kind: HeaderType,
    size_sectors: u64,
) -> Result<Sections, DdfError> {
    let device = dev.name().to_string();
    let base = if kind == HeaderType::Secondary {
        h.secondary_lba
    } else {
        h.primary_lba
    };
    let fail = |which: &'static str, problem: String| DdfError::Section {
        device: device.clone(),
        header: kind,
        lba: base,
        which,
        problem,
    };
    // One section's bytes, bounds checked; None when the header gives it no space.
    let section = |i: usize, min_sectors: u32| -> Result<Option<Vec<u8>>, DdfError> {
        let s = h.sections[i];
        let which = SECTION_NAMES[i];
        if s.len == 0 || s.len == UNSET32 || s.offset == UNSET32 {
            return Ok(None);
        }
        if s.len < min_sectors || s.len > MAX_SECTION_SECTORS {
            return Err(fail(which, format!("a length of {} sectors", s.len)));
        }
        let start = base.checked_add(u64::from(s.offset));
        match start.and_then(|st| st.checked_add(u64::from(s.len))) {
            Some(end) if end <= size_sectors => {}
            _ => {
                return Err(fail(
                    which,
                    format!(
                        "sectors {}+{} lie past the device's end ({size_sectors} sectors)",
                        s.offset, s.len
                    ),
                ))
            }
        }
        let at = (base + u64::from(s.offset)) * SECTOR as u64;
        Ok(Some(read(dev, at, s.len as usize * SECTOR)?))
    };
    let checked = |b: &[u8], magic: u32, which: &'static str| -> Result<(), DdfError> {
        if be32(b, 0) != magic {
            return Err(fail(
                which,
                format!("magic {:#010x}, expected {magic:#010x}", be32(b, 0)),
            ));
        }
        if let Some((stored, computed)) = crc_mismatch(b) {
            return Err(fail(
                which,
                format!("bad CRC (stored {stored:#010x}, computed {computed:#010x})"),
            ));
        }
        Ok(())
    };
    let mut warnings = Vec::new();
    // The controller data names the maker only: damage there is reported, not fatal.
    let controller = match section(0, 1) {
        Ok(Some(b)) => match checked(&b[..SECTOR], CONTROLLER_MAGIC, SECTION_NAMES[0]) {
            Ok(()) => Some(Controller::decode(&b)),
            Err(e) => {
                warnings.push(e.to_string());
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            warnings.push(e.to_string());
            None
        }
    };
    let phys_b = section(1, 1)?.ok_or_else(|| fail(SECTION_NAMES[1], "missing".into()))?;
    checked(&phys_b, PHYS_RECORDS_MAGIC, SECTION_NAMES[1])?;
    let phys = PhysRecords::decode(&phys_b).ok_or_else(|| {
        fail(
            SECTION_NAMES[1],
            format!("{} entries do not fit the section", be16(&phys_b, 10)),
        )
    })?;
    let virt_b = section(2, 1)?.ok_or_else(|| fail(SECTION_NAMES[2], "missing".into()))?;
    checked(&virt_b, VIRT_RECORDS_MAGIC, SECTION_NAMES[2])?;
    let virt = VirtRecords::decode(&virt_b).ok_or_else(|| {
        fail(
            SECTION_NAMES[2],
            format!("{} entries do not fit the section", be16(&virt_b, 10)),
        )
    })?;
    let disk_b = section(4, 1)?.ok_or_else(|| fail(SECTION_NAMES[4], "missing".into()))?;
    checked(&disk_b[..SECTOR], DISK_DATA_MAGIC, SECTION_NAMES[4])?;
    let disk = DiskData::decode(&disk_b);

    let mut configs = Vec::new();
    let mut spare_assignment = false;
    let mut other_records = Vec::new();
    let crl = u32::from(h.config_record_len);
    let mppe = usize::from(h.max_primary_element_entries);
    if let Some(conf) = section(3, 1)? {
        if crl == 0 || (crl as usize) * SECTOR < VdConfig::bytes_needed(mppe) {
            return Err(fail(
                SECTION_NAMES[3],
                format!("records of {crl} sectors cannot hold {mppe} member entries"),
            ));
        }
        for (n, rec) in conf.chunks_exact(crl as usize * SECTOR).enumerate() {
            match be32(rec, 0) {
                VD_CONFIG_MAGIC => {
                    if let Some((stored, computed)) = crc_mismatch(rec) {
                        warnings.push(format!(
                            "{device}: DDF configuration record {n} ({kind} copy) has a bad CRC (stored {stored:#010x}, computed {computed:#010x}); it is left out"
                        ));
                        continue;
                    }
                    match VdConfig::decode(rec, mppe) {
                        Ok(mut c) => {
                            c.record = n;
                            configs.push(c)
                        }
                        Err(e) => warnings.push(format!(
                            "{device}: DDF configuration record {n} ({kind} copy): {e}; it is left out"
                        )),
                    }
                }
                SPARE_ASSIGN_MAGIC => {
                    if crc_mismatch(rec).is_some() {
                        warnings.push(format!(
                            "{device}: DDF spare assignment record {n} ({kind} copy) has a bad CRC"
                        ));
                    } else {
                        spare_assignment = true;
                        other_records.push((n, rec.to_vec()));
                    }
                }
                // Unused (all ones).
                UNSET32 => {}
                // Vendor-unique: nothing tessera reads, kept.
                _ => other_records.push((n, rec.to_vec())),
            }
        }
    }
    Ok(Sections {
        controller,
        phys,
        virt,
        configs,
        spare_assignment,
        other_records,
        disk,
        warnings,
    })
}

impl DdfMetadata {
    /// Writes this disk's metadata back: each copy as its header marked open, its
    /// sections, the header closed; the secondary copy first, then the primary, then the
    /// anchor. The sections written are the ones held here (the configuration section
    /// whole: the records held at their places, the others unused); the copies' headers
    /// are written as they are held, each with a fresh CRC.
    ///
    /// The order survives a power cut at any write, read by tessera or by mdadm (both take
    /// the primary unless the secondary is newer and closed, or as new with the primary
    /// open): while the secondary is open the old primary is read; once it is closed it is
    /// newer than the primary and read; while the primary is open at the same sequence
    /// number the closed secondary is read. A header is closed only after its sections
    /// are flushed, and flushed before the other copy is touched.
    pub fn write(&self, dev: &dyn BlockDevice) -> Result<(), DdfError> {
        let crl = usize::from(self.header().config_record_len);
        self.check_places(crl)?;
        for (kind, h) in [
            (HeaderType::Secondary, &self.secondary),
            (HeaderType::Primary, &self.primary),
        ] {
            let Some(h) = h else { continue };
            let base = if kind == HeaderType::Secondary {
                h.secondary_lba
            } else {
                h.primary_lba
            };
            let at =
                |section: usize| (base + u64::from(h.sections[section].offset)) * SECTOR as u64;
            let mut open = h.clone();
            open.open_flag = 1;
            dev.write_at(&open.encode(), base * SECTOR as u64)?;
            if let Some(c) = &self.controller {
                dev.write_at(&c.encode(), at(0))?;
            }
            dev.write_at(&self.phys.encode(), at(1))?;
            dev.write_at(&self.virt.encode(), at(2))?;
            // The whole configuration section: the records held at their places, the
            // rest unused (all ones), as mdadm writes it.
            let conf_len = h.sections[3].len as usize * SECTOR;
            if conf_len > 0 && crl > 0 {
                let mut conf = vec![0xffu8; conf_len];
                let records = self
                    .configs
                    .iter()
                    .map(|c| (c.record, c.encode()))
                    .chain(self.other_records.iter().cloned());
                for (n, bytes) in records {
                    let off = n * crl * SECTOR;
                    if off + bytes.len() <= conf.len() {
                        conf[off..off + bytes.len()].copy_from_slice(&bytes);
                    }
                }
                dev.write_at(&conf, at(3))?;
            }
            dev.write_at(&self.disk.encode(), at(4))?;
            dev.flush()?;
            let mut closed = h.clone();
            closed.open_flag = 0;
            dev.write_at(&closed.encode(), base * SECTOR as u64)?;
            dev.flush()?;
        }
        dev.write_at(&self.anchor.encode(), self.anchor_lba * SECTOR as u64)?;
        dev.flush()?;
        Ok(())
    }
}

impl DdfMetadata {
    /// Refuses to write a layout whose pieces overlap (one section over another, over the
    /// other copy or the anchor): what is written first would be overwritten.
    fn check_places(&self, crl: usize) -> Result<(), DdfError> {
        let crl = crl as u64;
        let mut places: Vec<(u64, u64, String)> =
            vec![(self.anchor_lba, 1, "the anchor".to_string())];
        for (kind, h) in [
            (HeaderType::Primary, &self.primary),
            (HeaderType::Secondary, &self.secondary),
        ] {
            let Some(h) = h else { continue };
            let base = if kind == HeaderType::Secondary {
                h.secondary_lba
            } else {
                h.primary_lba
            };
            places.push((base, 1, format!("the {kind} header")));
            let mut add = |i: usize, sectors: u64| {
                let start = base.saturating_add(u64::from(h.sections[i].offset));
                places.push((start, sectors, format!("the {kind} {}", SECTION_NAMES[i])));
            };
            if self.controller.is_some() {
                add(0, 1);
            }
            add(1, self.phys.encode().len() as u64 / SECTOR as u64);
            add(2, self.virt.encode().len() as u64 / SECTOR as u64);
            add(4, 1);
            if h.sections[3].len > 0 && crl > 0 {
                add(3, u64::from(h.sections[3].len));
            }
        }
        places.sort();
        for w in places.windows(2) {
            if w[0].0.saturating_add(w[0].1) > w[1].0 {
                return Err(DdfError::Section {
                    device: self.device.clone(),
                    header: self.active,
                    lba: w[1].0,
                    which: "layout",
                    problem: format!("{} overlaps {}; not written", w[1].2, w[0].2),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
