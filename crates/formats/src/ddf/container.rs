//! A DDF container from its disks: the newest copy of the global records (highest header
//! sequence number) speaks for the container, each virtual disk takes its newest
//! configuration record (highest seqnum) from whichever disk holds it, and each of its
//! members is found by refnum among the disks present, as mdadm's container assembly does.

use std::collections::BTreeMap;

use super::records::{
    pd_state, pd_type, prl, prl_name, rlq, srl, Guid, PhysEntry, VdConfig, VirtEntry, GUID_LEN,
};
use super::DdfMetadata;

/// One container: its disks and its virtual disks.
#[derive(Debug, Clone)]
pub struct Container {
    pub guid: Guid,
    /// The newest sequence number among its disks.
    pub seq: u32,
    /// The disks, by the names they were read under, with their metadata.
    pub disks: Vec<(String, DdfMetadata)>,
    /// The disk whose records speak for the container.
    pub newest: usize,
    /// Disks not taken as members, and why.
    pub left_out: Vec<(usize, String)>,
    /// Working disks the newest records make global spares and no virtual disk uses:
    /// what a virtual disk that loses a member rebuilds onto.
    pub spares: Vec<usize>,
    pub subarrays: Vec<Subarray>,
    /// What is wrong with the container as a whole, one sentence each.
    pub problems: Vec<String>,
}

/// One member place of a subarray.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub refnum: u32,
    /// Where the member's extent starts on its disk, in sectors.
    pub lba_offset: u64,
    /// The disk holding it (index into [`Container::disks`]), when present and working.
    pub disk: Option<usize>,
    /// Why it is not there.
    pub missing: Option<String>,
    /// The disk is being rebuilt into this place (its physical disk record says
    /// Rebuilding): present, but not in sync.
    pub rebuilding: bool,
}

/// One virtual disk of the container, as md runs it.
#[derive(Debug, Clone)]
pub struct Subarray {
    /// Its index in the virtual disk records (mdadm's member number).
    pub index: usize,
    pub entry: VirtEntry,
    /// md's level and layout for it, or why md has none.
    pub md: Result<(i32, u32), String>,
    /// The DDF level in words (RAID5, RAID1...).
    pub ddf_level: String,
    pub chunk_sectors: u64,
    /// Sectors of each member's extent.
    pub blocks: u64,
    /// Sectors of the virtual disk, as its record gives them.
    pub array_blocks: u64,
    /// The members in md's slot order (for two-level arrays, leg by leg).
    pub slots: Vec<Slot>,
    /// The newest configuration record's seqnum.
    pub seqnum: u32,
    pub problems: Vec<String>,
}

/// Whether the members present can run a subarray.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Complete,
    Degraded { missing: Vec<usize> },
    Failed { missing: Vec<usize> },
}

/// Controllers whose virtual disk GUIDs change at every boot, as mdadm lists them: their
/// subarrays' UUIDs come from the container's GUID instead.
const VARIABLE_VD_GUID_VENDORS: [&[u8; 8]; 1] = [b"LSI     "];

impl Container {
    /// The UUID mdadm gives subarray `s` (the start of a SHA-1 over its GUID, or for
    /// controllers whose GUIDs change, over the container's GUID, its name and its
    /// index), as mdadm prints it.
    pub fn subarray_uuid(&self, s: &Subarray) -> String {
        let controller = self
            .disks
            .get(self.newest)
            .and_then(|(_, m)| m.controller.as_ref())
            .map(|c| c.guid.0);
        let variable =
            controller.is_some_and(|g| VARIABLE_VD_GUID_VENDORS.iter().any(|v| g[..8] == v[..]));
        let digest = if variable {
            let mut buf = Vec::with_capacity(GUID_LEN + 18);
            buf.extend_from_slice(&self.guid.0);
            buf.extend_from_slice(&s.entry.name_bytes);
            buf.extend_from_slice(&(s.index as u16).to_le_bytes());
            tessera_cipher::Hash::Sha1.digest(&buf)
        } else {
            tessera_cipher::Hash::Sha1.digest(&s.entry.guid.0)
        };
        crate::imsm::mdadm_uuid_text(&digest[..16])
    }
}

impl Subarray {
    /// The name md gives it under /dev/md/: the record's name, else its GUID.
    pub fn name(&self) -> String {
        let n = self.entry.name();
        let clean: String = n
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '/')
            .collect();
        if clean.is_empty() {
            self.entry.guid.to_string().replace(':', "")
        } else {
            clean
        }
    }

    /// The slots not in sync: missing, or being rebuilt.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].disk.is_none() || self.slots[i].rebuilding)
            .collect()
    }

    pub fn health(&self) -> Health {
        let missing = self.missing();
        if missing.is_empty() {
            return Health::Complete;
        }
        let n = self.slots.len();
        let survives = match self.md {
            Ok((1, _)) => missing.len() < n,
            Ok((4 | 5, _)) => missing.len() <= 1,
            Ok((6, _)) => missing.len() <= 2,
            // Near copies on neighbouring slots in groups; far copies one slot on.
            Ok((10, layout)) => {
                let near = (layout & 0xff).max(1) as usize;
                if near > 1 {
                    (0..n)
                        .step_by(near)
                        .all(|g| (g..(g + near).min(n)).any(|s| !missing.contains(&s)))
                } else {
                    (0..n).all(|s| !(missing.contains(&s) && missing.contains(&((s + 1) % n))))
                }
            }
            _ => false,
        };
        if survives {
            Health::Degraded { missing }
        } else {
            Health::Failed { missing }
        }
    }

    /// The level as mdadm names it.
    pub fn level_name(&self) -> String {
        match self.md {
            Ok((-1, _)) => "linear".into(),
            Ok((l, _)) => format!("raid{l}"),
            Err(_) => self.ddf_level.clone(),
        }
    }
}

/// md's level and layout for a DDF configuration, as mdadm maps them (`layout_ddf2md`).
pub fn md_layout(c: &VdConfig) -> Result<(i32, u32), String> {
    let n = c.prim_elmnt_count;
    let bad = || {
        Err(format!(
            "DDF {} with qualifier {} over {n} disks is not a layout md runs",
            prl_name(c.prl),
            c.rlq
        ))
    };
    if c.sec_elmnt_count > 1 {
        if c.prl != prl::RAID1 || !(c.srl == srl::STRIPED || c.srl == srl::SPANNED) {
            return Err(format!(
                "DDF {} under secondary level {} is not a layout md runs",
                prl_name(c.prl),
                c.srl
            ));
        }
        return match (n, c.rlq) {
            (2, rlq::RAID1_SIMPLE) => Ok((10, 0x102)),
            (3, rlq::RAID1_MULTI) => Ok((10, 0x103)),
            _ => bad(),
        };
    }
    Ok(match (c.prl, c.rlq) {
        (prl::CONCAT, _) => (-1, 0),
        (prl::RAID0, 0) => (0, 0),
        (prl::RAID1, rlq::RAID1_SIMPLE) if n == 2 => (1, 0),
        (prl::RAID1, rlq::RAID1_MULTI) if n == 3 => (1, 0),
        (prl::RAID1E, rlq::RAID1E_ADJACENT) => (10, 0x102),
        (prl::RAID1E, rlq::RAID1E_OFFSET) => (10, 0x201),
        (prl::RAID4, rlq::RAID4_N) => (4, 0),
        (prl::RAID5, rlq::RAID5_N_RESTART) => (5, 0),
        (prl::RAID5, rlq::RAID5_0_RESTART) => (5, 1),
        (prl::RAID5, rlq::RAID5_N_CONTINUE) => (5, 2),
        (prl::RAID6, rlq::RAID5_N_RESTART) => (6, 9),
        (prl::RAID6, rlq::RAID6_0_RESTART) => (6, 8),
        (prl::RAID6, rlq::RAID5_N_CONTINUE) => (6, 10),
        _ => return bad(),
    })
}

/// Groups `disks` (name and metadata) into containers by header GUID, in the order the
/// GUIDs were first seen.
pub fn assemble(disks: Vec<(String, DdfMetadata)>) -> Vec<Container> {
    let mut groups: Vec<(Guid, Vec<(String, DdfMetadata)>)> = Vec::new();
    for (name, m) in disks {
        let guid = m.container_guid();
        match groups.iter_mut().find(|(g, _)| *g == guid) {
            Some((_, v)) => v.push((name, m)),
            None => groups.push((guid, vec![(name, m)])),
        }
    }
    groups
        .into_iter()
        .map(|(guid, disks)| assemble_one(guid, disks))
        .collect()
}

fn assemble_one(guid: Guid, disks: Vec<(String, DdfMetadata)>) -> Container {
    let newest = disks
        .iter()
        .enumerate()
        .max_by_key(|(i, (_, m))| (m.seq(), std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let seq = disks.get(newest).map(|(_, m)| m.seq()).unwrap_or(0);
    let mut c = Container {
        guid,
        seq,
        disks,
        newest,
        left_out: Vec::new(),
        spares: Vec::new(),
        subarrays: Vec::new(),
        problems: Vec::new(),
    };
    if c.disks.is_empty() {
        return c;
    }
    let (newest_name, top) = &c.disks[newest];
    let phys = top.phys.clone();
    let virt = top.virt.clone();
    let newest_name = newest_name.clone();

    // Each disk's place by its refnum, as the newest records see it.
    let mut by_refnum: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, (name, m)) in c.disks.iter().enumerate() {
        let refnum = m.disk.refnum;
        let why = match phys.by_refnum(refnum) {
            None => Some(format!(
                "refnum {refnum:08x} is not among the container's physical disks (as {newest_name} records them, sequence {seq})"
            )),
            Some(e) if !e.is_working() => Some(format!(
                "the container's records mark it {} (refnum {refnum:08x}, sequence {seq})",
                e.state_words()
            )),
            Some(_) => match by_refnum.get(&refnum) {
                Some(&other) => Some(format!(
                    "refnum {refnum:08x} is also on {}",
                    c.disks[other].0
                )),
                None => None,
            },
        };
        match why {
            Some(w) => c.left_out.push((i, w)),
            None => {
                by_refnum.insert(refnum, i);
            }
        }
        if m.seq() < seq {
            c.problems.push(format!(
                "{name}: DDF metadata at sequence {}, behind the container's {seq}",
                m.seq()
            ));
        }
    }

    for entry in &virt.entries {
        // The newest record of each leg, from any disk.
        let mut legs: BTreeMap<u8, (VdConfig, usize)> = BTreeMap::new();
        for (i, (_, m)) in c.disks.iter().enumerate() {
            for cfg in m.configs.iter().filter(|cf| cf.guid == entry.guid) {
                match legs.get(&cfg.sec_elmnt_seq) {
                    Some((have, from)) if have.seqnum > cfg.seqnum => {
                        let _ = from;
                    }
                    Some((have, from)) if have.seqnum == cfg.seqnum => {
                        if have.raw() != cfg.raw() {
                            c.problems.push(format!(
                                "{}: DDF configuration record of virtual disk {} differs from the one on {} at the same seqnum {}; using the one on {}",
                                c.disks[i].0,
                                entry.name(),
                                c.disks[*from].0,
                                cfg.seqnum,
                                c.disks[*from].0
                            ));
                        }
                    }
                    _ => {
                        legs.insert(cfg.sec_elmnt_seq, (cfg.clone(), i));
                    }
                }
            }
        }
        c.subarrays
            .push(subarray(entry, &legs, &phys.entries, &by_refnum));
    }
    let used: Vec<usize> = c
        .subarrays
        .iter()
        .flat_map(|s| s.slots.iter().filter_map(|sl| sl.disk))
        .collect();
    c.spares = by_refnum
        .iter()
        .filter(|(r, d)| {
            !used.contains(d)
                && phys
                    .by_refnum(**r)
                    .is_some_and(|e| e.kind & pd_type::GLOBAL_SPARE != 0)
        })
        .map(|(_, d)| *d)
        .collect();
    c.spares.sort_unstable();
    c
}

fn subarray(
    entry: &VirtEntry,
    legs: &BTreeMap<u8, (VdConfig, usize)>,
    phys: &[PhysEntry],
    by_refnum: &BTreeMap<u32, usize>,
) -> Subarray {
    let mut s = Subarray {
        index: entry.index,
        entry: entry.clone(),
        md: Err("no configuration record on the disks present".into()),
        ddf_level: "unknown".into(),
        chunk_sectors: 0,
        blocks: 0,
        array_blocks: 0,
        slots: Vec::new(),
        seqnum: 0,
        problems: Vec::new(),
    };
    let Some((first, _)) = legs.values().next() else {
        return s;
    };
    s.ddf_level = prl_name(first.prl);
    s.md = md_layout(first);
    s.chunk_sectors = first.chunk_sectors().unwrap_or(0);
    s.blocks = first.blocks;
    s.array_blocks = first.array_blocks;
    s.seqnum = legs.values().map(|(c, _)| c.seqnum).max().unwrap_or(0);
    let leg_count = u16::from(first.sec_elmnt_count.max(1));
    let per_leg = first.prim_elmnt_count as usize;
    for leg in 0..leg_count {
        match legs.get(&(leg as u8)) {
            Some((cfg, _)) => {
                if cfg.prim_elmnt_count != first.prim_elmnt_count
                    || cfg.blocks != first.blocks
                    || cfg.prl != first.prl
                {
                    s.problems.push(format!(
                        "leg {leg} of its configuration differs from leg {} (members, level or extent size)",
                        first.sec_elmnt_seq
                    ));
                    s.md = Err("its legs do not match".into());
                }
                for (r, o) in cfg.phys_refnum.iter().zip(&cfg.lba_offset) {
                    let rebuilding = phys
                        .iter()
                        .find(|e| e.refnum == *r)
                        .is_some_and(|e| e.state & pd_state::REBUILDING != 0);
                    let (disk, missing) = match by_refnum.get(r) {
                        Some(&d) => (Some(d), None),
                        None => {
                            let why = match phys.iter().find(|e| e.refnum == *r) {
                                Some(e) if !e.is_working() => {
                                    format!("refnum {r:08x} is {}", e.state_words())
                                }
                                Some(_) => format!("no disk with refnum {r:08x} is present"),
                                None => format!(
                                    "refnum {r:08x} is not among the container's physical disks"
                                ),
                            };
                            (None, Some(why))
                        }
                    };
                    s.slots.push(Slot {
                        refnum: *r,
                        lba_offset: *o,
                        rebuilding: rebuilding && disk.is_some(),
                        disk,
                        missing,
                    });
                }
            }
            None => {
                for _ in 0..per_leg {
                    s.slots.push(Slot {
                        refnum: u32::MAX,
                        lba_offset: 0,
                        disk: None,
                        missing: Some(format!(
                            "no configuration record for leg {leg} on the disks present"
                        )),
                        rebuilding: false,
                    });
                }
            }
        }
    }
    if s.md.is_ok() && s.chunk_sectors == 0 && !matches!(s.md, Ok((1, _)) | Ok((-1, _))) {
        s.md = Err(format!(
            "chunk shift {} is not a chunk size",
            first.chunk_shift
        ));
    }
    s
}
