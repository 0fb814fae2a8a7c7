//! The set of exports a server offers, changeable while it runs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tessera_block::SharedDevice;

use crate::proto::MAX_STRING;
use crate::ExportError;

/// One export: a device and how it is offered.
#[derive(Clone)]
pub struct Export {
    pub device: SharedDevice,
    /// Refuse writes even if the device takes them. A read-only device is always offered
    /// read-only.
    pub read_only: bool,
    /// Shown to clients by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`; empty for none.
    pub description: String,
}

impl Export {
    /// A writable export without a description.
    pub fn new(device: SharedDevice) -> Self {
        Export {
            device,
            read_only: false,
            description: String::new(),
        }
    }

    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// True if clients may not write: the flag, or a device that refuses writes.
    pub fn is_read_only(&self) -> bool {
        self.read_only || self.device.is_read_only()
    }
}

impl fmt::Debug for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Export")
            .field("device", &self.device.name())
            .field("read_only", &self.read_only)
            .field("description", &self.description)
            .finish()
    }
}

/// Export names mapped to exports, shared by servers and the code that manages them. Clones
/// share one set. Clients read the set (and each device's size) when they negotiate, so a
/// change is seen by every later handshake; connections already in transmission keep the
/// device they opened until they disconnect.
#[derive(Clone, Default)]
pub struct ExportSet {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    exports: BTreeMap<String, Export>,
    default: Option<String>,
}

impl ExportSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the export `name`; returns the one it replaced.
    pub fn insert(
        &self,
        name: impl Into<String>,
        export: Export,
    ) -> Result<Option<Export>, ExportError> {
        let name = name.into();
        if name.len() > MAX_STRING {
            return Err(ExportError::NameTooLong { len: name.len() });
        }
        if export.description.len() > MAX_STRING {
            return Err(ExportError::DescriptionTooLong {
                name,
                len: export.description.len(),
            });
        }
        Ok(self.write().exports.insert(name, export))
    }

    /// Removes the export `name`; connections using it keep it until they disconnect.
    pub fn remove(&self, name: &str) -> Option<Export> {
        self.write().exports.remove(name)
    }

    pub fn get(&self, name: &str) -> Option<Export> {
        self.read().exports.get(name).cloned()
    }

    /// Export names in sorted order.
    pub fn names(&self) -> Vec<String> {
        self.read().exports.keys().cloned().collect()
    }

    /// Every export with its name, sorted by name.
    pub fn list(&self) -> Vec<(String, Export)> {
        let inner = self.read();
        inner
            .exports
            .iter()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().exports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().exports.is_empty()
    }

    /// The export a client gets when it asks for the empty name. Without one, the empty name
    /// means the only export, if there is exactly one.
    pub fn set_default(&self, name: Option<String>) {
        self.write().default = name;
    }

    /// The export a client's name selects, with its canonical name.
    pub fn resolve(&self, name: &str) -> Option<(String, Export)> {
        let inner = self.read();
        let name = if name.is_empty() {
            match &inner.default {
                Some(d) => d.as_str(),
                None if inner.exports.len() == 1 => inner.exports.keys().next()?.as_str(),
                None => return None,
            }
        } else {
            name
        };
        inner
            .exports
            .get(name)
            .map(|e| (name.to_string(), e.clone()))
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for ExportSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.read();
        f.debug_struct("ExportSet")
            .field("exports", &inner.exports)
            .field("default", &inner.default)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    fn dev(size: u64) -> SharedDevice {
        Arc::new(MemoryDevice::new("mem", size))
    }

    #[test]
    fn default_export_resolution() {
        let set = ExportSet::new();
        assert!(set.resolve("").is_none());
        set.insert("a", Export::new(dev(512))).unwrap();
        assert_eq!(set.resolve("").unwrap().0, "a");
        set.insert("b", Export::new(dev(512))).unwrap();
        assert!(set.resolve("").is_none());
        set.set_default(Some("b".into()));
        assert_eq!(set.resolve("").unwrap().0, "b");
        assert!(set.resolve("c").is_none());
        assert!(set.remove("b").is_some());
        assert!(
            set.resolve("").is_none(),
            "a default that is gone selects nothing"
        );
        assert_eq!(set.names(), ["a"]);
    }

    #[test]
    fn limits_on_strings() {
        let set = ExportSet::new();
        assert!(set
            .insert("x".repeat(MAX_STRING + 1), Export::new(dev(1)))
            .is_err());
        let e = Export::new(dev(1)).description("d".repeat(MAX_STRING + 1));
        assert!(set.insert("x", e).is_err());
    }
}
