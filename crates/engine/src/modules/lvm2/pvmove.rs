//! `pv move`: lvm2's pvmove, with lvm2's metadata. Starting a move commits the plan: a
//! temporary `pvmove0` LV (PVMOVE, LOCKED) with one `mirror` segment per source area, each
//! pairing the area with its destination, and the moved LVs (LOCKED) pointing at pvmove0
//! instead of the source. The copy then goes segment by segment, extent by extent, and
//! commits `extents_moved` as it goes (at least once a second and at each segment's end), so
//! a move stopped at any point resumes from its last checkpoint, by tessera or by lvm2's
//! `pvmove` (lvm2 copies again a segment it finds partly moved, from its start). Finishing
//! points the LVs at the destinations and drops pvmove0; aborting points each LV back at the
//! source, except for segments already moved, which stay on the destination, as lvm2's
//! `pvmove --abort` leaves them.
//!
//! A VG in the middle of a move is seen through [`settled`]: segments moved on their
//! destination, the others on their source, which is where the data is.

#[path = "pvmove_online.rs"]
pub mod online;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use tessera_formats::lvm2::config::{Node, Value};
use tessera_formats::lvm2::id::Id;
use tessera_formats::lvm2::vg::{
    LogicalVolume, MirrorSegment, Segment, SegmentKind, Stripe, VolumeGroup,
    DEFAULT_REGION_SECTORS, LOCKED, PVMOVE,
};

use super::alloc;
use super::commit;
use super::scan::{PvInfo, Scan, VgState};
use super::snapshot::{layer_uuid, StackDevice};
use super::table::{self, area_arg};
use crate::engine::{now, Engine};
use crate::error::{EngineError, Result};

/// How often the copy commits `extents_moved` at the least.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// The copy's I/O size.
const COPY_BYTES: u64 = 1 << 20;

/// md's speed limits, KiB/s, as the raid resync uses them: with no client I/O in an offline
/// move, the maximum is what counts.
#[derive(Debug, Clone, Copy)]
pub struct MoveLimits {
    pub min_rate_kib: u64,
    pub max_rate_kib: u64,
}

impl Default for MoveLimits {
    fn default() -> Self {
        MoveLimits {
            min_rate_kib: tessera_raid::sync::DEFAULT_MIN_RATE,
            max_rate_kib: tessera_raid::sync::DEFAULT_MAX_RATE,
        }
    }
}

/// Where a move is, for a progress bar: extents of pvmove0 done of its total.
#[derive(Debug, Clone)]
pub struct MoveProgress {
    pub vg: String,
    pub source: String,
    pub done_extents: u64,
    pub total_extents: u64,
    pub extent_bytes: u64,
}

/// What a run of the copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveReport {
    pub vg: String,
    /// The source PV's path.
    pub source: String,
    pub total_extents: u64,
    /// Extents already moved (by the checkpoints) when this run started.
    pub resumed_at_extents: u64,
    /// Extents this run copied.
    pub copied_extents: u64,
    pub checkpoints: u64,
    /// True when pvmove0 is gone and the LVs are on the destinations.
    pub finished: bool,
}

/// The pvmove LV of a VG, with the source PV's key (the first area of its segments).
fn pvmove_of(vg: &VolumeGroup) -> Option<(&LogicalVolume, String)> {
    let lv = vg.lvs.iter().find(|l| l.is_pvmove())?;
    let seg = lv.segments.first()?;
    let m = MirrorSegment::of(seg, "").ok()??;
    Some((lv, m.areas.first()?.pv.clone()))
}

fn mirror(seg: &Segment, at: &str) -> Result<MirrorSegment> {
    MirrorSegment::of(seg, at)?.ok_or_else(|| EngineError::Refused {
        vg: at.to_string(),
        why: format!("a pvmove segment of type {}, not mirror", seg.type_name()),
    })
}

/// The VG with every LV area on a pvmove LV replaced by the PV area that holds its data
/// now (the destination of a moved segment when `to_dest` says so, the source otherwise),
/// the pvmove LVs gone, LOCKED cleared and the moved LVs' adjacent segments merged.
pub fn settle(
    vg: &VolumeGroup,
    to_dest: &dyn Fn(&MirrorSegment, u64) -> bool,
) -> Result<VolumeGroup> {
    let mut out = vg.clone();
    let moves: Vec<LogicalVolume> = vg.lvs.iter().filter(|l| l.is_pvmove()).cloned().collect();
    if moves.is_empty() {
        return Ok(out);
    }
    let names: HashSet<&str> = moves.iter().map(|l| l.name.as_str()).collect();
    out.lvs.retain(|l| !l.is_pvmove());
    for lv in &mut out.lvs {
        let mut touched = false;
        let at = format!("VG '{}', LV '{}'", vg.name, lv.name);
        for seg in &mut lv.segments {
            let SegmentKind::Striped { stripes, .. } = &mut seg.kind else {
                continue;
            };
            for stripe in stripes.iter_mut() {
                if !names.contains(stripe.pv.as_str()) {
                    continue;
                }
                let pvmove = moves
                    .iter()
                    .find(|m| m.name == stripe.pv)
                    .expect("named among the moves");
                let mseg = pvmove
                    .segments
                    .iter()
                    .find(|s| {
                        s.start_extent <= stripe.start_pe
                            && stripe.start_pe < s.start_extent + s.extent_count
                    })
                    .ok_or_else(|| EngineError::Refused {
                        vg: vg.name.clone(),
                        why: format!(
                            "{at} names extent {} of {}, which has no segment there",
                            stripe.start_pe, pvmove.name
                        ),
                    })?;
                let m = mirror(mseg, &at)?;
                let side = if to_dest(&m, mseg.extent_count) { 1 } else { 0 };
                let area = m.areas.get(side).ok_or_else(|| EngineError::Refused {
                    vg: vg.name.clone(),
                    why: format!("{} has a segment with one side only", pvmove.name),
                })?;
                *stripe = Stripe {
                    pv: area.pv.clone(),
                    start_pe: area.start_pe + (stripe.start_pe - mseg.start_extent),
                };
                touched = true;
            }
        }
        if touched || lv.is_locked() {
            lv.status.retain(|s| s != LOCKED);
            merge_segments(lv);
        }
    }
    Ok(out)
}

/// Joins adjacent striped segments that continue each other on every stripe, as lvm2 does
/// after a move.
fn merge_segments(lv: &mut LogicalVolume) {
    let mut merged: Vec<Segment> = Vec::new();
    for seg in lv.segments.drain(..) {
        if let Some(prev) = merged.last_mut() {
            if let (
                SegmentKind::Striped {
                    stripe_size_sectors: a_size,
                    stripes: a,
                },
                SegmentKind::Striped {
                    stripe_size_sectors: b_size,
                    stripes: b,
                },
            ) = (&prev.kind, &seg.kind)
            {
                let per = prev.extent_count / a.len().max(1) as u64;
                let continues = a_size == b_size
                    && a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| x.pv == y.pv && x.start_pe + per == y.start_pe);
                if continues && prev.start_extent + prev.extent_count == seg.start_extent {
                    prev.extent_count += seg.extent_count;
                    continue;
                }
            }
        }
        merged.push(seg);
    }
    lv.segments = merged;
}

/// The VG as its data lies now: moved segments on their destinations, the rest on their
/// sources (lvm2's `--abort` leaves it so).
pub fn settled(vg: &VolumeGroup) -> Result<VolumeGroup> {
    settle(vg, &|m, count| m.is_moved(count))
}

/// Whether `lv` (or an LV it is built of) lies on a pvmove segment copied in part: its
/// data is on the source, and a write to the source only would not reach the part of the
/// destination a resumed move takes as copied.
pub fn on_partly_moved(vg: &VolumeGroup, lv_name: &str) -> bool {
    let moves: Vec<&LogicalVolume> = vg.lvs.iter().filter(|l| l.is_pvmove()).collect();
    let mut seen = HashSet::new();
    let mut todo = vec![lv_name.to_string()];
    let names: HashSet<&str> = vg.lvs.iter().map(|l| l.name.as_str()).collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(lv) = vg.lv(&name) else { continue };
        for seg in &lv.segments {
            if let SegmentKind::Striped { stripes, .. } = &seg.kind {
                for st in stripes {
                    let Some(pm) = moves.iter().find(|m| m.name == st.pv) else {
                        continue;
                    };
                    let partly = pm.segments.iter().any(|s| {
                        s.start_extent <= st.start_pe
                            && st.start_pe < s.start_extent + s.extent_count
                            && MirrorSegment::of(s, "").ok().flatten().is_some_and(|m| {
                                m.extents_moved.is_some_and(|d| d > 0 && d < s.extent_count)
                            })
                    });
                    if partly {
                        return true;
                    }
                }
            }
        }
        todo.extend(
            lv.referenced_names(&names)
                .into_iter()
                .filter(|n| !moves.iter().any(|m| m.name == *n))
                .map(str::to_string),
        );
    }
    false
}

/// One area of an LV on the source PV: LV index, segment index, stripe index.
struct SourceArea {
    lv: usize,
    seg: usize,
    stripe: usize,
    count: u64,
}

/// The PVs (keys) that hold the other images of the raid LV whose sub-LV `sub` is, if it is
/// one: a moved image may not land beside its siblings.
fn raid_siblings_pvs(vg: &VolumeGroup, sub: &str, source: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for lv in &vg.lvs {
        let Some(raid) = lv.raid() else { continue };
        let subs: Vec<&String> = raid
            .images
            .iter()
            .flat_map(|i| i.meta.iter().chain(std::iter::once(&i.data)))
            .collect();
        if !subs.iter().any(|s| *s == sub) {
            continue;
        }
        let slot = raid
            .images
            .iter()
            .position(|i| i.data == sub || i.meta.as_deref() == Some(sub));
        for (j, image) in raid.images.iter().enumerate() {
            if Some(j) == slot {
                continue;
            }
            for name in image.meta.iter().chain(std::iter::once(&image.data)) {
                if let Some(l) = vg.lv(name) {
                    for seg in &l.segments {
                        if let SegmentKind::Striped { stripes, .. } = &seg.kind {
                            out.extend(
                                stripes
                                    .iter()
                                    .filter(|s| s.pv != source)
                                    .map(|s| s.pv.clone()),
                            );
                        }
                    }
                }
            }
        }
    }
    out
}

/// The plan of a move of `source` (a PV key) to `dests` (keys), of the LVs in `only` (all
/// when None): the VG with pvmove0 and the moved LVs pointing at it, as lvm2 commits it.
pub fn plan(
    vg: &VolumeGroup,
    source: &str,
    dests: &[String],
    only: Option<&HashSet<String>>,
    hostname: &str,
) -> Result<VolumeGroup> {
    let refuse = |why: String| EngineError::Refused {
        vg: vg.name.clone(),
        why,
    };
    if let Some((lv, _)) = pvmove_of(vg) {
        return Err(refuse(format!(
            "a move is in progress ({}); resume it with `tessera pv move` or undo it with \
             `tessera pv move --abort`",
            lv.name
        )));
    }
    let mut areas = Vec::new();
    for (li, lv) in vg.lvs.iter().enumerate() {
        for (si, seg) in lv.segments.iter().enumerate() {
            let pv_areas = seg.pv_areas(&vg.pv_keys());
            if !pv_areas.iter().any(|a| a.pv == source) {
                continue;
            }
            if only.is_some_and(|o| !o.contains(&lv.name)) {
                continue;
            }
            let SegmentKind::Striped { stripes, .. } = &seg.kind else {
                return Err(refuse(format!(
                    "LV '{}' has a {} segment on the PV; tessera moves linear, striped and raid \
                     LVs (their images) only",
                    lv.name,
                    seg.type_name()
                )));
            };
            let per = seg.extent_count / stripes.len().max(1) as u64;
            for (ti, st) in stripes.iter().enumerate() {
                if st.pv == source {
                    areas.push(SourceArea {
                        lv: li,
                        seg: si,
                        stripe: ti,
                        count: per,
                    });
                }
            }
        }
    }
    if areas.is_empty() {
        return Err(refuse(format!(
            "no extents to move on PV {source}{}",
            if only.is_some() {
                " of the LVs named"
            } else {
                ""
            }
        )));
    }
    // Destinations: each source area takes free extents of the destinations in order,
    // split over free areas where one does not hold it.
    let mut free = alloc::free_areas(vg, Some(dests));
    let mut pieces: Vec<Vec<(String, u64, u64)>> = Vec::new();
    for area in &areas {
        // Nor may a stripe join another stripe of its segment.
        let mut banned = raid_siblings_pvs(vg, &vg.lvs[area.lv].name, source);
        if let SegmentKind::Striped { stripes, .. } = &vg.lvs[area.lv].segments[area.seg].kind {
            banned.extend(
                stripes
                    .iter()
                    .filter(|s| s.pv != source)
                    .map(|s| s.pv.clone()),
            );
        }
        let mut need = area.count;
        let mut got = Vec::new();
        for f in free.iter_mut() {
            if need == 0 {
                break;
            }
            let key = &vg.pvs[f.pv].key;
            if f.count == 0 || banned.contains(key) {
                continue;
            }
            let take = need.min(f.count);
            got.push((key.clone(), f.start_pe, take));
            f.start_pe += take;
            f.count -= take;
            need -= take;
        }
        if need > 0 {
            let total: u64 = areas.iter().map(|a| a.count).sum();
            return Err(refuse(format!(
                "the destinations lack free extents: {total} to move, {} free on {} \
                 (a raid image may not join its siblings' PVs, nor a stripe the other stripes')",
                alloc::free_areas(vg, Some(dests))
                    .iter()
                    .map(|f| f.count)
                    .sum::<u64>(),
                dests.join(", ")
            )));
        }
        pieces.push(got);
    }
    let pvmove_name = (0..)
        .map(|n| format!("pvmove{n}"))
        .find(|n| vg.lv(n).is_none())
        .expect("a free name");
    let mut out = vg.clone();
    let mut mirror_segs: Vec<Segment> = Vec::new();
    let mut next_le = 0u64;
    // Rebuild each touched LV segment: split where a destination piece ends.
    let mut by_seg: std::collections::BTreeMap<(usize, usize), Vec<usize>> = Default::default();
    for (i, a) in areas.iter().enumerate() {
        by_seg.entry((a.lv, a.seg)).or_default().push(i);
    }
    let mut new_segments: std::collections::BTreeMap<usize, Vec<(usize, Vec<Segment>)>> =
        Default::default();
    for ((li, si), idx) in &by_seg {
        let seg = &vg.lvs[*li].segments[*si];
        let SegmentKind::Striped {
            stripe_size_sectors,
            stripes,
        } = &seg.kind
        else {
            unreachable!("only striped segments are planned")
        };
        let k = stripes.len() as u64;
        let per = seg.extent_count / k;
        let mut cuts: BTreeSet<u64> = [0, per].into_iter().collect();
        for &i in idx {
            let mut at = 0;
            for (_, _, len) in &pieces[i] {
                at += len;
                cuts.insert(at);
            }
        }
        let cuts: Vec<u64> = cuts.into_iter().collect();
        let mut segs = Vec::new();
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let mut new_stripes = Vec::new();
            for (ti, st) in stripes.iter().enumerate() {
                let Some(&i) = idx.iter().find(|&&i| areas[i].stripe == ti) else {
                    new_stripes.push(Stripe {
                        pv: st.pv.clone(),
                        start_pe: st.start_pe + a,
                    });
                    continue;
                };
                // The destination piece holding [a, b) of this stripe.
                let mut piece_start = 0;
                let mut dest = None;
                for (pv, pe, len) in &pieces[i] {
                    if a >= piece_start && a < piece_start + len {
                        dest = Some(Stripe {
                            pv: pv.clone(),
                            start_pe: pe + (a - piece_start),
                        });
                        break;
                    }
                    piece_start += len;
                }
                let dest = dest.expect("the pieces cover the stripe");
                let source_area = Stripe {
                    pv: source.to_string(),
                    start_pe: st.start_pe + a,
                };
                mirror_segs
                    .push(MirrorSegment::pvmove(source_area, dest, 0).to_segment(next_le, b - a));
                new_stripes.push(Stripe {
                    pv: pvmove_name.clone(),
                    start_pe: next_le,
                });
                next_le += b - a;
            }
            segs.push(Segment {
                start_extent: seg.start_extent + a * k,
                extent_count: (b - a) * k,
                kind: SegmentKind::Striped {
                    stripe_size_sectors: *stripe_size_sectors,
                    stripes: new_stripes,
                },
            });
        }
        new_segments.entry(*li).or_default().push((*si, segs));
    }
    for (li, replaced) in new_segments {
        let lv = &mut out.lvs[li];
        let mut segs = Vec::new();
        for (si, seg) in lv.segments.drain(..).enumerate() {
            match replaced.iter().find(|(i, _)| *i == si) {
                Some((_, new)) => segs.extend(new.iter().cloned()),
                None => segs.push(seg),
            }
        }
        lv.segments = segs;
        if !lv.is_locked() {
            lv.status.push(LOCKED.into());
        }
    }
    out.lvs.push(LogicalVolume {
        name: pvmove_name,
        id: Id::random(),
        status: vec!["READ".into(), "WRITE".into(), PVMOVE.into(), LOCKED.into()],
        flags: Vec::new(),
        creation_time: Some(now()),
        creation_host: Some(hostname.to_string()),
        extra: vec![(
            "allocation_policy".into(),
            Node::Value(Value::Str("contiguous".into())),
        )],
        segments: mirror_segs,
    });
    out.validate()?;
    Ok(out)
}

/// Copies `len` bytes from `src` at `from` to `dst` at `to`, paced to `limits`.
fn copy_range(
    src: &PvInfo,
    dst: &PvInfo,
    from: u64,
    to: u64,
    len: u64,
    pace: &mut Pace,
) -> Result<()> {
    let mut buf = vec![0u8; COPY_BYTES.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.device.read_at(&mut buf[..n], from + done)?;
        dst.device.write_at(&buf[..n], to + done)?;
        done += n as u64;
        pace.step(n as u64);
    }
    Ok(())
}

/// Holds the copy under the maximum rate.
struct Pace {
    started: Instant,
    bytes: u64,
    max_kib: u64,
}

impl Pace {
    fn step(&mut self, bytes: u64) {
        self.bytes += bytes;
        if self.max_kib == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / 1024.0 / self.max_kib as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

impl Engine {
    /// Starts moving the extents of PV `source` (a path) to `dests` (paths; every other
    /// allocatable PV of its VG when empty), of LV `only` (a name in the VG) or of all LVs:
    /// commits the plan. Returns the VG's name. A move already in progress from `source` is
    /// not started again (resume it with [`Engine::pv_move_run`]).
    pub fn pv_move_start(
        &self,
        source: &str,
        dests: &[String],
        only: Option<&str>,
    ) -> Result<String> {
        self.pv_move_start_with(source, dests, only, true)
    }

    /// As [`Engine::pv_move_start`]; without `claim` the PVs are not claimed, for a daemon
    /// that serves the VG and holds them itself.
    pub fn pv_move_start_with(
        &self,
        source: &str,
        dests: &[String],
        only: Option<&str>,
        claim: bool,
    ) -> Result<String> {
        let scan = self.scan_with(true)?;
        let i = Self::pv_index(&scan, source).ok_or_else(|| EngineError::NotPv {
            device: source.to_string(),
        })?;
        let vg_name = scan.pvs[i]
            .vg_name
            .clone()
            .ok_or_else(|| EngineError::BadArgument(format!("{source} belongs to no VG")))?;
        let _lock = self.lock_vg(&vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, &vg_name)?;
        let vg = &state.vg;
        let source_key = Self::allowed_keys(&scan, vg, &[source.to_string()])?
            .and_then(|k| k.into_iter().next())
            .expect("one PV asked for");
        let dest_keys = match Self::allowed_keys(&scan, vg, dests)? {
            Some(keys) => {
                if keys.contains(&source_key) {
                    return Err(EngineError::BadArgument(format!(
                        "{source} is the source; it cannot be a destination too"
                    )));
                }
                keys
            }
            None => vg
                .pvs
                .iter()
                .filter(|p| p.key != source_key && p.is_allocatable())
                .map(|p| p.key.clone())
                .collect(),
        };
        let only_set = match only {
            None => None,
            Some(name) => {
                let lv = vg.lv(name).ok_or_else(|| EngineError::LvNotFound {
                    vg: vg_name.clone(),
                    lv: name.into(),
                })?;
                let names: HashSet<&str> = vg.lvs.iter().map(|l| l.name.as_str()).collect();
                let mut set: HashSet<String> = HashSet::from([lv.name.clone()]);
                // A raid LV moves with its images and their metadata.
                set.extend(lv.referenced_names(&names).into_iter().map(str::to_string));
                Some(set)
            }
        };
        let planned = plan(
            vg,
            &source_key,
            &dest_keys,
            only_set.as_ref(),
            &self.hostname,
        )?;
        // Refused before anything is written when the PVs are in use.
        let mut involved: BTreeSet<String> = dest_keys.iter().cloned().collect();
        involved.insert(source_key.clone());
        let _claims = if claim {
            claim_pvs(&scan, state, &involved)?
        } else {
            Vec::new()
        };
        self.commit(&scan, Some(state), planned, &[])?;
        Ok(vg_name)
    }

    /// The source of the move in progress in VG `vg_name` as the LVs are to be served
    /// while it runs: its path and the [`online::MovingPv`] that mirrors its segments not
    /// yet moved onto their destinations (set it with [`Engine::overlay_device`]).
    pub fn pv_move_source(&self, vg_name: &str) -> Result<(String, online::MovingPv)> {
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let vg = &state.vg;
        let Some((pvmove, source_key)) = pvmove_of(vg) else {
            return Err(EngineError::Refused {
                vg: vg_name.into(),
                why: "no move is in progress".into(),
            });
        };
        let at = format!("VG '{vg_name}', LV '{}'", pvmove.name);
        let extent_bytes = vg.extent_size_bytes();
        let place = |area: &Stripe| -> Result<(&PvInfo, u64)> {
            let pv = vg.pv(&area.pv).ok_or_else(|| EngineError::Refused {
                vg: vg_name.into(),
                why: format!("{at} names PV '{}', which the VG does not have", area.pv),
            })?;
            let i = state
                .present
                .get(&area.pv)
                .ok_or_else(|| EngineError::VgPartial {
                    vg: vg_name.into(),
                    count: 1,
                    list: area.pv.clone(),
                })?;
            Ok((
                &scan.pvs[*i],
                pv.pe_start_sectors * 512 + area.start_pe * extent_bytes,
            ))
        };
        let mut areas = Vec::new();
        let mut source = None;
        for seg in &pvmove.segments {
            let m = mirror(seg, &at)?;
            if m.is_moved(seg.extent_count) {
                continue;
            }
            let [src, dst] = m.areas.as_slice() else {
                return Err(EngineError::Refused {
                    vg: vg_name.into(),
                    why: format!(
                        "{at}: a segment with {} sides; a move has two",
                        m.areas.len()
                    ),
                });
            };
            let (src_pv, from) = place(src)?;
            let (dst_pv, to) = place(dst)?;
            source = Some(src_pv);
            areas.push(online::MovingArea {
                from,
                len: seg.extent_count * extent_bytes,
                dest: dst_pv.device.clone(),
                to,
            });
        }
        let source = match source {
            Some(pv) => pv,
            None => {
                place(&Stripe {
                    pv: source_key,
                    start_pe: 0,
                })?
                .0
            }
        };
        Ok((
            source.path.clone(),
            online::MovingPv::new(source.device.clone(), areas),
        ))
    }

    /// The VGs with a move in progress, with each move's source PV path.
    pub fn pv_moves(&self) -> Result<Vec<(String, String)>> {
        let scan = self.scan()?;
        Ok(scan
            .vgs
            .iter()
            .filter_map(|(name, st)| {
                let (_, key) = pvmove_of(&st.vg)?;
                let path = st
                    .present
                    .get(&key)
                    .map(|&i| scan.pvs[i].path.clone())
                    .or_else(|| st.vg.pv(&key).map(|p| p.device.clone()))
                    .unwrap_or(key);
                Some((name.clone(), path))
            })
            .collect())
    }

    /// Runs (or resumes) the move in progress in VG `vg_name` to its end: copies each
    /// segment from its checkpoint, commits `extents_moved` at least every
    /// [`CHECKPOINT_EVERY`] and at each segment's end, then finishes as lvm2 does.
    /// `stop` is polled between pieces: when it says so, the run ends at a checkpoint.
    pub fn pv_move_run(
        &self,
        vg_name: &str,
        limits: MoveLimits,
        progress: &mut dyn FnMut(&MoveProgress),
        stop: &dyn Fn() -> bool,
    ) -> Result<MoveReport> {
        self.pv_move_run_with(vg_name, limits, progress, stop, None)
    }

    /// As [`Engine::pv_move_run`]; with `online`, the move of a VG whose LVs a daemon
    /// serves: the PVs are the daemon's (not claimed) and the copy goes through the source
    /// it serves the LVs from ([`online::MovingPv`]), under its region locks, paced to
    /// md's limits while clients do I/O.
    pub fn pv_move_run_with(
        &self,
        vg_name: &str,
        limits: MoveLimits,
        progress: &mut dyn FnMut(&MoveProgress),
        stop: &dyn Fn() -> bool,
        online: Option<&online::MovingPv>,
    ) -> Result<MoveReport> {
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        let Some((pvmove, source_key)) = pvmove_of(&vg) else {
            return Err(EngineError::Refused {
                vg: vg_name.into(),
                why: "no move is in progress".into(),
            });
        };
        let pvmove_name = pvmove.name.clone();
        let at = format!("VG '{vg_name}', LV '{pvmove_name}'");
        let total: u64 = pvmove.extent_count();
        let mut done: u64 = 0;
        for s in &pvmove.segments {
            done += mirror(s, &at)?.extents_moved.unwrap_or(0);
        }
        let source_path = state
            .present
            .get(&source_key)
            .map(|&i| scan.pvs[i].path.clone())
            .unwrap_or_default();
        let mut report = MoveReport {
            vg: vg_name.into(),
            source: source_path.clone(),
            total_extents: total,
            resumed_at_extents: done,
            ..MoveReport::default()
        };
        // Nothing else may use the PVs while the copy runs.
        let mut involved = BTreeSet::new();
        for s in &pvmove.segments {
            involved.extend(mirror(s, &at)?.areas.into_iter().map(|a| a.pv));
        }
        let _claims = match online {
            None => claim_pvs(&scan, state, &involved)?,
            Some(_) => Vec::new(),
        };
        let mut online_pace = online::Pace::new(limits);
        let extent_bytes = vg.extent_size_bytes();
        let mut pace = Pace {
            started: Instant::now(),
            bytes: 0,
            max_kib: limits.max_rate_kib,
        };
        let mut last_checkpoint = Instant::now();
        let mut show = |done: u64| {
            progress(&MoveProgress {
                vg: vg_name.into(),
                source: source_path.clone(),
                done_extents: done,
                total_extents: total,
                extent_bytes,
            })
        };
        show(done);
        let nsegs = vg.lv(&pvmove_name).map_or(0, |l| l.segments.len());
        for si in 0..nsegs {
            let seg = vg.lv(&pvmove_name).expect("pvmove LV").segments[si].clone();
            let mut m = mirror(&seg, &at)?;
            let mut moved = m.extents_moved.unwrap_or(0);
            if moved >= seg.extent_count {
                continue;
            }
            let [src, dst] = m.areas.as_slice() else {
                return Err(EngineError::Refused {
                    vg: vg_name.into(),
                    why: format!(
                        "{at}: a segment with {} sides; a move has two",
                        m.areas.len()
                    ),
                });
            };
            let place = |area: &Stripe| -> Result<(&PvInfo, u64)> {
                let pv = vg.pv(&area.pv).ok_or_else(|| EngineError::Refused {
                    vg: vg_name.into(),
                    why: format!("{at} names PV '{}', which the VG does not have", area.pv),
                })?;
                let i = state
                    .present
                    .get(&area.pv)
                    .ok_or_else(|| EngineError::VgPartial {
                        vg: vg_name.into(),
                        count: 1,
                        list: area.pv.clone(),
                    })?;
                Ok((
                    &scan.pvs[*i],
                    pv.pe_start_sectors * 512 + area.start_pe * extent_bytes,
                ))
            };
            let (src_pv, src_at) = place(src)?;
            let (dst_pv, dst_at) = place(dst)?;
            while moved < seg.extent_count {
                if stop() {
                    return Ok(report);
                }
                match online {
                    Some(pv) => pv.copy(
                        src_at + moved * extent_bytes,
                        extent_bytes,
                        &mut online_pace,
                    )?,
                    None => copy_range(
                        src_pv,
                        dst_pv,
                        src_at + moved * extent_bytes,
                        dst_at + moved * extent_bytes,
                        extent_bytes,
                        &mut pace,
                    )?,
                }
                moved += 1;
                done += 1;
                report.copied_extents += 1;
                show(done);
                if moved == seg.extent_count || last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                    match online {
                        Some(pv) => tessera_block::BlockDevice::flush(pv)?,
                        None => dst_pv.device.flush()?,
                    }
                    m.extents_moved = Some(moved);
                    let lv = vg.lv_mut(&pvmove_name).expect("pvmove LV");
                    lv.segments[si] = m.to_segment(seg.start_extent, seg.extent_count);
                    vg.seqno += 1;
                    vg.validate()?;
                    self.checkpoint(vg_name, &vg)?;
                    report.checkpoints += 1;
                    last_checkpoint = Instant::now();
                    tracing::debug!(
                        "{vg_name}: {pvmove_name} checkpoint at {done}/{total} extents"
                    );
                }
            }
        }
        // Every segment is moved: the LVs go to the destinations, pvmove0 away.
        let finished = settle(&vg, &|_, _| true)?;
        let fresh = self.scan_with(true)?;
        let current = Self::vg_for_change(&fresh, vg_name)?;
        if current.vg.seqno != vg.seqno {
            return Err(EngineError::Refused {
                vg: vg_name.into(),
                why: format!(
                    "its metadata changed under the move (seqno {}, expected {})",
                    current.vg.seqno, vg.seqno
                ),
            });
        }
        self.commit(&fresh, Some(current), finished, &[])?;
        report.finished = true;
        Ok(report)
    }

    /// Commits `vg` (its seqno raised) as a checkpoint, without archiving it. The PVs'
    /// metadata areas are read afresh each time, so the new text goes after the current one
    /// and never over it: a crash in the middle leaves the last checkpoint readable.
    fn checkpoint(&self, vg_name: &str, vg: &VolumeGroup) -> Result<()> {
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        if state.vg.seqno + 1 != vg.seqno {
            return Err(EngineError::Refused {
                vg: vg_name.into(),
                why: format!(
                    "its metadata changed under the move (seqno {}, expected {})",
                    state.vg.seqno,
                    vg.seqno - 1
                ),
            });
        }
        vg.validate()?;
        let pvs: Vec<&PvInfo> = vg
            .pvs
            .iter()
            .map(|pv| &scan.pvs[state.present[&pv.key]])
            .collect();
        commit::write_vg(&pvs, vg, &self.text_info())
    }

    /// Undoes the move in progress in VG `vg_name` as lvm2's `pvmove --abort` does: the
    /// segments not moved go back to the source, those moved stay on the destination.
    pub fn pv_move_abort(&self, vg_name: &str) -> Result<VolumeGroup> {
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        if pvmove_of(&state.vg).is_none() {
            return Err(EngineError::Refused {
                vg: vg_name.into(),
                why: "no move is in progress".into(),
            });
        }
        let back = settled(&state.vg)?;
        self.commit(&scan, Some(state), back, &[])
    }
}

/// Claims the PVs `keys` of `state` for the copy, which bypasses every mapped device: a
/// daemon serving the LVs claims them, and the kernel holds them while they are active.
fn claim_pvs(
    scan: &Scan,
    state: &VgState,
    keys: &BTreeSet<String>,
) -> Result<Vec<crate::claim::Claim>> {
    let mut claims = Vec::new();
    for key in keys {
        if let Some(&i) = state.present.get(key) {
            let claimed =
                crate::claim::claim(&scan.pvs[i].path).map_err(|e| EngineError::Refused {
                    vg: state.vg.name.clone(),
                    why: format!(
                        "{e}; the move runs offline (stop serving the VG's LVs and deactivate \
                         them first)"
                    ),
                })?;
            claims.push(claimed);
        }
    }
    Ok(claims)
}

/// A VG state as its data lies now (see [`settled`]), for activation and reports.
pub fn settled_state(state: &VgState) -> Result<VgState> {
    let mut out = state.clone();
    out.vg = settled(&state.vg)?;
    Ok(out)
}

/// Whether the scan's VG `name` has a move in progress.
pub fn moving(scan: &Scan, name: &str) -> bool {
    scan.vg(name).is_some_and(|s| pvmove_of(&s.vg).is_some())
}

/// The pvmove LVs whose extents LV `lv_name`'s own stripes name (an LV being moved).
pub fn pvmoves_under(vg: &VolumeGroup, lv_name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Some(lv) = vg.lv(lv_name) else {
        return out;
    };
    for seg in &lv.segments {
        if let SegmentKind::Striped { stripes, .. } = &seg.kind {
            for st in stripes {
                let on_move = vg.lv(&st.pv).is_some_and(|l| l.is_pvmove());
                if on_move && !out.contains(&st.pv) {
                    out.push(st.pv.clone());
                }
            }
        }
    }
    out
}

/// The table lvm2 loads for pvmove LV `name`, one row per segment: a segment moved is
/// linear on its destination; the first one not moved is a `mirror` with a core log (the
/// one the copy runs on, from its start: lvm2 keeps no record of a partial copy); those
/// after it are linear on their sources until the copy reaches them.
pub fn pvmove_table(scan: &Scan, state: &VgState, name: &str) -> Result<String> {
    let vg = &state.vg;
    let lv = vg
        .lv(name)
        .filter(|l| l.is_pvmove())
        .ok_or_else(|| EngineError::LvNotFound {
            vg: vg.name.clone(),
            lv: name.into(),
        })?;
    let extent = vg.extent_size_sectors;
    let at = format!("VG '{}', LV '{name}'", vg.name);
    let mut table = String::new();
    let mut copying = false;
    for seg in &lv.segments {
        let m = mirror(seg, &at)?;
        let [source, dest] = &m.areas[..] else {
            return Err(EngineError::Refused {
                vg: vg.name.clone(),
                why: format!(
                    "{at} has a segment of {} areas; a pvmove segment has two",
                    m.areas.len()
                ),
            });
        };
        let start = seg.start_extent * extent;
        let len = seg.extent_count * extent;
        let src = area_arg(scan, state, name, source)?;
        let dst = area_arg(scan, state, name, dest)?;
        let row = if m.is_moved(seg.extent_count) {
            format!("{start} {len} linear {dst}")
        } else if !copying {
            copying = true;
            let region = m.region_size_sectors.unwrap_or(DEFAULT_REGION_SECTORS);
            format!("{start} {len} mirror core 1 {region} 2 {src} {dst}")
        } else {
            format!("{start} {len} linear {src}")
        };
        table.push_str(&row);
        table.push('\n');
    }
    Ok(table)
}

/// The devices lvm2 loads for a linear or striped LV being moved: the pvmove LVs it lies
/// on (`VG-pvmove0`, see [`pvmove_table`]), then its own, whose rows name them.
pub fn pvmove_devices(scan: &Scan, state: &VgState, lv_name: &str) -> Result<Vec<StackDevice>> {
    let vg = &state.vg;
    let mut out = Vec::new();
    for name in pvmoves_under(vg, lv_name) {
        let lv = vg.lv(&name).expect("found among the VG's LVs");
        out.push(StackDevice {
            name: table::dm_name(&vg.name, &name),
            uuid: layer_uuid(vg, lv, ""),
            table: pvmove_table(scan, state, &name)?,
            lv: None,
        });
    }
    let lv = vg.lv(lv_name).ok_or_else(|| EngineError::LvNotFound {
        vg: vg.name.clone(),
        lv: lv_name.into(),
    })?;
    out.push(StackDevice {
        name: table::dm_name(&vg.name, lv_name),
        uuid: layer_uuid(vg, lv, ""),
        table: table::plain_table(scan, state, lv_name)?,
        lv: Some(lv_name.to_string()),
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lvm2 2.03.16's texts of one VG (see tessera-formats' pvmove tests): before
    /// `pvmove /dev/loop0 /dev/mapper/slow`, during it (first segment moved), after it.
    const BEFORE: &str = include_str!("../../../../formats/src/lvm2/testdata/pvmove_before_vg.txt");
    const MID: &str = include_str!("../../../../formats/src/lvm2/testdata/pvmove_mid_vg.txt");
    const DONE: &str = include_str!("../../../../formats/src/lvm2/testdata/pvmove_done_vg.txt");

    fn vg(text: &str) -> VolumeGroup {
        VolumeGroup::from_text(text.as_bytes()).unwrap().0
    }

    /// An LV's status and segments, what a move changes.
    fn shape(vg: &VolumeGroup) -> Vec<(String, Vec<String>, Vec<Segment>)> {
        vg.lvs
            .iter()
            .map(|l| (l.name.clone(), l.status.clone(), l.segments.clone()))
            .collect()
    }

    fn with_moved(vg: &VolumeGroup, moved: &[u64]) -> VolumeGroup {
        let mut out = vg.clone();
        let lv = out.lvs.iter_mut().find(|l| l.is_pvmove()).unwrap();
        for (seg, &n) in lv.segments.iter_mut().zip(moved) {
            let mut m = MirrorSegment::of(seg, "").unwrap().unwrap();
            m.extents_moved = Some(n);
            *seg = m.to_segment(seg.start_extent, seg.extent_count);
        }
        out
    }

    #[test]
    fn the_plan_is_lvm2s_pvmove0_and_moved_lvs() {
        let before = vg(BEFORE);
        let planned = plan(&before, "pv0", &["pv3".into()], None, "(none)").unwrap();
        // lvm2's text, with its first segment not moved yet.
        let lvm2 = with_moved(&vg(MID), &[0, 0, 0, 0, 0, 0]);
        assert_eq!(shape(&planned), shape(&lvm2));
        let ours = planned.lv("pvmove0").unwrap();
        let theirs = lvm2.lv("pvmove0").unwrap();
        assert_eq!((&ours.status, &ours.extra), (&theirs.status, &theirs.extra));
    }

    #[test]
    fn finishing_leaves_the_vg_as_lvm2_does() {
        let done = settle(&vg(MID), &|_, _| true).unwrap();
        assert_eq!(shape(&done), shape(&vg(DONE)));
    }

    #[test]
    fn aborting_keeps_moved_segments_on_the_destination_only() {
        let mid = vg(MID);
        let back = settled(&mid).unwrap();
        assert!(back.pvmove_lvs().is_empty());
        assert!(back.lvs.iter().all(|l| !l.is_locked()));
        // lin's first 3 extents were moved (pv3 0..3), its last 2 were not (pv0 5..7).
        let lin = back.lv("lin").unwrap();
        let stripes: Vec<_> = lin
            .segments
            .iter()
            .map(|s| match &s.kind {
                SegmentKind::Striped { stripes, .. } => {
                    (stripes[0].pv.clone(), stripes[0].start_pe)
                }
                _ => panic!("striped"),
            })
            .collect();
        assert_eq!(stripes, vec![("pv3".into(), 0), ("pv0".into(), 5)]);
        assert_eq!(back.pe_used("pv0"), 9);
        assert_eq!(back.pe_used("pv3"), 3);
        // Nothing moved: the VG before the move.
        let none = settled(&with_moved(&mid, &[0; 6])).unwrap();
        assert_eq!(shape(&none), shape(&vg(BEFORE)));
    }

    #[test]
    fn a_partly_moved_segment_is_found_through_raid_images() {
        let mid = vg(MID);
        assert!(!on_partly_moved(&mid, "lin"));
        let partly = with_moved(&mid, &[3, 0, 0, 0, 1, 0]);
        assert!(on_partly_moved(&partly, "r1"));
        assert!(!on_partly_moved(&partly, "lin"));
        assert!(!on_partly_moved(&partly, "str"));
    }

    #[test]
    fn a_destination_split_over_free_areas_splits_the_lv_segments() {
        let before = vg(BEFORE);
        // r1's image 0 may not go to pv2, beside its sibling, nor str's stripe on pv0 to pv1,
        // beside its other stripe: str's goes to pv2, the rest to pv1.
        let planned = plan(&before, "pv0", &["pv1".into(), "pv2".into()], None, "h").unwrap();
        let done = settle(&planned, &|_, _| true).unwrap();
        let used = |vg: &VolumeGroup| ["pv0", "pv1", "pv2"].map(|k| vg.pe_used(k));
        assert_eq!(used(&done), [0, 2 + 10, 3 + 2]);
        let e = plan(&before, "pv0", &["pv2".into()], None, "h").unwrap_err();
        assert!(e.to_string().contains("lack free extents"), "{e}");
        // pv1 cut to 4 extents (2 free): lin's first segment (3) splits over pv1 and pv2.
        let mut small = before.clone();
        small.pvs[1].pe_count = 4;
        let only: HashSet<String> = HashSet::from(["lin".to_string()]);
        let planned = plan(
            &small,
            "pv0",
            &["pv1".into(), "pv2".into()],
            Some(&only),
            "h",
        )
        .unwrap();
        let pvmove = planned.lv("pvmove0").unwrap();
        let sides: Vec<_> = pvmove
            .segments
            .iter()
            .map(|s| {
                let m = MirrorSegment::of(s, "").unwrap().unwrap();
                (
                    s.extent_count,
                    m.areas[0].start_pe,
                    m.areas[1].pv.clone(),
                    m.areas[1].start_pe,
                )
            })
            .collect();
        assert_eq!(
            sides,
            vec![
                (2, 0, "pv1".into(), 2),
                (1, 2, "pv2".into(), 3),
                (2, 5, "pv2".into(), 4)
            ]
        );
        assert_eq!(planned.lv("lin").unwrap().segments.len(), 3);
        assert!(!planned.lv("gap").unwrap().is_locked());
        let done = settle(&planned, &|_, _| true).unwrap();
        let lin: Vec<_> = done
            .lv("lin")
            .unwrap()
            .segments
            .iter()
            .map(|s| match &s.kind {
                SegmentKind::Striped { stripes, .. } => {
                    (s.extent_count, stripes[0].pv.clone(), stripes[0].start_pe)
                }
                _ => panic!("striped"),
            })
            .collect();
        assert_eq!(lin, vec![(2, "pv1".into(), 2), (3, "pv2".into(), 3)]);
        let e = plan(&vg(MID), "pv0", &["pv3".into()], None, "h").unwrap_err();
        assert!(e.to_string().contains("in progress"), "{e}");
    }
}
