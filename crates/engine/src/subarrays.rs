//! The subarrays of one external-metadata container (IMSM, DDF) running at once: a disk
//! that fails in one of them fails in every other that has a slot on it, as mdmon fails
//! it in all the container's arrays, so that each takes a spare and rebuilds at once
//! instead of finding out at its next I/O error to the disk.
//!
//! Each running set is reached through its `raid` target, which [`SubarraySets::registry`]
//! wraps when the set is built; the set's records are wrapped by
//! [`SubarraySets::records`] so that a member recorded faulty is passed on.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use tessera_block::badblocks::BadBlocks;
use tessera_block::{Result as BlockResult, SharedDevice};
use tessera_mapper::{StatusType, Target, TargetError, TargetRegistry};
use tessera_raid::metadata::{MemberRole, MetadataError, SetMetadata, SetRecord, SetStart};

/// The running sets of one container, by subarray.
#[derive(Default)]
pub struct SubarraySets {
    /// Subarray key (its index in the container) and its newest `raid` target.
    sets: Mutex<Vec<(usize, Weak<dyn Target>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SubarraySets {
    pub fn new() -> Arc<SubarraySets> {
        Arc::new(SubarraySets::default())
    }

    /// `registry` with its `raid` type building subarray `key`'s set with `records` (the
    /// container's, wrapped to pass failures on) and known to the others.
    pub fn registry(
        self: &Arc<Self>,
        registry: &TargetRegistry,
        key: usize,
        records: Arc<dyn SetMetadata>,
    ) -> Result<Arc<TargetRegistry>, String> {
        let records: Arc<dyn SetMetadata> = Arc::new(PassedOn {
            inner: records,
            sets: Arc::downgrade(self),
            key,
        });
        let sets = Arc::downgrade(self);
        let mut own = registry.clone();
        own.set("raid", move |args| {
            let target: Arc<dyn Target> = Arc::from(tessera_raid::target::construct_with(
                args,
                Some(records.clone()),
            )?);
            if let Some(sets) = sets.upgrade() {
                let mut all = lock(&sets.sets);
                all.retain(|(k, t)| *k != key && t.strong_count() > 0);
                all.push((key, Arc::downgrade(&target)));
            }
            Ok(Box::new(Known(target)) as Box<dyn Target>)
        })
        .map_err(|e| e.to_string())?;
        Ok(Arc::new(own))
    }

    /// Fails `device` in every running set but `key`'s that holds it in a slot. Run on a
    /// thread of its own: the set that recorded the failure holds its own locks meanwhile.
    fn fail_elsewhere(&self, key: usize, device: &str) {
        let others: Vec<(usize, Arc<dyn Target>)> = lock(&self.sets)
            .iter()
            .filter(|(k, _)| *k != key)
            .filter_map(|(k, t)| Some((*k, t.upgrade()?)))
            .collect();
        for (k, target) in others {
            match target.message(&["fail", device]) {
                Ok(_) => tracing::warn!(
                    "subarray {k}: {device} failed in subarray {key} of its container; \
                     failed here too"
                ),
                // It has no slot there, or lost it already.
                Err(e) if e.to_string().contains("not an active member") => {}
                Err(e) => tracing::warn!(
                    "subarray {k}: {device} failed in subarray {key} of its container, \
                     but stays here: {e}"
                ),
            }
        }
    }
}

/// A set's records, passing the members it records faulty on to the container's other
/// running sets.
struct PassedOn {
    inner: Arc<dyn SetMetadata>,
    sets: Weak<SubarraySets>,
    key: usize,
}

impl SetMetadata for PassedOn {
    fn start(&self) -> SetStart {
        self.inner.start()
    }

    fn record(&self, record: &SetRecord) -> Result<(), MetadataError> {
        self.inner.record(record)?;
        let faulty: Vec<String> = record
            .members
            .iter()
            .filter(|m| m.role == MemberRole::Faulty)
            .map(|m| m.device.clone())
            .collect();
        if let (false, Some(sets)) = (faulty.is_empty(), self.sets.upgrade()) {
            let key = self.key;
            std::thread::spawn(move || {
                for device in faulty {
                    sets.fail_elsewhere(key, &device);
                }
            });
        }
        Ok(())
    }

    fn bitmap_region_sectors(&self) -> Option<u64> {
        self.inner.bitmap_region_sectors()
    }

    fn mark_regions(&self, regions: &[u64]) -> Result<(), MetadataError> {
        self.inner.mark_regions(regions)
    }

    fn bad_blocks(&self, device: &str) -> Option<BadBlocks> {
        self.inner.bad_blocks(device)
    }

    fn record_bad_blocks(&self, device: &str, table: &BadBlocks) -> Result<(), MetadataError> {
        self.inner.record_bad_blocks(device, table)
    }
}

/// A `raid` target the container's other sets can reach.
struct Known(Arc<dyn Target>);

impl Target for Known {
    fn read(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        self.0.read(sector, buf)
    }
    fn write(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        self.0.write(sector, buf)
    }
    fn flush(&self) -> BlockResult<()> {
        self.0.flush()
    }
    fn discard(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        self.0.discard(sector, len_sectors)
    }
    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        self.0.write_zeroes(sector, len_sectors)
    }
    fn status(&self, kind: StatusType) -> String {
        self.0.status(kind)
    }
    fn message(&self, args: &[&str]) -> Result<String, TargetError> {
        self.0.message(args)
    }
    fn block_bytes(&self) -> u32 {
        self.0.block_bytes()
    }
    fn devices(&self) -> Vec<SharedDevice> {
        self.0.devices()
    }
    fn presuspend(&self) {
        self.0.presuspend()
    }
    fn postsuspend(&self) {
        self.0.postsuspend()
    }
    fn preresume(&self) -> Result<(), TargetError> {
        self.0.preresume()
    }
    fn resume(&self) {
        self.0.resume()
    }
}

/// A subarray the kernel's md runs (assembled by mdadm, or by tessera as mdmon): its
/// device and how far its recovery or resync is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSubarray {
    /// `/dev/mdN`.
    pub device: String,
    /// md's sync_action (`idle`, `recover`, `resync`...).
    pub sync_action: String,
    /// Sectors done and in all, while a sync runs.
    pub sync_completed: Option<(u64, u64)>,
    /// md's array_state.
    pub array_state: String,
}

/// The md device running member `index` of the container whose disks include one of
/// `members` (paths), as md's sysfs tells: its metadata_version `external:/mdC/INDEX`
/// (`-mdC` while read-only), with mdC holding the disk.
pub fn kernel_subarray(members: &[String], index: usize) -> Option<KernelSubarray> {
    let ours: Vec<String> = members
        .iter()
        .filter_map(|p| {
            let real = std::fs::canonicalize(p).ok()?;
            Some(real.file_name()?.to_string_lossy().into_owned())
        })
        .collect();
    if ours.is_empty() {
        return None;
    }
    let read = |path: String| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
    };
    for entry in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let md = entry.file_name().to_string_lossy().into_owned();
        if !md.starts_with("md") {
            continue;
        }
        let Some(version) = read(format!("/sys/block/{md}/md/metadata_version")) else {
            continue;
        };
        let Some(rest) = version.strip_prefix("external:") else {
            continue;
        };
        let rest = rest.trim_start_matches(['/', '-']);
        let Some((container, member)) = rest.split_once('/') else {
            continue;
        };
        if member.parse::<usize>().ok() != Some(index) {
            continue;
        }
        let holds_ours = std::fs::read_dir(format!("/sys/block/{container}/slaves"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|s| ours.contains(&s.file_name().to_string_lossy().into_owned()));
        if !holds_ours {
            continue;
        }
        let sync_completed = read(format!("/sys/block/{md}/md/sync_completed")).and_then(|s| {
            let (done, total) = s.split_once('/')?;
            Some((done.trim().parse().ok()?, total.trim().parse().ok()?))
        });
        return Some(KernelSubarray {
            device: format!("/dev/{md}"),
            sync_action: read(format!("/sys/block/{md}/md/sync_action")).unwrap_or_default(),
            sync_completed,
            array_state: read(format!("/sys/block/{md}/md/array_state")).unwrap_or_default(),
        });
    }
    None
}

impl KernelSubarray {
    /// As `show` and `md detail` put it in a subarray's detail.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "device": self.device,
            "array_state": self.array_state,
            "sync_action": self.sync_action,
            "sync_completed": self.sync_completed.map(|(d, t)| serde_json::json!({
                "done_sectors": d,
                "total_sectors": t,
                "percent": (d * 1000 / t.max(1)) as f64 / 10.0,
            })),
        })
    }
}
