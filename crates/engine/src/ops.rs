//! The operations: every change locks what it changes, scans afresh under the lock, builds
//! the new VG in memory, checks it, and commits it to every metadata area.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tessera_block::{FileDevice, OpenOptions, SharedDevice};
use tessera_formats::lvm2::id::Id;
use tessera_formats::lvm2::label::{wipe_label, write_label, PvLabel};
use tessera_formats::lvm2::mda::{write_mda_header, MdaHeader};
use tessera_formats::lvm2::vg::{
    check_name, check_new_lv_name, LogicalVolume, PhysicalVolume, SegmentKind, TextInfo,
    VolumeGroup,
};
use tessera_formats::md as md_format;
use tessera_formats::signature;

use crate::alloc::{self, NoSpace};
use crate::archive::{self, Archive};
use crate::commit;
use crate::devices;
use crate::error::{EngineError, Result};
use crate::lock::Lock;
use crate::md;
use crate::raid_create;
use crate::scan::{self, PvInfo, Scan, VgState};
use crate::units::{Amount, PercentOf, Sign, SizeArg};

/// lvm2's defaults: 4 MiB extents, data from 1 MiB, 64 KiB stripes.
pub const DEFAULT_EXTENT_BYTES: u64 = 4 << 20;
pub const DEFAULT_PE_START_BYTES: u64 = 1 << 20;
pub const DEFAULT_STRIPE_BYTES: u64 = 64 << 10;
/// lvm2 refuses PVs smaller than 2 MiB.
pub const MIN_PV_BYTES: u64 = 2 << 20;

/// Devices with the names used in messages.
pub type NamedDevices = Vec<(String, SharedDevice)>;

/// Where the engine finds devices.
enum Source {
    /// `--devices` paths and globs.
    Patterns(Vec<String>),
    /// Every block device.
    BlockDevices,
    /// Devices opened by the caller (tests, fault injection).
    Given(Vec<(String, SharedDevice)>),
}

/// The engine: where to look for devices and where to keep state.
pub struct Engine {
    state_dir: PathBuf,
    source: Source,
    /// Devices running on top of the others (a daemon's MD arrays), scanned with them.
    stacked: std::sync::Mutex<NamedDevices>,
    /// Whether the MD arrays on the devices are put together (in user space, for this
    /// process only) so that the PVs on them are seen: see [`Engine::set_assemble_arrays`].
    assemble_arrays: bool,
    description: String,
    hostname: String,
}

/// Options of `pv create`.
#[derive(Debug, Clone, Default)]
pub struct PvCreateOptions {
    /// Overwrite other formats' signatures.
    pub force: bool,
    /// First extent's offset; 1 MiB when None.
    pub pe_start_bytes: Option<u64>,
}

/// The MD arrays on the scanned devices.
#[derive(Debug, Clone)]
pub struct MdScan {
    pub arrays: Vec<md::MdArray>,
    pub problems: Vec<String>,
}

impl MdScan {
    /// The array called `name` (without its homehost prefix) or with UUID `name`.
    pub fn array(&self, name: &str) -> Option<&md::MdArray> {
        self.arrays
            .iter()
            .find(|a| a.name == name || a.uuid == name)
    }
}

/// What to make in `md create`.
#[derive(Debug, Clone)]
pub struct MdCreateOptions {
    pub name: String,
    /// md's level number: 0, 1, 4, 5, 6 or 10.
    pub level: i32,
    /// md's layout number; the level's default (left-symmetric, near=2) when `None`.
    pub layout: Option<u32>,
    /// 512 KiB when `None`; raid1 has none.
    pub chunk_bytes: Option<u64>,
    pub version: md_format::MdVersion,
    /// Overwrite other formats' signatures.
    pub force: bool,
    /// The homehost in the array's name (1.x); this machine's hostname when `None`.
    pub homehost: Option<String>,
    /// Devices that join as spares (1.x superblocks).
    pub spares: Vec<String>,
    /// An internal write-intent bitmap with regions of this many bytes (1.1 and 1.2).
    pub bitmap_chunk_bytes: Option<u64>,
}

fn random_bytes() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b)
        .map_err(|e| EngineError::BadArgument(format!("no randomness for a UUID: {e}")))?;
    Ok(b)
}

/// mdadm's rules for array names: 1 to 32 bytes, printable, no '/' or ':' or blanks.
fn check_md_name(name: &str) -> Result<()> {
    let bad = |why: &str| EngineError::BadArgument(format!("array name '{name}': {why}"));
    if name.is_empty() || name.len() > 32 {
        return Err(bad("must be 1 to 32 bytes long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | ':') || c.is_whitespace() || c.is_control())
    {
        return Err(bad(&format!(
            "holds {c:?}; names are printable, without '/', ':' or blanks"
        )));
    }
    Ok(())
}

/// What to make in `lv create`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LvCreateOptions {
    pub size: SizeArg,
    pub stripes: Option<u32>,
    pub stripe_size_bytes: Option<u64>,
    /// PV paths to allocate from; all of the VG's when empty.
    pub pvs: Vec<String>,
    /// lvm2's segment type for a raid LV (`raid1`, `raid4`, `raid5[_la|_ra|_ls|_rs|_n]`,
    /// `raid6[_zr|_nr|_nc]`, `raid10`); linear or striped when `None`.
    #[serde(default)]
    pub segtype: Option<String>,
    /// Extra copies (lvm2's `-m`): raid1 images beyond the first, raid10 copies beyond one.
    #[serde(default)]
    pub mirrors: Option<u32>,
    /// The raid write-intent region (lvm2's `-R`; 2 MiB when `None`).
    #[serde(default)]
    pub region_size_bytes: Option<u64>,
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn same_path(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

impl Engine {
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
            assemble_arrays: false,
            description: String::new(),
            hostname: hostname(),
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
            assemble_arrays: false,
            description: String::new(),
            hostname: hostname(),
        }
    }

    /// The `description` stored with each commit (lvm2 stores the command line).
    pub fn set_description(&mut self, description: impl Into<String>) {
        self.description = description.into();
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn archive(&self) -> Archive {
        Archive::new(&self.state_dir)
    }

    fn open(path: &str, write: bool) -> Result<SharedDevice> {
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

    /// Makes every command see the PVs on MD arrays: each array found is put together in
    /// user space as `md/NAME` whenever the devices are listed (complete arrays; degraded
    /// ones too when only reading). Arrays the kernel runs are seen through their own device,
    /// and a daemon's arrays through [`Engine::add_stacked`]; neither is assembled again.
    /// Such an array keeps no records: commands write only LVM metadata through it.
    pub fn set_assemble_arrays(&mut self, on: bool) {
        self.assemble_arrays = on;
    }

    /// The arrays on `devs` as devices `md/NAME` (see [`Engine::set_assemble_arrays`]).
    fn assembled_arrays(
        &self,
        devs: &NamedDevices,
        write: bool,
        problems: &mut Vec<String>,
    ) -> NamedDevices {
        // Unreadable superblocks are md_scan's to report; here they only leave an array out.
        let (members, _) = md::probe_members(devs.iter().map(|(p, d)| (p, d)));
        if members.is_empty() {
            return Vec::new();
        }
        let mut registry = tessera_mapper::TargetRegistry::new();
        tessera_raid::register(&mut registry);
        let registry = std::sync::Arc::new(registry);
        let mut out: NamedDevices = Vec::new();
        for array in md::assemble(members) {
            let name = format!("md/{}", array.name);
            let in_kernel = array
                .slots
                .iter()
                .flatten()
                .any(|m| crate::discover::kernel_holder(&m.path).is_some());
            if in_kernel || devs.iter().any(|(n, _)| *n == name) {
                continue;
            }
            match array.health() {
                md::Health::Complete => {}
                md::Health::Degraded { .. } if !write => {}
                _ => continue,
            }
            match array.activate(&name, registry.clone(), None) {
                Ok(device) => out.push((name, std::sync::Arc::new(device))),
                Err(e) => problems.push(format!("{name}: cannot be put together: {e}")),
            }
        }
        out
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

    /// Forgets a stacked device.
    pub fn remove_stacked(&self, name: &str) {
        let mut stacked = self
            .stacked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stacked.retain(|(n, _)| n != name);
    }

    fn stacked(&self) -> NamedDevices {
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
    fn devices(&self, write: bool) -> Result<(NamedDevices, Vec<String>)> {
        let (listed, mut problems) = self.listed_devices(write)?;
        let modules: Vec<Box<dyn crate::discover::FormatModule>> =
            vec![Box::new(crate::discover::PartitionTables)];
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
        if self.assemble_arrays {
            let arrays = self.assembled_arrays(&out, write, &mut problems);
            out.extend(arrays);
        }
        Ok((out, problems))
    }

    /// Everything on the devices, layer by layer (see [`crate::discover`]). Reads only.
    pub fn discover(&self) -> Result<crate::discover::Report> {
        let (listed, problems) = self.listed_devices(false)?;
        Ok(crate::discover::discover(&listed, problems))
    }

    /// The devices as listed (`--devices`, every block device, or given), and the problems
    /// met opening them.
    fn listed_devices(&self, write: bool) -> Result<(NamedDevices, Vec<String>)> {
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
    pub fn scan(&self) -> Result<Scan> {
        self.scan_with(false)
    }

    /// Reads every PV and VG, opening the devices for writing when `write` is set (to serve
    /// LVs read-write); a device that cannot be opened for writing is opened read-only.
    pub fn scan_with(&self, write: bool) -> Result<Scan> {
        let (devs, problems) = self.devices(write)?;
        // An MD member is not a PV even where it shows one (a 1.0 member's data starts with
        // the array's): the PV is the array, found as a stacked device.
        let devs: NamedDevices = devs
            .into_iter()
            .filter(|(_, d)| !matches!(md_format::probe(d.as_ref()), Ok(Some(_))))
            .collect();
        let mut result = scan::scan(&devs);
        result.problems.splice(0..0, problems);
        Ok(result)
    }

    /// Finds the MD members on the devices and groups them into arrays; `write` opens the
    /// members for writing (to run the arrays read-write). Devices whose MD superblock
    /// cannot be read are problems, named with what is wrong.
    pub fn md_scan(&self, write: bool) -> Result<MdScan> {
        let (devs, mut problems) = self.devices(write)?;
        let (members, unreadable) = md::probe_members(devs.iter().map(|(p, d)| (p, d)));
        problems.extend(unreadable);
        Ok(MdScan {
            arrays: md::assemble(members),
            problems,
        })
    }

    /// Makes a new MD array over `members` (in slot order), as `mdadm --create` does: each
    /// member's data area is zeroed (so parity is consistent from the start and the array
    /// needs no initial resync), then its superblock written, then all are flushed.
    pub fn md_create(&self, opts: &MdCreateOptions, members: &[String]) -> Result<()> {
        check_md_name(&opts.name)?;
        let _lock = self.lock(&format!("M_{}", opts.name))?;
        let n = members.len() as u32;
        let bad = |why: String| EngineError::BadArgument(format!("md create {}: {why}", opts.name));
        let least = match opts.level {
            0 | 1 => 2,
            4 | 5 => 3,
            6 => 4,
            10 => 2,
            l => {
                return Err(bad(format!(
                    "level {l}: tessera makes raid0, 1, 4, 5, 6 and 10"
                )))
            }
        };
        if n < least {
            return Err(bad(format!(
                "raid{} needs at least {least} members, {n} given",
                opts.level
            )));
        }
        if opts.version == md_format::MdVersion::V0_90 && n > 27 {
            return Err(bad("0.90 superblocks hold at most 27 members".into()));
        }
        if !opts.spares.is_empty() && opts.version == md_format::MdVersion::V0_90 {
            return Err(bad(
                "tessera adds spares to arrays with 1.x superblocks".into()
            ));
        }
        if opts.bitmap_chunk_bytes.is_some()
            && !matches!(
                opts.version,
                md_format::MdVersion::V1_1 | md_format::MdVersion::V1_2
            )
        {
            return Err(bad(
                "an internal bitmap needs a 1.1 or 1.2 superblock (--metadata)".into(),
            ));
        }
        if let Some(b) = opts.bitmap_chunk_bytes {
            if b < 4096 || !b.is_power_of_two() || b > 1 << 31 {
                return Err(bad(format!(
                    "bitmap chunk {b} bytes: a power of two from 4 KiB to 2 GiB"
                )));
            }
        }
        if opts.level == 0 && (!opts.spares.is_empty() || opts.bitmap_chunk_bytes.is_some()) {
            return Err(bad("raid0 has no redundancy: no spares, no bitmap".into()));
        }
        let members: Vec<String> = members.iter().chain(&opts.spares).cloned().collect();
        let members = &members[..];
        for (i, m) in members.iter().enumerate() {
            if members[..i].iter().any(|o| same_path(o, m)) {
                return Err(bad(format!("{m} is given twice")));
            }
        }
        let layout = opts.layout.unwrap_or(match opts.level {
            5 | 6 => 2,
            10 => 0x102,
            _ => 0,
        });
        let chunk_bytes = if opts.level == 1 {
            0
        } else {
            opts.chunk_bytes.unwrap_or(512 << 10)
        };
        if opts.level != 1 && (chunk_bytes < 4096 || !chunk_bytes.is_power_of_two()) {
            return Err(bad(format!(
                "chunk {chunk_bytes} bytes: a power of two, at least 4 KiB"
            )));
        }
        if let Some(a) = self.md_scan(false)?.array(&opts.name) {
            return Err(bad(format!(
                "an array named '{}' exists already ({})",
                opts.name, a.uuid
            )));
        }
        let mut devices = Vec::new();
        for path in members {
            let dev = self.open_new_member(path, opts.force)?;
            let area =
                md_format::create::data_area(opts.version, dev.size_bytes()).ok_or_else(|| {
                    EngineError::DeviceUnusable {
                        device: path.clone(),
                        why: format!("is too small for an MD {} member", opts.version),
                    }
                })?;
            devices.push((path, dev, area));
        }
        let smallest = devices.iter().map(|d| d.2 .1).min().unwrap_or(0);
        let used = md_format::create::used_sectors(smallest, chunk_bytes);
        if used == 0 {
            return Err(bad("the members are too small to hold a chunk".into()));
        }
        let host = opts.homehost.clone().unwrap_or_else(hostname);
        let full_name = if opts.version == md_format::MdVersion::V0_90 {
            String::new()
        } else {
            format!("{host}:{}", opts.name)
        };
        if full_name.len() > 32 {
            return Err(bad(format!(
                "'{full_name}' (homehost:name) is longer than the 32 bytes a superblock holds"
            )));
        }
        let array = md_format::create::NewArray {
            version: opts.version,
            name: full_name,
            uuid: random_bytes()?,
            level: opts.level,
            layout,
            chunk_bytes,
            raid_disks: n,
            now: now() as u64,
        };
        let sync_sectors = if opts.level == 10 {
            let near = (layout & 0xff).max(1) as u64;
            let far = ((layout >> 8) & 0xff).max(1) as u64;
            let chunk = chunk_bytes / 512;
            (used / chunk / far) * u64::from(n) / near * chunk
        } else {
            used
        };
        for (slot, (path, dev, (offset, size))) in devices.iter().enumerate() {
            let mut sb = md_format::create::member_superblock(
                &array,
                slot as u32,
                random_bytes()?,
                dev.size_bytes(),
                used,
            )
            .ok_or_else(|| EngineError::DeviceUnusable {
                device: path.to_string(),
                why: "cannot hold the array's superblock".into(),
            })?;
            dev.write_zeroes(offset * 512, size * 512)?;
            if let Some(chunk) = opts.bitmap_chunk_bytes {
                let header = md_format::create::add_bitmap(&mut sb, sync_sectors, chunk as u32)
                    .ok_or_else(|| bad("no room for a bitmap before the data".into()))?;
                let bits = sync_sectors.div_ceil(chunk / 512).div_ceil(8);
                let mut area = header.encode().to_vec();
                area.resize((256 + bits as usize).next_multiple_of(512), 0);
                dev.write_at(&area, header.offset)?;
            }
            md_format::write(dev.as_ref(), opts.version, &sb)?;
        }
        for (_, dev, _) in &devices {
            dev.flush()?;
        }
        Ok(())
    }

    /// Adds `device` to array `name` as a spare (mdadm --add): a superblock of the array
    /// with a new device number and the spare role, and the bitmap copied from a member.
    /// A running array takes it when the daemon reloads the array.
    pub fn md_add(&self, name: &str, device: &str, force: bool) -> Result<()> {
        let _lock = self.lock(&format!("M_{name}"))?;
        let bad = |why: String| EngineError::BadArgument(format!("md add {name}: {why}"));
        let scan = self.md_scan(false)?;
        let array = scan
            .array(name)
            .ok_or_else(|| bad("no such array on the devices scanned".into()))?;
        let known = array
            .slots
            .iter()
            .flatten()
            .chain(&array.spares)
            .chain(array.left_out.iter().map(|(m, _)| m));
        if known.clone().any(|m| same_path(&m.path, device)) {
            return Err(bad(format!("{device} is already part of the array")));
        }
        let template = array
            .slots
            .iter()
            .flatten()
            .next()
            .ok_or_else(|| bad("no member is present".into()))?;
        let md_format::MdSuperblock::V1(base) = &template.sb else {
            return Err(bad(
                "tessera adds spares to arrays with 1.x superblocks".into()
            ));
        };
        let dev = self.open_new_member(device, force)?;
        let (data_offset, data_size) =
            md_format::create::data_area(template.version, dev.size_bytes()).ok_or_else(|| {
                EngineError::DeviceUnusable {
                    device: device.into(),
                    why: format!("is too small for an MD {} member", template.version),
                }
            })?;
        if data_offset != base.data_offset || data_size < base.size {
            return Err(EngineError::DeviceUnusable {
                device: device.into(),
                why: format!(
                    "its data area ({data_size} sectors at {data_offset}) cannot hold a member                      of {name} ({} sectors at {})",
                    base.size, base.data_offset
                ),
            });
        }
        let next = known
            .filter_map(|m| match &m.sb {
                md_format::MdSuperblock::V1(s) => Some(s.dev_number),
                _ => None,
            })
            .max()
            .map_or(0, |n| n + 1);
        let mut sb = base.clone();
        sb.dev_number = next;
        sb.device_uuid = random_bytes()?;
        sb.data_size = data_size;
        sb.super_offset = template.version.offset_bytes(dev.size_bytes()).unwrap_or(0) / 512;
        sb.events = array.events;
        sb.feature_map &= !md_format::super1::FEATURE_RECOVERY_OFFSET;
        sb.recovery_offset = 0;
        if sb.dev_roles.len() <= next as usize {
            sb.dev_roles
                .resize(next as usize + 1, md_format::super1::ROLE_SPARE);
        }
        sb.dev_roles[next as usize] = md_format::super1::ROLE_SPARE;
        let sb = md_format::MdSuperblock::V1(sb);
        if let Some(at) = template
            .version
            .offset_bytes(template.device.size_bytes())
            .and_then(|super_at| template.sb.bitmap_offset_bytes(super_at))
        {
            // Header and bits: at most what lies between them and the data.
            let len = (data_offset * 512).saturating_sub(at).min(1 << 20);
            let mut area = vec![0u8; len as usize];
            template.device.read_at(&mut area, at)?;
            dev.write_at(&area, at)?;
        }
        md_format::write(dev.as_ref(), template.version, &sb)?;
        dev.flush()?;
        Ok(())
    }

    /// Opens a device that is to become an array member, refusing one that holds another
    /// format's signature unless `force`.
    fn open_new_member(&self, path: &str, force: bool) -> Result<SharedDevice> {
        let dev = self.open_named(path, true)?;
        let found = signature::probe(dev.as_ref())?;
        if !found.is_empty() && !force {
            let what = found
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(EngineError::Occupied {
                device: path.into(),
                what,
            });
        }
        Ok(dev)
    }

    /// Takes a spare or a failed member out of array `name` (mdadm --remove): its
    /// superblock is wiped, so that no later assembly finds it. Active members must be
    /// failed first.
    pub fn md_remove(&self, name: &str, device: &str) -> Result<()> {
        let _lock = self.lock(&format!("M_{name}"))?;
        let bad = |why: String| EngineError::BadArgument(format!("md remove {name}: {why}"));
        let scan = self.md_scan(false)?;
        let array = scan
            .array(name)
            .ok_or_else(|| bad("no such array on the devices scanned".into()))?;
        if array
            .slots
            .iter()
            .flatten()
            .any(|m| same_path(&m.path, device))
        {
            return Err(bad(format!(
                "{device} is an active member: fail it first (tessera md fail {name} {device})"
            )));
        }
        let member = array
            .spares
            .iter()
            .chain(array.left_out.iter().map(|(m, _)| m))
            .find(|m| same_path(&m.path, device))
            .ok_or_else(|| bad(format!("{device} is not a spare or failed member of it")))?;
        let at = member
            .version
            .offset_bytes(member.device.size_bytes())
            .ok_or_else(|| bad(format!("{device}: no superblock place")))?;
        member
            .device
            .write_zeroes(at, 4096.min(member.device.size_bytes() - at))?;
        member.device.flush()?;
        Ok(())
    }

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

    /// The host name recorded in new LVs.
    pub(crate) fn hostname(&self) -> &str {
        &self.hostname
    }

    fn lock(&self, name: &str) -> Result<Lock> {
        Lock::exclusive(&self.state_dir.join("lock"), name)
    }

    fn lock_vg(&self, vg: &str) -> Result<Lock> {
        self.lock(&format!("V_{vg}"))
    }

    fn lock_orphans(&self) -> Result<Lock> {
        self.lock("P_orphans")
    }

    /// Finds the device `path` among the scanned ones or opens it.
    fn device_for(&self, scan: &Scan, path: &str) -> Result<(String, SharedDevice)> {
        if let Source::Given(devs) = &self.source {
            return devs
                .iter()
                .find(|(p, _)| p == path)
                .cloned()
                .ok_or_else(|| EngineError::DeviceUnusable {
                    device: path.into(),
                    why: "not among the given devices".into(),
                });
        }
        if let Some(i) = scan.pvs.iter().position(|p| same_path(&p.path, path)) {
            return Ok((scan.pvs[i].path.clone(), scan.pvs[i].device.clone()));
        }
        Ok((path.to_string(), self.open_named(path, true)?))
    }

    /// Opens `path`, or the partition or stacked device of that name among the engine's
    /// devices (`disk.img1`, `md/NAME`), which has no path of its own.
    pub fn open_named(&self, path: &str, write: bool) -> Result<SharedDevice> {
        if Path::new(path).exists() {
            return Self::open(path, write);
        }
        let (devs, _) = self.devices(write)?;
        devs.into_iter()
            .find(|(name, _)| name == path)
            .map(|(_, d)| d)
            .ok_or_else(|| EngineError::DeviceUnusable {
                device: path.into(),
                why: "no such file or device, nor a partition or array tessera found".into(),
            })
    }

    fn pv_index(scan: &Scan, path: &str) -> Option<usize> {
        scan.pvs.iter().position(|p| same_path(&p.path, path))
    }

    // ---- PVs ----

    /// Makes each device an (orphan) PV, laid out as lvm2's pvcreate does by default.
    pub fn pv_create(&self, paths: &[String], opts: &PvCreateOptions) -> Result<()> {
        let _lock = self.lock_orphans()?;
        let scan = self.scan_with(true)?;
        for path in paths {
            self.create_one_pv(&scan, path, opts)?;
        }
        Ok(())
    }

    fn create_one_pv(&self, scan: &Scan, path: &str, opts: &PvCreateOptions) -> Result<()> {
        let (name, dev) = self.device_for(scan, path)?;
        if let Some(i) = Self::pv_index(scan, path) {
            if let Some(vg) = &scan.pvs[i].vg_name {
                return Err(EngineError::PvInUse {
                    device: name,
                    vg: vg.clone(),
                });
            }
        }
        let found = signature::probe(dev.as_ref())?;
        if !found.is_empty() && !opts.force {
            let what = found
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(EngineError::Occupied { device: name, what });
        }
        let size = dev.size_bytes();
        let pe_start = opts.pe_start_bytes.unwrap_or(DEFAULT_PE_START_BYTES);
        if pe_start < 8192 || pe_start % 4096 != 0 {
            return Err(EngineError::BadArgument(format!(
                "--pe-start {pe_start}: must be a multiple of 4 KiB and at least 8 KiB"
            )));
        }
        if size < MIN_PV_BYTES.max(pe_start + 512 * 8) {
            return Err(EngineError::DeviceUnusable {
                device: name,
                why: format!(
                    "is {size} bytes; a PV needs at least {} bytes",
                    MIN_PV_BYTES.max(pe_start + 4096)
                ),
            });
        }
        // Wipe what was found so no other tool still claims the device.
        for sig in &found {
            let at = sig.offset & !511;
            if at + 512 <= size {
                dev.write_at(&[0u8; 512], at)?;
            }
        }
        let label = PvLabel::new_pv(Id::random(), size, pe_start);
        for area in &label.metadata_areas {
            write_mda_header(
                dev.as_ref(),
                &MdaHeader {
                    start: area.offset,
                    size: area.size,
                    raw_locns: Vec::new(),
                },
            )?;
        }
        write_label(dev.as_ref(), &label)?;
        dev.flush()?;
        Ok(())
    }

    /// Removes the LVM2 label of orphan PVs.
    pub fn pv_remove(&self, paths: &[String]) -> Result<()> {
        let _lock = self.lock_orphans()?;
        let scan = self.scan_with(true)?;
        for path in paths {
            let i = Self::pv_index(&scan, path).ok_or_else(|| EngineError::NotPv {
                device: path.clone(),
            })?;
            let pv = &scan.pvs[i];
            if let Some(vg) = &pv.vg_name {
                return Err(EngineError::PvInUse {
                    device: pv.path.clone(),
                    vg: vg.clone(),
                });
            }
            commit::release_pvs(&[pv])?;
            wipe_label(pv.device.as_ref())?;
            pv.device.flush()?;
        }
        Ok(())
    }

    // ---- VGs ----

    fn text_info(&self) -> TextInfo {
        TextInfo {
            description: self.description.clone(),
            creation_host: self.hostname.clone(),
            creation_time: now(),
        }
    }

    /// Writes `vg` (seqno one past `old`'s) to all its PVs, marks new PVs used, releases
    /// `released`, and archives the old and new texts.
    fn commit(
        &self,
        scan: &Scan,
        old: Option<&VgState>,
        mut vg: VolumeGroup,
        released: &[&PvInfo],
    ) -> Result<VolumeGroup> {
        // One past the current copy; a restore may ask for more so its text is the newest.
        vg.seqno = old.map_or(1, |o| o.vg.seqno + 1).max(vg.seqno);
        vg.validate()?;
        let mut pvs = Vec::new();
        for pv in &vg.pvs {
            let found = scan
                .pvs
                .iter()
                .find(|p| p.label.pv_id == pv.id)
                .ok_or_else(|| EngineError::VgPartial {
                    vg: vg.name.clone(),
                    count: 1,
                    list: format!("{} ({})", pv.key, pv.device),
                })?;
            pvs.push(found);
        }
        let archive = self.archive();
        if let Some(old) = old {
            if let Err(e) = archive.store(&old.vg, &old.info) {
                tracing::warn!(
                    "could not archive the previous metadata of VG '{}': {e}",
                    old.vg.name
                );
            }
        }
        let info = self.text_info();
        commit::write_vg(&pvs, &vg, &info)?;
        commit::mark_used(&pvs)?;
        commit::release_pvs(released)?;
        if let Err(e) = archive.store(&vg, &info) {
            tracing::warn!(
                "could not archive the new metadata of VG '{}': {e}",
                vg.name
            );
        }
        Ok(vg)
    }

    /// The VG `name`, complete (no PV missing), for a change.
    fn vg_for_change<'a>(scan: &'a Scan, name: &str) -> Result<&'a VgState> {
        let state = scan
            .vg(name)
            .ok_or_else(|| EngineError::VgNotFound(name.to_string()))?;
        if state.is_partial() {
            let list = state
                .missing
                .iter()
                .map(|k| {
                    format!(
                        "{k} ({})",
                        state.vg.pv(k).map(|p| p.device.as_str()).unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(EngineError::VgPartial {
                vg: name.to_string(),
                count: state.missing.len(),
                list,
            });
        }
        Ok(state)
    }

    /// Orphan PVs for `paths`, making PVs of devices that are not PVs yet (as vgcreate
    /// does). Returns the scan in which they are all orphans.
    fn orphans_for(&self, scan: Scan, paths: &[String], force: bool) -> Result<(Scan, Vec<usize>)> {
        let mut scan = scan;
        let missing: Vec<String> = paths
            .iter()
            .filter(|p| Self::pv_index(&scan, p).is_none())
            .cloned()
            .collect();
        if !missing.is_empty() {
            let opts = PvCreateOptions {
                force,
                pe_start_bytes: None,
            };
            for path in &missing {
                self.create_one_pv(&scan, path, &opts)?;
            }
            scan = self.scan_with(true)?;
        }
        let mut out = Vec::new();
        for path in paths {
            let i = Self::pv_index(&scan, path).ok_or_else(|| EngineError::NotPv {
                device: path.clone(),
            })?;
            if let Some(vg) = &scan.pvs[i].vg_name {
                return Err(EngineError::PvInUse {
                    device: scan.pvs[i].path.clone(),
                    vg: vg.clone(),
                });
            }
            if out.contains(&i) {
                return Err(EngineError::BadArgument(format!("{path} is given twice")));
            }
            out.push(i);
        }
        Ok((scan, out))
    }

    fn new_pv_entry(vg: &VolumeGroup, pv: &PvInfo, key: String) -> Result<PhysicalVolume> {
        let extent = vg.extent_size_sectors;
        let dev_size = pv.device.size_bytes() / 512;
        let pe_start = pv
            .label
            .data_areas
            .first()
            .map(|a| a.offset / 512)
            .unwrap_or(DEFAULT_PE_START_BYTES / 512);
        // Extents end where the device or a metadata area at its end begins.
        let end = pv
            .label
            .metadata_areas
            .iter()
            .map(|a| a.offset / 512)
            .filter(|&o| o > pe_start)
            .min()
            .unwrap_or(dev_size)
            .min(dev_size);
        let pe_count = end.saturating_sub(pe_start) / extent;
        if pe_count == 0 {
            return Err(EngineError::DeviceUnusable {
                device: pv.path.clone(),
                why: format!("has no room for one extent of {} bytes", extent * 512),
            });
        }
        Ok(PhysicalVolume {
            key,
            id: pv.label.pv_id,
            device: pv.path.clone(),
            status: vec!["ALLOCATABLE".into()],
            flags: Vec::new(),
            dev_size_sectors: dev_size,
            pe_start_sectors: pe_start,
            pe_count,
            extra: Vec::new(),
        })
    }

    /// Creates a VG over `paths` (devices that are not PVs yet become PVs).
    pub fn vg_create(
        &self,
        name: &str,
        paths: &[String],
        extent_bytes: Option<u64>,
        force: bool,
    ) -> Result<VolumeGroup> {
        check_name("new VG", name)?;
        if paths.is_empty() {
            return Err(EngineError::BadArgument(
                "a VG needs at least one PV".into(),
            ));
        }
        let extent = extent_bytes.unwrap_or(DEFAULT_EXTENT_BYTES);
        if extent < 4096 || extent % 4096 != 0 || !(extent / 512).is_power_of_two() {
            return Err(EngineError::BadArgument(format!(
                "extent size {extent} bytes: must be a power of two of at least 4 KiB"
            )));
        }
        let _orphans = self.lock_orphans()?;
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        if scan.vg(name).is_some() {
            return Err(EngineError::VgExists(name.to_string()));
        }
        let (scan, indexes) = self.orphans_for(scan, paths, force)?;
        let mut vg = VolumeGroup {
            name: name.to_string(),
            id: Id::random(),
            seqno: 0,
            format: "lvm2".into(),
            status: vec!["RESIZEABLE".into(), "READ".into(), "WRITE".into()],
            flags: Vec::new(),
            extent_size_sectors: extent / 512,
            max_lv: 0,
            max_pv: 0,
            metadata_copies: 0,
            extra: Vec::new(),
            pvs: Vec::new(),
            lvs: Vec::new(),
            tail: Vec::new(),
        };
        for i in indexes {
            let key = vg.next_pv_key();
            let entry = Self::new_pv_entry(&vg, &scan.pvs[i], key)?;
            vg.pvs.push(entry);
        }
        self.commit(&scan, None, vg, &[])
    }

    /// Adds PVs to a VG.
    pub fn vg_extend(&self, name: &str, paths: &[String], force: bool) -> Result<VolumeGroup> {
        let _orphans = self.lock_orphans()?;
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        Self::vg_for_change(&scan, name)?;
        let (scan, indexes) = self.orphans_for(scan, paths, force)?;
        let state = Self::vg_for_change(&scan, name)?;
        let mut vg = state.vg.clone();
        for i in indexes {
            let key = vg.next_pv_key();
            let entry = Self::new_pv_entry(&vg, &scan.pvs[i], key)?;
            vg.pvs.push(entry);
        }
        self.commit(&scan, Some(state), vg, &[])
    }

    /// Takes unused PVs out of a VG; they become orphans.
    pub fn vg_reduce(&self, name: &str, paths: &[String]) -> Result<VolumeGroup> {
        let _orphans = self.lock_orphans()?;
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, name)?;
        let mut vg = state.vg.clone();
        let mut released = Vec::new();
        for path in paths {
            let i = Self::pv_index(&scan, path).ok_or_else(|| EngineError::NotPv {
                device: path.clone(),
            })?;
            let pv = &scan.pvs[i];
            let Some(pos) = vg.pvs.iter().position(|p| p.id == pv.label.pv_id) else {
                return Err(EngineError::Refused {
                    vg: name.into(),
                    why: format!("{} is not one of its PVs", pv.path),
                });
            };
            let used = vg.pe_used(&vg.pvs[pos].key);
            if used > 0 {
                return Err(EngineError::Refused {
                    vg: name.into(),
                    why: format!("{} still holds {used} allocated extents; move or remove the LVs on it first", pv.path),
                });
            }
            vg.pvs.remove(pos);
            released.push(pv);
        }
        if vg.pvs.is_empty() {
            return Err(EngineError::Refused {
                vg: name.into(),
                why: "cannot remove its last PV; use vg remove".into(),
            });
        }
        self.commit(&scan, Some(state), vg, &released)
    }

    /// Drops the PVs of a VG that are missing, making it whole again. PVs that hold extents
    /// are dropped only with `force`, which also removes the LVs that used them.
    pub fn vg_reduce_missing(&self, name: &str, force: bool) -> Result<VolumeGroup> {
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        let state = scan
            .vg(name)
            .ok_or_else(|| EngineError::VgNotFound(name.to_string()))?;
        if !state.is_partial() {
            return Err(EngineError::Refused {
                vg: name.into(),
                why: "no PV is missing".into(),
            });
        }
        let mut vg = state.vg.clone();
        let keys = vg
            .pv_keys()
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        let key_set = keys.iter().map(String::as_str).collect();
        let lost: Vec<String> = vg
            .lvs
            .iter()
            .filter(|lv| {
                lv.segments.iter().any(|seg| {
                    seg.pv_areas(&key_set)
                        .iter()
                        .any(|a| state.missing.contains(&a.pv))
                })
            })
            .map(|lv| lv.name.clone())
            .collect();
        if !lost.is_empty() && !force {
            return Err(EngineError::Refused {
                vg: name.into(),
                why: format!(
                    "the missing PVs hold extents of LV(s) {}; use --force to remove those LVs with them",
                    lost.join(", ")
                ),
            });
        }
        vg.lvs.retain(|lv| !lost.contains(&lv.name));
        vg.pvs.retain(|pv| !state.missing.contains(&pv.key));
        let mut complete = state.clone();
        complete.missing.clear();
        self.commit(&scan, Some(&complete), vg, &[])
    }

    /// Removes a VG: its PVs become orphans. LVs are removed with it only with `force`.
    pub fn vg_remove(&self, name: &str, force: bool) -> Result<()> {
        let _orphans = self.lock_orphans()?;
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        let state = scan
            .vg(name)
            .ok_or_else(|| EngineError::VgNotFound(name.to_string()))?;
        if state.is_partial() && !force {
            Self::vg_for_change(&scan, name)?;
        }
        if !state.vg.lvs.is_empty() && !force {
            return Err(EngineError::Refused {
                vg: name.into(),
                why: format!(
                    "it holds {} logical volume(s) ({}); use --force to remove them with it",
                    state.vg.lvs.len(),
                    state
                        .vg
                        .lvs
                        .iter()
                        .map(|l| l.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if let Err(e) = self.archive().store(&state.vg, &state.info) {
            tracing::warn!("could not archive the metadata of VG '{name}': {e}");
        }
        let pvs: Vec<&PvInfo> = state.present.values().map(|&i| &scan.pvs[i]).collect();
        commit::release_pvs(&pvs)
    }

    pub fn vg_rename(&self, old: &str, new: &str) -> Result<VolumeGroup> {
        check_name("new VG name", new)?;
        let (first, second) = if old < new { (old, new) } else { (new, old) };
        let _a = self.lock_vg(first)?;
        let _b = self.lock_vg(second)?;
        let scan = self.scan_with(true)?;
        if scan.vg(new).is_some() {
            return Err(EngineError::VgExists(new.to_string()));
        }
        let state = Self::vg_for_change(&scan, old)?;
        let mut vg = state.vg.clone();
        vg.name = new.to_string();
        self.commit(&scan, Some(state), vg, &[])
    }

    /// Writes the VG's metadata as a backup file (lvm2's vgcfgbackup format).
    pub fn vg_backup(&self, name: &str, file: Option<&Path>) -> Result<PathBuf> {
        let _lock = self.lock_vg(name)?;
        let scan = self.scan()?;
        let state = scan
            .vg(name)
            .ok_or_else(|| EngineError::VgNotFound(name.to_string()))?;
        let path = match file {
            Some(f) => f.to_path_buf(),
            None => {
                let dir = self.state_dir.join("backup");
                std::fs::create_dir_all(&dir).map_err(|source| EngineError::Io {
                    path: dir.display().to_string(),
                    source,
                })?;
                dir.join(name)
            }
        };
        archive::write_file_durably(&path, &archive::backup_text(&state.vg, &state.info))?;
        Ok(path)
    }

    /// Writes the VG from a backup file (ours or lvm2's) back to its PVs, found by id.
    /// Without a file, the newest archived text of the VG is used.
    pub fn vg_restore(&self, name: &str, file: Option<&Path>) -> Result<VolumeGroup> {
        let path = match file {
            Some(f) => f.to_path_buf(),
            None => {
                let entries = self.archive().list(name)?;
                entries.last().map(|e| e.path.clone()).ok_or_else(|| {
                    EngineError::BadArgument(format!(
                        "no archived metadata for VG '{name}' in {}",
                        self.state_dir.display()
                    ))
                })?
            }
        };
        let (mut vg, _) = archive::read_backup(&path)?;
        if vg.name != name {
            return Err(EngineError::BadFile {
                path: path.display().to_string(),
                why: format!("holds VG '{}', not '{name}'", vg.name),
            });
        }
        let _orphans = self.lock_orphans()?;
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        let current = scan.vg(name);
        for pv in &vg.pvs {
            let Some(found) = scan.pvs.iter().find(|p| p.label.pv_id == pv.id) else {
                return Err(EngineError::VgPartial {
                    vg: name.into(),
                    count: 1,
                    list: format!("{} (id {}, {})", pv.key, pv.id, pv.device),
                });
            };
            if let Some(other) = &found.vg_name {
                if other != name {
                    return Err(EngineError::PvInUse {
                        device: found.path.clone(),
                        vg: other.clone(),
                    });
                }
            }
        }
        for pv in &mut vg.pvs {
            if let Some(found) = scan.pvs.iter().find(|p| p.label.pv_id == pv.id) {
                pv.device = found.path.clone();
            }
        }
        let released: Vec<&PvInfo> = current
            .map(|c| {
                c.present
                    .values()
                    .map(|&i| &scan.pvs[i])
                    .filter(|p| vg.pv_by_id(&p.label.pv_id).is_none())
                    .collect()
            })
            .unwrap_or_default();
        // Past the current seqno, so that every copy of the restored text is the newest.
        vg.seqno = current.map_or(vg.seqno, |c| c.vg.seqno.max(vg.seqno)) + 1;
        self.commit(&scan, current, vg, &released)
    }

    // ---- LVs ----

    pub(crate) fn extents_for(vg: &VolumeGroup, amount: Amount, allowed: Option<&[String]>) -> u64 {
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

    fn allowed_keys(
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

    pub(crate) fn no_space(vg: &VolumeGroup, e: NoSpace) -> EngineError {
        EngineError::NoSpace {
            vg: vg.name.clone(),
            need: e.need,
            free: e.free,
            detail: e.detail,
        }
    }

    /// Creates a linear or striped LV.
    pub fn lv_create(
        &self,
        vg_name: &str,
        lv_name: &str,
        opts: &LvCreateOptions,
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
            let lv = raid_create::create(
                self,
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
        let mut extents = Self::extents_for(&vg, opts.size.amount, allowed.as_deref());
        if extents == 0 {
            return Err(EngineError::BadArgument(
                "the LV would have no extents; give a size of at least one extent".into(),
            ));
        }
        let mut segments = Vec::new();
        if stripes > 1 {
            let stripe_bytes = opts.stripe_size_bytes.unwrap_or(DEFAULT_STRIPE_BYTES);
            Self::check_stripe_size(&vg, stripe_bytes)?;
            extents = extents.div_ceil(stripes) * stripes;
            alloc::extend_striped(
                &vg,
                &mut segments,
                extents,
                stripes as usize,
                stripe_bytes / 512,
                allowed.as_deref(),
            )
            .map_err(|e| Self::no_space(&vg, e))?;
        } else {
            alloc::extend_linear(&vg, &mut segments, extents, allowed.as_deref())
                .map_err(|e| Self::no_space(&vg, e))?;
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
        vg.lvs.push(lv.clone());
        self.commit(&scan, Some(state), vg, &[])?;
        Ok(lv)
    }

    pub(crate) fn check_stripe_size(vg: &VolumeGroup, bytes: u64) -> Result<()> {
        if bytes < 4096 || !bytes.is_power_of_two() || bytes > vg.extent_size_bytes() {
            return Err(EngineError::BadArgument(format!(
                "stripe size {bytes} bytes: must be a power of two from 4 KiB up to the extent size ({} bytes)",
                vg.extent_size_bytes()
            )));
        }
        Ok(())
    }

    /// An LV tessera may change: plain (linear/striped) and not used by another LV.
    fn plain_lv<'a>(vg: &'a VolumeGroup, name: &str, verb: &str) -> Result<&'a LogicalVolume> {
        let lv = vg.lv(name).ok_or_else(|| EngineError::LvNotFound {
            vg: vg.name.clone(),
            lv: name.into(),
        })?;
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

    fn lv_resize(
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
        let mut vg = state.vg.clone();
        let lv = Self::plain_lv(&vg, lv_name, if grow { "extend" } else { "reduce" })?;
        let current = lv.extent_count();
        let allowed = Self::allowed_keys(&scan, &vg, pvs)?;
        let amount = Self::extents_for(&vg, size.amount, allowed.as_deref());
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
                Self::check_stripe_size(&vg, bytes)?;
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
            .map_err(|e| Self::no_space(&vg, e))?;
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

    pub fn lv_remove(&self, vg_name: &str, lv_name: &str) -> Result<()> {
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        Self::plain_lv(&vg, lv_name, "remove")?;
        vg.lvs.retain(|l| l.name != lv_name);
        self.commit(&scan, Some(state), vg, &[])?;
        Ok(())
    }

    pub fn lv_rename(&self, vg_name: &str, old: &str, new: &str) -> Result<()> {
        check_new_lv_name(&format!("new LV name in VG '{vg_name}'"), new)?;
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        Self::plain_lv(&vg, old, "rename")?;
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
