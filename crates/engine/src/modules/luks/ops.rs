//! The LUKS verbs: unlock a device into an open volume, close it; format a device, add,
//! remove and kill key slots, dump the header. The header and key-slot formats are
//! `tessera_formats::luks`; this module adds the engine's guarantees around them (locks, the
//! `--force` check, names) and turns an unlocked device into a `crypt` table.

use tessera_block::SharedDevice;
use tessera_cipher::{keyring, KdfLimits};
use tessera_formats::luks::{
    self, AddKeyOptions, FormatOptions, LuksMetadata, RemoveKeyOptions, UnlockOptions, Unlocked,
};

use super::{opened, CryptRow, Opened};
use crate::error::{EngineError, Result};
use crate::Engine;

/// How to unlock.
#[derive(Debug, Clone, Default)]
pub struct LuksOpenOptions {
    /// Try only this key slot.
    pub key_slot: Option<u32>,
    /// The KDF costs accepted from the header.
    pub limits: KdfLimits,
}

/// A LUKS device unlocked and open.
#[derive(Debug, Clone)]
pub struct LuksOpened {
    pub name: String,
    pub uuid: String,
    pub key_slot: u32,
    pub cipher: String,
    pub sector_bytes: u32,
    pub size_sectors: u64,
    /// The plaintext's table in user space, its key named in the key store.
    pub table: String,
}

/// The `crypt` table of an unlocked device's plaintext: `0 SIZE crypt CIPHER KEY IV DEVICE
/// OFFSET [1 sector_size:N]`, the key given as `key` (hex, or a key store reference), as
/// cryptsetup loads it.
pub fn crypt_params(unlocked: &Unlocked, key: &str, device: &str, size_sectors: u64) -> String {
    row(unlocked, key).table(device, size_sectors)
}

fn row(unlocked: &Unlocked, key: &str) -> CryptRow {
    let mut tail = format!("{}", unlocked.data_offset_bytes / 512);
    if unlocked.sector_bytes != 512 {
        tail.push_str(&format!(" 1 sector_size:{}", unlocked.sector_bytes));
    }
    CryptRow {
        head: format!("{} {key} {}", unlocked.cipher, unlocked.iv_tweak),
        tail,
    }
}

/// The key store's name for the volume key of the LUKS device with `uuid`.
fn key_description(uuid: &str) -> String {
    format!("tessera:{uuid}")
}

/// A name for an open volume: one word of at most 127 characters, without `/`, as
/// device-mapper's names.
pub fn check_open_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 127
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(EngineError::BadArgument(format!(
            "'{name}' is not a usable name for an open volume: one word of 1 to 127 characters, without '/'"
        )));
    }
    Ok(())
}

/// The plaintext's size: the data segment's, or the rest of the device after its offset.
fn data_sectors(device_name: &str, device: &SharedDevice, unlocked: &Unlocked) -> Result<u64> {
    let size = device.size_bytes();
    let end = match unlocked.data_size_bytes {
        Some(len) => unlocked.data_offset_bytes.checked_add(len),
        None => Some(size),
    };
    match end {
        Some(end) if end <= size && end > unlocked.data_offset_bytes => {
            let bytes = end - unlocked.data_offset_bytes;
            // Whole encryption sectors only, as cryptsetup sizes the device.
            Ok(bytes / u64::from(unlocked.sector_bytes) * u64::from(unlocked.sector_bytes) / 512)
        }
        _ => Err(EngineError::DeviceUnusable {
            device: device_name.to_string(),
            why: format!(
                "its LUKS data segment (from byte {}{}) does not lie inside its {size} bytes",
                unlocked.data_offset_bytes,
                unlocked
                    .data_size_bytes
                    .map(|l| format!(", {l} bytes"))
                    .unwrap_or_default()
            ),
        }),
    }
}

impl Engine {
    /// Unlocks the LUKS device `device` (called `device_name`) with `passphrase`: the
    /// volume key, and where and how the data is encrypted. Nothing is recorded.
    pub fn luks_unlock(
        &self,
        device_name: &str,
        device: &SharedDevice,
        passphrase: &[u8],
        opts: &LuksOpenOptions,
    ) -> Result<(Unlocked, u64)> {
        let unlocked = luks::unlock(
            device.as_ref(),
            passphrase,
            &UnlockOptions {
                key_slot: opts.key_slot,
                limits: opts.limits,
            },
        )?;
        let sectors = data_sectors(device_name, device, &unlocked)?;
        Ok((unlocked, sectors))
    }

    /// Unlocks `device` and records it open as `name` in this process: its key goes to the
    /// key store, and discovery shows and reads its plaintext from then on. Returns the
    /// plaintext's table, for a mapped device over `device_name`.
    pub fn luks_open(
        &self,
        device_name: &str,
        device: &SharedDevice,
        passphrase: &[u8],
        name: &str,
        opts: &LuksOpenOptions,
    ) -> Result<LuksOpened> {
        check_open_name(name)?;
        let header =
            luks::read_header(device.as_ref())?.ok_or_else(|| EngineError::DeviceUnusable {
                device: device_name.to_string(),
                why: "holds no LUKS header".into(),
            })?;
        {
            let open = opened();
            if let Some(o) = open.get(&header.uuid) {
                return Err(EngineError::DeviceUnusable {
                    device: device_name.to_string(),
                    why: format!("is open already as {}", o.name),
                });
            }
            if open.values().any(|o| o.name == name) {
                return Err(EngineError::BadArgument(format!(
                    "a LUKS volume named {name} is open already"
                )));
            }
        }
        let (unlocked, size_sectors) = self.luks_unlock(device_name, device, passphrase, opts)?;
        let description = key_description(&header.uuid);
        let key_ref = format!(":{}:logon:{description}", unlocked.volume_key.len());
        let params = row(&unlocked, &key_ref);
        keyring::add(&description, unlocked.volume_key.clone());
        let table = params.table(device_name, size_sectors);
        opened().insert(
            header.uuid.clone(),
            Opened {
                name: name.to_string(),
                device: device_name.to_string(),
                params,
                size_sectors,
            },
        );
        Ok(LuksOpened {
            name: name.to_string(),
            uuid: header.uuid,
            key_slot: unlocked.key_slot,
            cipher: unlocked.cipher.clone(),
            sector_bytes: unlocked.sector_bytes,
            size_sectors,
            table,
        })
    }

    /// Forgets the volume open as `name`: its key is removed from the key store (and
    /// zeroed). Returns the device it was open on.
    pub fn luks_close(&self, name: &str) -> Result<String> {
        let mut open = opened();
        let Some(uuid) = open
            .iter()
            .find(|(_, o)| o.name == name)
            .map(|(u, _)| u.clone())
        else {
            return Err(EngineError::BadArgument(format!(
                "no LUKS volume named {name} is open"
            )));
        };
        keyring::remove(&key_description(&uuid));
        Ok(open.remove(&uuid).map(|o| o.device).unwrap_or_default())
    }

    /// Writes a new LUKS header on `device_name` (a path, a partition or an array tessera
    /// found), refusing a device that holds any format unless `force`.
    pub fn luks_format(
        &self,
        device_name: &str,
        passphrase: &[u8],
        opts: &FormatOptions,
        force: bool,
    ) -> Result<LuksMetadata> {
        let _lock = self.lock(&lock_name(device_name))?;
        let device = self.open_named(device_name, true)?;
        self.refuse_occupied(device_name, &device, force)?;
        let mut opts = opts.clone();
        opts.force = true;
        Ok(luks::format(device.as_ref(), passphrase, &opts)?)
    }

    /// Adds a key slot opened by `new`, after `existing` has unlocked the device.
    pub fn luks_add_key(
        &self,
        device_name: &str,
        existing: &[u8],
        new: &[u8],
        opts: &AddKeyOptions,
    ) -> Result<u32> {
        let _lock = self.lock(&lock_name(device_name))?;
        let device = self.open_named(device_name, true)?;
        Ok(luks::add_key(device.as_ref(), existing, new, opts)?)
    }

    /// Removes the key slot `passphrase` opens.
    pub fn luks_remove_key(
        &self,
        device_name: &str,
        passphrase: &[u8],
        opts: &RemoveKeyOptions,
    ) -> Result<u32> {
        let _lock = self.lock(&lock_name(device_name))?;
        let device = self.open_named(device_name, true)?;
        Ok(luks::remove_key(device.as_ref(), passphrase, opts)?)
    }

    /// Wipes key slot `slot` without asking for its passphrase.
    pub fn luks_kill_slot(&self, device_name: &str, slot: u32, force: bool) -> Result<()> {
        let _lock = self.lock(&lock_name(device_name))?;
        let device = self.open_named(device_name, true)?;
        Ok(luks::kill_slot(device.as_ref(), slot, force)?)
    }

    /// What the LUKS header on `device_name` says (None when there is none).
    pub fn luks_header(&self, device_name: &str) -> Result<Option<luks::LuksHeader>> {
        let device = self.open_named(device_name, false)?;
        Ok(luks::read_header(device.as_ref())?)
    }

    /// The header as `cryptsetup luksDump` prints it.
    pub fn luks_dump(&self, device_name: &str) -> Result<String> {
        let device = self.open_named(device_name, false)?;
        let meta = luks::read_metadata(device.as_ref())?;
        Ok(luks::dump(&meta))
    }
}

/// The engine lock for the header on `device_name`.
fn lock_name(device_name: &str) -> String {
    format!("L_{}", device_name.replace('/', "_"))
}
