//! A LUKS device opened in the kernel, as cryptsetup opens it: dm-crypt under the name
//! given, with cryptsetup's uuid (`CRYPT-LUKS2-<uuid without dashes>-NAME`), so that
//! `cryptsetup status`, `dmsetup` and lsblk know it; `/dev/mapper/NAME` made where no udev
//! makes it.

use tessera_block::SharedDevice;
use tessera_kernel::dm::{self, Control, Row};

use super::ops::{crypt_params, LuksOpenOptions};
use crate::devices::devno;
use crate::error::{EngineError, Result};
use crate::Engine;

/// What opening in the kernel made.
#[derive(Debug, Clone)]
pub struct KernelOpened {
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub key_slot: u32,
    pub size_sectors: u64,
}

impl Engine {
    /// Unlocks block device `path` and loads its plaintext into the kernel's dm-crypt as
    /// `name` (root). The key goes to the kernel in the table, in hex, as cryptsetup gives
    /// LUKS1 keys.
    pub fn luks_open_kernel(
        &self,
        path: &str,
        passphrase: &[u8],
        name: &str,
        read_only: bool,
        opts: &LuksOpenOptions,
    ) -> Result<KernelOpened> {
        super::ops::check_open_name(name)?;
        let control = Control::open()?;
        if control.info(name)?.is_some() {
            return Err(EngineError::BadArgument(format!(
                "a kernel device named {name} exists already"
            )));
        }
        let number = devno(path)?;
        let device: SharedDevice = Engine::open(path, false)?;
        let header = tessera_formats::luks::read_header(device.as_ref())?.ok_or_else(|| {
            EngineError::DeviceUnusable {
                device: path.to_string(),
                why: "holds no LUKS header".into(),
            }
        })?;
        let (unlocked, size_sectors) = self.luks_unlock(path, &device, passphrase, opts)?;
        let key: String = unlocked
            .volume_key
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let text = crypt_params(&unlocked, &key, &number, size_sectors);
        let row = Row::parse(&text)
            .ok_or_else(|| EngineError::Kernel(format!("{name}: cannot read back its own row")))?;
        let uuid = format!(
            "CRYPT-LUKS{}-{}-{name}",
            header.version,
            header.uuid.replace('-', "")
        );
        let info = control.create(name, &uuid)?;
        if let Err(e) = control
            .load(name, &[row], read_only)
            .and_then(|()| control.resume(name))
        {
            let _ = control.remove(name);
            return Err(EngineError::Kernel(format!("{e}; {name} was not created")));
        }
        let node = format!("/dev/mapper/{name}");
        if std::fs::metadata(&node).is_err() {
            if let Err(e) = dm::make_node(&node, libc::S_IFBLK, info.major, info.minor) {
                tracing::warn!("could not make {node}: {e}");
            }
        }
        Ok(KernelOpened {
            name: name.to_string(),
            major: info.major,
            minor: info.minor,
            key_slot: unlocked.key_slot,
            size_sectors,
        })
    }

    /// Removes kernel device `name` (a crypt device; the kernel wipes its key) and its node.
    pub fn luks_close_kernel(&self, name: &str) -> Result<()> {
        let control = Control::open()?;
        let Some(_) = control.info(name)? else {
            return Err(EngineError::BadArgument(format!(
                "no kernel device named {name}"
            )));
        };
        let table = control.table(name)?;
        if !table.iter().all(|r| r.target_type == "crypt") {
            return Err(EngineError::BadArgument(format!(
                "kernel device {name} is not a crypt device"
            )));
        }
        control.remove(name)?;
        let _ = std::fs::remove_file(format!("/dev/mapper/{name}"));
        Ok(())
    }
}
