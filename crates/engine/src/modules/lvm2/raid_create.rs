//! New raid LVs laid out as lvm2 lays them out: one metadata sub-LV (`LV_rmeta_N`, one
//! extent) and one data sub-LV (`LV_rimage_N`) per image, each image's pair on its own PV,
//! the metadata extent right before the data; the raid LV a single raid segment naming them.
//!
//! Every sub-LV is zeroed before the VG is committed: zeroed data makes parity and copies
//! consistent from the start (tessera's raid target relies on that), and a zeroed metadata
//! sub-LV is what dm-raid takes for a new array, writing its superblock and bitmap on first
//! activation, as it does for the sub-LVs lvm2 wipes.

use tessera_formats::lvm2::id::Id;
use tessera_formats::lvm2::vg::{LogicalVolume, RaidImage, Segment, SegmentKind, VolumeGroup};

use super::alloc;
use super::options::LvCreateOptions;
use super::scan::{Scan, VgState};
use super::DEFAULT_STRIPE_BYTES;
use crate::engine::now;
use crate::error::{EngineError, Result};

/// lvm2's default raid region: 2 MiB.
pub const DEFAULT_REGION_BYTES: u64 = 2 << 20;

/// The segment type lvm2 stores for a `--type` (its short names become their layouts).
fn stored_segtype(given: &str) -> Option<&'static str> {
    Some(match given {
        "raid1" => "raid1",
        "raid4" => "raid4",
        "raid5" | "raid5_ls" => "raid5_ls",
        "raid5_la" => "raid5_la",
        "raid5_ra" => "raid5_ra",
        "raid5_rs" => "raid5_rs",
        "raid5_n" => "raid5_n",
        "raid6" | "raid6_zr" => "raid6_zr",
        "raid6_nr" => "raid6_nr",
        "raid6_nc" => "raid6_nc",
        "raid6_n_6" => "raid6_n_6",
        "raid6_la_6" => "raid6_la_6",
        "raid6_ra_6" => "raid6_ra_6",
        "raid6_ls_6" => "raid6_ls_6",
        "raid6_rs_6" => "raid6_rs_6",
        "raid10" => "raid10",
        _ => return None,
    })
}

/// How a raid LV spreads: images, data stripes, copies per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    images: usize,
    data_stripes: u64,
    copies: u64,
}

fn shape(
    segtype: &str,
    stripes: Option<u32>,
    mirrors: Option<u32>,
) -> std::result::Result<Shape, String> {
    let s = |default: u32, least: u32| -> std::result::Result<u64, String> {
        let n = stripes.unwrap_or(default);
        if n < least {
            return Err(format!(
                "{segtype} needs at least {least} data stripes (-i), {n} given"
            ));
        }
        Ok(u64::from(n))
    };
    Ok(match segtype {
        "raid1" => {
            if stripes.is_some_and(|i| i > 1) {
                return Err("raid1 has no stripes (-i); give -m for its images".into());
            }
            let images = mirrors.unwrap_or(1) as usize + 1;
            if images < 2 {
                return Err("raid1 needs at least one mirror (-m 1)".into());
            }
            Shape {
                images,
                data_stripes: 1,
                copies: images as u64,
            }
        }
        t if t.starts_with("raid4") || t.starts_with("raid5") => {
            no_mirrors(t, mirrors)?;
            let ds = s(2, 2)?;
            Shape {
                images: ds as usize + 1,
                data_stripes: ds,
                copies: 1,
            }
        }
        t if t.starts_with("raid6") => {
            no_mirrors(t, mirrors)?;
            let ds = s(3, 3)?;
            Shape {
                images: ds as usize + 2,
                data_stripes: ds,
                copies: 1,
            }
        }
        _ => {
            let copies = u64::from(mirrors.unwrap_or(1)) + 1;
            if copies != 2 {
                return Err(format!(
                    "raid10 keeps 2 copies (-m 1), as lvm2 makes it; -m {} asked for {copies}",
                    copies - 1
                ));
            }
            let ds = s(2, 2)?;
            Shape {
                images: (ds * copies) as usize,
                data_stripes: ds,
                copies,
            }
        }
    })
}

fn no_mirrors(segtype: &str, mirrors: Option<u32>) -> std::result::Result<(), String> {
    match mirrors {
        Some(m) if m > 0 => Err(format!(
            "{segtype} has no mirrors (-m); its redundancy is parity"
        )),
        _ => Ok(()),
    }
}

/// Adds raid LV `lv_name` and its sub-LVs to `vg` (not committed), zeroing the sub-LVs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn create(
    hostname: &str,
    scan: &Scan,
    state: &VgState,
    vg: &mut VolumeGroup,
    lv_name: &str,
    given: &str,
    opts: &LvCreateOptions,
    allowed: Option<&[String]>,
) -> Result<LogicalVolume> {
    let bad =
        |why: String| EngineError::BadArgument(format!("lv create {}/{lv_name}: {why}", vg.name));
    let segtype = stored_segtype(given).ok_or_else(|| {
        bad(format!(
            "type {given:?}: linear, striped, raid1, raid4, raid5 (_la, _ra, _ls, _rs, _n), \
             raid6 (_zr, _nr, _nc, _n_6, _la_6, _ra_6, _ls_6, _rs_6) or raid10"
        ))
    })?;
    let shape = shape(segtype, opts.stripes, opts.mirrors).map_err(&bad)?;
    for i in 0..shape.images {
        for sub in [
            format!("{lv_name}_rmeta_{i}"),
            format!("{lv_name}_rimage_{i}"),
        ] {
            if vg.lv(&sub).is_some() {
                return Err(bad(format!("the VG has an LV named {sub} already")));
            }
        }
    }
    let stripe_bytes = if segtype == "raid1" {
        0
    } else {
        let b = opts.stripe_size_bytes.unwrap_or(DEFAULT_STRIPE_BYTES);
        alloc::check_stripe_size(vg, b)?;
        b
    };
    let region_bytes = opts.region_size_bytes.unwrap_or(DEFAULT_REGION_BYTES);
    if region_bytes < 4096 || !region_bytes.is_power_of_two() {
        return Err(bad(format!(
            "region size {region_bytes} bytes: a power of two of at least 4 KiB"
        )));
    }
    let extents = alloc::extents_for(vg, opts.size.amount, allowed);
    if extents == 0 {
        return Err(bad("the LV would have no extents".into()));
    }
    // Each image holds an equal share of the data, whole extents.
    let per_image = extents.div_ceil(shape.data_stripes);
    let extents = per_image * shape.data_stripes;

    // One PV per image, the ones with the most free extents, each holding the image's
    // metadata extent and data.
    let mut free: Vec<(usize, u64)> = vg
        .pvs
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let n = alloc::free_areas(vg, allowed)
                .iter()
                .filter(|a| a.pv == i)
                .map(|a| a.count)
                .sum();
            (i, n)
        })
        .filter(|&(_, n)| n > per_image)
        .collect();
    if free.len() < shape.images {
        return Err(EngineError::Refused {
            vg: vg.name.clone(),
            why: format!(
                "{segtype} with {} images needs {} PVs with {} free extents each (one for \
                 metadata, {per_image} for data); {} have them",
                shape.images,
                shape.images,
                per_image + 1,
                free.len()
            ),
        });
    }
    free.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut chosen: Vec<usize> = free[..shape.images].iter().map(|&(i, _)| i).collect();
    chosen.sort_unstable();

    let first_sub = vg.lvs.len();
    let mut images = Vec::with_capacity(shape.images);
    for (i, &pv) in chosen.iter().enumerate() {
        let key = [vg.pvs[pv].key.clone()];
        for (name, count) in [
            (format!("{lv_name}_rmeta_{i}"), 1),
            (format!("{lv_name}_rimage_{i}"), per_image),
        ] {
            let mut segments = Vec::new();
            alloc::extend_linear(vg, &mut segments, count, Some(&key))
                .map_err(|e| alloc::no_space(vg, e))?;
            vg.lvs.push(LogicalVolume {
                name,
                id: Id::random(),
                status: vec!["READ".into(), "WRITE".into()],
                flags: Vec::new(),
                creation_time: Some(now()),
                creation_host: Some(hostname.to_string()),
                extra: Vec::new(),
                segments,
            });
        }
        images.push(RaidImage {
            meta: Some(format!("{lv_name}_rmeta_{i}")),
            data: format!("{lv_name}_rimage_{i}"),
        });
    }
    let segment = Segment::new_raid(
        0,
        extents,
        segtype,
        (segtype == "raid10").then_some(shape.copies),
        region_bytes / 512,
        stripe_bytes / 512,
        &images,
    )
    .map_err(|e| bad(e.to_string()))?;
    let lv = LogicalVolume {
        name: lv_name.to_string(),
        id: Id::random(),
        status: vec!["READ".into(), "WRITE".into(), "VISIBLE".into()],
        flags: Vec::new(),
        creation_time: Some(now()),
        creation_host: Some(hostname.to_string()),
        extra: Vec::new(),
        segments: vec![segment],
    };
    vg.lvs.insert(first_sub, lv.clone());

    // Zero every sub-LV before the VG names them.
    let extent = vg.extent_size_sectors;
    let mut touched = Vec::new();
    for sub in &vg.lvs[first_sub + 1..] {
        for seg in &sub.segments {
            let SegmentKind::Striped { stripes, .. } = &seg.kind else {
                continue;
            };
            for stripe in stripes {
                let pv = vg.pv(&stripe.pv).expect("allocated from the VG's PVs");
                let index =
                    *state
                        .present
                        .get(&stripe.pv)
                        .ok_or_else(|| EngineError::VgPartial {
                            vg: vg.name.clone(),
                            count: state.missing.len(),
                            list: stripe.pv.clone(),
                        })?;
                let dev = &scan.pvs[index].device;
                let at = (pv.pe_start_sectors + stripe.start_pe * extent) * 512;
                dev.write_zeroes(at, seg.extent_count * extent * 512)?;
                touched.push(index);
            }
        }
    }
    touched.sort_unstable();
    touched.dedup();
    for index in touched {
        scan.pvs[index].device.flush()?;
    }
    Ok(lv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_lvm2s_options() {
        let sh = |t, i, m| shape(t, i, m);
        assert_eq!(sh("raid1", None, Some(2)).unwrap().images, 3);
        assert_eq!(sh("raid5_ls", None, None).unwrap().images, 3);
        assert_eq!(sh("raid6_zr", Some(4), None).unwrap().images, 6);
        let r10 = sh("raid10", Some(3), Some(1)).unwrap();
        assert_eq!((r10.images, r10.data_stripes, r10.copies), (6, 3, 2));
        assert!(sh("raid5_ls", Some(1), None)
            .unwrap_err()
            .contains("at least 2"));
        assert!(sh("raid6_zr", None, Some(1))
            .unwrap_err()
            .contains("no mirrors"));
        assert!(sh("raid10", None, Some(2))
            .unwrap_err()
            .contains("2 copies"));
        assert!(sh("raid1", Some(2), None)
            .unwrap_err()
            .contains("no stripes"));
        assert_eq!(stored_segtype("raid5"), Some("raid5_ls"));
        assert_eq!(stored_segtype("raid6"), Some("raid6_zr"));
        assert_eq!(stored_segtype("mirror"), None);
    }
}

/// What `lv repair` did to one raid LV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub lv: String,
    /// (slot, the PV its image moved to)
    pub images: Vec<(usize, String)>,
    pub rebuilt: super::raid_lv::Rebuilt,
}

/// Moves the images of raid LVs that lie on missing PVs onto free extents of present PVs
/// (each on a PV no other image of its LV uses), rebuilds them from the other images, and
/// drops the missing PVs from the VG, as `lvconvert --repair` and `vgreduce --removemissing`
/// do. Only `only` when given; every raid LV that needs it otherwise.
pub(crate) fn repair(
    scan: &Scan,
    state: &VgState,
    only: Option<&str>,
) -> Result<(VolumeGroup, Vec<Repaired>)> {
    let mut vg = state.vg.clone();
    let name = vg.name.clone();
    let refuse = |why: String| EngineError::Refused {
        vg: name.clone(),
        why,
    };
    if !state.is_partial() {
        return Err(refuse("no PV is missing: nothing to repair".into()));
    }
    let keys: Vec<String> = vg.pv_keys().into_iter().map(str::to_string).collect();
    let key_set = keys.iter().map(String::as_str).collect();
    let on_missing = |vg: &VolumeGroup, lv: &str| -> bool {
        vg.lv(lv).is_some_and(|l| {
            l.segments
                .iter()
                .flat_map(|s| s.pv_areas(&key_set))
                .any(|a| state.missing.contains(&a.pv))
        })
    };
    let present: Vec<String> = keys
        .iter()
        .filter(|k| !state.missing.contains(*k))
        .cloned()
        .collect();
    let mut work = Vec::new();
    for lv in &vg.lvs {
        let Some(raid) = lv.raid() else { continue };
        if only.is_some_and(|o| o != lv.name) {
            continue;
        }
        let lost: Vec<usize> = raid
            .images
            .iter()
            .enumerate()
            .filter(|(_, i)| {
                on_missing(&vg, &i.data) || i.meta.as_deref().is_some_and(|m| on_missing(&vg, m))
            })
            .map(|(s, _)| s)
            .collect();
        if !lost.is_empty() {
            work.push((lv.name.clone(), raid.clone(), lost));
        }
    }
    if let Some(o) = only {
        if vg.lv(o).and_then(|l| l.raid()).is_none() {
            return Err(refuse(format!("LV '{o}' is not a raid LV")));
        }
        if work.is_empty() {
            return Err(refuse(format!(
                "raid LV '{o}' has no image on a missing PV"
            )));
        }
    }
    let mut moved = Vec::new();
    for (lv_name, raid, lost) in &work {
        let survivors: Vec<usize> = (0..raid.images.len())
            .filter(|s| !lost.contains(s))
            .collect();
        if lost.len() > raid.tolerated() {
            return Err(refuse(format!(
                "raid LV '{lv_name}' lost images {lost:?}, more than its {} survives: its data cannot be rebuilt",
                raid.segtype
            )));
        }
        // PVs the surviving images use are not candidates.
        let mut busy: Vec<String> = Vec::new();
        for &s in &survivors {
            let image = &raid.images[s];
            for sub in std::iter::once(&image.data).chain(image.meta.iter()) {
                if let Some(l) = vg.lv(sub) {
                    busy.extend(
                        l.segments
                            .iter()
                            .flat_map(|seg| seg.pv_areas(&key_set))
                            .map(|a| a.pv),
                    );
                }
            }
        }
        let mut images = Vec::new();
        for &slot in lost {
            let image = &raid.images[slot];
            let per = vg.lv(&image.data).map_or(0, LogicalVolume::extent_count);
            let candidates: Vec<String> = present
                .iter()
                .filter(|k| !busy.contains(*k))
                .cloned()
                .collect();
            let best = candidates
                .iter()
                .map(|k| {
                    let free: u64 = alloc::free_areas(&vg, Some(std::slice::from_ref(k)))
                        .iter()
                        .map(|a| a.count)
                        .sum();
                    (k.clone(), free)
                })
                .filter(|(_, free)| *free > per)
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
            let Some((pv, _)) = best else {
                return Err(refuse(format!(
                    "raid LV '{lv_name}' image {slot} needs a PV that holds none of its other \
                     images, with {} free extents; none has (add one with vg extend)",
                    per + 1
                )));
            };
            let only_pv = [pv.clone()];
            let subs: Vec<(String, u64)> = image
                .meta
                .iter()
                .map(|m| (m.clone(), 1))
                .chain(std::iter::once((image.data.clone(), per)))
                .collect();
            for (sub, count) in subs {
                let mut segments = Vec::new();
                alloc::extend_linear(&vg, &mut segments, count, Some(&only_pv))
                    .map_err(|e| alloc::no_space(&vg, e))?;
                let l = vg
                    .lvs
                    .iter_mut()
                    .find(|l| l.name == sub)
                    .expect("sub-LV named by the segment");
                l.segments = segments;
            }
            busy.push(pv.clone());
            images.push((slot, pv));
        }
        moved.push((lv_name.clone(), images));
    }
    let still: Vec<String> = vg
        .lvs
        .iter()
        .filter(|l| on_missing(&vg, &l.name))
        .map(|l| l.name.clone())
        .collect();
    if !still.is_empty() {
        return Err(refuse(format!(
            "the missing PVs also hold extents of {}; repair those too (lv repair {name}) or \
             drop them with vg reduce --remove-missing --force",
            still.join(", ")
        )));
    }
    vg.pvs.retain(|pv| !state.missing.contains(&pv.key));
    let mut complete = state.clone();
    complete.missing.clear();
    complete.vg = vg.clone();

    // Blank metadata sub-LVs (dm-raid takes a blank one for a new image), then the data.
    let extent = vg.extent_size_sectors;
    let mut out = Vec::new();
    for (lv_name, images) in moved {
        let raid = vg
            .lv(&lv_name)
            .and_then(LogicalVolume::raid)
            .expect("a raid LV")
            .clone();
        for (slot, _) in &images {
            if let Some(meta) = &raid.images[*slot].meta {
                for seg in &vg.lv(meta).expect("named").segments {
                    if let SegmentKind::Striped { stripes, .. } = &seg.kind {
                        for st in stripes {
                            let pv = vg.pv(&st.pv).expect("present");
                            let dev = &scan.pvs[complete.present[&st.pv]].device;
                            dev.write_zeroes(
                                (pv.pe_start_sectors + st.start_pe * extent) * 512,
                                seg.extent_count * extent * 512,
                            )?;
                            dev.flush()?;
                        }
                    }
                }
            }
        }
        let slots: Vec<usize> = images.iter().map(|(s, _)| *s).collect();
        let rebuilt = super::raid_lv::rebuild_images(scan, &complete, &lv_name, &slots)?;
        out.push(Repaired {
            lv: lv_name,
            images,
            rebuilt,
        });
    }
    Ok((vg, out))
}
