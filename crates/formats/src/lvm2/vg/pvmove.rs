//! lvm2's pvmove in the VG model: the temporary `pvmove0` LV (status `PVMOVE` and `LOCKED`)
//! whose `mirror` segments each pair a source area with its destination, and the moved
//! LVs (`LOCKED`) whose segments name `pvmove0` and an extent of it instead of a PV.
//!
//! lvm2 2.03 writes a pvmove0 segment as
//! `type = "mirror"`, `mirror_count = 2`, `extents_moved = N`, `region_size = S`,
//! `mirrors = ["pvA", pe, "pvB", pe]`; `extents_moved` equal to the segment's length means
//! the segment is done (its destination holds the data), anything less that it is not.
//! Mirror segments of ordinary mirror LVs (areas naming `_mimage_N` LVs, a `mirror_log`)
//! read through the same type.

use super::config::{Section, Value};
use super::{
    areas_value, get_areas, get_u64_opt, int, missing_or_wrong, out_of_range, Segment, SegmentKind,
    Stripe, VgError,
};

/// The status flag of lvm2's pvmove LV.
pub const PVMOVE: &str = "PVMOVE";
/// The status flag lvm2 sets on pvmove0 and on every LV it moves.
pub const LOCKED: &str = "LOCKED";
/// The name lvm2 gives the first pvmove LV of a VG.
pub const PVMOVE_LV: &str = "pvmove0";
/// lvm2's default mirror region (2 MiB), in sectors, as it writes it for pvmove0.
pub const DEFAULT_REGION_SECTORS: u64 = 4096;

/// A `mirror` segment: its areas (PVs or LVs, with their first extent), how many of its
/// extents a pvmove has copied, its region size and log LV.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorSegment {
    pub areas: Vec<Stripe>,
    /// `extents_moved`: written for pvmove segments only.
    pub extents_moved: Option<u64>,
    pub region_size_sectors: Option<u64>,
    /// `mirror_log`: the LV holding a disk log (none for pvmove: lvm2 keeps its log in core).
    pub log: Option<String>,
}

impl MirrorSegment {
    /// The typed view of `seg` if it is a `mirror` segment; an error names what is wrong.
    pub fn of(seg: &Segment, at: &str) -> Result<Option<MirrorSegment>, VgError> {
        let SegmentKind::Other { segtype, body } = &seg.kind else {
            return Ok(None);
        };
        if segtype != "mirror" {
            return Ok(None);
        }
        MirrorSegment::from_body(body, seg.extent_count, at).map(Some)
    }

    fn from_body(s: &Section, extent_count: u64, at: &str) -> Result<MirrorSegment, VgError> {
        let areas = get_areas(s, at, "mirror_count", "mirrors", 32)?;
        let extents_moved = get_u64_opt(s, at, "extents_moved")?;
        if let Some(moved) = extents_moved.filter(|m| *m > extent_count) {
            return Err(out_of_range(
                at,
                "extents_moved",
                moved,
                &format!("at most the segment's {extent_count} extents"),
            ));
        }
        let region_size_sectors = get_u64_opt(s, at, "region_size")?;
        let log = match s.get("mirror_log") {
            None => None,
            Some(_) => Some(
                s.get_str("mirror_log")
                    .ok_or_else(|| missing_or_wrong(s, at, "mirror_log", "a string"))?
                    .to_string(),
            ),
        };
        Ok(MirrorSegment {
            areas,
            extents_moved,
            region_size_sectors,
            log,
        })
    }

    /// A pvmove segment of `extent_count` extents from `source` to `dest`, as lvm2 writes it.
    pub fn pvmove(source: Stripe, dest: Stripe, extents_moved: u64) -> MirrorSegment {
        MirrorSegment {
            areas: vec![source, dest],
            extents_moved: Some(extents_moved),
            region_size_sectors: Some(DEFAULT_REGION_SECTORS),
            log: None,
        }
    }

    /// The segment at `start_extent`, its keys in lvm2's order.
    pub fn to_segment(&self, start_extent: u64, extent_count: u64) -> Segment {
        let mut body = Section::new();
        body.set_value("mirror_count", int(self.areas.len() as u64));
        if let Some(moved) = self.extents_moved {
            body.set_value("extents_moved", int(moved));
        }
        if let Some(log) = &self.log {
            body.set_value("mirror_log", Value::Str(log.clone()));
        }
        if let Some(region) = self.region_size_sectors {
            body.set_value("region_size", int(region));
        }
        body.set_value("mirrors", areas_value(&self.areas));
        Segment {
            start_extent,
            extent_count,
            kind: SegmentKind::Other {
                segtype: "mirror".into(),
                body,
            },
        }
    }

    /// A pvmove segment whose destination holds all its extents.
    pub fn is_moved(&self, extent_count: u64) -> bool {
        self.extents_moved == Some(extent_count)
    }
}

impl super::LogicalVolume {
    /// lvm2's pvmove LV (`PVMOVE` in its status).
    pub fn is_pvmove(&self) -> bool {
        self.status.iter().any(|s| s == PVMOVE)
    }
    /// `LOCKED`: lvm2 is moving this LV (or it is the pvmove LV itself).
    pub fn is_locked(&self) -> bool {
        self.status.iter().any(|s| s == LOCKED)
    }
}

impl super::VolumeGroup {
    /// The pvmove LVs of the VG (lvm2 runs one per source PV: `pvmove0`, `pvmove1`, ...).
    pub fn pvmove_lvs(&self) -> Vec<&super::LogicalVolume> {
        self.lvs.iter().filter(|lv| lv.is_pvmove()).collect()
    }

    /// The areas of `seg` (of LV `lv`) that name an LV instead of a PV: the LV must exist,
    /// be another one, and hold the extents named; a mirror segment must read as one.
    pub(super) fn validate_lv_areas(
        &self,
        lv: &super::LogicalVolume,
        seg: &Segment,
        keys: &std::collections::HashSet<&str>,
        at: &str,
    ) -> Result<(), VgError> {
        let (areas, per) = match &seg.kind {
            SegmentKind::Striped { stripes, .. } => (
                stripes.clone(),
                seg.extent_count / (stripes.len().max(1) as u64),
            ),
            // Only pvmove's mirrors are typed; other mirror LVs stay as written.
            SegmentKind::Other { .. } if lv.is_pvmove() => match MirrorSegment::of(seg, at)? {
                Some(m) => (m.areas, seg.extent_count),
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        for area in areas.iter().filter(|a| !keys.contains(a.pv.as_str())) {
            let Some(other) = self.lv(&area.pv).filter(|o| o.name != lv.name) else {
                return Err(VgError::Inconsistent {
                    at: at.to_string(),
                    why: format!(
                        "names PV '{}', which the VG does not have (nor another LV of that name)",
                        area.pv
                    ),
                });
            };
            let end = area.start_pe.checked_add(per);
            if end.is_none_or(|e| e > other.extent_count()) {
                return Err(VgError::Inconsistent {
                    at: at.to_string(),
                    why: format!(
                        "uses extents {}..{} of LV '{}', which has {} extents",
                        area.start_pe,
                        area.start_pe.saturating_add(per),
                        other.name,
                        other.extent_count()
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::Style;
    use super::super::tests::lv_section;
    use super::super::{LogicalVolume, VolumeGroup};
    use super::*;

    /// `vgcfgbackup` of a VG while lvm2 2.03.16's `pvmove /dev/loop0 /dev/mapper/slow` ran
    /// (the destination behind dm-delay): a linear LV of two segments, a linear LV between
    /// them, a striped LV with one stripe on the source and a raid1 LV with one image and
    /// its metadata on it; the first pvmove0 segment copied, the rest not.
    const MID: &str = include_str!("../testdata/pvmove_mid_vg.txt");
    /// The same VG before the move and after lvm2 finished it.
    const BEFORE: &str = include_str!("../testdata/pvmove_before_vg.txt");
    const DONE: &str = include_str!("../testdata/pvmove_done_vg.txt");

    fn mirrors(lv: &LogicalVolume) -> Vec<(u64, u64, MirrorSegment)> {
        lv.segments
            .iter()
            .map(|s| {
                let m = MirrorSegment::of(s, "test")
                    .unwrap()
                    .expect("a mirror segment");
                (s.start_extent, s.extent_count, m)
            })
            .collect()
    }

    #[test]
    fn lvm2s_pvmove_reads_typed_and_writes_back_as_lvm2_wrote_it() {
        let (vg, info) = VolumeGroup::from_text(MID.as_bytes()).unwrap();
        let moves = vg.pvmove_lvs();
        assert_eq!(moves.len(), 1);
        let pvmove = moves[0];
        assert_eq!(pvmove.name, PVMOVE_LV);
        assert!(pvmove.is_locked() && !pvmove.is_visible());
        let segs = mirrors(pvmove);
        let area = |pv: &str, pe| Stripe {
            pv: pv.into(),
            start_pe: pe,
        };
        assert_eq!(segs.len(), 6);
        assert_eq!(
            segs[0],
            (
                0,
                3,
                MirrorSegment {
                    areas: vec![area("pv0", 0), area("pv3", 0)],
                    extents_moved: Some(3),
                    region_size_sectors: Some(4096),
                    log: None,
                }
            )
        );
        assert!(segs[0].2.is_moved(3));
        assert_eq!(segs[1].2.areas, vec![area("pv0", 5), area("pv3", 3)]);
        assert_eq!(segs[1].2.extents_moved, Some(0));
        assert!(!segs[1].2.is_moved(2));
        // The moved LVs name pvmove0 and are LOCKED; the raid LV itself is not, its image is.
        let lin = vg.lv("lin").unwrap();
        assert!(lin.is_locked());
        let SegmentKind::Striped { stripes, .. } = &lin.segments[1].kind else {
            panic!("lin is striped")
        };
        assert_eq!(stripes, &vec![area(PVMOVE_LV, 3)]);
        let SegmentKind::Striped { stripes, .. } = &vg.lv("str").unwrap().segments[0].kind else {
            panic!("str is striped")
        };
        assert_eq!(stripes, &vec![area(PVMOVE_LV, 7), area("pv1", 0)]);
        assert!(!vg.lv("r1").unwrap().is_locked());
        assert!(vg.lv("r1_rimage_0").unwrap().is_locked());
        // Both sides of every pvmove0 segment are in use; the stripes on pvmove0 count once.
        assert_eq!(vg.pe_used("pv0"), 12);
        assert_eq!(vg.pe_used("pv3"), 12);
        assert_eq!(vg.pe_used("pv1"), 2);
        // Written back, pvmove0 and the moved LVs are lvm2's sections key for key.
        let text = vg.to_text(&info, Style::File);
        for name in [PVMOVE_LV, "lin", "gap", "str", "r1_rimage_0", "r1_rmeta_0"] {
            assert_eq!(lv_section(&text, name), lv_section(MID, name), "LV {name}");
        }
        let (again, _) = VolumeGroup::from_text(text.as_bytes()).unwrap();
        assert_eq!(again, vg);
    }

    #[test]
    fn a_pvmove_segment_built_by_tessera_is_lvm2s() {
        let (vg, _) = VolumeGroup::from_text(MID.as_bytes()).unwrap();
        let lvm2s = &vg.lv(PVMOVE_LV).unwrap().segments[1];
        let ours = MirrorSegment::pvmove(
            Stripe {
                pv: "pv0".into(),
                start_pe: 5,
            },
            Stripe {
                pv: "pv3".into(),
                start_pe: 3,
            },
            0,
        )
        .to_segment(3, 2);
        assert_eq!(&ours, lvm2s);
    }

    #[test]
    fn before_and_after_have_no_pvmove() {
        for text in [BEFORE, DONE] {
            let (vg, _) = VolumeGroup::from_text(text.as_bytes()).unwrap();
            assert!(vg.pvmove_lvs().is_empty());
            assert!(vg.lvs.iter().all(|lv| !lv.is_locked()));
        }
        let (done, _) = VolumeGroup::from_text(DONE.as_bytes()).unwrap();
        assert_eq!(done.pe_used("pv0"), 0);
        assert_eq!(done.pe_used("pv3"), 12);
    }

    fn broken(from: &str, to: &str) -> String {
        assert!(MID.contains(from), "{from}");
        let text = MID.replacen(from, to, 1);
        match VolumeGroup::from_text(text.as_bytes()) {
            Ok(_) => panic!("accepted with {to:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn damaged_pvmove_metadata_is_refused_naming_the_place() {
        let e = broken("extents_moved = 3", "extents_moved = 4");
        assert!(e.contains("pvmove0") && e.contains("extents_moved"), "{e}");
        let e = broken("\"pvmove0\", 3", "\"pvmove9\", 3");
        assert!(e.contains("'lin'") && e.contains("pvmove9"), "{e}");
        let e = broken("\"pvmove0\", 3", "\"pvmove0\", 11");
        assert!(e.contains("extents 11..13 of LV 'pvmove0'"), "{e}");
        let e = broken("mirror_count = 2", "mirror_count = 3");
        assert!(e.contains("mirror_count is 3"), "{e}");
        let e = broken("\"pv3\", 0", "\"pv3\", -1");
        assert!(e.contains("mirrors"), "{e}");
    }
}
