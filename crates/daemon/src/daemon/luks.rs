//! The LUKS verbs of a running daemon: unlock a device into an open volume, exported under
//! its name, with the LVs on a PV inside it served as well (the stack an encrypted install
//! makes: partition > LUKS > PV > VG > LVs); close it again.

use tessera_block::BlockDevice;
use tessera_engine::{claim, devices::backing_path, LuksOpenOptions};

use super::*;

impl Daemon {
    pub(super) fn luks_open(
        &self,
        device: &str,
        name: &str,
        passphrase: &[u8],
        key_slot: Option<u32>,
        read_only: bool,
    ) -> Result<Reply> {
        let mut volumes = self.lock();
        tessera_engine::check_open_name(name)?;
        if volumes.contains_key(name) || volumes.values().any(|v| v.export == name) {
            refuse!("a device named {name} exists already");
        }
        let read_only = read_only || self.read_only;
        // The LUKS device: a volume this daemon serves (an LV, an array), or a file, a
        // partition or an array found on its devices, claimed as the members are.
        let served = volumes
            .values()
            .find(|v| v.export == device)
            .map(|v| v.device.clone() as SharedDevice);
        let (dev, claim) = match served {
            Some(dev) => (dev, None),
            None => {
                let claim = match backing_path(device) {
                    Some(path) if !self.claims_path(&path, &volumes) => Some(claim::claim(&path)?),
                    _ => None,
                };
                (self.engine.open_named(device, !read_only)?, claim)
            }
        };
        let opened = self.engine.luks_open(
            device,
            &dev,
            passphrase,
            name,
            &LuksOpenOptions {
                key_slot,
                ..LuksOpenOptions::default()
            },
        )?;
        let mapped = match self.map_opened(device, &dev, name, &opened.table) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                let _ = self.engine.luks_close(name);
                return Err(e);
            }
        };
        self.engine.add_stacked(name.to_string(), mapped.clone());
        let description = format!(
            "LUKS volume over {device} ({}, {}-byte sectors)",
            opened.cipher, opened.sector_bytes
        );
        let volume = Volume {
            device: mapped,
            export: name.to_string(),
            lv: None,
            records: None,
            read_only,
            claim,
            layers: Vec::new(),
        };
        if let Err(e) = self.serve(&mut volumes, name.to_string(), description, volume) {
            self.engine.remove_stacked(name);
            let _ = self.engine.luks_close(name);
            return Err(e);
        }
        let mut text = format!(
            "{device}: key slot {} opened it as {name}: {} sectors of {}{}\n",
            opened.key_slot,
            opened.size_sectors,
            opened.cipher,
            if read_only { ", read-only" } else { "" }
        );
        let served = self.serve_new_lvs(&mut volumes, &mut text)?;
        Ok(Reply::ok(
            text,
            json!({
                "name": name, "device": device, "uuid": opened.uuid,
                "key_slot": opened.key_slot, "size_sectors": opened.size_sectors,
                "lvs": served,
            }),
        ))
    }

    /// The open volume's mapped device: its crypt table over `dev`.
    fn map_opened(
        &self,
        device: &str,
        dev: &SharedDevice,
        name: &str,
        table: &str,
    ) -> Result<MappedDevice> {
        let table = Table::parse(table)?;
        let resolve = |n: &str| {
            if n == device {
                Ok(dev.clone())
            } else {
                Err(BlockError::Open {
                    device: n.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not the LUKS device being opened",
                    ),
                })
            }
        };
        let mapped = MappedDevice::new(name, self.registry.clone());
        mapped.load(&table, &resolve)?;
        mapped.resume()?;
        Ok(mapped)
    }

    /// Whether this daemon holds a claim on `path` already (through what it serves).
    fn claims_path(&self, path: &str, volumes: &BTreeMap<String, Volume>) -> bool {
        self._claims.iter().any(|c| c.path == path)
            || volumes
                .values()
                .any(|v| v.claim.as_ref().is_some_and(|c| c.path == path))
    }

    pub(super) fn luks_close(&self, name: &str) -> Result<Reply> {
        let mut volumes = self.lock();
        let Some(volume) = volumes.get(name).filter(|v| v.lv.is_none()) else {
            refuse!("{name} is not a LUKS volume open in this daemon");
        };
        let export = volume.export.clone();
        // The LVs served from a PV inside it.
        let scan = self.engine.scan_with(false)?;
        let busy: Vec<String> = scan
            .vgs
            .values()
            .filter(|state| state.present.values().any(|&i| scan.pvs[i].path == export))
            .flat_map(|state| {
                volumes
                    .values()
                    .filter(|v| v.lv.as_ref().is_some_and(|l| l.vg == state.vg.name))
                    .map(|v| v.export.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        // The LVs that came up with it go down with it, flushed first.
        let mut text = String::new();
        for export in &busy {
            let key = volumes
                .iter()
                .find(|(_, v)| v.export == *export)
                .map(|(k, _)| k.clone());
            if let Some(lv) = key.and_then(|k| volumes.remove(&k)) {
                self.exports.remove(&lv.export);
                let _ = lv.device.flush();
                retire(&lv.device);
                text.push_str(&format!("  {export} no longer served\n"));
            }
        }
        let volume = volumes.remove(name).expect("found above");
        self.exports.remove(&volume.export);
        self.engine.remove_stacked(&volume.export);
        let flushed = volume.device.flush();
        retire(&volume.device);
        let device = self.engine.luks_close(name)?;
        flushed?;
        Ok(Reply::ok(
            format!("{name} closed; its key is forgotten ({device} is locked again)\n{text}"),
            json!({ "name": name, "device": device, "lvs": busy }),
        ))
    }
}
