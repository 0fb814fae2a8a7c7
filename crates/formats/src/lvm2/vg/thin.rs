//! Thin provisioning in the VG model: lvm2's `thin-pool` and `thin` segments and the hidden
//! LVs of a pool (`POOL_tmeta`, `POOL_tdata`, `lvol0_pmspare`).
//!
//! A pool is an LV whose one `thin-pool` segment names its metadata LV (`metadata`) and its
//! data LV (`pool`), with the pool's transaction id, chunk size (sectors), discards and
//! zeroing, and the kernel messages lvm2 has queued for it but not yet sent (`messageN`
//! sections: `create = "LV"` or `delete = ID`). A thin LV's one `thin` segment names its pool,
//! its device id in the pool's metadata and, for a snapshot, its origin.

use super::config::{Node, Section, Value};
use super::{get_u64, int, missing_or_wrong, out_of_range, VgError};

/// The chunk sizes the kernel takes, in sectors: 64 KiB to 1 GiB (multiples of 64 KiB).
pub const THIN_MIN_CHUNK_SECTORS: u64 = 128;
pub const THIN_MAX_CHUNK_SECTORS: u64 = 2_097_152;
/// The largest thin device id (24 bits).
pub const THIN_MAX_DEVICE_ID: u64 = (1 << 24) - 1;

/// What a pool does with discards (lvm2's `discards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinDiscards {
    Ignore,
    NoPassdown,
    Passdown,
}

impl ThinDiscards {
    pub fn name(self) -> &'static str {
        match self {
            ThinDiscards::Ignore => "ignore",
            ThinDiscards::NoPassdown => "nopassdown",
            ThinDiscards::Passdown => "passdown",
        }
    }
    /// lvm2's names, any case as lvm2 takes them.
    pub fn parse(text: &str) -> Option<ThinDiscards> {
        match text.to_ascii_lowercase().as_str() {
            "ignore" => Some(ThinDiscards::Ignore),
            "nopassdown" => Some(ThinDiscards::NoPassdown),
            "passdown" => Some(ThinDiscards::Passdown),
            _ => None,
        }
    }
}

/// A kernel message lvm2 has queued for a pool: create the thin LV named (a snapshot of its
/// origin when it has one), or delete a device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinMessage {
    Create(String),
    Delete(u32),
}

/// A `thin-pool` segment.
#[derive(Debug, Clone, PartialEq)]
pub struct ThinPoolSegment {
    /// The metadata LV (`POOL_tmeta`).
    pub metadata: String,
    /// The data LV (`POOL_tdata`), lvm2's `pool` key.
    pub data: String,
    pub transaction_id: u64,
    pub chunk_size_sectors: u64,
    /// None when the key is absent (lvm2 then ignores discards).
    pub discards: Option<ThinDiscards>,
    /// `zero_new_blocks` as written (lvm2 writes it only as 1, when zeroing).
    pub zero_new_blocks: Option<u64>,
    /// `crop_metadata` as written (only for metadata beyond the cropping size).
    pub crop_metadata: Option<u64>,
    /// Messages queued and not yet sent, in order.
    pub messages: Vec<ThinMessage>,
    /// Keys lvm2 does not write today (e.g. older lvm2's `low_water_mark`), in order,
    /// written after the known ones and before the messages.
    pub extra: Vec<(String, Node)>,
}

impl ThinPoolSegment {
    /// Whether new blocks are zeroed before use.
    pub fn zeroes(&self) -> bool {
        self.zero_new_blocks.is_some_and(|z| z != 0)
    }
    /// Discards as lvm2 reads them: ignore when absent.
    pub fn discards(&self) -> ThinDiscards {
        self.discards.unwrap_or(ThinDiscards::Ignore)
    }

    pub(super) fn from_body(s: &Section, at: &str) -> Result<Self, VgError> {
        let name = |key: &str| -> Result<String, VgError> {
            s.get_str(key)
                .map(str::to_string)
                .ok_or_else(|| missing_or_wrong(s, at, key, "an LV name"))
        };
        let metadata = name("metadata")?;
        let data = name("pool")?;
        let transaction_id = get_u64(s, at, "transaction_id")?;
        let chunk_size_sectors = get_u64(s, at, "chunk_size")?;
        if !(THIN_MIN_CHUNK_SECTORS..=THIN_MAX_CHUNK_SECTORS).contains(&chunk_size_sectors)
            || chunk_size_sectors % THIN_MIN_CHUNK_SECTORS != 0
        {
            return Err(out_of_range(
                at,
                "chunk_size",
                chunk_size_sectors,
                "a multiple of 128 sectors (64 KiB) from 128 to 2097152 (1 GiB)",
            ));
        }
        let discards = match s.get("discards") {
            None => None,
            Some(_) => {
                let text = s
                    .get_str("discards")
                    .ok_or_else(|| missing_or_wrong(s, at, "discards", "a string"))?;
                Some(
                    ThinDiscards::parse(text).ok_or_else(|| VgError::Inconsistent {
                        at: at.to_string(),
                        why: format!(
                            "discards \"{text}\" is not one of ignore, nopassdown, passdown"
                        ),
                    })?,
                )
            }
        };
        let flag = |key: &str| -> Result<Option<u64>, VgError> {
            match s.get(key) {
                None => Ok(None),
                Some(_) => get_u64(s, at, key).map(Some),
            }
        };
        let zero_new_blocks = flag("zero_new_blocks")?;
        let crop_metadata = flag("crop_metadata")?;
        let mut messages = Vec::new();
        let mut extra = Vec::new();
        for (key, node) in &s.entries {
            match (key.as_str(), node) {
                (
                    "metadata" | "pool" | "transaction_id" | "chunk_size" | "discards"
                    | "zero_new_blocks" | "crop_metadata",
                    _,
                ) => {}
                // lvm2 reads every subsection of a pool segment as a message.
                (_, Node::Section(msg)) => {
                    let mat = format!("{at}, {key}");
                    let message = match (msg.get("create"), msg.get("delete")) {
                        (Some(_), None) => ThinMessage::Create(
                            msg.get_str("create")
                                .ok_or_else(|| missing_or_wrong(msg, &mat, "create", "an LV name"))?
                                .to_string(),
                        ),
                        (None, Some(_)) => {
                            let id = get_u64(msg, &mat, "delete")?;
                            if id > THIN_MAX_DEVICE_ID {
                                return Err(out_of_range(
                                    &mat,
                                    "delete",
                                    id,
                                    "a thin device id is at most 16777215",
                                ));
                            }
                            ThinMessage::Delete(id as u32)
                        }
                        (Some(_), Some(_)) => {
                            return Err(VgError::Inconsistent {
                                at: mat,
                                why: "holds both 'create' and 'delete'; a message is one of them"
                                    .into(),
                            })
                        }
                        (None, None) => {
                            return Err(VgError::Inconsistent {
                                at: mat,
                                why: "is a message with neither 'create' nor 'delete'".into(),
                            })
                        }
                    };
                    messages.push(message);
                }
                _ => extra.push((key.clone(), node.clone())),
            }
        }
        Ok(ThinPoolSegment {
            metadata,
            data,
            transaction_id,
            chunk_size_sectors,
            discards,
            zero_new_blocks,
            crop_metadata,
            messages,
            extra,
        })
    }

    pub(super) fn write(&self, s: &mut Section) {
        s.set_value("metadata", Value::Str(self.metadata.clone()));
        s.set_value("pool", Value::Str(self.data.clone()));
        s.set_value("transaction_id", int(self.transaction_id));
        s.set_value("chunk_size", int(self.chunk_size_sectors));
        if let Some(d) = self.discards {
            s.set_value("discards", Value::Str(d.name().into()));
        }
        if let Some(z) = self.zero_new_blocks {
            s.set_value("zero_new_blocks", int(z));
        }
        if let Some(c) = self.crop_metadata {
            s.set_value("crop_metadata", int(c));
        }
        s.entries.extend(self.extra.iter().cloned());
        for (i, m) in self.messages.iter().enumerate() {
            let mut body = Section::new();
            match m {
                ThinMessage::Create(lv) => body.set_value("create", Value::Str(lv.clone())),
                ThinMessage::Delete(id) => body.set_value("delete", int(u64::from(*id))),
            }
            s.entries
                .push((format!("message{}", i + 1), Node::Section(body)));
        }
    }
}

/// A `thin` segment: a thin LV (or thin snapshot) in a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct ThinSegment {
    /// The pool LV (`thin_pool`).
    pub pool: String,
    /// The pool's transaction id when this LV was made.
    pub transaction_id: u64,
    pub device_id: u32,
    /// The thin LV this one is a snapshot of.
    pub origin: Option<String>,
    /// The LV this one merges into (lvm2's `merge`, a thin snapshot being merged).
    pub merge: Option<String>,
    /// A read-only LV outside the pool under this one's unprovisioned blocks.
    pub external_origin: Option<String>,
    pub extra: Vec<(String, Node)>,
}

impl ThinSegment {
    pub(super) fn from_body(s: &Section, at: &str) -> Result<Self, VgError> {
        let opt_name = |key: &str| -> Result<Option<String>, VgError> {
            match s.get(key) {
                None => Ok(None),
                Some(_) => s
                    .get_str(key)
                    .map(|v| Some(v.to_string()))
                    .ok_or_else(|| missing_or_wrong(s, at, key, "an LV name")),
            }
        };
        let pool = opt_name("thin_pool")?.ok_or_else(|| VgError::Missing {
            at: at.to_string(),
            key: "thin_pool".into(),
        })?;
        let device_id = get_u64(s, at, "device_id")?;
        if device_id > THIN_MAX_DEVICE_ID {
            return Err(out_of_range(
                at,
                "device_id",
                device_id,
                "a thin device id is at most 16777215",
            ));
        }
        let extra = s
            .entries
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "thin_pool"
                        | "transaction_id"
                        | "device_id"
                        | "origin"
                        | "merge"
                        | "external_origin"
                )
            })
            .cloned()
            .collect();
        Ok(ThinSegment {
            pool,
            transaction_id: get_u64(s, at, "transaction_id")?,
            device_id: device_id as u32,
            origin: opt_name("origin")?,
            merge: opt_name("merge")?,
            external_origin: opt_name("external_origin")?,
            extra,
        })
    }

    pub(super) fn write(&self, s: &mut Section) {
        s.set_value("thin_pool", Value::Str(self.pool.clone()));
        s.set_value("transaction_id", int(self.transaction_id));
        s.set_value("device_id", int(u64::from(self.device_id)));
        if let Some(e) = &self.external_origin {
            s.set_value("external_origin", Value::Str(e.clone()));
        }
        if let Some(o) = &self.origin {
            s.set_value("origin", Value::Str(o.clone()));
        }
        if let Some(m) = &self.merge {
            s.set_value("merge", Value::Str(m.clone()));
        }
        s.entries.extend(self.extra.iter().cloned());
    }
}
