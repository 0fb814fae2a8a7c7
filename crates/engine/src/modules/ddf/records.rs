//! The records of DDF virtual disks while tessera runs them writable, kept as mdmon keeps
//! them: the virtual disk's state (optimal, degraded, failed) and its not-consistent bit
//! (set before the first write, cleared once writes stop and reached every member) with
//! its init state, the physical disks' states (a member that fails marked Failed, a spare
//! taking its place Rebuilding and then Online), the configuration record's members (the
//! spare's refnum and extent put in the failed member's place). Each change advances the
//! headers' sequence number (and the configuration record's, when the members change) and
//! is written to every member that has not failed: both copies, every section.
//!
//! The virtual disks of one container share its global records: [`ContainerRecords`]
//! holds them for all of them, so two virtual disks running at once never write over each
//! other's changes.

use std::sync::{Arc, Mutex, PoisonError};

use tessera_block::SharedDevice;
use tessera_formats::ddf::records::{pd_state, pd_type, prl, srl, vd_state};
use tessera_formats::ddf::{Container, DdfMetadata, PhysRecords, VdConfig, VirtRecords};
use tessera_raid::metadata::{MemberRole, MetadataError, SetMetadata, SetRecord, SetStart};

/// Seconds from 1970 to 1980, where DDF timestamps start (mdadm's DECADE).
const DDF_EPOCH_SECS: u64 = 3600 * 24 * (365 * 10 + 2);
/// The init state bits: fully initialised.
const INIT_MASK: u8 = 0x3;
const INIT_FULL: u8 = 0x2;

/// One disk of the container the records are written to.
struct Disk {
    path: String,
    device: SharedDevice,
    meta: DdfMetadata,
}

/// The container's global records, as they stand.
#[derive(Clone, PartialEq, Eq)]
struct Global {
    seq: u32,
    phys: PhysRecords,
    virt: VirtRecords,
    /// The newest configuration record of each virtual disk's legs.
    configs: Vec<VdConfig>,
    /// Which virtual disks (by index) are rebuilding which disks (by refnum): a disk's
    /// Rebuilding state is one for all its extents, so it stays until every virtual disk
    /// rebuilding onto it has finished.
    rebuilding: Vec<(usize, u32)>,
}

struct Shared {
    global: Global,
    disks: Vec<Disk>,
}

/// A container's records and the disks they are written to.
pub struct ContainerRecords {
    shared: Mutex<Shared>,
}

impl ContainerRecords {
    /// The records of `container` as read (the newest global records, each virtual disk's
    /// newest configuration records), written back to its disks (`devices`, in the order
    /// of `container.disks`) other than those left out.
    pub fn new(container: &Container, devices: &[SharedDevice]) -> Arc<ContainerRecords> {
        let top = container.disks.get(container.newest).map(|(_, m)| m);
        let mut configs: Vec<VdConfig> = Vec::new();
        for (_, m) in &container.disks {
            for cfg in &m.configs {
                let have = configs
                    .iter_mut()
                    .find(|c| c.guid == cfg.guid && c.sec_elmnt_seq == cfg.sec_elmnt_seq);
                match have {
                    Some(c) if c.seqnum < cfg.seqnum => *c = cfg.clone(),
                    Some(_) => {}
                    None => configs.push(cfg.clone()),
                }
            }
        }
        let disks = container
            .disks
            .iter()
            .zip(devices)
            .enumerate()
            .filter(|(i, _)| !container.left_out.iter().any(|(d, _)| d == i))
            .map(|(_, ((path, meta), device))| Disk {
                path: path.clone(),
                device: device.clone(),
                meta: meta.clone(),
            })
            .collect();
        let global = match top {
            Some(m) => Global {
                seq: container.seq,
                phys: m.phys.clone(),
                virt: m.virt.clone(),
                configs,
                rebuilding: Vec::new(),
            },
            None => Global {
                seq: 0,
                phys: PhysRecords::decode(&[0u8; 64]).expect("an empty section"),
                virt: VirtRecords::decode(&[0u8; 64]).expect("an empty section"),
                configs,
                rebuilding: Vec::new(),
            },
        };
        Arc::new(ContainerRecords {
            shared: Mutex::new(Shared { global, disks }),
        })
    }

    /// The refnum of the disk read from `path`.
    fn refnum_of(&self, path: &str) -> Option<u32> {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared
            .disks
            .iter()
            .find(|d| d.path == path)
            .map(|d| d.meta.disk.refnum)
    }
}

/// Writes `global` to every disk whose physical disk record has not failed: the global
/// sections, the configuration records naming the disk, both headers at `global.seq`.
fn commit(global: &Global, disks: &mut [Disk]) -> Result<(), MetadataError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let timestamp = now.saturating_sub(DDF_EPOCH_SECS) as u32;
    for disk in disks.iter_mut() {
        let refnum = disk.meta.disk.refnum;
        let live = global
            .phys
            .by_refnum(refnum)
            .is_some_and(|e| e.state & pd_state::FAILED == 0);
        if !live {
            continue;
        }
        let mut m = disk.meta.clone();
        m.phys = global.phys.clone();
        m.virt = global.virt.clone();
        m.configs = disk_configs(&m, &global.configs);
        for h in [&mut m.primary, &mut m.secondary].into_iter().flatten() {
            h.seq = global.seq;
            h.timestamp = timestamp;
        }
        m.write(disk.device.as_ref())
            .map_err(|e| MetadataError(format!("{}: writing the DDF records: {e}", disk.path)))?;
        disk.meta = m;
    }
    Ok(())
}

/// The configuration records of `configs` that name the disk of `m`, each at the place it
/// held on the disk, new ones at the first free places, as many as the section holds.
fn disk_configs(m: &DdfMetadata, configs: &[VdConfig]) -> Vec<VdConfig> {
    let h = m.header();
    let crl = u32::from(h.config_record_len).max(1);
    let places = (h.sections[3].len / crl) as usize;
    let mine: Vec<&VdConfig> = configs
        .iter()
        .filter(|c| c.phys_refnum.contains(&m.disk.refnum))
        .collect();
    let mut out: Vec<VdConfig> = Vec::new();
    let mut fresh: Vec<VdConfig> = Vec::new();
    for c in mine {
        let held = m
            .configs
            .iter()
            .find(|o| o.guid == c.guid && o.sec_elmnt_seq == c.sec_elmnt_seq);
        let mut c = c.clone();
        match held {
            Some(o) => {
                c.record = o.record;
                out.push(c);
            }
            None => fresh.push(c),
        }
    }
    for mut c in fresh {
        let taken = |n: usize| {
            out.iter().any(|o| o.record == n) || m.other_records.iter().any(|(o, _)| *o == n)
        };
        if let Some(n) = (0..places).find(|&n| !taken(n)) {
            c.record = n;
            out.push(c);
        }
    }
    out
}

/// The state of one leg from its members' physical disk states, as mdmon rates it.
fn leg_state(phys: &PhysRecords, cfg: &VdConfig) -> u8 {
    let n = cfg.phys_refnum.len();
    let working = cfg
        .phys_refnum
        .iter()
        .filter(|r| {
            phys.by_refnum(**r).is_some_and(|e| {
                e.state & (pd_state::ONLINE | pd_state::FAILED | pd_state::REBUILDING)
                    == pd_state::ONLINE
            })
        })
        .count();
    if working == n {
        return vd_state::OPTIMAL;
    }
    match cfg.prl {
        prl::RAID0 | prl::CONCAT | prl::JBOD => vd_state::FAILED,
        prl::RAID1 if working == 0 => vd_state::FAILED,
        prl::RAID1 if working >= 2 => vd_state::PARTIALLY_OPTIMAL,
        prl::RAID1E if working == 0 => vd_state::FAILED,
        prl::RAID4 | prl::RAID5 if working + 1 < n => vd_state::FAILED,
        prl::RAID6 if working + 2 < n => vd_state::FAILED,
        prl::RAID6 if working + 1 == n => vd_state::PARTIALLY_OPTIMAL,
        _ => vd_state::DEGRADED,
    }
}

/// Two legs' states combined under the secondary level, as mdmon combines them.
fn combined_state(a: u8, b: u8, secondary_level: u8) -> u8 {
    use vd_state::*;
    if a == OPTIMAL && b == OPTIMAL {
        return OPTIMAL;
    }
    if secondary_level == srl::MIRRORED {
        if a == OPTIMAL || b == OPTIMAL {
            return PARTIALLY_OPTIMAL;
        }
        if a == FAILED && b == FAILED {
            return FAILED;
        }
        return DEGRADED;
    }
    if a == FAILED || b == FAILED {
        FAILED
    } else if a == DEGRADED || b == DEGRADED {
        DEGRADED
    } else {
        PARTIALLY_OPTIMAL
    }
}

/// A place a spare disk offers this virtual disk: the disk's path and where the extent
/// the virtual disk would rebuild onto starts, in sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareExtent {
    pub path: String,
    pub lba_offset: u64,
}

/// One virtual disk's records in its container's global records.
pub struct VolumeRecords {
    shared: Arc<ContainerRecords>,
    /// Its index in the virtual disk records.
    index: usize,
    /// Members per leg of its configuration.
    per_leg: usize,
    /// The spares' extents for it, by path.
    spares: Vec<SpareExtent>,
}

impl VolumeRecords {
    /// The records of virtual disk `index` (its place in the virtual disk records, the
    /// subarray's `index`), whose spare disks offer it `spares`. The raid set names its
    /// members by the paths of the container's disks.
    pub fn new(shared: Arc<ContainerRecords>, index: usize, spares: Vec<SpareExtent>) -> Self {
        let per_leg = {
            let s = shared.shared.lock().unwrap_or_else(PoisonError::into_inner);
            let guid = s
                .global
                .virt
                .entries
                .iter()
                .find(|e| e.index == index)
                .map(|e| e.guid);
            s.global
                .configs
                .iter()
                .find(|c| Some(c.guid) == guid)
                .map(|c| usize::from(c.prim_elmnt_count).max(1))
                .unwrap_or(1)
        };
        VolumeRecords {
            shared,
            index,
            per_leg,
            spares,
        }
    }

    /// Applies `record` to `g`: member refnums and extents, physical disk states, the
    /// virtual disk's state, its consistency.
    fn apply(&self, g: &mut Global, record: &SetRecord, refnums: &[(String, Option<u32>)]) {
        let Some(vd) = g.virt.entries.iter().position(|e| e.index == self.index) else {
            return;
        };
        let guid = g.virt.entries[vd].guid;
        let refnum = |device: &str| {
            refnums
                .iter()
                .find(|(p, _)| p == device)
                .and_then(|(_, r)| *r)
        };
        let configs_before: Vec<VdConfig> = g
            .configs
            .iter()
            .filter(|c| c.guid == guid)
            .cloned()
            .collect();
        let phys_before = g.phys.clone();
        for m in &record.members {
            let Some(r) = refnum(&m.device) else { continue };
            let (slot, rebuilding) = match m.role {
                MemberRole::InSync(slot) => (slot, false),
                MemberRole::Recovering { slot, .. } => (slot, true),
                MemberRole::Faulty => {
                    if let Some(e) = g.phys.entries.iter_mut().find(|e| e.refnum == r) {
                        e.state |= pd_state::FAILED;
                    }
                    continue;
                }
                MemberRole::Spare => continue,
            };
            let (leg, pos) = (slot / self.per_leg, slot % self.per_leg);
            let Some(cfg) = g
                .configs
                .iter_mut()
                .find(|c| c.guid == guid && usize::from(c.sec_elmnt_seq) == leg)
            else {
                continue;
            };
            if pos >= cfg.phys_refnum.len() {
                continue;
            }
            if cfg.phys_refnum[pos] != r {
                // A spare taking the place: its refnum and its extent.
                let Some(spare) = self.spares.iter().find(|s| s.path == m.device) else {
                    continue;
                };
                cfg.phys_refnum[pos] = r;
                cfg.lba_offset[pos] = spare.lba_offset;
            }
            g.rebuilding.retain(|&(v, d)| !(v == self.index && d == r));
            if rebuilding {
                g.rebuilding.push((self.index, r));
            }
            let still = g.rebuilding.iter().any(|&(_, d)| d == r);
            if let Some(e) = g.phys.entries.iter_mut().find(|e| e.refnum == r) {
                e.kind = (e.kind & !pd_type::GLOBAL_SPARE) | pd_type::ACTIVE_IN_VD;
                e.state |= pd_state::ONLINE;
                if still {
                    e.state |= pd_state::REBUILDING;
                } else {
                    e.state &= !pd_state::REBUILDING;
                }
            }
        }
        // A member the set does not have and no disk of the container holds: missing.
        let present: Vec<u32> = refnums.iter().filter_map(|(_, r)| *r).collect();
        for cfg in g.configs.iter().filter(|c| c.guid == guid) {
            for r in &cfg.phys_refnum {
                if present.contains(r) {
                    continue;
                }
                if let Some(e) = g.phys.entries.iter_mut().find(|e| e.refnum == *r) {
                    if e.state & pd_state::FAILED == 0 {
                        e.state =
                            (e.state & !pd_state::ONLINE) | pd_state::FAILED | pd_state::MISSING;
                    }
                }
            }
        }
        // Every virtual disk's state from its members' disks: a disk failed or rebuilt
        // here counts for the others on it too.
        for entry in g.virt.entries.iter_mut() {
            let legs: Vec<&VdConfig> = g.configs.iter().filter(|c| c.guid == entry.guid).collect();
            let Some(state) = legs
                .iter()
                .map(|c| leg_state(&g.phys, c))
                .reduce(|a, b| combined_state(a, b, legs[0].srl))
            else {
                continue;
            };
            entry.state = (entry.state & !vd_state::MASK) | state;
        }
        let entry = &mut g.virt.entries[vd];
        if record.clean {
            entry.state &= !vd_state::INCONSISTENT;
            entry.init_state = (entry.init_state & !INIT_MASK) | INIT_FULL;
        } else {
            entry.state |= vd_state::INCONSISTENT;
        }
        // A change of members or disk states is a new configuration, as mdmon numbers it.
        let members_changed = g.phys != phys_before
            || g.configs
                .iter()
                .filter(|c| c.guid == guid)
                .ne(configs_before.iter());
        if members_changed {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            for c in g.configs.iter_mut().filter(|c| c.guid == guid) {
                c.seqnum = c.seqnum.wrapping_add(1);
                c.timestamp = now.saturating_sub(DDF_EPOCH_SECS) as u32;
            }
        }
    }
}

impl SetMetadata for VolumeRecords {
    fn start(&self) -> SetStart {
        let s = self
            .shared
            .shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dirty = s
            .global
            .virt
            .entries
            .iter()
            .find(|e| e.index == self.index)
            .is_some_and(|e| !e.is_consistent());
        SetStart {
            dirty,
            recovering: Vec::new(),
            dirty_regions: None,
        }
    }

    fn record(&self, record: &SetRecord) -> Result<(), MetadataError> {
        let refnums: Vec<(String, Option<u32>)> = record
            .members
            .iter()
            .map(|m| (m.device.clone(), self.shared.refnum_of(&m.device)))
            .collect();
        let mut s = self
            .shared
            .shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = s.global.clone();
        self.apply(&mut next, record, &refnums);
        let unchanged = next.phys == s.global.phys
            && next.virt == s.global.virt
            && next.configs == s.global.configs;
        if unchanged {
            s.global.rebuilding = next.rebuilding;
            return Ok(());
        }
        next.seq = next.seq.wrapping_add(1);
        let shared = &mut *s;
        commit(&next, &mut shared.disks)?;
        shared.global = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrored_legs_combine_as_mdmon_combines_them() {
        use vd_state::*;
        assert_eq!(combined_state(OPTIMAL, OPTIMAL, srl::STRIPED), OPTIMAL);
        assert_eq!(combined_state(OPTIMAL, DEGRADED, srl::STRIPED), DEGRADED);
        assert_eq!(combined_state(FAILED, OPTIMAL, srl::STRIPED), FAILED);
        assert_eq!(
            combined_state(FAILED, OPTIMAL, srl::MIRRORED),
            PARTIALLY_OPTIMAL
        );
        assert_eq!(combined_state(FAILED, FAILED, srl::MIRRORED), FAILED);
    }
}
