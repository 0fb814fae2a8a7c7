//! The engine: where the devices are, where state is kept, and the guarantees every change
//! relies on (a lock per object, exclusive claims, the devices scanned afresh under the lock).
//! What each format does with them lives in its own module under [`crate::modules`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tessera_block::{FileDevice, OpenOptions, SharedDevice};
use tessera_formats::signature::{self, Signature};

use crate::devices::{self, NamedDevices};
use crate::error::{EngineError, Result};
use crate::format::{FormatModule, Volumes};
use crate::lock::Lock;

/// Where the engine finds devices.
pub(crate) enum Source {
    /// `--devices` paths and globs.
    Patterns(Vec<String>),
    /// Every block device.
    BlockDevices,
    /// Devices opened by the caller (tests, fault injection).
    Given(Vec<(String, SharedDevice)>),
}

/// The engine: where to look for devices and where to keep state.
pub struct Engine {
    pub(crate) state_dir: PathBuf,
    pub(crate) source: Source,
    /// Devices running on top of the others (a daemon's MD arrays), scanned with them.
    stacked: std::sync::Mutex<NamedDevices>,
    /// Devices that stand in for listed ones while they are set (a source PV being moved
    /// online): see [`Engine::overlay_device`].
    overlays: std::sync::Mutex<NamedDevices>,
    /// What the process that runs this engine provides to the format modules, by type
    /// (a daemon's live thin pools): see [`Engine::provide`].
    services: std::sync::Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
    /// Whether the MD arrays on the devices are put together (in user space, for this
    /// process only) so that the PVs on them are seen: see [`Engine::set_assemble_arrays`].
    pub(crate) assemble_arrays: bool,
    pub(crate) description: String,
    pub(crate) hostname: String,
    /// The format modules, in the order they are tried (see [`crate::format`]).
    formats: Vec<Arc<dyn FormatModule>>,
}

pub(crate) fn random_bytes() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b)
        .map_err(|e| EngineError::BadArgument(format!("no randomness for a UUID: {e}")))?;
    Ok(b)
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn same_path(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

impl Engine {
    /// Gives the format modules `service`, found by its type with [`Engine::service`]
    /// (one of each type; a new one replaces the old). A daemon hands its modules what
    /// runs live (its thin pools) so that their verbs change it through it.
    pub fn provide<T: std::any::Any + Send + Sync>(&self, service: Arc<T>) {
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        services.retain(|s| !s.is::<T>());
        services.push(service);
    }

    /// The service of type `T` provided to this engine, if any.
    pub fn service<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find_map(|s| s.clone().downcast::<T>().ok())
    }

    /// An engine over `--devices` patterns, or every block device when there are none.
    pub fn new(state_dir: impl Into<PathBuf>, patterns: Vec<String>) -> Engine {
        let source = if patterns.is_empty() {
            Source::BlockDevices
        } else {
            Source::Patterns(patterns)
        };
        Engine {
            state_dir: state_dir.into(),
            source,
            stacked: Default::default(),
            overlays: Default::default(),
            services: Default::default(),
            assemble_arrays: false,
            description: String::new(),
            hostname: hostname(),
            formats: crate::modules::registry(),
        }
    }

    /// An engine over devices the caller opened.
    pub fn with_devices(
        state_dir: impl Into<PathBuf>,
        devices: Vec<(String, SharedDevice)>,
    ) -> Engine {
        Engine {
            state_dir: state_dir.into(),
            source: Source::Given(devices),
            stacked: Default::default(),
            overlays: Default::default(),
            services: Default::default(),
            assemble_arrays: false,
            description: String::new(),
            hostname: hostname(),
            formats: crate::modules::registry(),
        }
    }

    /// Adds a format module from outside the engine: it is tried after the formats that
    /// claim whole devices (partition tables, MD, LVM2, LUKS) and before the filesystem
    /// signatures, which claim whatever is left. Discovery, `show` and
    /// [`Engine::volumes`] find it from then on.
    pub fn register_format(&mut self, module: Arc<dyn FormatModule>) {
        let at = self.formats.len().saturating_sub(1);
        self.formats.insert(at, module);
    }

    /// The format modules, in the order they are tried.
    pub fn formats(&self) -> &[Arc<dyn FormatModule>] {
        &self.formats
    }

    /// The `description` stored with each commit (lvm2 stores the command line).
    pub fn set_description(&mut self, description: impl Into<String>) {
        self.description = description.into();
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub(crate) fn open(path: &str, write: bool) -> Result<SharedDevice> {
        if devices::is_remote(path) {
            return devices::open_remote(path, write);
        }
        let rw = OpenOptions {
            read_only: false,
            ..Default::default()
        };
        let ro = OpenOptions {
            read_only: true,
            ..Default::default()
        };
        if write {
            // A read-only image or device can still be listed; writes to it will name it.
            if let Ok(d) = FileDevice::open(path, rw) {
                return Ok(std::sync::Arc::new(d));
            }
        }
        Ok(std::sync::Arc::new(FileDevice::open(path, ro)?))
    }

    /// Makes every command see the devices that sets of devices make (MD arrays, so that
    /// the PVs on them are found): each format module's [`FormatModule::stacked_devices`]
    /// are added whenever the devices are listed. Arrays the kernel runs are seen through
    /// their own device, and a daemon's through [`Engine::add_stacked`]; neither is
    /// assembled again. Such a device keeps no records: commands write only other formats'
    /// metadata through it.
    pub fn set_assemble_arrays(&mut self, on: bool) {
        self.assemble_arrays = on;
    }

    /// Adds a device that runs on top of the scanned ones (an MD array started in user
    /// space), so that the PVs on it are found too.
    pub fn add_stacked(&self, name: impl Into<String>, device: SharedDevice) {
        let mut stacked = self
            .stacked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = name.into();
        stacked.retain(|(n, _)| *n != name);
        stacked.push((name, device));
    }

    /// Makes `device` stand in for the device named `name` in every scan (tables built
    /// from them then reach it), or with None lets go of it.
    pub fn overlay_device(&self, name: &str, device: Option<SharedDevice>) {
        let mut overlays = self
            .overlays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        overlays.retain(|(n, _)| n != name);
        if let Some(device) = device {
            overlays.push((name.to_string(), device));
        }
    }

    /// Forgets a stacked device.
    pub fn remove_stacked(&self, name: &str) {
        let mut stacked = self
            .stacked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stacked.retain(|(n, _)| n != name);
    }

    pub(crate) fn stacked(&self) -> NamedDevices {
        self.stacked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether `name` is a stacked device (claimed through its own members).
    pub fn is_stacked(&self, name: &str) -> bool {
        self.stacked().iter().any(|(n, _)| n == name)
    }

    /// The devices where volumes may live: the listed devices, with each partition table's
    /// partitions in place of the disk holding it, and the stacked devices; and the problems
    /// met opening them.
    pub(crate) fn devices(&self, write: bool) -> Result<(NamedDevices, Vec<String>)> {
        let (listed, mut problems) = self.listed_devices(write)?;
        // Only the formats that hold devices (partition tables) are probed here.
        let modules: Vec<Arc<dyn FormatModule>> = self
            .formats
            .iter()
            .filter(|m| m.contains_devices())
            .cloned()
            .collect();
        let mut out = Vec::new();
        for tree in crate::discover::probe_tree(&listed, &modules) {
            if let Some(f) = &tree.finding {
                problems.extend(f.problems.iter().cloned());
            }
            let mut leaves = Vec::new();
            tree.leaves(&mut leaves);
            out.extend(
                leaves
                    .into_iter()
                    .map(|p| (p.name.clone(), p.device.clone())),
            );
        }
        for (name, device) in self.stacked() {
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, device));
            }
        }
        let overlays = self
            .overlays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (name, device) in overlays {
            if let Some(slot) = out.iter_mut().find(|(n, _)| *n == name) {
                slot.1 = device;
            }
        }
        if self.assemble_arrays {
            let mut stacked = Vec::new();
            for module in &self.formats {
                stacked.extend(module.stacked_devices(&out, write, &mut problems));
            }
            out.extend(stacked);
        }
        Ok((out, problems))
    }

    /// Every volume the format modules make on the devices, in the order they were
    /// assembled, each ready to be activated (the devices opened for writing when
    /// `write`); and the problems met opening the devices. Finding them reads only.
    pub fn volumes(&self, write: bool) -> Result<(Volumes, Vec<String>)> {
        let (listed, problems) = self.listed_devices(write)?;
        let stack = crate::discover::Stack::build(&listed, &self.formats);
        Ok((stack.into_volumes(), problems))
    }

    /// Everything on the devices, layer by layer (see [`crate::discover`]). Reads only.
    pub fn discover(&self) -> Result<crate::discover::Report> {
        let (listed, problems) = self.listed_devices(false)?;
        Ok(crate::discover::discover(&listed, problems, &self.formats))
    }

    /// The devices as listed (`--devices`, every block device, or given), and the problems
    /// met opening them.
    pub(crate) fn listed_devices(&self, write: bool) -> Result<(NamedDevices, Vec<String>)> {
        let paths = match &self.source {
            Source::Given(devs) => return Ok((devs.clone(), Vec::new())),
            Source::Patterns(p) => devices::expand(p)?,
            Source::BlockDevices => devices::block_devices(),
        };
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for path in paths {
            match Self::open(&path, write) {
                Ok(dev) => out.push((path, dev)),
                // Scanning every block device meets some that cannot be opened (an empty
                // CD drive); only devices named by the user are worth a word.
                Err(e) => {
                    if matches!(self.source, Source::Patterns(_)) {
                        problems.push(e.to_string());
                    }
                }
            }
        }
        Ok((out, problems))
    }

    /// Reads every PV and VG on the devices.
    pub(crate) fn lock(&self, name: &str) -> Result<Lock> {
        Lock::exclusive(&self.state_dir.join("lock"), name)
    }

    pub(crate) fn lock_vg(&self, vg: &str) -> Result<Lock> {
        self.lock(&format!("V_{vg}"))
    }

    pub(crate) fn lock_orphans(&self) -> Result<Lock> {
        self.lock("P_orphans")
    }

    /// Refuses to overwrite `device` (called `name`) when it holds a format, unless
    /// `force`: the signatures blkid knows, and what any other registered format module
    /// recognises there, so a format from outside the engine is kept as the built-in ones
    /// are. Returns the signatures found (what `--force` wipes).
    pub(crate) fn refuse_occupied(
        &self,
        name: &str,
        device: &SharedDevice,
        force: bool,
    ) -> Result<Vec<Signature>> {
        let found = signature::probe(device.as_ref())?;
        let mut what: Vec<String> = found.iter().map(|s| s.to_string()).collect();
        for module in &self.formats {
            if let Some((f, _)) = module.probe(name, device) {
                // Damaged remains and raw data are no format to keep.
                let known = found.iter().any(|s| s.kind == f.format);
                if !known && f.problems.is_empty() && f.state.is_none() {
                    what.push(format!("{} ({})", f.format, f.summary));
                }
            }
        }
        if !what.is_empty() && !force {
            return Err(EngineError::Occupied {
                device: name.into(),
                what: what.join(", "),
            });
        }
        Ok(found)
    }

    /// Opens `path`, or the partition or stacked device of that name among the engine's
    /// devices (`disk.img1`, `md/NAME`), which has no path of its own, or else a volume a
    /// format module makes of them (`VG/LV`), activated in user space (writable when
    /// `write`).
    pub fn open_named(&self, path: &str, write: bool) -> Result<SharedDevice> {
        if Path::new(path).exists() || devices::is_remote(path) {
            return Self::open(path, write);
        }
        let (devs, _) = self.devices(write)?;
        if let Some((_, d)) = devs.into_iter().find(|(name, _)| name == path) {
            return Ok(d);
        }
        let (volumes, _) = self.volumes(write)?;
        let Some(volume) = volumes.into_iter().find(|v| v.name() == path) else {
            return Err(EngineError::DeviceUnusable {
                device: path.into(),
                why: "no such file or device, nor a partition, array or LV tessera found".into(),
            });
        };
        let activated = volume
            .activate(crate::format::target_registry(), write)
            .map_err(|why| EngineError::DeviceUnusable {
                device: path.into(),
                why,
            })?;
        Ok(Arc::new(activated.device))
    }
}
