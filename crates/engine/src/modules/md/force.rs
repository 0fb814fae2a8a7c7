//! Forced assembly (`--force`), choosing as `mdadm --assemble --force` does, for the array
//! that lost one member long ago and a second at a crash: the second is a few events behind
//! and the others record it faulty, so a plain assembly leaves both out and the array
//! cannot start.
//!
//! The choice: per slot, the member whose own superblock claims it with the most events.
//! Members within one event of the array are fresh; one the others record faulty is taken
//! back (its faulty mark cleared). Then, while the level cannot run on what it has, the
//! stale member with the most events is brought up to the array's events count, with every
//! other stale one of exactly the same events; no more than that. A member being rebuilt
//! is never forced (its data is not whole). A dirty raid4/5/6 that starts degraded is
//! recorded clean, since its parity cannot be rebuilt without the missing member.
//!
//! [`MdArray::forced`] only decides, in memory: serving read-only writes nothing.
//! [`MdArray::write_forced`] records the choice in the members' superblocks, so that md
//! and mdadm assemble the same array afterwards without --force.

use std::fmt;

use tessera_formats::md::{self, ArrayState, MdSuperblock, Role};

use super::array::{Health, LeftOut, MdArray, MdMember};

/// A member forced into the array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forced {
    pub path: String,
    pub slot: u32,
    /// Its events count before forcing.
    pub events: u64,
    /// The array's superblocks recorded it faulty.
    pub recorded_faulty: bool,
}

/// What forcing changes; empty when the array starts as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForcePlan {
    /// The array's events count, which forced members are brought up to.
    pub events: u64,
    pub forced: Vec<Forced>,
    /// A dirty raid4/5/6 starting degraded, recorded clean.
    pub mark_clean: bool,
}

impl ForcePlan {
    pub fn is_empty(&self) -> bool {
        self.forced.is_empty() && !self.mark_clean
    }

    /// One line per change, as a user reads them before trusting the data.
    pub fn describe(&self, array: &str) -> Vec<String> {
        let mut out = Vec::new();
        for f in &self.forced {
            let mut line = if f.events + 1 >= self.events {
                format!(
                    "{array}: taking {} back into slot {} (events {} of {})",
                    f.path, f.slot, f.events, self.events
                )
            } else {
                format!(
                    "{array}: forcing {} (slot {}) from events {} up to {}; it missed writes \
                     made after it dropped out",
                    f.path, f.slot, f.events, self.events
                )
            };
            if f.recorded_faulty {
                line.push_str("; its faulty mark is cleared");
            }
            out.push(line);
        }
        if self.mark_clean {
            out.push(format!(
                "{array}: dirty and degraded: recorded clean without a resync (parity of \
                 stripes written at the crash may be wrong)"
            ));
        }
        out
    }
}

/// Why even forcing cannot start an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForceRefused {
    pub array: String,
    pub missing: Vec<u32>,
    pub tolerated: u32,
    pub level: String,
    /// Each member that could not help, and why.
    pub unusable: Vec<(String, String)>,
}

impl fmt::Display for ForceRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "md/{}: too few members even with --force: slot(s) {:?} have no member and {} \
             survives {}",
            self.array, self.missing, self.level, self.tolerated
        )?;
        for (path, why) in &self.unusable {
            write!(f, "; {path}: {why}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ForceRefused {}

/// Whether the level runs without the slots `missing`: a trial array answers it.
fn survives(array: &MdArray, slots: &[Option<MdMember>]) -> bool {
    let mut trial = array.clone();
    trial.slots = slots.to_vec();
    !matches!(trial.health(), Health::Failed { .. })
}

impl MdArray {
    /// The array as forced assembly starts it, and what forcing changed. Nothing changes
    /// for an array whose members are all fresh and unmarked.
    pub fn forced(&self) -> Result<(MdArray, ForcePlan), ForceRefused> {
        let events = self.events;
        let mut plan = ForcePlan {
            events,
            ..ForcePlan::default()
        };
        let mut slots = self.slots.clone();
        let mut rest: Vec<(MdMember, LeftOut)> = Vec::new();
        // Members the freshest superblock leaves out only for their events or a faulty
        // mark, and that claim a slot in their own superblock: the ones forcing may take.
        let mut candidates: Vec<(u32, MdMember, bool)> = Vec::new();
        let mut unusable = Vec::new();
        // A member removed after it failed is listed as a spare by the others, while its
        // own superblock still claims its slot: mdadm goes by the member's own word.
        let removed: Vec<(MdMember, LeftOut)> = self
            .spares
            .iter()
            .filter(|m| matches!(m.sb.role(), Role::Active(_)))
            .map(|m| (m.clone(), LeftOut::Faulty))
            .collect();
        let mut spares = self.spares.clone();
        spares.retain(|m| !matches!(m.sb.role(), Role::Active(_)));
        for (m, why) in self.left_out.iter().chain(&removed) {
            let own = m.sb.role();
            let usable = matches!(why, LeftOut::Stale { .. } | LeftOut::Faulty);
            match own {
                Role::Active(slot)
                    if usable
                        && slot < self.raid_disks
                        && m.sb.events() <= events
                        && m.sb.recovery_offset().is_none() =>
                {
                    let faulty = matches!(
                        why,
                        LeftOut::Faulty
                            | LeftOut::Stale {
                                recorded_faulty: true,
                                ..
                            }
                    );
                    candidates.push((slot, m.clone(), faulty));
                }
                _ => {
                    let reason = if m.sb.recovery_offset().is_some() {
                        format!("{why}; it was being rebuilt, so its data is not whole")
                    } else if !usable {
                        why.to_string()
                    } else {
                        format!("{why}; its own superblock gives it no slot")
                    };
                    unusable.push((m.path.clone(), reason));
                    rest.push((m.clone(), why.clone()));
                }
            }
        }
        // Per slot, the claimant with the most events (the first of a tie), as mdadm.
        let mut best: Vec<Option<usize>> = vec![None; slots.len()];
        for (i, (slot, m, _)) in candidates.iter().enumerate() {
            let s = *slot as usize;
            if slots[s].is_some() {
                continue;
            }
            match best[s] {
                Some(b) if candidates[b].1.sb.events() >= m.sb.events() => {}
                _ => best[s] = Some(i),
            }
        }
        let mut taken = vec![false; candidates.len()];
        let mut take = |i: usize, slots: &mut Vec<Option<MdMember>>, plan: &mut ForcePlan| {
            let (slot, m, faulty) = &candidates[i];
            slots[*slot as usize] = Some(m.clone());
            plan.forced.push(Forced {
                path: m.path.clone(),
                slot: *slot,
                events: m.sb.events(),
                recorded_faulty: *faulty,
            });
            taken[i] = true;
        };
        // Fresh by events but recorded faulty: mdadm takes them back whenever forced.
        for i in best.iter().flatten().copied() {
            if candidates[i].1.sb.events() + 1 >= events {
                take(i, &mut slots, &mut plan);
            }
        }
        // Then the stale ones, newest first, only while the array cannot run.
        while !survives(self, &slots) {
            let newest = best
                .iter()
                .flatten()
                .copied()
                .filter(|&i| slots[candidates[i].0 as usize].is_none())
                .max_by_key(|&i| (candidates[i].1.sb.events(), std::cmp::Reverse(i)));
            let Some(newest) = newest else { break };
            let vintage = candidates[newest].1.sb.events();
            let same: Vec<usize> = best
                .iter()
                .flatten()
                .copied()
                .filter(|&i| {
                    slots[candidates[i].0 as usize].is_none()
                        && candidates[i].1.sb.events() == vintage
                })
                .collect();
            for i in same {
                take(i, &mut slots, &mut plan);
            }
        }
        if !survives(self, &slots) {
            let mut trial = self.clone();
            trial.slots = slots;
            let (missing, tolerated) = match trial.health() {
                Health::Failed { missing, tolerated } => (missing, tolerated),
                _ => (trial.missing(), trial.tolerated()),
            };
            for (i, (_, m, _)) in candidates.iter().enumerate() {
                if !taken[i] {
                    unusable.push((m.path.clone(), "another member holds its slot".into()));
                }
            }
            return Err(ForceRefused {
                array: self.name.clone(),
                missing,
                tolerated,
                level: self.level_name(),
                unusable,
            });
        }
        for (i, (_, m, _)) in candidates.iter().enumerate() {
            if !taken[i] {
                let why = self
                    .left_out
                    .iter()
                    .find(|(o, _)| o.path == m.path)
                    .map(|(_, w)| w.clone())
                    .unwrap_or(LeftOut::Faulty);
                rest.push((m.clone(), why));
            }
        }
        let mut array = self.clone();
        array.slots = slots;
        array.spares = spares;
        array.left_out = rest;
        let degraded = !array.missing().is_empty();
        // mdadm: raid4 missing only its parity member starts dirty as it is.
        let parity_only =
            array.level == 4 && array.missing() == vec![array.raid_disks.saturating_sub(1)];
        if matches!(array.state, ArrayState::Dirty { .. })
            && matches!(array.level, 4..=6)
            && degraded
            && !parity_only
        {
            plan.mark_clean = true;
            array.state = ArrayState::Clean;
        }
        Ok((array, plan))
    }

    /// Every member the array runs without and why: those left out, and those the others
    /// list as spares while their own superblock claims a slot (removed after failing).
    pub fn dropped_out(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .left_out
            .iter()
            .map(|(m, why)| (m.path.clone(), why.to_string()))
            .collect();
        for m in &self.spares {
            if let Role::Active(slot) = m.sb.role() {
                out.push((
                    m.path.clone(),
                    format!(
                        "events {} of {}; its own superblock claims slot {slot}, the others \
                         record it removed",
                        m.sb.events(),
                        self.events
                    ),
                ));
            }
        }
        out
    }

    /// Records a forced assembly in the superblocks of the members present (an array from
    /// [`MdArray::forced`]): each at the array's events count, each present member in its
    /// slot in every role table (faulty marks cleared), and the array clean if the plan
    /// says so. md then starts it from these superblocks as they are, and so does mdadm
    /// without --force.
    pub fn write_forced(&mut self, plan: &ForcePlan) -> Result<(), md::MdError> {
        if plan.is_empty() {
            return Ok(());
        }
        let present: Vec<(u32, MdSuperblock)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, m)| m.as_ref().map(|m| (slot as u32, m.sb.clone())))
            .collect();
        let mut updated = Vec::new();
        for m in self.slots.iter().flatten() {
            let mut sb = m.sb.clone();
            match &mut sb {
                MdSuperblock::V1(s) => {
                    for (slot, other) in &present {
                        let MdSuperblock::V1(o) = other else { continue };
                        let Some(role) = s.dev_roles.get_mut(o.dev_number as usize) else {
                            return Err(md::MdError::BadRole {
                                device: m.path.clone(),
                                version: m.version,
                                why: format!(
                                    "its role table has no entry for device number {} (slot {slot})",
                                    o.dev_number
                                ),
                            });
                        };
                        *role = *slot as u16;
                    }
                    s.events = plan.events;
                    if plan.mark_clean {
                        s.resync_offset = md::super1::RESYNC_DONE;
                    }
                }
                MdSuperblock::V0(s) => {
                    use md::super0::{DISK_ACTIVE, DISK_FAULTY, DISK_REMOVED, DISK_SYNC};
                    for (slot, other) in &present {
                        let MdSuperblock::V0(o) = other else { continue };
                        let n = o.this_disk.number as usize;
                        let Some(d) = s.disks.get_mut(n) else {
                            return Err(md::MdError::BadRole {
                                device: m.path.clone(),
                                version: m.version,
                                why: format!("disk number {n} is past the descriptor table"),
                            });
                        };
                        let keep = d.state & !(DISK_FAULTY | DISK_ACTIVE | DISK_SYNC | DISK_REMOVED);
                        d.number = n as u32;
                        d.raid_disk = *slot;
                        d.state = keep | DISK_ACTIVE | DISK_SYNC;
                        if d.major == 0 && d.minor == 0 {
                            d.major = o.this_disk.major;
                            d.minor = o.this_disk.minor;
                        }
                    }
                    // The summary counts, recounted from the table as mdadm does.
                    let (mut active, mut working, mut failed, mut spare) = (0, 0, 0, 0);
                    for d in s.disks.iter().filter(|d| d.state & DISK_REMOVED == 0) {
                        if d.state == 0 && d.major == 0 && d.minor == 0 {
                            continue;
                        }
                        if d.state & DISK_ACTIVE != 0 {
                            active += 1;
                        }
                        if d.state & DISK_FAULTY != 0 {
                            failed += 1;
                        } else {
                            working += 1;
                        }
                        if d.state == 0 {
                            spare += 1;
                        }
                    }
                    s.active_disks = active;
                    s.working_disks = working;
                    s.failed_disks = failed;
                    s.spare_disks = spare;
                    s.events = plan.events;
                    if plan.mark_clean {
                        s.state |= md::super0::STATE_CLEAN;
                    }
                    let me = s.this_disk.number as usize % s.disks.len();
                    s.this_disk = s.disks[me];
                }
            }
            md::write(m.device.as_ref(), m.version, &sb)?;
            updated.push(sb);
        }
        for m in self.slots.iter().flatten() {
            m.device.flush()?;
        }
        for (m, sb) in self.slots.iter_mut().flatten().zip(updated) {
            m.sb = sb;
        }
        self.events = plan.events;
        if plan.mark_clean {
            self.state = ArrayState::Clean;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tessera_block::{MemoryDevice, SharedDevice};
    use tessera_formats::md::create::{member_superblock, NewArray};
    use tessera_formats::md::{super0, super1, MdVersion};

    use super::*;
    use crate::md::{assemble, probe_members};

    const MIB: u64 = 1 << 20;

    /// What one member's superblock says: its events, the slots it records faulty, and
    /// whether it was being rebuilt.
    struct Says {
        events: u64,
        faulty: &'static [u32],
        recovering: bool,
    }

    fn says(events: u64, faulty: &'static [u32]) -> Option<Says> {
        Some(Says {
            events,
            faulty,
            recovering: false,
        })
    }

    /// An array of `level` over `members.len()` members; `None` is a member whose device
    /// is gone. `dirty`: the array was not shut down cleanly.
    fn array(version: MdVersion, level: i32, members: &[Option<Says>], dirty: bool) -> MdArray {
        let n = members.len() as u32;
        let new = NewArray {
            version,
            name: if version == MdVersion::V0_90 {
                String::new()
            } else {
                "h:nas".into()
            },
            uuid: [7; 16],
            level,
            layout: if level == 10 { 0x102 } else { 2 },
            chunk_bytes: 64 << 10,
            raid_disks: n,
            now: 1,
        };
        let mut devs: Vec<(String, SharedDevice)> = Vec::new();
        for (slot, says) in members.iter().enumerate() {
            let Some(says) = says else { continue };
            let dev = MemoryDevice::new(format!("d{slot}"), 8 * MIB);
            let mut sb = member_superblock(&new, slot as u32, [slot as u8; 16], 8 * MIB, 4096)
                .expect("fits");
            match &mut sb {
                MdSuperblock::V1(s) => {
                    s.events = says.events;
                    for &f in says.faulty {
                        s.dev_roles[f as usize] = super1::ROLE_FAULTY;
                    }
                    if dirty {
                        s.resync_offset = 0;
                    }
                    if says.recovering {
                        s.feature_map |= super1::FEATURE_RECOVERY_OFFSET;
                        s.recovery_offset = 100;
                    }
                }
                MdSuperblock::V0(s) => {
                    s.events = says.events;
                    for &f in says.faulty {
                        s.disks[f as usize].state = super0::DISK_FAULTY;
                    }
                    s.this_disk = s.disks[slot];
                    if dirty {
                        s.state &= !super0::STATE_CLEAN;
                    }
                }
            }
            md::write(&dev, version, &sb).unwrap();
            devs.push((format!("d{slot}"), Arc::new(dev)));
        }
        let (members, problems) = probe_members(devs.iter().map(|(p, d)| (p, d)));
        assert!(problems.is_empty(), "{problems:?}");
        let mut arrays = assemble(members);
        assert_eq!(arrays.len(), 1);
        arrays.remove(0)
    }

    fn paths(slots: &[Option<MdMember>]) -> Vec<Option<&str>> {
        slots
            .iter()
            .map(|m| m.as_ref().map(|m| m.path.as_str()))
            .collect()
    }

    /// The NAS: d0 died long ago (events 10), d1 dropped out at the crash a few events
    /// behind and the others record it faulty.
    fn nas(version: MdVersion, dirty: bool) -> MdArray {
        array(
            version,
            5,
            &[
                says(10, &[]),
                says(47, &[0]),
                says(50, &[0, 1]),
                says(50, &[0, 1]),
            ],
            dirty,
        )
    }

    #[test]
    fn the_crash_member_is_forced_and_the_long_dead_one_stays_out() {
        for version in [MdVersion::V1_2, MdVersion::V0_90] {
            let a = nas(version, false);
            assert!(matches!(a.health(), Health::Failed { .. }), "{version}");
            let why = a.left_out.iter().find(|(m, _)| m.path == "d1").unwrap();
            assert_eq!(
                why.1.to_string(),
                "stale: events 47, the array is at 50; it missed writes; recorded faulty by \
                 the others"
            );
            let (forced, plan) = a.forced().unwrap();
            assert_eq!(paths(&forced.slots), [None, Some("d1"), Some("d2"), Some("d3")]);
            assert_eq!(
                plan.forced,
                [Forced {
                    path: "d1".into(),
                    slot: 1,
                    events: 47,
                    recorded_faulty: true
                }]
            );
            assert!(!plan.mark_clean);
            assert_eq!(forced.left_out.len(), 1);
            assert_eq!(forced.left_out[0].0.path, "d0");
            assert!(matches!(forced.health(), Health::Degraded { .. }));
        }
    }

    #[test]
    fn members_of_the_same_vintage_come_in_together() {
        // d0 and d1 both stopped at 47: forcing one brings the other along (it can only help).
        let a = array(
            MdVersion::V1_2,
            5,
            &[
                says(47, &[]),
                says(47, &[]),
                says(50, &[0, 1]),
                says(50, &[0, 1]),
            ],
            false,
        );
        let (forced, plan) = a.forced().unwrap();
        assert_eq!(forced.health(), Health::Complete);
        assert_eq!(plan.forced.len(), 2);
    }

    #[test]
    fn only_as_many_as_the_level_needs_newest_first() {
        // raid6 of 6 with three out: the two newest are forced, the oldest stays out.
        let a = array(
            MdVersion::V1_2,
            6,
            &[
                says(5, &[]),
                says(30, &[0]),
                says(40, &[0, 1]),
                says(50, &[0, 1, 2]),
                says(50, &[0, 1, 2]),
                says(50, &[0, 1, 2]),
            ],
            false,
        );
        let (forced, plan) = a.forced().unwrap();
        let got: Vec<&str> = plan.forced.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(got, ["d2"]);
        assert_eq!(forced.missing(), [0, 1]);
    }

    #[test]
    fn a_fresh_member_recorded_faulty_is_taken_back() {
        // One event behind and marked faulty: mdadm --force clears the mark and takes it,
        // even when the array would start without it.
        let a = array(
            MdVersion::V1_2,
            5,
            &[
                says(50, &[1]),
                says(49, &[]),
                says(50, &[1]),
                says(50, &[1]),
            ],
            false,
        );
        assert!(matches!(a.health(), Health::Degraded { .. }));
        let (forced, plan) = a.forced().unwrap();
        assert_eq!(forced.health(), Health::Complete);
        assert_eq!(plan.forced[0].path, "d1");
        assert!(plan.forced[0].recorded_faulty);
    }

    #[test]
    fn nothing_changes_for_an_array_that_starts_as_it_is() {
        let a = array(
            MdVersion::V1_2,
            5,
            &[says(50, &[]), says(50, &[]), says(50, &[]), None],
            true,
        );
        let (_, plan) = a.forced().unwrap();
        // Dirty and degraded: recorded clean, as mdadm --force does.
        assert!(plan.forced.is_empty());
        assert!(plan.mark_clean);
        let a = array(
            MdVersion::V1_2,
            5,
            &[says(50, &[]), says(50, &[]), says(50, &[]), says(50, &[])],
            false,
        );
        assert!(a.forced().unwrap().1.is_empty());
    }

    #[test]
    fn too_few_members_even_with_force() {
        // Only two of four raid5 members have devices.
        let a = array(
            MdVersion::V1_2,
            5,
            &[None, None, says(50, &[0, 1]), says(50, &[0, 1])],
            false,
        );
        let e = a.forced().unwrap_err();
        assert_eq!(e.missing, [0, 1]);
        assert!(e.to_string().contains("too few members even with --force"), "{e}");
        // A member being rebuilt is never a source of data.
        let a = array(
            MdVersion::V1_2,
            5,
            &[
                None,
                Some(Says {
                    events: 47,
                    faulty: &[0],
                    recovering: true,
                }),
                says(50, &[0, 1]),
                says(50, &[0, 1]),
            ],
            false,
        );
        let e = a.forced().unwrap_err();
        assert!(e.to_string().contains("d1: "), "{e}");
        assert!(e.to_string().contains("being rebuilt"), "{e}");
        // raid0 has nothing to survive with.
        let a = array(MdVersion::V1_2, 0, &[says(50, &[]), None], false);
        assert!(a.forced().is_err());
    }

    #[test]
    fn dirty_and_degraded_is_recorded_clean() {
        let (forced, plan) = nas(MdVersion::V1_2, true).forced().unwrap();
        assert!(plan.mark_clean);
        assert_eq!(forced.state, ArrayState::Clean);
    }

    #[test]
    fn written_superblocks_assemble_plainly_afterwards() {
        for version in [MdVersion::V1_2, MdVersion::V0_90] {
            let a = nas(version, true);
            let (mut forced, plan) = a.forced().unwrap();
            forced.write_forced(&plan).unwrap();
            // The same devices read anew, without force.
            let devs: Vec<(String, SharedDevice)> = a
                .slots
                .iter()
                .flatten()
                .chain(a.left_out.iter().map(|(m, _)| m))
                .map(|m| (m.path.clone(), m.device.clone()))
                .collect();
            let (members, _) = probe_members(devs.iter().map(|(p, d)| (p, d)));
            let again = assemble(members).remove(0);
            assert_eq!(
                paths(&again.slots),
                [None, Some("d1"), Some("d2"), Some("d3")],
                "{version}"
            );
            assert_eq!(again.events, 50);
            assert_eq!(again.state, ArrayState::Clean);
            assert!(matches!(again.left_out[0].1, LeftOut::Stale { .. }));
            for m in again.slots.iter().flatten() {
                assert_eq!(m.sb.events(), 50);
                assert_eq!(again.slots[1].as_ref().unwrap().sb.role_of(&m.sb), m.sb.role());
            }
            assert!(again.forced().unwrap().1.is_empty());
        }
    }
}
