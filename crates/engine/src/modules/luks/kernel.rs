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
    /// `name` (root), with the table cryptsetup loads: a LUKS2 key through the kernel
    /// keyring (`:64:logon:cryptsetup:UUID-d0`), a LUKS1 key in hex.
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
        // LUKS2 keys go to dm-crypt through the kernel keyring, under cryptsetup's
        // description, so the table is the one cryptsetup loads and carries no key; LUKS1
        // keys (and any where the kernel has no keyring for us) in hex, as cryptsetup does.
        let description = format!("cryptsetup:{}-d0", header.uuid);
        let in_keyring = (header.version == 2)
            .then(|| ThreadKey::add(&description, &unlocked.volume_key))
            .flatten();
        let key: String = match &in_keyring {
            Some(_) => format!(":{}:logon:{description}", unlocked.volume_key.len()),
            None => unlocked
                .volume_key
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        };
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
        // dm-crypt holds its own copy now.
        drop(in_keyring);
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

/// A logon key in this thread's kernel keyring, unlinked when dropped.
struct ThreadKey(libc::c_long);

const KEY_SPEC_THREAD_KEYRING: libc::c_long = -1;
const KEYCTL_UNLINK: libc::c_long = 9;

impl ThreadKey {
    /// Adds `key` as logon key `description`; None when the kernel refuses (no keyrings).
    fn add(description: &str, key: &[u8]) -> Option<ThreadKey> {
        let kind = std::ffi::CString::new("logon").ok()?;
        let desc = std::ffi::CString::new(description).ok()?;
        // SAFETY: add_key(2) reads the two strings and `key.len()` bytes of `key`, all valid
        // for the call.
        let serial = unsafe {
            libc::syscall(
                libc::SYS_add_key,
                kind.as_ptr(),
                desc.as_ptr(),
                key.as_ptr(),
                key.len(),
                KEY_SPEC_THREAD_KEYRING,
            )
        };
        (serial >= 0).then_some(ThreadKey(serial))
    }
}

impl Drop for ThreadKey {
    fn drop(&mut self) {
        // SAFETY: keyctl(2) with plain integer arguments.
        unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_UNLINK,
                self.0,
                KEY_SPEC_THREAD_KEYRING,
            )
        };
    }
}
