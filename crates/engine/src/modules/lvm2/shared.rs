//! Shared VGs, locked as lvm2's lvmlockd locks them with sanlock, so that tessera and lvm2
//! hosts share a VG on shared storage.
//!
//! What lvmlockd writes (lvm2 `lib/locking/lvmlockd.c`, `daemons/lvmlockd/lvmlockd-sanlock.c`):
//! the VG records `lock_type = "sanlock"` and `lock_args = "1.0.0:lvmlock"`; the hidden LV
//! `lvmlock` (256 MiB on 512-byte sectors, rounded up to extents) holds the lockspace
//! `lvm_VG` (delta leases, one per host id) at offset 0, the global lock `GLLK` at 65 MiB,
//! the VG lock `VGLK` at 66 MiB and from 67 MiB one 1 MiB lease per LV, named by the LV's
//! uuid, whose offset the LV records as `lock_args = "1.0.0:OFFSET"`. Free slots hold a
//! lease named `#unused`.
//!
//! tessera has the sanlock daemon write the leases (`sanlock_write_lockspace`/
//! `_write_resource` through its socket) rather than writing them itself: the records are
//! then byte for byte the ones lvmlockd makes with the same daemon, and every host needs
//! that daemon running anyway to hold the leases. tessera reads the records back
//! ([`tessera_lock::ondisk`]) only to name who holds a lease.
//!
//! Every change to a shared VG takes `VGLK` exclusive for the commit and checks that no
//! other host committed since the VG was read; serving an LV takes its lease (shared when
//! read-only) for as long as it is served. VGs of lock types tessera does not handle (dlm,
//! idm) can be read, never changed.

use std::path::PathBuf;

use tessera_formats::lvm2::config::{Node, Value};
use tessera_formats::lvm2::id::Id;
use tessera_formats::lvm2::vg::{LogicalVolume, SegmentKind, VolumeGroup};
use tessera_lock::ondisk::{self, DeltaLease, LeaseOwners};
use tessera_lock::sanlock::{
    self, Client, Disk, Lockspace, Registration, Resource, LSF_SECTOR512_ALIGN1M,
    RES_SECTOR512_ALIGN1M, RES_SHARED,
};

use super::alloc;
use super::scan::{Scan, VgState};
use crate::engine::{now, Engine};
use crate::error::{EngineError, Result};

/// lvmlockd's name for the hidden LV of the leases.
pub const LOCK_LV_NAME: &str = "lvmlock";
/// Its size on 512-byte-sector devices.
pub const LOCK_LV_BYTES: u64 = 256 << 20;
/// One lease per MiB (512-byte sectors).
pub const ALIGN_BYTES: u64 = 1 << 20;
pub const GL_LOCK_BEGIN: u64 = 65;
pub const VG_LOCK_BEGIN: u64 = 66;
pub const LV_LOCK_BEGIN: u64 = 67;
pub const GL_NAME: &str = "GLLK";
pub const VG_NAME: &str = "VGLK";
pub const UNUSED_NAME: &str = "#unused";
/// lvmlockd's default sanlock io timeout, in seconds.
pub const DEFAULT_IO_TIMEOUT: u32 = 10;

/// How this host locks shared VGs: its sanlock daemon and its host id. Given to the
/// engine with [`Engine::provide`]; without it the daemon of SANLOCK_RUN_DIR is used and
/// the host id must already be joined.
#[derive(Debug, Clone)]
pub struct HostLocking {
    pub client: Client,
    /// This host's id in every lockspace it joins (1-2000).
    pub host_id: Option<u64>,
}

impl HostLocking {
    pub fn from_env(host_id: Option<u64>) -> HostLocking {
        HostLocking {
            client: Client::from_env(),
            host_id,
        }
    }
}

/// How a VG is locked, read from its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VgLocking {
    /// A local VG (no lock_type, or "none").
    Local,
    /// lvmlockd with sanlock: the leases are in LV `lock_lv`.
    Sanlock { lock_lv: String, args: String },
    /// A lock manager tessera does not speak (dlm, idm, ...).
    Other { lock_type: String },
}

fn str_key<'a>(extra: &'a [(String, Node)], key: &str) -> Option<&'a str> {
    extra.iter().find_map(|(k, n)| match n {
        Node::Value(Value::Str(s)) if k == key => Some(s.as_str()),
        _ => None,
    })
}

fn set_str_key(extra: &mut Vec<(String, Node)>, key: &str, value: String) {
    let node = Node::Value(Value::Str(value));
    match extra.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = node,
        None => extra.push((key.to_string(), node)),
    }
}

impl VgLocking {
    pub fn of(vg: &VolumeGroup) -> Result<VgLocking> {
        let lock_type = str_key(&vg.extra, "lock_type").unwrap_or("none");
        match lock_type {
            "none" | "" => Ok(VgLocking::Local),
            "sanlock" => {
                let args = str_key(&vg.extra, "lock_args").unwrap_or("").to_string();
                // "1.0.0:lvmlock" or "2.0.0:lvmlock[:notimeout][:persist]".
                let mut parts = args.split(':');
                let version = parts.next().unwrap_or("");
                let lock_lv = parts.next().unwrap_or("").to_string();
                let major = version.split('.').next().unwrap_or("");
                if !matches!(major, "1" | "2") || lock_lv.is_empty() {
                    return Err(EngineError::Refused {
                        vg: vg.name.clone(),
                        why: format!(
                            "sanlock lock_args '{args}' are not lvmlockd's (VERSION:LOCK_LV[:...])"
                        ),
                    });
                }
                if let Some(flag) = parts.find(|f| !matches!(*f, "notimeout" | "persist" | "")) {
                    return Err(EngineError::Refused {
                        vg: vg.name.clone(),
                        why: format!(
                            "sanlock lock_args '{args}': option '{flag}' is unknown to tessera"
                        ),
                    });
                }
                Ok(VgLocking::Sanlock { lock_lv, args })
            }
            other => Ok(VgLocking::Other {
                lock_type: other.to_string(),
            }),
        }
    }
}

/// The lockspace name lvmlockd gives VG `vg`.
pub fn lockspace_name(vg: &str) -> String {
    format!("lvm_{vg}")
}

/// An LV's lease offset in the lock LV, from its `lock_args` ("1.0.0:OFFSET").
pub fn lv_lease_offset(vg: &str, lv: &LogicalVolume) -> Result<Option<u64>> {
    let Some(args) = str_key(&lv.extra, "lock_args") else {
        return Ok(None);
    };
    let bad = || EngineError::Refused {
        vg: vg.to_string(),
        why: format!(
            "LV '{}' has lock_args '{args}', not lvmlockd's 1.0.0:OFFSET",
            lv.name
        ),
    };
    let (version, offset) = args.split_once(':').ok_or_else(bad)?;
    if !version.starts_with("1.") {
        return Err(bad());
    }
    let offset: u64 = offset.parse().map_err(|_| bad())?;
    if offset < LV_LOCK_BEGIN * ALIGN_BYTES || offset % ALIGN_BYTES != 0 {
        return Err(bad());
    }
    Ok(Some(offset))
}

/// True for the LVs lvmlockd gives a lease: visible ones that are not thin LVs (their
/// pool's lease covers them) and not the lock LV.
pub fn lv_uses_lease(lv: &LogicalVolume) -> bool {
    lv.is_visible()
        && lv.name != LOCK_LV_NAME
        && !lv
            .segments
            .iter()
            .any(|s| matches!(s.kind, SegmentKind::Thin(_)))
}

/// Where the lock LV of a shared VG lies: the PV's path (absolute, for the sanlock
/// daemon) and the byte offset of the LV's start in it.
#[derive(Clone)]
pub struct LockArea {
    pub vg: String,
    pub lockspace: String,
    pub path: PathBuf,
    pub base: u64,
    pub size: u64,
    /// The PV device, to read the leases back.
    device: tessera_block::SharedDevice,
}

impl LockArea {
    pub fn find(scan: &Scan, vg: &VolumeGroup, lock_lv: &str) -> Result<LockArea> {
        let refuse = |why: String| EngineError::Refused {
            vg: vg.name.clone(),
            why,
        };
        let lv = vg
            .lv(lock_lv)
            .ok_or_else(|| refuse(format!("its lock LV '{lock_lv}' (lock_args) is missing")))?;
        let (pv_key, start_pe) = match lv.segments.as_slice() {
            [seg] => match &seg.kind {
                SegmentKind::Striped { stripes, .. } if stripes.len() == 1 => {
                    (stripes[0].pv.clone(), stripes[0].start_pe)
                }
                _ => return Err(refuse(format!("its lock LV '{lock_lv}' is not linear"))),
            },
            _ => {
                return Err(refuse(format!(
                    "its lock LV '{lock_lv}' has {} segments; tessera reads leases from one",
                    lv.segments.len()
                )))
            }
        };
        let pv = vg.pv(&pv_key).ok_or_else(|| {
            refuse(format!(
                "its lock LV '{lock_lv}' names PV '{pv_key}', not in the VG"
            ))
        })?;
        let info = scan
            .pvs
            .iter()
            .find(|p| p.label.pv_id == pv.id)
            .ok_or_else(|| {
                refuse(format!(
                    "the PV of its lock LV ({pv_key}, last seen at {}) is missing",
                    pv.device
                ))
            })?;
        let path = std::fs::canonicalize(&info.path).map_err(|cause| EngineError::Io {
            path: info.path.clone(),
            cause,
        })?;
        Ok(LockArea {
            vg: vg.name.clone(),
            lockspace: lockspace_name(&vg.name),
            path,
            base: pv.pe_start_sectors * 512 + start_pe * vg.extent_size_bytes(),
            size: lv.extent_count() * vg.extent_size_bytes(),
            device: info.device.clone(),
        })
    }

    fn disk(&self, offset: u64) -> Disk {
        Disk {
            path: self.path.clone(),
            offset: self.base + offset,
        }
    }

    pub fn lockspace(&self, host_id: u64) -> Lockspace {
        Lockspace {
            name: self.lockspace.clone(),
            host_id,
            flags: LSF_SECTOR512_ALIGN1M,
            disk: self.disk(0),
        }
    }

    pub fn resource(&self, name: &str, offset: u64, shared: bool) -> Resource {
        Resource {
            lockspace: self.lockspace.clone(),
            name: name.to_string(),
            flags: RES_SECTOR512_ALIGN1M | if shared { RES_SHARED } else { 0 },
            disk: self.disk(offset),
        }
    }

    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.device.read_at(&mut buf, self.base + offset)?;
        Ok(buf)
    }

    /// The host ids of the lockspace, as its delta leases say.
    pub fn hosts(&self) -> Result<Vec<DeltaLease>> {
        let bytes = self.read(0, ALIGN_BYTES)?;
        ondisk::parse_lockspace(
            &format!("{} (lockspace {})", self.path.display(), self.lockspace),
            &self.lockspace,
            &bytes,
        )
        .map_err(|e| EngineError::Refused {
            vg: self.vg.clone(),
            why: e.to_string(),
        })
    }

    /// The lease at `offset`: its name and holders.
    pub fn lease(&self, offset: u64) -> Result<(String, LeaseOwners)> {
        let bytes = self.read(offset, ALIGN_BYTES)?;
        let what = format!(
            "{}:{} (lease at {offset} in the lock LV)",
            self.path.display(),
            self.base + offset
        );
        let (leader, owners) =
            ondisk::parse_resource(&what, &bytes).map_err(|e| EngineError::Refused {
                vg: self.vg.clone(),
                why: e.to_string(),
            })?;
        Ok((leader.resource_name, owners))
    }

    /// "host 2 (name 'b')" for each holder of the lease at `offset`.
    pub fn describe_holders(&self, offset: u64) -> String {
        let hosts = self.hosts().unwrap_or_default();
        let name_of = |id: u64| {
            hosts
                .iter()
                .find(|h| h.host_id == id)
                .map(|h| format!("host {id} ('{}')", h.host_name))
                .unwrap_or_else(|| format!("host {id}"))
        };
        match self.lease(offset) {
            Ok((_, owners)) => {
                let mut who: Vec<String> = Vec::new();
                if let Some((id, _)) = owners.exclusive {
                    who.push(format!("{} exclusively", name_of(id)));
                }
                for (id, _) in &owners.shared {
                    who.push(format!("{} shared", name_of(*id)));
                }
                if who.is_empty() {
                    "another host".to_string()
                } else {
                    who.join(", ")
                }
            }
            Err(e) => format!("another host (its lease cannot be read: {e})"),
        }
    }
}

/// One LV lease held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub vg: String,
    pub lv: String,
    /// The resource name: the LV's uuid.
    pub uuid: String,
    pub shared: bool,
}

/// Leases held by this process through the sanlock daemon; released when dropped.
pub struct HeldLeases {
    registration: Registration,
    pub held: Vec<HeldLease>,
}

static HELD_BY_PROCESS: std::sync::Mutex<Vec<HeldLeases>> = std::sync::Mutex::new(Vec::new());

/// True if this process holds (through [`hold_for_process`]) the lease of LV `uuid` in
/// VG `vg`: its own changes to an LV it serves need not take it again.
fn held_by_process(vg: &str, uuid: &str) -> bool {
    HELD_BY_PROCESS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .any(|h| h.held.iter().any(|l| l.vg == vg && l.uuid == uuid))
}

impl HeldLeases {
    pub fn len(&self) -> usize {
        self.held.len()
    }
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
    pub fn registration(&self) -> &Registration {
        &self.registration
    }
}

/// Options of `vg create --shared`.
#[derive(Debug, Clone)]
pub struct SharedVgOptions {
    /// The sanlock io timeout written into the lockspace (seconds; lvmlockd's 10 by default).
    pub io_timeout: u32,
}

impl Default for SharedVgOptions {
    fn default() -> Self {
        SharedVgOptions {
            io_timeout: DEFAULT_IO_TIMEOUT,
        }
    }
}

impl Engine {
    /// How this host locks shared VGs.
    pub fn host_locking(&self) -> HostLocking {
        self.service::<HostLocking>()
            .map(|h| (*h).clone())
            .unwrap_or_else(|| HostLocking::from_env(None))
    }

    /// Creates a VG shared through sanlock, as `vgcreate --shared` with lvmlockd does: the
    /// VG, its hidden lock LV with the lockspace, GLLK, VGLK and a free lease in every
    /// LV slot, then lock_type and lock_args. The sanlock daemon must run.
    pub fn vg_create_shared(
        &self,
        name: &str,
        paths: &[String],
        extent_bytes: Option<u64>,
        force: bool,
        opts: &SharedVgOptions,
    ) -> Result<VolumeGroup> {
        let locking = self.host_locking();
        let sanlock_err = |e: sanlock::SanlockError| EngineError::Refused {
            vg: name.to_string(),
            why: e.to_string(),
        };
        locking.client.version().map_err(sanlock_err)?;
        self.vg_create(name, paths, extent_bytes, force)?;
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, name)?;
        let mut vg = state.vg.clone();
        let extents = LOCK_LV_BYTES.div_ceil(vg.extent_size_bytes());
        let mut segments = Vec::new();
        alloc::extend_linear(&vg, &mut segments, extents, None)
            .map_err(|e| alloc::no_space(&vg, e))?;
        if segments.len() != 1 {
            return Err(EngineError::Refused {
                vg: name.into(),
                why: format!(
                    "no PV has {extents} free extents in one run for the lock LV '{LOCK_LV_NAME}'"
                ),
            });
        }
        vg.lvs.push(LogicalVolume {
            name: LOCK_LV_NAME.into(),
            id: Id::random(),
            // Hidden, as lvmlockd leaves it (lv_set_hidden).
            status: vec!["READ".into(), "WRITE".into()],
            flags: Vec::new(),
            creation_time: Some(now()),
            creation_host: Some(self.hostname.clone()),
            extra: Vec::new(),
            segments,
        });
        let area = LockArea::find(&scan, &vg, LOCK_LV_NAME)?;
        let client = &locking.client;
        client
            .write_lockspace(&area.lockspace(0), opts.io_timeout)
            .map_err(sanlock_err)?;
        client
            .write_resource(&area.resource(GL_NAME, GL_LOCK_BEGIN * ALIGN_BYTES, false))
            .map_err(sanlock_err)?;
        client
            .write_resource(&area.resource(VG_NAME, VG_LOCK_BEGIN * ALIGN_BYTES, false))
            .map_err(sanlock_err)?;
        let mut offset = LV_LOCK_BEGIN * ALIGN_BYTES;
        while offset + ALIGN_BYTES <= area.size {
            client
                .write_resource(&area.resource(UNUSED_NAME, offset, false))
                .map_err(sanlock_err)?;
            offset += ALIGN_BYTES;
        }
        set_str_key(&mut vg.extra, "lock_type", "sanlock".into());
        set_str_key(&mut vg.extra, "lock_args", format!("1.0.0:{LOCK_LV_NAME}"));
        self.commit(&scan, Some(state), vg, &[])
    }

    /// Joins the lockspace of `area` with this host's id, unless the daemon already has;
    /// returns the host id in use.
    pub fn join_lockspace(&self, area: &LockArea) -> Result<u64> {
        let locking = self.host_locking();
        let refuse = |why: String| EngineError::Refused {
            vg: area.vg.clone(),
            why,
        };
        let joined = locking
            .client
            .lockspaces()
            .map_err(|e| refuse(e.to_string()))?
            .into_iter()
            .find(|ls| ls.name == area.lockspace);
        if let Some(ls) = joined {
            if let Some(id) = locking.host_id.filter(|id| *id != ls.host_id) {
                return Err(refuse(format!(
                    "this host's sanlock daemon joined lockspace {} as host {}, not the configured host {id}",
                    area.lockspace, ls.host_id
                )));
            }
            // Still joining (another tessera or lvmlockd started it): wait for it.
            let _ = locking.client.add_lockspace(&ls);
            return Ok(ls.host_id);
        }
        let host_id = locking.host_id.ok_or_else(|| {
            refuse(format!(
                "it is shared (sanlock) and this host has not joined lockspace {}; give this host's id with --host-id N or TESSERA_HOST_ID (1-2000)",
                area.lockspace
            ))
        })?;
        if !(1..=2000).contains(&host_id) {
            return Err(refuse(format!("host id {host_id} is not in 1-2000")));
        }
        tracing::info!("joining lockspace {} as host {host_id}", area.lockspace);
        match locking.client.add_lockspace(&area.lockspace(host_id)) {
            Ok(()) => Ok(host_id),
            Err(e) if e.code() == Some(-sanlock::EEXIST) => Ok(host_id),
            Err(e) => {
                let holder = area
                    .hosts()
                    .ok()
                    .and_then(|h| h.into_iter().find(|l| l.host_id == host_id && l.is_held()))
                    .map(|l| format!(" (host id {host_id} is held by '{}')", l.host_name))
                    .unwrap_or_default();
                Err(refuse(format!("{e}{holder}")))
            }
        }
    }

    /// Leaves the lockspace of shared VG `vg` (`lock stop`).
    pub fn leave_lockspace(&self, vg: &str) -> Result<bool> {
        let scan = self.scan()?;
        let state = scan
            .vg(vg)
            .ok_or_else(|| EngineError::VgNotFound(vg.to_string()))?;
        let VgLocking::Sanlock { lock_lv, .. } = VgLocking::of(&state.vg)? else {
            return Err(EngineError::Refused {
                vg: vg.into(),
                why: "it is not shared through sanlock".into(),
            });
        };
        let area = LockArea::find(&scan, &state.vg, &lock_lv)?;
        let client = self.host_locking().client;
        let refuse = |e: sanlock::SanlockError| EngineError::Refused {
            vg: vg.into(),
            why: e.to_string(),
        };
        let Some(ls) = client
            .lockspaces()
            .map_err(refuse)?
            .into_iter()
            .find(|ls| ls.name == area.lockspace)
        else {
            return Ok(false);
        };
        client.rem_lockspace(&ls).map_err(refuse)?;
        Ok(true)
    }

    /// Joins the lockspace of shared VG `vg` (`lock start`); returns the host id.
    pub fn start_lockspace(&self, vg: &str) -> Result<u64> {
        let scan = self.scan()?;
        let state = scan
            .vg(vg)
            .ok_or_else(|| EngineError::VgNotFound(vg.to_string()))?;
        let VgLocking::Sanlock { lock_lv, .. } = VgLocking::of(&state.vg)? else {
            return Err(EngineError::Refused {
                vg: vg.into(),
                why: "it is not shared through sanlock".into(),
            });
        };
        let area = LockArea::find(&scan, &state.vg, &lock_lv)?;
        self.join_lockspace(&area)
    }

    fn acquire(
        &self,
        registration: &mut Registration,
        area: &LockArea,
        what: &str,
        name: &str,
        offset: u64,
        shared: bool,
    ) -> Result<()> {
        let owner = format!("tessera:{}", std::process::id());
        registration
            .acquire(&area.resource(name, offset, shared), &owner)
            .map_err(|e| {
                let why = match e.code() {
                    Some(c)
                        if c == -sanlock::EAGAIN
                            || c == sanlock::SANLK_ACQUIRE_IDLIVE
                            || c == sanlock::SANLK_ACQUIRE_OWNED
                            || c == sanlock::SANLK_ACQUIRE_OTHER =>
                    {
                        format!(
                            "{what} is held by {} (lease {name} in lockspace {})",
                            area.describe_holders(offset),
                            area.lockspace
                        )
                    }
                    _ => format!("{what}: {e}"),
                };
                EngineError::Refused {
                    vg: area.vg.clone(),
                    why,
                }
            })
    }

    /// For a commit of `vg` over `old`: refuses VGs of lock types tessera does not handle;
    /// for a sanlock VG takes VGLK exclusive, checks no other host committed since `old`
    /// was read, and gives new LVs their leases (recorded in their lock_args). The VG lock
    /// is held until the returned guard is dropped (after the commit).
    pub(crate) fn shared_commit_guard(
        &self,
        scan: &Scan,
        old: Option<&VgState>,
        vg: &mut VolumeGroup,
    ) -> Result<Option<CommitGuard>> {
        let Some(old) = old else { return Ok(None) };
        let lock_lv = match VgLocking::of(&old.vg)? {
            VgLocking::Local => return Ok(None),
            VgLocking::Other { lock_type } => {
                return Err(EngineError::Refused {
                    vg: old.vg.name.clone(),
                    why: format!(
                        "it is shared with lock_type '{lock_type}', which tessera does not handle; it can be read, not changed (use lvm2 with lvmlockd)"
                    ),
                })
            }
            VgLocking::Sanlock { lock_lv, .. } => lock_lv,
        };
        if old.vg.lv(&lock_lv) != vg.lv(&lock_lv) {
            return Err(EngineError::Refused {
                vg: old.vg.name.clone(),
                why: format!(
                    "LV '{lock_lv}' holds its locks (lvmlockd's); it is not changed but with the VG (vg remove)"
                ),
            });
        }
        let area = LockArea::find(scan, &old.vg, &lock_lv)?;
        self.join_lockspace(&area)?;
        let client = self.host_locking().client;
        let mut registration = client.register().map_err(|e| EngineError::Refused {
            vg: area.vg.clone(),
            why: e.to_string(),
        })?;
        self.acquire(
            &mut registration,
            &area,
            &format!("the VG lock of '{}'", area.vg),
            VG_NAME,
            VG_LOCK_BEGIN * ALIGN_BYTES,
            false,
        )?;
        // Another host may have committed between our read and the lock.
        let fresh = self.scan()?;
        if let Some(now) = fresh.vg(&old.vg.name) {
            if now.vg.seqno != old.vg.seqno {
                return Err(EngineError::Refused {
                    vg: old.vg.name.clone(),
                    why: format!(
                        "another host changed it (seqno {} to {}) while this change was prepared; run it again",
                        old.vg.seqno, now.vg.seqno
                    ),
                });
            }
        }
        // LVs that change or go: their leases too, unless this process serves them.
        for lv in &old.vg.lvs {
            let Some(offset) = lv_lease_offset(&old.vg.name, lv)? else {
                continue;
            };
            let uuid = lv.id.to_string();
            let changed = vg
                .lvs
                .iter()
                .find(|l| l.id == lv.id)
                .is_none_or(|l| l != lv);
            if !changed || held_by_process(&old.vg.name, &uuid) {
                continue;
            }
            self.acquire(
                &mut registration,
                &area,
                &format!("LV '{}/{}'", old.vg.name, lv.name),
                &uuid,
                offset,
                false,
            )?;
        }
        // Leases for new LVs, in the first slots no LV records.
        let mut used: Vec<u64> = Vec::new();
        for lv in &vg.lvs {
            if let Some(off) = lv_lease_offset(&vg.name, lv)? {
                used.push(off);
            }
        }
        let mut next = LV_LOCK_BEGIN * ALIGN_BYTES;
        for i in 0..vg.lvs.len() {
            let lv = &vg.lvs[i];
            if !lv_uses_lease(lv) || lv_lease_offset(&vg.name, lv)?.is_some() {
                continue;
            }
            while used.contains(&next) {
                next += ALIGN_BYTES;
            }
            if next + ALIGN_BYTES > area.size {
                return Err(EngineError::Refused {
                    vg: vg.name.clone(),
                    why: format!("its lock LV has no free lease slot for LV '{}'", lv.name),
                });
            }
            let uuid = lv.id.to_string();
            client
                .write_resource(&area.resource(&uuid, next, false))
                .map_err(|e| EngineError::Refused {
                    vg: vg.name.clone(),
                    why: e.to_string(),
                })?;
            set_str_key(&mut vg.lvs[i].extra, "lock_args", format!("1.0.0:{next}"));
            used.push(next);
        }
        // Leases of LVs that go: freed once the commit landed.
        let mut freed = Vec::new();
        for lv in &old.vg.lvs {
            if vg.lvs.iter().any(|l| l.id == lv.id) {
                continue;
            }
            if let Some(off) = lv_lease_offset(&old.vg.name, lv)? {
                freed.push(off);
            }
        }
        Ok(Some(CommitGuard {
            _registration: registration,
            area,
            client,
            freed,
        }))
    }

    /// Takes the leases of the LVs of every shared VG in `scan` that will be served or
    /// activated (exclusive, shared with `read_only`), joining lockspaces as needed.
    /// Refuses (naming the holder) if another host holds one, and refuses to serve VGs
    /// of lock types tessera does not handle unless `read_only`.
    pub fn take_lv_leases(&self, scan: &Scan, read_only: bool) -> Result<Option<HeldLeases>> {
        let mut held: Option<HeldLeases> = None;
        for state in scan.vgs.values() {
            let lock_lv = match VgLocking::of(&state.vg)? {
                VgLocking::Local => continue,
                VgLocking::Other { lock_type } if !read_only => {
                    return Err(EngineError::Refused {
                        vg: state.vg.name.clone(),
                        why: format!(
                            "it is shared with lock_type '{lock_type}', which tessera does not handle; serve it --read-only"
                        ),
                    })
                }
                VgLocking::Other { .. } => continue,
                VgLocking::Sanlock { lock_lv, .. } => lock_lv,
            };
            let area = LockArea::find(scan, &state.vg, &lock_lv)?;
            self.join_lockspace(&area)?;
            if held.is_none() {
                let registration =
                    self.host_locking()
                        .client
                        .register()
                        .map_err(|e| EngineError::Refused {
                            vg: area.vg.clone(),
                            why: e.to_string(),
                        })?;
                held = Some(HeldLeases {
                    registration,
                    held: Vec::new(),
                });
            }
            let leases = held.as_mut().expect("registered above");
            for lv in &state.vg.lvs {
                if !lv_uses_lease(lv) {
                    continue;
                }
                let Some(offset) = lv_lease_offset(&state.vg.name, lv)? else {
                    continue;
                };
                self.acquire(
                    &mut leases.registration,
                    &area,
                    &format!("LV '{}/{}'", state.vg.name, lv.name),
                    &lv.id.to_string(),
                    offset,
                    read_only,
                )?;
                leases.held.push(HeldLease {
                    vg: state.vg.name.clone(),
                    lv: lv.name.clone(),
                    uuid: lv.id.to_string(),
                    shared: read_only,
                });
            }
        }
        Ok(held)
    }
}

/// Holds a shared VG's VGLK across a commit; frees the leases of removed LVs after it.
pub struct CommitGuard {
    _registration: Registration,
    area: LockArea,
    client: Client,
    freed: Vec<u64>,
}

impl CommitGuard {
    /// After the VG was removed: its leases released and its lockspace left, so that the
    /// daemon stops renewing a delta lease in what is now free space.
    pub fn leave_lockspace(self) {
        let CommitGuard {
            _registration,
            area,
            client,
            ..
        } = self;
        drop(_registration);
        let joined = client.lockspaces().unwrap_or_default();
        for ls in joined.iter().filter(|ls| ls.name == area.lockspace) {
            if let Err(e) = client.rem_lockspace(ls) {
                tracing::warn!(
                    "VG '{}' removed: leaving lockspace {}: {e}",
                    area.vg,
                    ls.name
                );
            }
        }
    }

    /// After the commit landed: the removed LVs' slots get a free lease again.
    pub fn committed(&self) {
        for off in &self.freed {
            if let Err(e) =
                self.client
                    .write_resource(&self.area.resource(UNUSED_NAME, *off, false))
            {
                tracing::warn!("VG '{}': freeing the lease at {off}: {e}", self.area.vg);
            }
        }
    }
}

/// What `lock status` shows of one VG.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VgLockStatus {
    pub vg: String,
    pub lock_type: String,
    pub lock_args: String,
    /// Why tessera does not lock it, for lock types it does not handle.
    pub note: Option<String>,
    pub lockspace: Option<String>,
    /// The lock LV's device and offset.
    pub lease_path: Option<String>,
    pub lease_offset: Option<u64>,
    /// This host's id in the lockspace, if its sanlock daemon joined it.
    pub local_host_id: Option<u64>,
    pub hosts: Vec<HostStatus>,
    pub leases: Vec<LeaseStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HostStatus {
    pub host_id: u64,
    pub name: String,
    pub generation: u64,
    pub joined: bool,
    pub this_host: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaseStatus {
    /// GLLK, VGLK or the LV's name.
    pub lock: String,
    /// The resource name on disk (the LV uuid for LVs).
    pub resource: String,
    pub offset: u64,
    /// "ex", "sh" or "un".
    pub mode: String,
    pub holders: Vec<u64>,
    pub held_by_this_host: bool,
    pub problem: Option<String>,
}

impl Engine {
    /// The locking of every shared VG found: lockspace, hosts, leases and their holders.
    pub fn lock_status(&self) -> Result<Vec<VgLockStatus>> {
        let scan = self.scan()?;
        let client = self.host_locking().client;
        let joined = client.lockspaces().ok();
        let mut out = Vec::new();
        for state in scan.vgs.values() {
            let vg = &state.vg;
            let locking = VgLocking::of(vg);
            let mut status = VgLockStatus {
                vg: vg.name.clone(),
                lock_type: str_key(&vg.extra, "lock_type").unwrap_or("none").into(),
                lock_args: str_key(&vg.extra, "lock_args").unwrap_or("").into(),
                note: None,
                lockspace: None,
                lease_path: None,
                lease_offset: None,
                local_host_id: None,
                hosts: Vec::new(),
                leases: Vec::new(),
            };
            let lock_lv = match locking {
                Ok(VgLocking::Local) => continue,
                Ok(VgLocking::Other { lock_type }) => {
                    status.note = Some(format!(
                        "lock_type '{lock_type}' is not handled by tessera: read only"
                    ));
                    out.push(status);
                    continue;
                }
                Err(e) => {
                    status.note = Some(e.to_string());
                    out.push(status);
                    continue;
                }
                Ok(VgLocking::Sanlock { lock_lv, .. }) => lock_lv,
            };
            let area = match LockArea::find(&scan, vg, &lock_lv) {
                Ok(a) => a,
                Err(e) => {
                    status.note = Some(e.to_string());
                    out.push(status);
                    continue;
                }
            };
            status.lockspace = Some(area.lockspace.clone());
            status.lease_path = Some(area.path.display().to_string());
            status.lease_offset = Some(area.base);
            status.local_host_id = joined
                .as_ref()
                .and_then(|j| j.iter().find(|ls| ls.name == area.lockspace))
                .map(|ls| ls.host_id);
            match area.hosts() {
                Ok(hosts) => {
                    status.hosts = hosts
                        .into_iter()
                        .map(|h| HostStatus {
                            host_id: h.host_id,
                            this_host: status.local_host_id == Some(h.host_id),
                            joined: h.is_held(),
                            name: h.host_name,
                            generation: h.generation,
                        })
                        .collect()
                }
                Err(e) => status.note = Some(e.to_string()),
            }
            let mut wanted: Vec<(String, u64)> = vec![
                (GL_NAME.into(), GL_LOCK_BEGIN * ALIGN_BYTES),
                (VG_NAME.into(), VG_LOCK_BEGIN * ALIGN_BYTES),
            ];
            for lv in &vg.lvs {
                if let Ok(Some(off)) = lv_lease_offset(&vg.name, lv) {
                    wanted.push((lv.name.clone(), off));
                }
            }
            for (lock, offset) in wanted {
                let mut lease = LeaseStatus {
                    lock,
                    resource: String::new(),
                    offset,
                    mode: "un".into(),
                    holders: Vec::new(),
                    held_by_this_host: false,
                    problem: None,
                };
                match area.lease(offset) {
                    Ok((name, owners)) => {
                        lease.resource = name;
                        if let Some((id, _)) = owners.exclusive {
                            lease.mode = "ex".into();
                            lease.holders.push(id);
                        } else if !owners.shared.is_empty() {
                            lease.mode = "sh".into();
                            lease.holders = owners.shared.iter().map(|(id, _)| *id).collect();
                        }
                    }
                    Err(e) => lease.problem = Some(e.to_string()),
                }
                lease.held_by_this_host = status
                    .local_host_id
                    .is_some_and(|id| lease.holders.contains(&id));
                status.leases.push(lease);
            }
            out.push(status);
        }
        Ok(out)
    }
}

/// Releases what [`hold_for_process`] keeps, at once (a server stopping on a signal,
/// before it exits).
pub fn release_held() {
    HELD_BY_PROCESS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
}

/// Keeps `leases` for the life of the process (a server holds its LVs' leases until it
/// exits; the daemon releases them when the connection closes).
pub fn hold_for_process(leases: HeldLeases) {
    HELD_BY_PROCESS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(leases);
}
