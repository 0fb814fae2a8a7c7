//! MD arrays in the kernel through sysfs, as mdadm assembles them on current kernels: a new
//! array device (`/sys/module/md_mod/parameters/new_array`, named `md_NAME`), its metadata
//! version, each member by device number (`md/new_dev`, the kernel reading the member's
//! superblock itself), then `md/array_state`. Stopping is `array_state` `clear`. Which
//! members go in is the caller's decision (tessera's own assembly); the kernel checks them
//! again and may refuse one, which is reported with the array name.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

const SYS_BLOCK: &str = "/sys/block";
const NEW_ARRAY: &str = "/sys/module/md_mod/parameters/new_array";

#[derive(Debug, Error)]
pub enum MdKernelError {
    #[error("MD is not available in this kernel: {0}")]
    Unavailable(String),
    #[error("md device {device}: writing {value:?} to {attr}: {source}{hint}")]
    Sysfs {
        device: String,
        attr: String,
        value: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("md device {device} is running already (state {state})")]
    Running { device: String, state: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, MdKernelError>;

/// The kernel's device name for an array called `name` (`md_NAME`, as mdadm names arrays
/// it creates by name).
pub fn device_name(name: &str) -> String {
    format!("md_{name}")
}

fn attr(device: &str, a: &str) -> PathBuf {
    Path::new(SYS_BLOCK).join(device).join("md").join(a)
}

fn write_attr(device: &str, a: &str, value: &str) -> Result<()> {
    fs::write(attr(device, a), value).map_err(|source| MdKernelError::Sysfs {
        device: device.into(),
        attr: a.into(),
        value: value.into(),
        hint: match source.raw_os_error() {
            Some(libc::EBUSY) => " (the device is in use)",
            Some(libc::EINVAL) => " (the kernel refused it: see dmesg)",
            Some(libc::EEXIST) => " (it is a member already)",
            _ => "",
        },
        source,
    })
}

/// An attribute of a running array's md directory, trimmed.
pub fn read_attr(device: &str, a: &str) -> Option<String> {
    fs::read_to_string(attr(device, a))
        .ok()
        .map(|s| s.trim().to_string())
}

/// A member to add: its device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub major: u32,
    pub minor: u32,
}

/// What `assemble` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    pub device: String,
    pub major: u32,
    pub minor: u32,
    pub state: String,
}

/// Assembles array `name` from `members` with superblock `version` ("1.2", "0.90"...) and
/// starts it (`read_only`: as `readonly`). An array left half-made by a failure is cleared.
pub fn assemble(
    name: &str,
    version: &str,
    members: &[Member],
    read_only: bool,
) -> Result<Assembled> {
    if !Path::new(NEW_ARRAY).exists() {
        return Err(MdKernelError::Unavailable(format!(
            "{NEW_ARRAY} is missing (load the md_mod module)"
        )));
    }
    let device = device_name(name);
    if let Some(state) = read_attr(&device, "array_state") {
        if state != "clear" && state != "inactive" {
            return Err(MdKernelError::Running { device, state });
        }
    } else {
        fs::write(NEW_ARRAY, &device).map_err(|source| MdKernelError::Sysfs {
            device: device.clone(),
            attr: NEW_ARRAY.into(),
            value: device.clone(),
            hint: "",
            source,
        })?;
    }
    let made = (|| {
        write_attr(&device, "metadata_version", version)?;
        for m in members {
            write_attr(&device, "new_dev", &format!("{}:{}", m.major, m.minor))?;
        }
        write_attr(
            &device,
            "array_state",
            if read_only { "readonly" } else { "active" },
        )
    })();
    if let Err(e) = made {
        let _ = write_attr(&device, "array_state", "clear");
        return Err(e);
    }
    let dev =
        fs::read_to_string(Path::new(SYS_BLOCK).join(&device).join("dev")).unwrap_or_default();
    let (major, minor) = dev
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| MdKernelError::Other(format!("{device}: no device number in sysfs")))?;
    Ok(Assembled {
        state: read_attr(&device, "array_state").unwrap_or_default(),
        device,
        major,
        minor,
    })
}

/// Stops array `name`; `false` if it was not running.
pub fn stop(name: &str) -> Result<bool> {
    let device = device_name(name);
    match read_attr(&device, "array_state") {
        None => Ok(false),
        Some(s) if s == "clear" => Ok(false),
        Some(_) => {
            write_attr(&device, "array_state", "clear")?;
            Ok(true)
        }
    }
}
