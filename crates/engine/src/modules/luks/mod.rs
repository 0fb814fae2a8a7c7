//! LUKS1 and LUKS2: the format module for encrypted devices. It recognises and describes
//! their headers; a device unlocked with [`Engine::luks_open`](crate::Engine::luks_open)
//! becomes a set of one member whose volume is the plaintext (a `crypt` table over the
//! device's data segment, its key in the process's key store), so discovery goes on inside
//! it: a PV there is found and its VG read like any other. The verbs that write headers and
//! key slots are in [`ops`].

pub mod kernel;
pub mod ops;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tessera_block::{BlockError, SharedDevice};
use tessera_formats::luks;
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

use crate::format::{
    Activated, Assembly, Finding, FormatModule, Inner, Member, Node, Place, Shown, Volume,
};

pub use ops::{crypt_params, LuksOpenOptions, LuksOpened};

/// An unlocked LUKS device: what its volume maps, by the header's UUID.
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    /// The name it is opened (and served) as.
    pub name: String,
    /// The device it was opened on, as named then.
    pub device: String,
    /// The `crypt` row's parameters after the device, and the parameters before it.
    pub params: CryptRow,
    pub size_sectors: u64,
}

/// A `crypt` row, cut where the device goes: `<cipher> <key> <iv_offset>` DEVICE
/// `<offset> [opts]`.
#[derive(Debug, Clone)]
pub(crate) struct CryptRow {
    pub head: String,
    pub tail: String,
}

impl CryptRow {
    pub fn table(&self, device: &str, size_sectors: u64) -> String {
        format!(
            "0 {size_sectors} crypt {} {} {}",
            self.head,
            tessera_mapper::escape_arg(device),
            self.tail
        )
    }
}

/// The devices unlocked in this process, by LUKS UUID. Like the key store it is the
/// process's, as the kernel's dm-crypt devices are the system's.
static OPENED: Mutex<BTreeMap<String, Opened>> = Mutex::new(BTreeMap::new());

pub(crate) fn opened() -> std::sync::MutexGuard<'static, BTreeMap<String, Opened>> {
    OPENED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// LUKS1 and LUKS2 headers: recognised, described, and opened once unlocked.
pub struct LuksHeaders;

impl FormatModule for LuksHeaders {
    fn name(&self) -> &'static str {
        "luks"
    }
    fn probe(&self, _name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        match luks::read_header(device.as_ref()) {
            Ok(None) => None,
            Ok(Some(h)) => {
                let mut summary = format!(
                    "LUKS{}, {} {}-bit, {} key slot(s)",
                    h.version,
                    h.cipher,
                    h.key_bytes * 8,
                    h.active_keyslots.len()
                );
                if !h.label.is_empty() {
                    summary.push_str(&format!(", label '{}'", h.label));
                }
                match opened().get(&h.uuid) {
                    Some(o) => summary.push_str(&format!(", open as {}", o.name)),
                    None => summary.push_str(", locked"),
                }
                let mut f = Finding::new("crypto_LUKS", summary);
                f.detail = serde_json::json!({
                    "version": h.version, "uuid": h.uuid, "label": h.label,
                    "cipher": h.cipher, "key_bits": h.key_bytes * 8,
                    "data_offset_bytes": h.data_offset_bytes,
                    "active_keyslots": h.active_keyslots,
                });
                f.problems.extend(h.warning.clone());
                Some((f, Vec::new()))
            }
            Err(e) => Finding::damaged(
                "crypto_LUKS",
                "a LUKS header that cannot be read",
                e.to_string(),
            ),
        }
    }

    /// Each unlocked device is a set of one: the plaintext, shown under the device.
    fn assemble(&self, members: Vec<Member>) -> Vec<Assembly> {
        let open = opened();
        members
            .into_iter()
            .filter_map(|m| {
                let uuid = m.finding.detail.get("uuid")?.as_str()?.to_string();
                let o = open.get(&uuid)?.clone();
                let node = Node {
                    kind: "crypt",
                    name: o.name.clone(),
                    size_bytes: o.size_sectors * 512,
                    format: None,
                    summary: format!("open LUKS volume over {}", m.name),
                    state: Some("open".into()),
                    detail: serde_json::json!({ "uuid": uuid, "device": m.name }),
                    problems: Vec::new(),
                    children: Vec::new(),
                };
                let place = Place {
                    name: m.name.clone(),
                    state: Some("open".into()),
                    ..Place::default()
                };
                let volume: Box<dyn Volume> = Box::new(LuksVolume {
                    opened: o,
                    member: m.name,
                    device: m.device,
                });
                Some(Assembly {
                    node,
                    places: vec![place],
                    volumes: vec![volume],
                })
            })
            .collect()
    }
}

/// The plaintext of an unlocked LUKS device.
pub struct LuksVolume {
    opened: Opened,
    /// The LUKS device as this scan named it, and its device.
    member: String,
    device: SharedDevice,
}

impl Volume for LuksVolume {
    fn module(&self) -> &'static str {
        "luks"
    }
    fn name(&self) -> String {
        self.opened.name.clone()
    }
    fn dm_name(&self) -> String {
        self.opened.name.clone()
    }
    fn shown(&self) -> Shown {
        Shown::AsSet
    }
    fn devices(&self) -> Vec<String> {
        vec![self.member.clone()]
    }
    fn activate(&self, registry: Arc<TargetRegistry>, writable: bool) -> Result<Activated, String> {
        let table = Table::parse(
            &self
                .opened
                .params
                .table(&self.member, self.opened.size_sectors),
        )
        .map_err(|e| e.to_string())?;
        let device = self.device.clone();
        let member = self.member.clone();
        let resolve = move |name: &str| {
            if name == member {
                Ok(device.clone())
            } else {
                Err(BlockError::Open {
                    device: name.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not the LUKS device this volume is opened on",
                    ),
                })
            }
        };
        // Reading through a crypt table writes nothing, so `writable` changes nothing here:
        // the device was opened read-only or not by the scan that found it.
        let _ = writable;
        let mapped = MappedDevice::new(self.dm_name(), registry);
        mapped.load(&table, &resolve).map_err(|e| e.to_string())?;
        mapped.resume().map_err(|e| e.to_string())?;
        Ok(Activated {
            device: mapped,
            notes: Vec::new(),
        })
    }
}
