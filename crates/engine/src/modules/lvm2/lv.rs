//! The LV verbs: create (linear, striped; raid through [`super::raid_create`]), extend,
//! reduce, remove, rename and repair.

use tessera_formats::lvm2::id::Id;
use tessera_formats::lvm2::vg::{check_new_lv_name, LogicalVolume, SegmentKind, VolumeGroup};

use super::alloc;
use super::options::LvCreateOptions;
use super::raid_create;
use super::scan::Scan;
use super::DEFAULT_STRIPE_BYTES;
use crate::engine::{now, Engine};
use crate::error::{EngineError, Result};
use crate::units::{Sign, SizeArg};

impl Engine {
    /// Repairs raid LVs that lost images with a PV (`lv repair`): see
    /// [`crate::raid_create::repair`]. Commits the VG without the missing PVs.
    pub fn lv_repair(&self, vg_name: &str, lv: Option<&str>) -> Result<Vec<raid_create::Repaired>> {
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = scan
            .vg(vg_name)
            .ok_or_else(|| EngineError::VgNotFound(vg_name.to_string()))?;
        let (vg, repaired) = raid_create::repair(&scan, state, lv)?;
        let mut complete = state.clone();
        complete.missing.clear();
        self.commit(&scan, Some(&complete), vg, &[])?;
        Ok(repaired)
    }

    // ---- LVs ----

    pub(crate) fn allowed_keys(
        scan: &Scan,
        vg: &VolumeGroup,
        paths: &[String],
    ) -> Result<Option<Vec<String>>> {
        if paths.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        for path in paths {
            let i = Self::pv_index(scan, path).ok_or_else(|| EngineError::NotPv {
                device: path.clone(),
            })?;
            let pv = vg
                .pv_by_id(&scan.pvs[i].label.pv_id)
                .ok_or_else(|| EngineError::Refused {
                    vg: vg.name.clone(),
                    why: format!("{path} is not one of its PVs"),
                })?;
            keys.push(pv.key.clone());
        }
        Ok(Some(keys))
    }

    /// Creates a linear or striped LV.
    pub fn lv_create(
        &self,
        vg_name: &str,
        lv_name: &str,
        opts: &LvCreateOptions,
    ) -> Result<LogicalVolume> {
        self.lv_create_with(vg_name, lv_name, opts, None)
    }

    /// Creates a linear or striped LV with bad block relocation ([`super::bbr`]): a pool of
    /// `pool_bytes` replacement sectors (about 0.1% of the LV when `None`) and its two
    /// tables at the LV's end, written before the VG is committed.
    pub fn lv_create_bbr(
        &self,
        vg_name: &str,
        lv_name: &str,
        opts: &LvCreateOptions,
        pool_bytes: Option<u64>,
    ) -> Result<LogicalVolume> {
        self.lv_create_with(vg_name, lv_name, opts, Some(pool_bytes))
    }

    fn lv_create_with(
        &self,
        vg_name: &str,
        lv_name: &str,
        opts: &LvCreateOptions,
        bbr: Option<Option<u64>>,
    ) -> Result<LogicalVolume> {
        check_new_lv_name(&format!("new LV in VG '{vg_name}'"), lv_name)?;
        if opts.size.sign.is_some() {
            return Err(EngineError::BadArgument(
                "a new LV's size cannot be relative (+/-)".into(),
            ));
        }
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        if vg.lv(lv_name).is_some() {
            return Err(EngineError::LvExists {
                vg: vg_name.into(),
                lv: lv_name.into(),
            });
        }
        if vg.max_lv > 0 && vg.lvs.len() as u64 >= vg.max_lv {
            return Err(EngineError::Refused {
                vg: vg_name.into(),
                why: format!("it already holds its maximum of {} LVs", vg.max_lv),
            });
        }
        let allowed = Self::allowed_keys(&scan, &vg, &opts.pvs)?;
        if let Some(segtype) = opts
            .segtype
            .as_deref()
            .filter(|t| !matches!(*t, "linear" | "striped"))
        {
            if bbr.is_some() {
                return Err(EngineError::BadArgument(format!(
                    "--bbr is for LVs without redundancy (linear, striped); a {segtype} LV recovers a bad sector from its other images"
                )));
            }
            let lv = raid_create::create(
                &self.hostname,
                &scan,
                state,
                &mut vg,
                lv_name,
                segtype,
                opts,
                allowed.as_deref(),
            )?;
            self.commit(&scan, Some(state), vg, &[])?;
            return Ok(lv);
        }
        let stripes = opts.stripes.unwrap_or(1).max(1) as u64;
        let mut extents = alloc::extents_for(&vg, opts.size.amount, allowed.as_deref());
        if extents == 0 {
            return Err(EngineError::BadArgument(
                "the LV would have no extents; give a size of at least one extent".into(),
            ));
        }
        let mut segments = Vec::new();
        if stripes > 1 {
            let stripe_bytes = opts.stripe_size_bytes.unwrap_or(DEFAULT_STRIPE_BYTES);
            alloc::check_stripe_size(&vg, stripe_bytes)?;
            extents = extents.div_ceil(stripes) * stripes;
            alloc::extend_striped(
                &vg,
                &mut segments,
                extents,
                stripes as usize,
                stripe_bytes / 512,
                allowed.as_deref(),
            )
            .map_err(|e| alloc::no_space(&vg, e))?;
        } else {
            alloc::extend_linear(&vg, &mut segments, extents, allowed.as_deref())
                .map_err(|e| alloc::no_space(&vg, e))?;
        }
        let lv = LogicalVolume {
            name: lv_name.to_string(),
            id: Id::random(),
            status: vec!["READ".into(), "WRITE".into(), "VISIBLE".into()],
            flags: Vec::new(),
            creation_time: Some(now()),
            creation_host: Some(self.hostname.clone()),
            extra: Vec::new(),
            segments,
        };
        let mut lv = lv;
        let bbr_layout = match bbr {
            Some(pool_bytes) => {
                let pool = pool_bytes.map(|b| b.div_ceil(512));
                Some(super::bbr::mark(&vg, &mut lv, pool)?)
            }
            None => None,
        };
        vg.lvs.push(lv.clone());
        if let Some(g) = bbr_layout {
            // The tables go on the new extents before the VG that allocates them is
            // committed: until then they are free space, so a crash loses nothing.
            let mut staged = state.clone();
            staged.vg = vg.clone();
            super::bbr::format_tables(&scan, &staged, lv_name, &g)?;
        }
        self.commit(&scan, Some(state), vg, &[])?;
        Ok(lv)
    }

    /// An LV tessera may change: plain (linear/striped) and not used by another LV.
    pub(crate) fn plain_lv<'a>(
        vg: &'a VolumeGroup,
        name: &str,
        verb: &str,
    ) -> Result<&'a LogicalVolume> {
        let lv = vg.lv(name).ok_or_else(|| EngineError::LvNotFound {
            vg: vg.name.clone(),
            lv: name.into(),
        })?;
        if vg.is_pmspare(lv) {
            return Err(EngineError::Refused {
                vg: vg.name.clone(),
                why: format!(
                    "LV '{name}' is the VG's pool metadata spare, kept as large as the largest \
                     thin pool metadata; it changes with the pools"
                ),
            });
        }
        if !lv.is_plain() {
            let kind = lv
                .segments
                .iter()
                .map(|s| s.type_name())
                .find(|t| *t != "linear" && *t != "striped")
                .unwrap_or("?");
            return Err(EngineError::Refused {
                vg: vg.name.clone(),
                why: format!("LV '{name}' is of type {kind}, which tessera cannot {verb} yet; use lvm2 for it"),
            });
        }
        if let Some(snap) = vg
            .snapshots_of(name)
            .first()
            .and_then(|l| l.snapshot())
            .or_else(|| vg.snapshot_of_cow(name).and_then(|l| l.snapshot()))
        {
            let why = if snap.origin == name {
                let cows: Vec<String> = vg
                    .snapshots_of(name)
                    .iter()
                    .filter_map(|l| l.snapshot().map(|s| s.cow.clone()))
                    .collect();
                format!(
                    "LV '{name}' is the origin of snapshot(s) {}; tessera cannot {verb} an origin",
                    cows.join(", ")
                )
            } else {
                format!(
                    "LV '{name}' is a snapshot of '{}'; tessera cannot {verb} a snapshot",
                    snap.origin
                )
            };
            return Err(EngineError::Refused {
                vg: vg.name.clone(),
                why,
            });
        }
        let names = vg.lvs.iter().map(|l| l.name.as_str()).collect();
        if let Some(user) = vg
            .lvs
            .iter()
            .find(|l| l.referenced_names(&names).contains(&name))
        {
            return Err(EngineError::Refused {
                vg: vg.name.clone(),
                why: format!(
                    "LV '{name}' is used by LV '{}'; {verb} that one instead",
                    user.name
                ),
            });
        }
        Ok(lv)
    }

    /// Grows an LV to `opts.size` (absolute or `+`), striped like its last segment unless
    /// `opts.stripes` says otherwise.
    pub fn lv_extend(
        &self,
        vg_name: &str,
        lv_name: &str,
        opts: &LvCreateOptions,
    ) -> Result<LogicalVolume> {
        self.lv_resize(vg_name, lv_name, true, opts)
    }

    /// Shrinks an LV to `size` (absolute or `-`); striped segments lose whole rows.
    pub fn lv_reduce(&self, vg_name: &str, lv_name: &str, size: SizeArg) -> Result<LogicalVolume> {
        let opts = LvCreateOptions {
            size,
            stripes: None,
            stripe_size_bytes: None,
            pvs: Vec::new(),
            segtype: None,
            mirrors: None,
            region_size_bytes: None,
        };
        self.lv_resize(vg_name, lv_name, false, &opts)
    }

    pub(crate) fn lv_resize(
        &self,
        vg_name: &str,
        lv_name: &str,
        grow: bool,
        opts: &LvCreateOptions,
    ) -> Result<LogicalVolume> {
        let (size, stripes, stripe_size_bytes, pvs) =
            (opts.size, opts.stripes, opts.stripe_size_bytes, &opts.pvs);
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        // A thin pool grows its data LV and the data space map in its metadata.
        if grow
            && state
                .vg
                .lv(lv_name)
                .is_some_and(|l| l.thin_pool().is_some())
        {
            drop(scan);
            if stripes.is_some_and(|n| n > 1) {
                return Err(EngineError::BadArgument(
                    "tessera grows a thin pool's data linearly; -i does not apply".into(),
                ));
            }
            return self.thin_pool_extend_locked(
                vg_name,
                lv_name,
                size,
                pvs,
                &mut self.pool_opener(),
            );
        }
        let mut vg = state.vg.clone();
        // A thin LV's virtual size grows in the metadata only: its blocks come from the pool.
        if grow && vg.lv(lv_name).is_some_and(|l| l.thin().is_some()) {
            let current = vg.lv(lv_name).map_or(0, |l| l.extent_count());
            let amount = alloc::extents_for(&vg, size.amount, None);
            let target = match size.sign {
                None => amount,
                Some(Sign::Plus) => current.saturating_add(amount),
                Some(Sign::Minus) => {
                    return Err(EngineError::BadArgument(
                        "extend takes an absolute size or +SIZE".into(),
                    ))
                }
            };
            if target <= current {
                return Err(EngineError::BadArgument(format!(
                    "thin LV '{vg_name}/{lv_name}' already has {current} extents; the new size must be larger"
                )));
            }
            let lv = vg.lv_mut(lv_name).expect("found above");
            lv.segments[0].extent_count = target;
            let result = lv.clone();
            self.commit(&scan, Some(state), vg, &[])?;
            return Ok(result);
        }
        // A snapshot's COW LV grows as any LV (the kernel sees the new size on the next
        // load); nothing else used by another LV changes size.
        let lv = match vg.lv(lv_name) {
            Some(lv) if grow && lv.is_plain() && vg.is_cow(lv_name) => lv,
            _ => {
                let lv = Self::plain_lv(&vg, lv_name, if grow { "extend" } else { "reduce" })?;
                // The pool and the tables sit at the LV's end: cutting it loses them.
                if !grow && super::bbr::is_bbr(lv) {
                    return Err(EngineError::Refused {
                        vg: vg.name.clone(),
                        why: format!(
                            "LV '{lv_name}' keeps its bad block relocation pool and tables at its end; reducing it would cut them off"
                        ),
                    });
                }
                lv
            }
        };
        let current = lv.extent_count();
        let allowed = Self::allowed_keys(&scan, &vg, pvs)?;
        let amount = alloc::extents_for(&vg, size.amount, allowed.as_deref());
        let target = match (size.sign, grow) {
            (None, _) => amount,
            (Some(Sign::Plus), true) => current.saturating_add(amount),
            (Some(Sign::Minus), false) => current.saturating_sub(amount),
            (Some(_), true) => {
                return Err(EngineError::BadArgument(
                    "extend takes an absolute size or +SIZE".into(),
                ))
            }
            (Some(_), false) => {
                return Err(EngineError::BadArgument(
                    "reduce takes an absolute size or -SIZE".into(),
                ))
            }
        };
        let extent_bytes = vg.extent_size_bytes();
        if grow && target <= current {
            return Err(EngineError::BadArgument(format!(
                "LV '{vg_name}/{lv_name}' already has {current} extents ({} bytes); the new size must be larger",
                current * extent_bytes
            )));
        }
        if !grow && target >= current {
            return Err(EngineError::BadArgument(format!(
                "LV '{vg_name}/{lv_name}' has {current} extents ({} bytes); the new size must be smaller",
                current * extent_bytes
            )));
        }
        if !grow && target == 0 {
            return Err(EngineError::BadArgument(format!(
                "LV '{vg_name}/{lv_name}' cannot shrink to nothing; use lv remove"
            )));
        }
        let mut segments = lv.segments.clone();
        if grow {
            let (last_stripes, last_size) = match segments.last().map(|s| &s.kind) {
                Some(SegmentKind::Striped {
                    stripes,
                    stripe_size_sectors,
                }) => (stripes.len() as u64, *stripe_size_sectors * 512),
                _ => (1, 0),
            };
            let stripes = stripes.map(u64::from).unwrap_or(last_stripes).max(1);
            let mut add = target - current;
            if stripes > 1 {
                let bytes = stripe_size_bytes.unwrap_or(if last_size > 0 {
                    last_size
                } else {
                    DEFAULT_STRIPE_BYTES
                });
                alloc::check_stripe_size(&vg, bytes)?;
                add = add.div_ceil(stripes) * stripes;
                alloc::extend_striped(
                    &vg,
                    &mut segments,
                    add,
                    stripes as usize,
                    bytes / 512,
                    allowed.as_deref(),
                )
            } else {
                alloc::extend_linear(&vg, &mut segments, add, allowed.as_deref())
            }
            .map_err(|e| alloc::no_space(&vg, e))?;
        } else {
            alloc::truncate(&mut segments, target);
        }
        let lv = vg.lv_mut(lv_name).ok_or_else(|| EngineError::LvNotFound {
            vg: vg_name.into(),
            lv: lv_name.into(),
        })?;
        lv.segments = segments;
        let result = lv.clone();
        self.commit(&scan, Some(state), vg, &[])?;
        Ok(result)
    }

    /// Removes an LV; a snapshot goes with its `snapshotN` LV. An origin with snapshots
    /// needs [`Engine::lv_remove_with`] and `force`.
    pub fn lv_remove(&self, vg_name: &str, lv_name: &str) -> Result<()> {
        self.lv_remove_with(vg_name, lv_name, false).map(|_| ())
    }

    pub fn lv_rename(&self, vg_name: &str, old: &str, new: &str) -> Result<()> {
        check_new_lv_name(&format!("new LV name in VG '{vg_name}'"), new)?;
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        // An origin or a snapshot keeps its ties: the snapshot segments follow the name.
        if super::thin::rename_in_pool(&mut vg, old, new)? {
            self.commit(&scan, Some(state), vg, &[])?;
            return Ok(());
        }
        if vg.is_origin(old) || vg.is_cow(old) {
            if vg.lv(old).is_some_and(|l| !l.is_plain()) {
                Self::plain_lv(&vg, old, "rename")?;
            }
            for lv in &mut vg.lvs {
                if let Some(s) = lv.snapshot_mut() {
                    if s.origin == old {
                        s.origin = new.to_string();
                    }
                    if s.cow == old {
                        s.cow = new.to_string();
                    }
                }
            }
        } else {
            Self::plain_lv(&vg, old, "rename")?;
        }
        if vg.lv(new).is_some() {
            return Err(EngineError::LvExists {
                vg: vg_name.into(),
                lv: new.into(),
            });
        }
        if let Some(lv) = vg.lv_mut(old) {
            lv.name = new.to_string();
        }
        self.commit(&scan, Some(state), vg, &[])?;
        Ok(())
    }
}
