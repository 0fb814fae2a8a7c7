//! Extent allocation with lvm2's "normal" policy in spirit: grow in place where the next
//! extents are free, otherwise take one area that holds the whole request, otherwise span
//! the largest free areas; stripes always go to distinct PVs.

use std::collections::HashSet;

use tessera_formats::lvm2::vg::{Segment, SegmentKind, Stripe, VolumeGroup};

use crate::error::{EngineError, Result};
use crate::units::{Amount, PercentOf};

/// A run of free extents on one PV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeArea {
    /// Index into `VolumeGroup::pvs`.
    pub pv: usize,
    pub start_pe: u64,
    pub count: u64,
}

/// Free areas of the allocatable PVs among `allowed` (PV keys; all when None), in PV order
/// and extent order.
pub fn free_areas(vg: &VolumeGroup, allowed: Option<&[String]>) -> Vec<FreeArea> {
    let used = vg.used_areas();
    let mut out = Vec::new();
    for (i, pv) in vg.pvs.iter().enumerate() {
        if !pv.is_allocatable() || allowed.is_some_and(|a| !a.contains(&pv.key)) {
            continue;
        }
        let mut next = 0;
        let areas = used.get(&pv.key).map(Vec::as_slice).unwrap_or_default();
        for (area, _) in areas {
            if area.start_pe > next {
                out.push(FreeArea {
                    pv: i,
                    start_pe: next,
                    count: area.start_pe - next,
                });
            }
            next = next.max(area.start_pe + area.count);
        }
        if pv.pe_count > next {
            out.push(FreeArea {
                pv: i,
                start_pe: next,
                count: pv.pe_count - next,
            });
        }
    }
    out
}

/// Why an allocation could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSpace {
    pub need: u64,
    pub free: u64,
    pub detail: String,
}

/// Appends `extents` extents of linear segments to `segments` (an LV's, possibly empty).
pub fn extend_linear(
    vg: &VolumeGroup,
    segments: &mut Vec<Segment>,
    mut extents: u64,
    allowed: Option<&[String]>,
) -> Result<(), NoSpace> {
    let mut free = free_areas(vg, allowed);
    let total: u64 = free.iter().map(|a| a.count).sum();
    if total < extents {
        return Err(NoSpace {
            need: extents,
            free: total,
            detail: String::new(),
        });
    }
    let mut next_le: u64 = segments.iter().map(|s| s.extent_count).sum();
    let push = |segments: &mut Vec<Segment>, area: FreeArea, take: u64, next_le: &mut u64| {
        let pv = vg.pvs[area.pv].key.clone();
        // Continue the last segment when the new extents follow it on the same PV.
        if let Some(Segment {
            extent_count,
            kind: SegmentKind::Striped { stripes, .. },
            ..
        }) = segments.last_mut()
        {
            if stripes.len() == 1
                && stripes[0].pv == pv
                && stripes[0].start_pe + *extent_count == area.start_pe
            {
                *extent_count += take;
                *next_le += take;
                return;
            }
        }
        segments.push(Segment {
            start_extent: *next_le,
            extent_count: take,
            kind: SegmentKind::Striped {
                stripe_size_sectors: 0,
                stripes: vec![Stripe {
                    pv,
                    start_pe: area.start_pe,
                }],
            },
        });
        *next_le += take;
    };

    // 1. In place, after the last linear segment.
    if let Some(Segment {
        extent_count,
        kind: SegmentKind::Striped { stripes, .. },
        ..
    }) = segments.last()
    {
        if stripes.len() == 1 {
            let end = stripes[0].start_pe + extent_count;
            if let Some(i) = free
                .iter()
                .position(|a| vg.pvs[a.pv].key == stripes[0].pv && a.start_pe == end)
            {
                let take = free[i].count.min(extents);
                let area = free[i];
                push(segments, area, take, &mut next_le);
                extents -= take;
                free[i].start_pe += take;
                free[i].count -= take;
            }
        }
    }
    if extents == 0 {
        return Ok(());
    }
    // 2. One area that holds the rest, first in PV order.
    if let Some(area) = free.iter().find(|a| a.count >= extents) {
        push(segments, *area, extents, &mut next_le);
        return Ok(());
    }
    // 3. The largest areas first.
    free.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.pv.cmp(&b.pv))
            .then(a.start_pe.cmp(&b.start_pe))
    });
    for area in free {
        if extents == 0 {
            break;
        }
        let take = area.count.min(extents);
        push(segments, area, take, &mut next_le);
        extents -= take;
    }
    Ok(())
}

/// Appends `extents` extents (a multiple of `stripes`) of striped segments, each stripe on
/// its own PV.
pub fn extend_striped(
    vg: &VolumeGroup,
    segments: &mut Vec<Segment>,
    extents: u64,
    stripes: usize,
    stripe_size_sectors: u64,
    allowed: Option<&[String]>,
) -> Result<(), NoSpace> {
    let stripes_u = stripes as u64;
    let mut per_stripe = extents / stripes_u;
    let mut free = free_areas(vg, allowed);
    let mut next_le: u64 = segments.iter().map(|s| s.extent_count).sum();
    let mut added = Vec::new();
    while per_stripe > 0 {
        // The largest free area of each PV, largest first.
        let mut best: Vec<usize> = Vec::new();
        let mut seen = HashSet::new();
        let mut order: Vec<usize> = (0..free.len()).filter(|&i| free[i].count > 0).collect();
        order.sort_by(|&a, &b| {
            free[b]
                .count
                .cmp(&free[a].count)
                .then(free[a].pv.cmp(&free[b].pv))
        });
        for i in order {
            if seen.insert(free[i].pv) {
                best.push(i);
            }
        }
        if best.len() < stripes {
            let free_total: u64 = free_areas(vg, allowed).iter().map(|a| a.count).sum();
            return Err(NoSpace {
                need: extents,
                free: free_total,
                detail: format!(
                    " ({stripes} stripes need {stripes} PVs with free extents; {} have them after {} extents per stripe)",
                    best.len(),
                    extents / stripes_u - per_stripe
                ),
            });
        }
        best.truncate(stripes);
        // Keep stripe order stable by PV order, as lvm2 lists them.
        best.sort_by_key(|&i| free[i].pv);
        let take = best
            .iter()
            .map(|&i| free[i].count)
            .min()
            .unwrap_or(0)
            .min(per_stripe);
        let areas: Vec<Stripe> = best
            .iter()
            .map(|&i| Stripe {
                pv: vg.pvs[free[i].pv].key.clone(),
                start_pe: free[i].start_pe,
            })
            .collect();
        for &i in &best {
            free[i].start_pe += take;
            free[i].count -= take;
        }
        added.push(Segment {
            start_extent: next_le,
            extent_count: take * stripes_u,
            kind: SegmentKind::Striped {
                stripe_size_sectors,
                stripes: areas,
            },
        });
        next_le += take * stripes_u;
        per_stripe -= take;
    }
    segments.extend(added);
    Ok(())
}

/// Cuts an LV's segments down to `extents`. Striped segments lose whole rows (a multiple
/// of their stripe count); the result may therefore stay slightly larger, as in lvm2.
pub fn truncate(segments: &mut Vec<Segment>, extents: u64) {
    while let Some(last) = segments.last_mut() {
        let end = last.start_extent + last.extent_count;
        if end <= extents {
            break;
        }
        if last.start_extent >= extents {
            segments.pop();
            continue;
        }
        let stripes = last.stripe_count();
        let keep = extents - last.start_extent;
        last.extent_count = keep.div_ceil(stripes) * stripes;
        break;
    }
}

pub fn extents_for(vg: &VolumeGroup, amount: Amount, allowed: Option<&[String]>) -> u64 {
    match amount {
        Amount::Bytes(b) => b.div_ceil(vg.extent_size_bytes()),
        Amount::Extents(n) => n,
        Amount::Percent(p, of) => {
            let base = match of {
                PercentOf::Free => vg.pe_free_total(),
                PercentOf::Vg => vg.pe_total(),
                PercentOf::Pvs => vg
                    .pvs
                    .iter()
                    .filter(|pv| allowed.is_none_or(|a| a.contains(&pv.key)))
                    .map(|pv| pv.pe_count)
                    .sum(),
            };
            base * p / 100
        }
    }
}

pub fn no_space(vg: &VolumeGroup, e: NoSpace) -> EngineError {
    EngineError::NoSpace {
        vg: vg.name.clone(),
        need: e.need,
        free: e.free,
        detail: e.detail,
    }
}

pub fn check_stripe_size(vg: &VolumeGroup, bytes: u64) -> Result<()> {
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > vg.extent_size_bytes() {
        return Err(EngineError::BadArgument(format!(
            "stripe size {bytes} bytes: must be a power of two from 4 KiB up to the extent size ({} bytes)",
            vg.extent_size_bytes()
        )));
    }
    Ok(())
}
