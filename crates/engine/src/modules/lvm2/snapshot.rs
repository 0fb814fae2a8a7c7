//! Snapshots as lvm2 keeps them: the verbs (`lv create --snapshot`, removal with the
//! origin, `lv merge`) and the devices lvm2 loads for an origin with snapshots.
//!
//! In the metadata a snapshot is two LVs: the COW LV, which users know by the snapshot's
//! name and which holds the exception store, and a hidden `snapshotN` LV whose one
//! `snapshot` segment names the origin, the COW LV and the chunk size. Activated, an
//! origin with snapshots is a stack of devices: `VG-ORIGIN-real` (the origin's own
//! extents), for each snapshot `VG-SNAP-cow` (the COW LV's extents) and `VG-SNAP`
//! (`snapshot`), and on top `VG-ORIGIN` (`snapshot-origin`, or `snapshot-merge` while a
//! snapshot merges back, its snapshot device then an `error` device).

use tessera_formats::lvm2::id::Id;
use tessera_formats::lvm2::vg::{
    check_new_lv_name, LogicalVolume, Segment, SegmentKind, SnapshotSegment, VolumeGroup,
    SNAPSHOT_MIN_CHUNKS,
};

use super::alloc;
use super::scan::{Scan, VgState};
use super::table::{dm_name, plain_table};
use crate::engine::{now, Engine};
use crate::error::{EngineError, Result};
use crate::units::SizeArg;

/// lvm2's default chunk: 4 KiB.
pub const DEFAULT_CHUNK_BYTES: u64 = 4 << 10;
/// The chunk sizes lvm2 accepts: powers of two from 4 KiB to 512 KiB.
pub const MIN_CHUNK_BYTES: u64 = 4 << 10;
pub const MAX_CHUNK_BYTES: u64 = 512 << 10;

/// One device of an origin's stack, as lvm2 names it and gives it a uuid; its table in
/// dmsetup's syntax, PVs named by path and the stack's other devices by their names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackDevice {
    pub name: String,
    pub uuid: String,
    pub table: String,
    /// The LV users know this device as (`VG/LV`), for `/dev/VG/LV`; none for the
    /// `-real` and `-cow` layers and a merging snapshot's device.
    pub lv: Option<String>,
}

/// The origin whose stack LV `lv` belongs to: itself if it is an origin, its origin if it
/// is a COW LV or a `snapshotN` LV; None for an LV outside any snapshot.
pub fn stack_origin<'a>(vg: &'a VolumeGroup, lv: &str) -> Option<&'a str> {
    if vg.is_origin(lv) {
        return vg.lv(lv).map(|l| l.name.as_str());
    }
    let snap = match vg.lv(lv)?.snapshot() {
        Some(s) => s,
        None => vg.snapshot_of_cow(lv)?.snapshot()?,
    };
    Some(snap.origin.as_str())
}

/// The uuid lvm2 gives LV `lv`'s device, with a layer suffix (`-real`, `-cow`) or none.
pub fn layer_uuid(vg: &VolumeGroup, lv: &LogicalVolume, layer: &str) -> String {
    format!(
        "LVM-{}{}{layer}",
        String::from_utf8_lossy(vg.id.raw()),
        String::from_utf8_lossy(lv.id.raw())
    )
}

/// The devices lvm2 loads for `origin` and its snapshots, in the order they must be
/// made (every device after those its table names).
pub fn stack_devices(scan: &Scan, state: &VgState, origin: &str) -> Result<Vec<StackDevice>> {
    let vg = &state.vg;
    let not_found = |lv: &str| EngineError::LvNotFound {
        vg: vg.name.clone(),
        lv: lv.into(),
    };
    let o = vg.lv(origin).ok_or_else(|| not_found(origin))?;
    let size = o.extent_count() * vg.extent_size_sectors;
    let real = format!("{}-real", dm_name(&vg.name, origin));
    let mut out = vec![StackDevice {
        name: real.clone(),
        uuid: layer_uuid(vg, o, "-real"),
        table: plain_table(scan, state, origin)?,
        lv: None,
    }];
    let mut top = format!("0 {size} snapshot-origin {real}\n");
    for s in vg.snapshots_of(origin) {
        let snap = s.snapshot().expect("snapshots_of lists snapshot LVs");
        let cow = vg.lv(&snap.cow).ok_or_else(|| not_found(&snap.cow))?;
        let name = dm_name(&vg.name, &cow.name);
        let cow_name = format!("{name}-cow");
        out.push(StackDevice {
            name: cow_name.clone(),
            uuid: layer_uuid(vg, cow, "-cow"),
            table: plain_table(scan, state, &cow.name)?,
            lv: None,
        });
        let chunk = snap.chunk_size_sectors;
        let (table, lv) = if snap.merging {
            top = format!("0 {size} snapshot-merge {real} {cow_name} P {chunk}\n");
            (format!("0 {size} error\n"), None)
        } else {
            (
                format!("0 {size} snapshot {real} {cow_name} P {chunk}\n"),
                Some(cow.name.clone()),
            )
        };
        out.push(StackDevice {
            name,
            uuid: layer_uuid(vg, cow, ""),
            table,
            lv,
        });
    }
    out.push(StackDevice {
        name: dm_name(&vg.name, origin),
        uuid: layer_uuid(vg, o, ""),
        table: top,
        lv: Some(origin.to_string()),
    });
    Ok(out)
}

/// How full the exception store on COW LV `cow` is, as dm-snapshot's status counts it
/// (header and metadata chunks included), and whether it is still valid (a snapshot that
/// filled up is not); None for a store not written yet (a zeroed header: a snapshot never
/// activated). Reads only.
pub fn cow_usage(
    scan: &Scan,
    state: &VgState,
    cow: &str,
) -> Result<Option<(tessera_formats::snapshot::Usage, bool)>> {
    let device = tessera_mapper::MappedDevice::new(
        format!("{}-cow", dm_name(&state.vg.name, cow)),
        std::sync::Arc::new(tessera_mapper::TargetRegistry::new()),
    );
    super::table::load_plain(scan, state, cow, &device)?;
    device.resume()?;
    let store = tessera_formats::snapshot::ExceptionStore::open(std::sync::Arc::new(device))
        .map_err(|e| EngineError::DeviceUnusable {
            device: format!("{}/{cow}", state.vg.name),
            why: e.to_string(),
        })?;
    Ok(store.map(|s| (s.usage(), s.is_valid())))
}

/// Why tessera does not map LV `lv` in user space yet, if it belongs to a snapshot.
pub fn userspace_refusal(vg: &VolumeGroup, lv: &str) -> Option<String> {
    let origin = stack_origin(vg, lv)?;
    let what = if origin == lv {
        let names: Vec<String> = vg
            .snapshots_of(origin)
            .iter()
            .filter_map(|s| s.snapshot().map(|s| s.cow.clone()))
            .collect();
        format!(
            "LV '{lv}' is the origin of snapshot(s) {}",
            names.join(", ")
        )
    } else {
        format!("LV '{lv}' is a snapshot of '{origin}'")
    };
    Some(format!(
        "{what}; tessera serves snapshots and their origins only in the kernel so far \
         (tessera activate {}/{lv})",
        vg.name
    ))
}

impl Engine {
    /// Removes from the metadata every merging snapshot whose merge has finished (its
    /// store valid and holding no exception any more: every chunk is back in the origin),
    /// as lvm2 does when its next activation finds a merge done. Returns `VG/SNAP` for
    /// each. A merge still under way, or a store never written, is left alone.
    pub fn finish_merges(&self) -> Result<Vec<String>> {
        let scan = self.scan_with(true)?;
        let mut done = Vec::new();
        for state in scan.vgs.values() {
            for lv in &state.vg.lvs {
                let Some(snap) = lv.snapshot().filter(|s| s.merging) else {
                    continue;
                };
                let device = tessera_mapper::MappedDevice::new(
                    format!("{}-cow", dm_name(&state.vg.name, &snap.cow)),
                    std::sync::Arc::new(tessera_mapper::TargetRegistry::new()),
                );
                super::table::load_plain(&scan, state, &snap.cow, &device)?;
                device.resume()?;
                let store =
                    tessera_formats::snapshot::ExceptionStore::open(std::sync::Arc::new(device));
                if let Ok(Some(store)) = store {
                    if store.is_valid() && store.is_empty() {
                        done.push((state.vg.name.clone(), snap.cow.clone()));
                    }
                }
            }
        }
        drop(scan);
        let mut out = Vec::new();
        for (vg, cow) in done {
            self.lv_remove_with(&vg, &cow, true)?;
            out.push(format!("{vg}/{cow}"));
        }
        Ok(out)
    }

    /// Creates a snapshot of `origin` (lvm2's `lvcreate -s`): the COW LV `name` of `size`
    /// and the hidden `snapshotN` LV tying them, with chunks of `chunk_bytes` (4 KiB if
    /// None). The store's first chunk is zeroed before the commit that makes it live, so
    /// the kernel starts a new store there.
    pub fn lv_snapshot_create(
        &self,
        vg_name: &str,
        name: &str,
        origin: &str,
        size: SizeArg,
        chunk_bytes: Option<u64>,
    ) -> Result<LogicalVolume> {
        check_new_lv_name(&format!("new snapshot in VG '{vg_name}'"), name)?;
        if size.sign.is_some() {
            return Err(EngineError::BadArgument(
                "a snapshot's size cannot be relative (+/-)".into(),
            ));
        }
        let chunk = chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES);
        if !chunk.is_power_of_two() || !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&chunk) {
            return Err(EngineError::BadArgument(format!(
                "chunk size {chunk} bytes is not a power of two from 4k to 512k"
            )));
        }
        let chunk_sectors = chunk / 512;
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        let refuse = |why: String| EngineError::Refused {
            vg: vg_name.into(),
            why,
        };
        let o = vg.lv(origin).ok_or_else(|| EngineError::LvNotFound {
            vg: vg_name.into(),
            lv: origin.into(),
        })?;
        if o.snapshot().is_some() || vg.is_cow(origin) {
            return Err(refuse(format!(
                "LV '{origin}' is a snapshot itself; lvm2 makes no snapshots of snapshots"
            )));
        }
        if !o.is_plain() {
            return Err(refuse(format!(
                "LV '{origin}' is not linear or striped; tessera makes snapshots of those only"
            )));
        }
        if vg.merging_snapshot_of(origin).is_some() {
            return Err(refuse(format!(
                "a snapshot is merging into LV '{origin}'; wait for the merge to end"
            )));
        }
        if vg.lv(name).is_some() {
            return Err(EngineError::LvExists {
                vg: vg_name.into(),
                lv: name.into(),
            });
        }
        if vg.max_lv > 0 && vg.lvs.len() as u64 + 1 >= vg.max_lv {
            return Err(refuse(format!(
                "it already holds its maximum of {} LVs",
                vg.max_lv
            )));
        }
        let origin_extents = o.extent_count();
        let extents = alloc::extents_for(&vg, size.amount, None);
        let extent = vg.extent_size_sectors;
        let min_sectors = SNAPSHOT_MIN_CHUNKS * chunk_sectors;
        if extents * extent < min_sectors {
            return Err(EngineError::BadArgument(format!(
                "a snapshot's COW store must hold at least {SNAPSHOT_MIN_CHUNKS} chunks: \
                 {} extent(s), {} bytes with chunks of {chunk} bytes",
                min_sectors.div_ceil(extent),
                min_sectors * 512
            )));
        }
        let mut segments = Vec::new();
        alloc::extend_linear(&vg, &mut segments, extents, None)
            .map_err(|e| alloc::no_space(&vg, e))?;
        let time = now();
        let cow = LogicalVolume {
            name: name.to_string(),
            id: Id::random(),
            // lvm2 hides the COW LV in its flags and shows it as its origin is shown.
            status: vec!["READ".into(), "WRITE".into()],
            flags: Vec::new(),
            creation_time: Some(time),
            creation_host: Some(self.hostname.clone()),
            extra: Vec::new(),
            segments,
        };
        let snapshot = LogicalVolume {
            name: vg.next_snapshot_name(),
            id: Id::random(),
            status: vec!["READ".into(), "WRITE".into(), "VISIBLE".into()],
            flags: Vec::new(),
            creation_time: Some(time),
            creation_host: Some(self.hostname.clone()),
            extra: Vec::new(),
            segments: vec![Segment {
                start_extent: 0,
                extent_count: origin_extents,
                kind: SegmentKind::Snapshot(SnapshotSegment {
                    origin: origin.to_string(),
                    cow: name.to_string(),
                    chunk_size_sectors: chunk_sectors,
                    merging: false,
                    extra: Vec::new(),
                }),
            }],
        };
        // lvm2 writes the snapshotN LVs after every other LV.
        let at = vg
            .lvs
            .iter()
            .position(|l| l.snapshot().is_some())
            .unwrap_or(vg.lvs.len());
        vg.lvs.insert(at, cow.clone());
        zero_start(&scan, state, &cow, extent, chunk)?;
        vg.lvs.push(snapshot);
        self.commit(&scan, Some(state), vg, &[])?;
        Ok(cow)
    }

    /// Starts merging snapshot `snap` (its COW LV's name) back into its origin (lvm2's
    /// `lvconvert --merge`): `cow_store` becomes `merging_store`. The data moves when the
    /// origin is next activated, by the `snapshot-merge` target. Returns the origin's name.
    pub fn lv_merge(&self, vg_name: &str, snap: &str) -> Result<String> {
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        let refuse = |why: String| EngineError::Refused {
            vg: vg_name.into(),
            why,
        };
        if vg.lv(snap).is_none() {
            return Err(EngineError::LvNotFound {
                vg: vg_name.into(),
                lv: snap.into(),
            });
        }
        let holder = match vg.snapshot_of_cow(snap) {
            Some(h) => h.name.clone(),
            None => return Err(refuse(format!("LV '{snap}' is not a snapshot"))),
        };
        let seg = vg.lv(&holder).and_then(|l| l.snapshot()).expect("found");
        let origin = seg.origin.clone();
        if seg.merging {
            return Err(refuse(format!(
                "snapshot '{snap}' is already merging into '{origin}'"
            )));
        }
        if let Some(other) = vg.merging_snapshot_of(&origin) {
            let cow = other.snapshot().map(|s| s.cow.clone()).unwrap_or_default();
            return Err(refuse(format!(
                "snapshot '{cow}' is already merging into '{origin}'; one merge at a time"
            )));
        }
        let lv = vg.lv_mut(&holder).expect("found");
        if let Some(s) = lv.snapshot_mut() {
            s.merging = true;
        }
        // As lvm2: the snapshotN LV loses VISIBLE while it merges.
        lv.status.retain(|s| s != "VISIBLE");
        self.commit(&scan, Some(state), vg, &[])?;
        Ok(origin)
    }

    /// Removes LV `lv_name`: a snapshot with its `snapshotN` LV; an origin with snapshots
    /// only with `force`, its snapshots going with it (as lvm2's `lvremove -f`).
    pub fn lv_remove_with(&self, vg_name: &str, lv_name: &str, force: bool) -> Result<Vec<String>> {
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        // Thin LVs and pools change the pool's metadata too.
        if state.vg.pool_of(lv_name).is_some()
            || state.vg.lv(lv_name).is_some_and(|l| state.vg.is_pmspare(l))
        {
            drop(scan);
            return self.thin_remove_locked(vg_name, lv_name, force, &mut self.pool_opener());
        }
        let mut vg = state.vg.clone();
        let gone = removal_set(&vg, lv_name, force)?;
        match gone {
            Some(names) => {
                vg.lvs.retain(|l| !names.contains(&l.name));
                self.commit(&scan, Some(state), vg, &[])?;
                Ok(names)
            }
            None => {
                Self::plain_lv(&vg, lv_name, "remove")?;
                vg.lvs.retain(|l| l.name != lv_name);
                self.commit(&scan, Some(state), vg, &[])?;
                Ok(vec![lv_name.to_string()])
            }
        }
    }
}

/// The LVs that go when `lv` is removed, if it belongs to a snapshot (None otherwise):
/// a COW LV with its `snapshotN`; an origin (with `force`) with every snapshot of it.
fn removal_set(vg: &VolumeGroup, lv: &str, force: bool) -> Result<Option<Vec<String>>> {
    let refuse = |why: String| EngineError::Refused {
        vg: vg.name.clone(),
        why,
    };
    if let Some(l) = vg.lv(lv).filter(|l| l.snapshot().is_some()) {
        let cow = l.snapshot().map(|s| s.cow.clone()).unwrap_or_default();
        return Err(refuse(format!(
            "LV '{lv}' is lvm2's internal LV of snapshot '{cow}'; remove '{cow}' instead"
        )));
    }
    if let Some(holder) = vg.snapshot_of_cow(lv) {
        let snap = holder.snapshot().expect("a snapshot LV");
        if snap.merging && !force {
            return Err(refuse(format!(
                "snapshot '{lv}' is merging into '{}'; removing it loses what is not merged yet \
                 (use --force to remove it all the same)",
                snap.origin
            )));
        }
        return Ok(Some(vec![lv.to_string(), holder.name.clone()]));
    }
    if vg.is_origin(lv) {
        let snaps = vg.snapshots_of(lv);
        let cows: Vec<String> = snaps
            .iter()
            .filter_map(|s| s.snapshot().map(|s| s.cow.clone()))
            .collect();
        if !force {
            return Err(refuse(format!(
                "LV '{lv}' has snapshot(s) {}; remove them first, or use --force to remove \
                 them with it",
                cows.join(", ")
            )));
        }
        if let Some(l) = vg.lv(lv).filter(|l| !l.is_plain()) {
            return Err(refuse(format!(
                "LV '{}' is not linear or striped; use lvm2 for it",
                l.name
            )));
        }
        let mut names = vec![lv.to_string()];
        for (s, cow) in snaps.iter().zip(cows) {
            names.push(cow);
            names.push(s.name.clone());
        }
        return Ok(Some(names));
    }
    Ok(None)
}

/// Writes zeros over the first `chunk_bytes` of (linear) LV `lv`, on its PVs, and flushes:
/// a store whose header is zero is a new one to the kernel.
fn zero_start(
    scan: &Scan,
    state: &VgState,
    lv: &LogicalVolume,
    extent_sectors: u64,
    chunk_bytes: u64,
) -> Result<()> {
    let vg = &state.vg;
    let mut left = chunk_bytes / 512;
    for seg in &lv.segments {
        if left == 0 {
            break;
        }
        let SegmentKind::Striped { stripes, .. } = &seg.kind else {
            unreachable!("allocated linear")
        };
        let [stripe] = stripes.as_slice() else {
            unreachable!("allocated linear")
        };
        let pv = vg.pv(&stripe.pv).expect("allocated from the VG's PVs");
        let index = *state.present.get(&stripe.pv).expect("a complete VG");
        let device = &scan.pvs[index].device;
        let sectors = left.min(seg.extent_count * extent_sectors);
        let offset = (pv.pe_start_sectors + stripe.start_pe * extent_sectors) * 512;
        device.write_at(&vec![0u8; (sectors * 512) as usize], offset)?;
        device.flush()?;
        left -= sectors;
    }
    Ok(())
}
