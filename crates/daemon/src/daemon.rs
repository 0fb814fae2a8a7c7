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
use tessera_engine::md_records::MdRecords;
use tessera_engine::{activate, Engine, EngineError, Scan, VgState};
use tessera_export::{Export, ExportSet};
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

use crate::control::{
    version_string, ControlSocket, LvChange, Reply, Request, NOT_SERVED, VERSION,
};
use crate::error::{chain, refuse, DaemonError, Result};

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
    /// Exclusive claims on every member of what this daemon runs.
    _claims: Vec<tessera_engine::claim::Claim>,
}

impl Daemon {
    /// Scans the engine's devices and activates every LV that can be served; returns the
    /// daemon and a warning for each LV or VG it skipped.
    /// MD arrays are started too (as `md/NAME`): complete ones always, degraded ones when
    /// `degraded` is set or when serving read-only.
    pub fn start(engine: Engine, read_only: bool, degraded: bool) -> Result<(Daemon, Vec<String>)> {
        let mut registry = TargetRegistry::new();
        tessera_raid::register(&mut registry);
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
            .flat_map(|a| a.slots.iter().flatten().chain(&a.spares))
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
            _claims: claims,
        };
        let mut warnings = Vec::new();
        warnings.extend(md.problems.iter().cloned());
        {
            let mut volumes = daemon.lock();
            for array in &md.arrays {
                if let Err(e) = daemon.add_array(array, degraded || read_only, &mut volumes) {
                    warnings.push(format!("not starting md/{}: {}", array.name, e.chain()));
                }
            }
        }
        let scan = daemon.engine.scan_with(!read_only)?;
        warnings.extend(scan.problems.iter().map(|p| p.to_string()));
        {
            let mut volumes = daemon.lock();
            for state in scan.vgs.values() {
                for lv in state.vg.lvs.iter().filter(|lv| lv.is_visible()) {
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

    fn md_assemble(&self, name: &str, degraded: bool) -> Result<Reply> {
        let mut volumes = self.lock();
        let scan = self.engine.md_scan(!self.read_only)?;
        let Some(array) = scan.array(name) else {
            refuse!("no MD array '{name}' on the daemon's devices");
        };
        self.add_array(array, degraded || self.read_only, &mut volumes)?;
        let size = volumes
            .get(&format!("md-{}", array.name))
            .map_or(0, |v| v.device.size_sectors());
        let mut text = format!(
            "md/{} started: {} over {} of {} members, {size} sectors\n",
            array.name,
            array.level_name(),
            array.slots.iter().flatten().count(),
            array.raid_disks
        );
        // The LVs on PVs the array holds come up with it.
        let scan = self.engine.scan_with(!self.read_only)?;
        let mut served = Vec::new();
        for state in scan.vgs.values() {
            for lv in state.vg.lvs.iter().filter(|lv| lv.is_visible()) {
                let key = activate::dm_name(&state.vg.name, &lv.name);
                if volumes.contains_key(&key) {
                    continue;
                }
                match self.add_lv(&scan, state, &lv.name, &mut volumes) {
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
        Ok(Reply::ok(
            text,
            json!({ "name": array.name, "size_sectors": size, "lvs": served }),
        ))
    }

    /// Loads array `name` anew from its members' superblocks, so that it takes spares
    /// added since it started and lets go of removed ones; the set keeps its records.
    fn md_reload(&self, name: &str) -> Result<Reply> {
        let volumes = self.lock();
        let key = format!("md-{name}");
        let Some(volume) = volumes.get(&key) else {
            refuse!("md/{name} is not running in this daemon");
        };
        let Some(records) = &volume.records else {
            refuse!("md/{name} runs read-only: it takes no new members");
        };
        let scan = self.engine.md_scan(false)?;
        let Some(array) = scan.array(name) else {
            refuse!("no MD array '{name}' on the daemon's devices");
        };
        for spare in &array.spares {
            records.add_member(spare.clone());
        }
        let table = Table::parse(&array.table().map_err(DaemonError::Refused)?)?;
        let resolve = |path: &str| {
            array
                .slots
                .iter()
                .flatten()
                .chain(&array.spares)
                .find(|m| m.path == path)
                .map(|m| m.device.clone())
                .ok_or_else(|| tessera_block::BlockError::Open {
                    device: path.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not a member of the array",
                    ),
                })
        };
        volume.device.load(&table, &resolve)?;
        volume.device.resume()?;
        Ok(Reply::ok(
            format!(
                "md/{name} reloaded: {} members, {} spares\n",
                array.slots.iter().flatten().count(),
                array.spares.len()
            ),
            json!(null),
        ))
    }

    fn md_stop(&self, name: &str) -> Result<Reply> {
        let mut volumes = self.lock();
        let key = format!("md-{name}");
        let Some(volume) = volumes.remove(&key) else {
            refuse!("md/{name} is not running in this daemon");
        };
        self.exports.remove(&volume.export);
        self.engine.remove_stacked(&volume.export);
        let flushed = tessera_block::BlockDevice::flush(&*volume.device);
        retire(&volume.device);
        flushed?;
        Ok(Reply::ok(format!("md/{name} stopped\n"), json!(null)))
    }

    /// Starts an MD array in user space and exports it as `md/NAME`.
    fn add_array(
        &self,
        array: &MdArray,
        degraded: bool,
        volumes: &mut BTreeMap<String, Volume>,
    ) -> Result<()> {
        for (member, why) in &array.left_out {
            eprintln!(
                "tessera: warning: md/{}: leaving out {}: {why}",
                array.name, member.path
            );
        }
        let mut array = array.clone();
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
            Health::Failed { missing, tolerated } => refuse!(
                "slots {missing:?} are missing and {} survives {tolerated}",
                array.level_name()
            ),
        }
        let name = format!("md-{}", array.name);
        if volumes.contains_key(&name) {
            refuse!("a device named {name} exists already");
        }
        let records = if self.read_only {
            None
        } else {
            Some(Arc::new(MdRecords::new(&array).map_err(EngineError::from)?))
        };
        let device = Arc::new(
            array
                .activate(
                    &name,
                    self.registry.clone(),
                    records.clone().map(|r| r as _),
                )
                .map_err(DaemonError::Refused)?,
        );
        let export = format!("md/{}", array.name);
        // The PVs on the array are found by the next scan.
        self.engine.add_stacked(export.clone(), device.clone());
        self.exports.insert(
            export.clone(),
            Export::new(device.clone())
                .read_only(self.read_only)
                .description(format!("MD {} array {}", array.level_name(), array.name)),
        )?;
        volumes.insert(
            name,
            Volume {
                device,
                export,
                lv: None,
                records,
            },
        );
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
        self.exports.insert(
            export.clone(),
            Export::new(device.clone())
                .read_only(self.read_only)
                .description(format!("{} volume {export}", volume.module())),
        )?;
        volumes.insert(
            name,
            Volume {
                device,
                export,
                lv: None,
                records: None,
            },
        );
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
        self.exports.insert(
            export.clone(),
            Export::new(device.clone())
                .read_only(self.read_only)
                .description(format!("LV {export}")),
        )?;
        volumes.insert(
            device.name().to_string(),
            Volume {
                device,
                export,
                lv: Some(LvRef {
                    vg: state.vg.name.clone(),
                    lv_id: lv.id.to_string(),
                }),
                records: None,
            },
        );
        Ok(())
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
            Request::MdAssemble { name, degraded } => self.md_assemble(&name, degraded),
            Request::MdStop { name } => self.md_stop(&name),
            Request::MdReload { name } => self.md_reload(&name),
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

    fn dm(&self, request: Request) -> Result<Reply> {
        let mut volumes = self.lock();
        let get = |volumes: &BTreeMap<String, Volume>, name: &str| {
            volumes.get(name).map(|v| v.device.clone()).ok_or_else(|| {
                DaemonError::Refused(format!(
                    "no mapped device '{name}' (tessera dm ls lists them)"
                ))
            })
        };
        match request {
            Request::DmLs => {
                let mut text = String::new();
                let mut list = Vec::new();
                for (name, v) in volumes.iter() {
                    let state = if v.device.is_suspended() {
                        "suspended"
                    } else {
                        "live"
                    };
                    let size = v.device.size_sectors();
                    text.push_str(&format!(
                        "{name}\t({size} sectors, {state}, export {})\n",
                        v.export
                    ));
                    list.push(json!({
                        "name": name, "size_sectors": size, "state": state,
                        "export": v.export,
                    }));
                }
                if text.is_empty() {
                    text.push_str("No devices found\n");
                }
                Ok(Reply::ok(text, json!(list)))
            }
            Request::DmCreate { name, table } => {
                check_device_name(&name)?;
                if volumes.contains_key(&name) || self.exports.get(&name).is_some() {
                    refuse!("a device or export named '{name}' exists already");
                }
                let table = parse_table(&name, &table)?;
                let device = Arc::new(MappedDevice::new(name.clone(), self.registry.clone()));
                device.load(&table, &|arg| self.resolve(&volumes, &name, arg))?;
                device.resume()?;
                self.exports.insert(
                    name.clone(),
                    Export::new(device.clone())
                        .read_only(self.read_only)
                        .description(format!("mapped device {name}")),
                )?;
                let size = device.size_sectors();
                volumes.insert(
                    name.clone(),
                    Volume {
                        device,
                        export: name.clone(),
                        lv: None,
                        records: None,
                    },
                );
                Ok(Reply::ok(
                    format!("Created {name} ({size} sectors), exported as {name}\n"),
                    json!({"name": name, "size_sectors": size}),
                ))
            }
            Request::DmLoad { name, table } => {
                let device = get(&volumes, &name)?;
                let table = parse_table(&name, &table)?;
                device.load(&table, &|arg| self.resolve(&volumes, &name, arg))?;
                Ok(Reply::ok(
                    format!("Loaded an inactive table into {name}; resume makes it live\n"),
                    json!(null),
                ))
            }
            Request::DmSuspend { name } => {
                get(&volumes, &name)?.suspend();
                Ok(Reply::ok("", json!(null)))
            }
            Request::DmResume { name } => {
                let device = get(&volumes, &name)?;
                device.resume()?;
                Ok(Reply::ok(
                    "",
                    json!({"size_sectors": device.size_sectors()}),
                ))
            }
            Request::DmRemove { name } => {
                let device = get(&volumes, &name)?;
                if let Some(user) = volumes.iter().find(|(other, v)| {
                    *other != &name
                        && v.device.table().is_some_and(|t| {
                            t.rows().iter().any(|r| names_device(&r.args(), &name))
                        })
                }) {
                    refuse!("{name} is in use by the table of {}", user.0);
                }
                let volume = volumes.remove(&name).expect("present");
                self.exports.remove(&volume.export);
                retire(&device);
                Ok(Reply::ok("", json!(null)))
            }
            Request::DmTable { name, inactive } => {
                let device = get(&volumes, &name)?;
                let table = if inactive {
                    device.inactive_table()
                } else {
                    device.table()
                };
                let text = table.map(|t| t.to_string()).unwrap_or_default();
                Ok(Reply::ok(text.clone(), json!(text)))
            }
            Request::DmStatus { name } => {
                let status = get(&volumes, &name)?.status();
                Ok(Reply::ok(status.clone(), json!(status)))
            }
            Request::DmMessage {
                name,
                sector,
                message,
            } => {
                let device = get(&volumes, &name)?;
                let args: Vec<&str> = message.iter().map(String::as_str).collect();
                let answer = device.message(sector, &args)?;
                Ok(Reply::ok(answer.clone(), json!(answer)))
            }
            Request::Version
            | Request::Lv(_)
            | Request::Serves { .. }
            | Request::MdAssemble { .. }
            | Request::MdStop { .. }
            | Request::MdReload { .. } => {
                unreachable!("handled by the caller")
            }
        }
    }

    /// A table argument as a device: a mapped device of this daemon by name (or
    /// /dev/mapper/NAME), else a file or block device path.
    fn resolve(
        &self,
        volumes: &BTreeMap<String, Volume>,
        loading: &str,
        arg: &str,
    ) -> Result<SharedDevice, BlockError> {
        let name = arg.strip_prefix("/dev/mapper/").unwrap_or(arg);
        if name == loading {
            return Err(BlockError::Open {
                device: arg.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a device cannot map onto itself",
                ),
            });
        }
        if let Some(v) = volumes.get(name) {
            return Ok(v.device.clone());
        }
        let device = FileDevice::open(
            arg,
            OpenOptions {
                read_only: self.read_only,
                ..OpenOptions::default()
            },
        )?;
        Ok(Arc::new(device))
    }

    /// Commits an LV change and brings the VG's mapped devices in line with it. A device
    /// whose size changes is suspended around the commit, so no I/O runs while its extents
    /// move; clients then see the new size on their next connection.
    fn lv_change(&self, change: &LvChange) -> Result<Reply> {
        let vg = change.vg();
        let mut volumes = self.lock();
        let served = volumes
            .values()
            .any(|v| v.lv.as_ref().is_some_and(|l| l.vg == vg))
            || self.engine.scan()?.vg(vg).is_some();
        if !served {
            return Ok(Reply {
                code: Some(NOT_SERVED.into()),
                ..Reply::error(format!("this daemon does not serve VG '{vg}'"))
            });
        }
        if self.read_only {
            refuse!("the daemon serves VG '{vg}' read-only; it makes no changes");
        }
        let resized = match change {
            LvChange::Extend { lv, .. } | LvChange::Reduce { lv, .. } => volumes
                .get(&activate::dm_name(vg, lv))
                .map(|v| v.device.clone()),
            _ => None,
        };
        if let Some(device) = &resized {
            device.suspend();
        }
        let result = apply_lv_change(&self.engine, change);
        let synced = self.sync_vg(vg, &mut volumes);
        // Whatever happened, the device does not stay suspended.
        if let Some(device) = &resized {
            if device.is_suspended() {
                device.resume()?;
            }
        }
        let mut output = result?;
        for line in synced? {
            output.push_str(&line);
            output.push('\n');
        }
        Ok(Reply::ok(output, json!(null)))
    }

    /// Makes the mapped devices of VG `vg` match its committed metadata: tables reloaded
    /// where they changed, new LVs activated, renamed ones re-exported, removed ones
    /// retired. Returns a line for each device it changed.
    fn sync_vg(&self, vg: &str, volumes: &mut BTreeMap<String, Volume>) -> Result<Vec<String>> {
        let scan = self.engine.scan_with(!self.read_only)?;
        let state = scan.vg(vg);
        let mut notes = Vec::new();
        let held: Vec<String> = volumes
            .iter()
            .filter(|(_, v)| v.lv.as_ref().is_some_and(|l| l.vg == vg))
            .map(|(k, _)| k.clone())
            .collect();
        let mut seen = Vec::new();
        for key in held {
            let mut volume = volumes.remove(&key).expect("listed");
            let lv_id = volume.lv.as_ref().expect("an LV's").lv_id.clone();
            let lv = state.and_then(|s| {
                s.vg.lvs.iter().find(|lv| {
                    lv.id.to_string() == lv_id
                        && lv.is_visible()
                        && (lv.is_plain() || lv.raid().is_some())
                })
            });
            let (Some(state), Some(lv)) = (state, lv) else {
                self.exports.remove(&volume.export);
                retire(&volume.device);
                notes.push(format!("  {}: removed from service", volume.export));
                continue;
            };
            seen.push(lv_id);
            let device = &volume.device;
            let table = Table::parse(&activate::lv_table(&scan, state, &lv.name)?)?;
            if device.table().as_ref() != Some(&table) {
                device.suspend();
                let loaded = activate::load_lv(&scan, state, &lv.name, device);
                device.resume()?;
                loaded?;
                notes.push(format!(
                    "  {vg}/{}: served device reloaded online, now {} sectors",
                    lv.name,
                    device.size_sectors()
                ));
            } else if device.is_suspended() {
                device.resume()?;
            }
            let export = format!("{vg}/{}", lv.name);
            if export != volume.export {
                if let Some(old) = self.exports.remove(&volume.export) {
                    self.exports.insert(export.clone(), old)?;
                }
                notes.push(format!("  {}: now served as {export}", volume.export));
                volume.export = export;
            }
            volumes.insert(activate::dm_name(vg, &lv.name), volume);
        }
        if let Some(state) = state {
            for lv in state.vg.lvs.iter().filter(|lv| lv.is_visible()) {
                if seen.contains(&lv.id.to_string()) {
                    continue;
                }
                match self.add_lv(&scan, state, &lv.name, volumes) {
                    Ok(()) => notes.push(format!("  {vg}/{}: now served", lv.name)),
                    Err(e) => notes.push(format!("  {vg}/{}: not served: {}", lv.name, chain(&e))),
                }
            }
        }
        Ok(notes)
    }
}

/// Performs an LV change with `engine` and says what was done, as lvm2's tools do. The
/// daemon and a command run without a daemon both come here.
pub fn apply_lv_change(engine: &Engine, change: &LvChange) -> Result<String> {
    Ok(match change {
        LvChange::Create { vg, lv, options } => {
            engine.lv_create(vg, lv, options)?;
            format!("Logical volume \"{lv}\" created.\n")
        }
        LvChange::Extend { vg, lv, options } => {
            let result = engine.lv_extend(vg, lv, options)?;
            format!(
                "Logical volume {vg}/{lv} successfully resized to {} extents.\n",
                result.extent_count()
            )
        }
        LvChange::Reduce { vg, lv, size } => {
            let result = engine.lv_reduce(vg, lv, *size)?;
            format!(
                "Logical volume {vg}/{lv} successfully resized to {} extents.\n",
                result.extent_count()
            )
        }
        LvChange::Remove { vg, lv } => {
            engine.lv_remove(vg, lv)?;
            format!("Logical volume \"{lv}\" successfully removed.\n")
        }
        LvChange::Rename { vg, lv, new } => {
            engine.lv_rename(vg, lv, new)?;
            format!("Renamed \"{lv}\" to \"{new}\" in volume group \"{vg}\"\n")
        }
    })
}

/// Points a device that leaves service at the error target: clients that still hold it
/// get I/O errors instead of writing into extents the VG may give to another LV.
fn retire(device: &MappedDevice) {
    device.suspend();
    let size = device.size_sectors().max(1);
    if let Ok(table) = Table::parse(&format!("0 {size} error")) {
        let _ = device.load(&table, &|arg| {
            Err(BlockError::Open {
                device: arg.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no devices"),
            })
        });
    }
    let _ = device.resume();
}

fn parse_table(name: &str, text: &str) -> Result<Table> {
    Table::parse(text).map_err(|e| DaemonError::Refused(format!("table for {name}: {e}")))
}

/// Whether a table row's arguments name the device `name`.
fn names_device(args: &[String], name: &str) -> bool {
    args.iter()
        .any(|a| a == name || a.strip_prefix("/dev/mapper/") == Some(name))
}

/// Device names as device-mapper takes them: 1 to 127 bytes, printable, no '/'.
fn check_device_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 127 {
        refuse!("device name '{name}' must be 1 to 127 bytes long");
    }
    if name == "." || name == ".." {
        refuse!("'{name}' cannot name a device");
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || c.is_control() || c.is_whitespace())
    {
        refuse!("device name '{name}' holds {c:?}; names are printable, without '/' or blanks");
    }
    Ok(())
}
