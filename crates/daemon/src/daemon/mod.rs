//! The daemon behind `tessera serve`: the VGs' LVs activated in user space as mapped
//! devices and exported over NBD, plus the devices made with `tessera dm create`. Requests
//! from the control socket change them: dmsetup's verbs on the mapped devices, and LV
//! changes, which the daemon commits itself and then follows with suspend, load and resume,
//! so a served LV is resized online.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::json;
use tessera_block::{BlockError, FileDevice, OpenOptions, SharedDevice};
use tessera_engine::format::Volume as FormatVolume;
use tessera_engine::md::{Health, MdArray};
use tessera_engine::md_records::{BadBlockLogs, MdRecords};
use tessera_engine::{activate, Engine, EngineError, Scan, VgState};
use tessera_export::{Export, ExportSet};
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

use crate::control::{
    version_string, ControlSocket, LvChange, Reply, Request, NOT_SERVED, VERSION,
};
use crate::error::{chain, refuse, DaemonError, Result};

mod dm;
mod luks;
mod lv;
mod md;
mod pvmove;
mod thin;

use dm::retire;
pub use lv::apply_lv_change;

/// The format modules whose volumes the daemon starts through its own verbs (MD arrays with
/// their records, LVs that follow online changes) rather than as the module activates them.
const SERVED_BY_OWN_VERBS: [&str; 2] = ["md", "lvm2"];

/// A mapped device the daemon holds.
struct Volume {
    device: Arc<MappedDevice>,
    /// The NBD export name: `VG/LV` for LVs, the device name for `dm create`'s.
    export: String,
    /// The LV it maps, when it maps one: followed by id, so a rename keeps the device.
    lv: Option<LvRef>,
    /// The records an MD array's set keeps (its superblocks), when it is one run writable.
    records: Option<Arc<MdRecords>>,
    /// Exported read-only (the whole daemon, or this volume alone).
    read_only: bool,
    /// The claim taken for it alone (a LUKS device opened while serving).
    claim: Option<tessera_engine::claim::Claim>,
    /// Devices under it that are served under no name of their own (an origin's `-real`
    /// and its snapshots' `-cow` layers), held while it runs.
    layers: Vec<Arc<MappedDevice>>,
}

#[derive(Clone)]
struct LvRef {
    vg: String,
    lv_id: String,
}

/// The volumes a tessera daemon serves and the requests that change them. It is shared
/// between threads: wrap it in an [`Arc`] and hand [`Daemon::listen`] (or [`crate::listen`]
/// with [`Daemon::handle`]) a control socket; the NBD and FUSE front ends serve
/// [`Daemon::exports`].
pub struct Daemon {
    engine: Engine,
    exports: ExportSet,
    registry: Arc<TargetRegistry>,
    read_only: bool,
    /// By device name (`VG-LV` for LVs, as lvm2 names them). The lock also serialises
    /// the requests that change volumes.
    volumes: Mutex<BTreeMap<String, Volume>>,
    /// The thin pools served, by `VG/POOL`: their stacks' unexported devices. Locked
    /// only while `volumes` is held.
    pools: Arc<Mutex<BTreeMap<String, thin::PoolStack>>>,
    /// The online moves run or running, by VG.
    moves: Mutex<BTreeMap<String, pvmove::MoveStatus>>,
    /// Exclusive claims on every member of what this daemon runs.
    _claims: Vec<tessera_engine::claim::Claim>,
}

impl Daemon {
    /// Scans the engine's devices and activates every LV that can be served; returns the
    /// daemon and a warning for each LV or VG it skipped.
    /// MD arrays are started too (as `md/NAME`): complete ones always, degraded ones when
    /// `degraded` is set or when serving read-only.
    pub fn start(engine: Engine, read_only: bool, degraded: bool) -> Result<(Daemon, Vec<String>)> {
        Self::start_forced(engine, read_only, degraded, false)
    }

    /// As [`Daemon::start`]; with `force`, MD arrays that would not start are put together
    /// from the members `mdadm --assemble --force` would take (see
    /// [`tessera_engine::md::MdArray::forced`]), recorded in their superblocks unless
    /// `read_only`.
    pub fn start_forced(
        engine: Engine,
        read_only: bool,
        degraded: bool,
        force: bool,
    ) -> Result<(Daemon, Vec<String>)> {
        let registry = tessera_engine::format::new_target_registry();
        // Merges that finished while a previous daemon ran leave the metadata first, as
        // lvm2's activation does: the origin then starts plain.
        let merged = if read_only {
            Vec::new()
        } else {
            engine.finish_merges()?
        };
        // Claim every member first: a second daemon over the same devices stops here,
        // before it writes anything.
        let md = engine.md_scan(!read_only)?;
        let scan = engine.scan_with(!read_only)?;
        // The volumes of formats this daemon has no verbs of its own for (MD arrays and LVs
        // are started below, with their records and online changes) are served as their
        // modules activate them.
        let (others, _) = engine.volumes(!read_only)?;
        let others: Vec<Box<dyn FormatVolume>> = others
            .into_iter()
            .filter(|v| !SERVED_BY_OWN_VERBS.contains(&v.module()))
            .collect();
        let mut members: Vec<String> = md
            .arrays
            .iter()
            .flat_map(|a| {
                // Forcing may take members the plain assembly leaves out.
                let forced = a.left_out.iter().map(|(m, _)| m).filter(|_| force);
                a.slots.iter().flatten().chain(&a.spares).chain(forced)
            })
            .map(|m| m.path.clone())
            .collect();
        members.extend(others.iter().flat_map(|v| v.devices()));
        for state in scan.vgs.values() {
            members.extend(state.present.values().map(|&i| scan.pvs[i].path.clone()));
        }
        // A partition read from an image file's table is claimed through the file.
        let mut members: Vec<String> = members
            .iter()
            .filter_map(|m| tessera_engine::devices::backing_path(m))
            .collect();
        members.sort();
        members.dedup();
        let claims = members
            .iter()
            .map(|p| tessera_engine::claim::claim(p))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        drop(scan);
        let daemon = Daemon {
            engine,
            exports: ExportSet::new(),
            registry: Arc::new(registry),
            read_only,
            volumes: Mutex::new(BTreeMap::new()),
            pools: Arc::new(Mutex::new(BTreeMap::new())),
            moves: Mutex::new(BTreeMap::new()),
            _claims: claims,
        };
        daemon
            .engine
            .set_live_pools(Arc::new(thin::ServedPools(daemon.pools.clone())));
        let mut warnings: Vec<String> = merged
            .iter()
            .map(|s| format!("{s}: merged into its origin; the snapshot is gone"))
            .collect();
        warnings.extend(md.problems.iter().cloned());
        {
            let mut volumes = daemon.lock();
            for array in &md.arrays {
                if let Err(e) = daemon.add_array(array, degraded || read_only, force, &mut volumes)
                {
                    warnings.push(format!("not starting md/{}: {}", array.name, e.chain()));
                }
            }
        }
        // A pool change cut short between its commits is finished before the pool runs,
        // as lvm2 finishes it when it activates the pool.
        if !read_only {
            for (vg, pool) in daemon.engine.unsettled_pools(None)? {
                if let Err(e) = daemon.engine.thin_pool_settle(&vg, &pool) {
                    warnings.push(format!("thin pool {vg}/{pool}: {}", e));
                }
            }
        }
        // A move cut short (a crash, a killed serve): as during an online move, the source
        // stands in mirrored, so the LVs on it are served from where their data lies and
        // writes to the areas being moved reach both sides; `resume_moves` then finishes it.
        let mut cut_short: Vec<String> = Vec::new();
        if !read_only {
            for (vg, _) in daemon.engine.pv_moves()? {
                match daemon.engine.pv_move_source(&vg) {
                    Ok((path, moving)) => {
                        let moving: SharedDevice = Arc::new(moving);
                        daemon.engine.overlay_device(&path, Some(moving));
                        cut_short.push(vg);
                    }
                    Err(e) => warnings.push(format!(
                        "VG '{vg}': the pv move cut short cannot resume: {e}"
                    )),
                }
            }
        }
        let scan = daemon.engine.scan_with(!read_only)?;
        warnings.extend(scan.problems.iter().map(|p| p.to_string()));
        {
            let mut volumes = daemon.lock();
            for state in scan.vgs.values() {
                let settled;
                let state = if cut_short.contains(&state.vg.name) {
                    settled = tessera_engine::pvmove::settled_state(state)?;
                    &settled
                } else {
                    state
                };
                for lv in state.vg.lvs.iter().filter(|lv| lv.is_visible()) {
                    // An LV on a pvmove LV belongs to a move cut short that this daemon does
                    // not resume (read-only, or the move cannot run): it waits for the move
                    // to be finished or aborted.
                    if !tessera_engine::pvmove::pvmoves_under(&state.vg, &lv.name).is_empty() {
                        warnings.push(format!(
                            "skipping {vg}/{lv}: VG '{vg}' is in the middle of a pv move that was \
                             cut short; a writable serve resumes it, or finish it with `tessera pv \
                             move` (no arguments) or lvm2's `pvmove`, or undo it with `tessera pv \
                             move --abort`, with the VG not served",
                            vg = state.vg.name,
                            lv = lv.name
                        ));
                        continue;
                    }
                    if let Err(e) = daemon.add_lv(&scan, state, &lv.name, &mut volumes) {
                        warnings.push(format!("skipping {}/{}: {e}", state.vg.name, lv.name));
                    }
                }
            }
            for volume in &others {
                if let Err(e) = daemon.add_volume(volume.as_ref(), &mut volumes) {
                    warnings.push(format!("skipping {}: {}", volume.name(), e.chain()));
                }
            }
        }
        Ok((daemon, warnings))
    }

    /// Stops everything the daemon runs, LVs first and the arrays under them last: each is
    /// flushed and its table replaced by `error`, so a raid set stops its sync work and
    /// records itself clean, as md does when an array stops.
    pub fn shutdown(&self) {
        let mut volumes = self.lock();
        let (arrays, others): (Vec<_>, Vec<_>) = std::mem::take(&mut *volumes)
            .into_values()
            .partition(|v| v.export.starts_with("md/"));
        for volume in others.iter().chain(&arrays) {
            self.exports.remove(&volume.export);
            let _ = tessera_block::BlockDevice::flush(&*volume.device);
            retire(&volume.device);
            for layer in &volume.layers {
                let _ = tessera_block::BlockDevice::flush(&**layer);
                retire(layer);
            }
        }
        // Pools after their thin devices: each commits its metadata on the flush.
        for (_, stack) in std::mem::take(&mut *self.pools()) {
            stack.retire();
        }
    }

    /// The exports of every volume the daemon serves: `VG/LV`, `md/NAME`, and the names of
    /// the devices made with `dm create`. They change as requests change the volumes.
    pub fn exports(&self) -> &ExportSet {
        &self.exports
    }

    /// Answers requests on a control socket at `path` with [`Daemon::handle`], one thread
    /// per client; dropping the returned socket removes its file, so no new client finds it.
    pub fn listen(self: &Arc<Self>, path: &std::path::Path) -> Result<ControlSocket> {
        let daemon = self.clone();
        crate::control::listen(path, Arc::new(move |request| daemon.handle(request)))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Volume>> {
        self.volumes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pools(&self) -> MutexGuard<'_, BTreeMap<String, thin::PoolStack>> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts an MD array in user space and exports it as `md/NAME`.
    /// With `force`, an array that would not start is put together as `mdadm --assemble
    /// --force` would (and started degraded if need be); a read-only daemon decides in
    /// memory only and writes nothing.
    fn add_array(
        &self,
        array: &MdArray,
        degraded: bool,
        force: bool,
        volumes: &mut BTreeMap<String, Volume>,
    ) -> Result<MdArray> {
        // Before forcing writes anything.
        let name = format!("md-{}", array.name);
        if volumes.contains_key(&name) {
            refuse!("a device named {name} exists already");
        }
        let mut array = array.clone();
        let mut degraded = degraded;
        if force {
            let (forced, plan) = array
                .forced()
                .map_err(|e| DaemonError::Refused(e.to_string()))?;
            for line in plan.describe(&format!("md/{}", array.name)) {
                eprintln!("tessera: warning: {line}");
            }
            array = forced;
            if !self.read_only {
                array.write_forced(&plan).map_err(EngineError::from)?;
            }
            degraded = true;
        }
        for (member, why) in &array.left_out {
            eprintln!(
                "tessera: warning: md/{}: leaving out {}: {why}",
                array.name, member.path
            );
        }
        match array.health() {
            Health::Complete => {}
            Health::Degraded { missing } if degraded => {
                if !self.read_only {
                    // Before any write: a member that comes back later must be seen as stale.
                    array.mark_missing().map_err(EngineError::from)?;
                }
                eprintln!(
                    "tessera: warning: md/{}: running degraded, slots {missing:?} missing",
                    array.name
                );
            }
            Health::Degraded { missing } => refuse!(
                "it is degraded (slots {missing:?} missing); serve --degraded starts it anyway"
            ),
            Health::Failed { missing, tolerated } => {
                let mut why = format!(
                    "slots {missing:?} are missing and {} survives {tolerated}",
                    array.level_name()
                );
                for (member, left) in array.dropped_out() {
                    why.push_str(&format!("; {member} left out: {left}"));
                }
                match array.forced() {
                    Ok(_) => why.push_str(
                        "; --force starts it from the members mdadm --assemble --force \
                         would take (read-only serving writes nothing)",
                    ),
                    Err(e) => why.push_str(&format!("; {e}")),
                }
                refuse!("{why}")
            }
        }
        let records = if self.read_only {
            None
        } else {
            Some(Arc::new(MdRecords::new(&array).map_err(EngineError::from)?))
        };
        let set_metadata = match &records {
            Some(r) => Some(r.clone() as _),
            // Read-only, the set still reads around the ranges the members' logs record.
            None => Some(Arc::new(BadBlockLogs::new(&array).map_err(EngineError::from)?) as _),
        };
        let device = Arc::new(
            array
                .activate(&name, self.registry.clone(), set_metadata)
                .map_err(DaemonError::Refused)?,
        );
        let export = format!("md/{}", array.name);
        // The PVs on the array are found by the next scan.
        self.engine.add_stacked(export.clone(), device.clone());
        self.serve(
            volumes,
            name,
            format!("MD {} array {}", array.level_name(), array.name),
            Volume {
                device,
                export,
                lv: None,
                records,
                read_only: self.read_only,
                claim: None,
                layers: Vec::new(),
            },
        )?;
        Ok(array)
    }

    /// Serves the LVs not served yet on every VG the daemon's devices hold now (after an
    /// array started or a LUKS volume opened under them), a line each in `text`; returns
    /// their names.
    fn serve_new_lvs(
        &self,
        volumes: &mut BTreeMap<String, Volume>,
        text: &mut String,
    ) -> Result<Vec<String>> {
        let scan = self.engine.scan_with(!self.read_only)?;
        let mut served = Vec::new();
        for state in scan.vgs.values() {
            for lv in state.vg.lvs.iter().filter(|lv| lv.is_visible()) {
                let key = activate::dm_name(&state.vg.name, &lv.name);
                if volumes.contains_key(&key) {
                    continue;
                }
                match self.add_lv(&scan, state, &lv.name, volumes) {
                    Ok(()) => {
                        text.push_str(&format!("  {}/{} served\n", state.vg.name, lv.name));
                        served.push(format!("{}/{}", state.vg.name, lv.name));
                    }
                    Err(e) => {
                        text.push_str(&format!("  {}/{} skipped: {e}\n", state.vg.name, lv.name))
                    }
                }
            }
        }
        Ok(served)
    }

    /// Exports `volume`'s device under its export name, described as `description`, and
    /// holds it as `key`.
    fn serve(
        &self,
        volumes: &mut BTreeMap<String, Volume>,
        key: String,
        description: String,
        volume: Volume,
    ) -> Result<()> {
        self.exports.insert(
            volume.export.clone(),
            Export::new(volume.device.clone())
                .read_only(volume.read_only)
                .description(description),
        )?;
        volumes.insert(key, volume);
        Ok(())
    }

    /// Activates a volume of another format module as that module activates it, and
    /// exports it under its name.
    fn add_volume(
        &self,
        volume: &dyn FormatVolume,
        volumes: &mut BTreeMap<String, Volume>,
    ) -> Result<()> {
        let name = volume.dm_name();
        if volumes.contains_key(&name) {
            refuse!("a device named {name} exists already");
        }
        let activated = volume
            .activate(self.registry.clone(), !self.read_only)
            .map_err(DaemonError::Refused)?;
        for note in &activated.notes {
            eprintln!("tessera: warning: {}: {note}", volume.name());
        }
        let device = Arc::new(activated.device);
        let export = volume.name();
        self.serve(
            volumes,
            name,
            format!("{} volume {export}", volume.module()),
            Volume {
                device,
                export,
                lv: None,
                records: None,
                read_only: self.read_only,
                claim: None,
                layers: Vec::new(),
            },
        )?;
        Ok(())
    }

    /// Activates one LV and exports it as `VG/LV`.
    fn add_lv(
        &self,
        scan: &Scan,
        state: &VgState,
        lv_name: &str,
        volumes: &mut BTreeMap<String, Volume>,
    ) -> Result<()> {
        let lv = state
            .vg
            .lv(lv_name)
            .ok_or_else(|| DaemonError::Refused(format!("no LV '{lv_name}'")))?;
        if let Some(origin) = activate::stack_origin(&state.vg, lv_name) {
            return self.add_stack(scan, state, origin, volumes);
        }
        if let Some(pool) = state.vg.pool_of(lv_name) {
            return self.add_pool(scan, state, &pool.name.clone(), lv_name, volumes);
        }
        if !lv.is_plain() && lv.raid().is_none() {
            let kind = lv.segments.first().map(|s| s.type_name()).unwrap_or("?");
            refuse!("LVs of type {kind} cannot be served yet");
        }
        // A raid LV runs degraded only read-only: its metadata sub-LVs are not updated.
        let (device, notes) = activate::activate_lv_with(
            scan,
            state,
            lv_name,
            self.registry.clone(),
            self.read_only,
        )?;
        for note in notes {
            eprintln!("tessera: warning: {}/{lv_name}: {note}", state.vg.name);
        }
        let device = Arc::new(device);
        let export = format!("{}/{lv_name}", state.vg.name);
        self.serve(
            volumes,
            device.name().to_string(),
            format!("LV {export}"),
            Volume {
                device,
                export,
                lv: Some(LvRef {
                    vg: state.vg.name.clone(),
                    lv_id: lv.id.to_string(),
                }),
                records: None,
                read_only: self.read_only,
                claim: None,
                layers: Vec::new(),
            },
        )?;
        Ok(())
    }

    /// Activates an origin with its snapshots as lvm2 stacks them (the origin's `-real`
    /// layer, each snapshot's `-cow` layer, the `snapshot` devices, the `snapshot-origin`
    /// on top) and exports the origin and each snapshot as `VG/LV`: the stack built anew
    /// with nothing served before (see `restack`). Nothing when the stack runs already.
    fn add_stack(
        &self,
        scan: &Scan,
        state: &VgState,
        origin: &str,
        volumes: &mut BTreeMap<String, Volume>,
    ) -> Result<()> {
        if volumes.contains_key(&activate::dm_name(&state.vg.name, origin)) {
            return Ok(());
        }
        self.restack(scan, state, origin, volumes).map(|_| ())
    }

    /// Answers one control request.
    pub fn handle(&self, request: Request) -> Reply {
        let result = match request {
            Request::Version => Ok(Reply::ok(
                format!(
                    "tessera {} control protocol {}\n",
                    env!("CARGO_PKG_VERSION"),
                    version_string(VERSION)
                ),
                json!({"tessera": env!("CARGO_PKG_VERSION"), "protocol": VERSION}),
            )),
            Request::Lv(change) => self.lv_change(&change),
            Request::MdAssemble {
                name,
                degraded,
                force,
            } => self.md_assemble(&name, degraded, force),
            Request::MdStop { name } => self.md_stop(&name),
            Request::MdReload { name } => self.md_reload(&name),
            Request::LuksOpen {
                device,
                name,
                passphrase_hex,
                key_slot,
                read_only,
            } => match decode_hex(&passphrase_hex) {
                Some(pass) => self.luks_open(&device, &name, &pass, key_slot, read_only),
                None => Err(DaemonError::Refused(
                    "the passphrase did not arrive as hex".into(),
                )),
            },
            Request::LuksClose { name } => self.luks_close(&name),
            Request::PvMove {
                source,
                dests,
                lv,
                min_rate_kib,
                max_rate_kib,
            } => {
                let mut limits = tessera_engine::pvmove::MoveLimits::default();
                limits.min_rate_kib = min_rate_kib.unwrap_or(limits.min_rate_kib);
                limits.max_rate_kib = max_rate_kib.unwrap_or(limits.max_rate_kib);
                self.pv_move(source.as_deref(), &dests, lv.as_deref(), limits)
            }
            Request::PvMoveStatus { vg } => self.pv_move_status(vg.as_deref()),
            Request::Show => self
                .engine
                .discover()
                .map_err(DaemonError::from)
                .and_then(|report| {
                    let data = serde_json::to_value(&report).map_err(|e| {
                        DaemonError::Refused(format!("cannot write the report: {e}"))
                    })?;
                    Ok(Reply::ok("", data))
                }),
            Request::Serves { vg } => {
                let serves = self
                    .lock()
                    .values()
                    .any(|v| v.lv.as_ref().is_some_and(|l| l.vg == vg));
                Ok(Reply::ok("", json!(serves)))
            }
            dm => self.dm(dm),
        };
        result.unwrap_or_else(|e| Reply::error(e.chain()))
    }
}

/// Bytes from their hex text (how a passphrase crosses the control socket).
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
