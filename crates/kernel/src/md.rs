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

/// How the kernel calls an array started by device number (`md127`).
pub fn numbered_name(minor: u32) -> String {
    format!("md{minor}")
}

/// The highest free `mdN` number at or below 127, counting down as mdadm does for arrays
/// it names itself, skipping `taken` (numbers chosen but not made yet).
pub fn free_number(taken: &[u32]) -> Option<u32> {
    (0..=127u32)
        .rev()
        .find(|n| !taken.contains(n) && !Path::new(SYS_BLOCK).join(numbered_name(*n)).exists())
}

fn make_array(device: &str) -> Result<()> {
    if !Path::new(NEW_ARRAY).exists() {
        return Err(MdKernelError::Unavailable(format!(
            "{NEW_ARRAY} is missing (load the md_mod module)"
        )));
    }
    if let Some(state) = read_attr(device, "array_state") {
        if state != "clear" && state != "inactive" {
            return Err(MdKernelError::Running {
                device: device.into(),
                state,
            });
        }
        return Ok(());
    }
    fs::write(NEW_ARRAY, device).map_err(|source| MdKernelError::Sysfs {
        device: device.into(),
        attr: NEW_ARRAY.into(),
        value: device.into(),
        hint: "",
        source,
    })
}

fn device_number(device: &str) -> Result<(u32, u32)> {
    let dev = fs::read_to_string(Path::new(SYS_BLOCK).join(device).join("dev")).unwrap_or_default();
    dev.trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| MdKernelError::Other(format!("{device}: no device number in sysfs")))
}

/// A disk of a container: where its metadata lies, as the container's member shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerMember {
    pub disk: Member,
    pub metadata_offset_sectors: u64,
    pub metadata_sectors: u64,
}

/// Makes `device` (`md127`) an external-metadata container of `kind` (`imsm`, `ddf`)
/// holding `members`, as mdadm does: `metadata_version` `external:KIND`, each member by
/// `new_dev` with the place of its metadata as `offset` and `size`. A container is never started: it stays `inactive` and only groups the disks.
pub fn assemble_container(
    device: &str,
    kind: &str,
    members: &[ContainerMember],
) -> Result<Assembled> {
    make_array(device)?;
    let made = (|| {
        write_attr(device, "metadata_version", &format!("external:{kind}"))?;
        for m in members {
            write_attr(
                device,
                "new_dev",
                &format!("{}:{}", m.disk.major, m.disk.minor),
            )?;
            let dev = format!("dev-{}", member_kernel_name(m.disk)?);
            write_attr(
                device,
                &format!("{dev}/offset"),
                &m.metadata_offset_sectors.to_string(),
            )?;
            write_attr(
                device,
                &format!("{dev}/size"),
                &m.metadata_sectors.div_ceil(2).to_string(),
            )?;
        }
        Ok(())
    })();
    if let Err(e) = made {
        let _ = write_attr(device, "array_state", "clear");
        return Err(e);
    }
    let (major, minor) = device_number(device)?;
    Ok(Assembled {
        state: read_attr(device, "array_state").unwrap_or_default(),
        device: device.into(),
        major,
        minor,
    })
}

/// One member of a subarray: where its data lies on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubarrayMember {
    pub disk: Member,
    /// Its role in the array.
    pub slot: u32,
    /// Where the array's data starts on the disk.
    pub offset_sectors: u64,
    /// How much of the disk the array uses.
    pub size_sectors: u64,
    /// Sectors below this are in sync; `None` when all are.
    pub recovery_start: Option<u64>,
}

/// A subarray of a container, as its metadata describes it (mdadm's `mdinfo` from
/// `container_content`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subarray {
    /// `raid0`, `raid1`, `raid5`, `raid10`...
    pub level: String,
    pub raid_disks: u32,
    pub chunk_bytes: u64,
    pub layout: u32,
    /// Per member, in sectors.
    pub component_sectors: u64,
    /// The array's size when the metadata sets it apart from what the members give.
    pub array_sectors: Option<u64>,
    /// Sectors below this are in sync; `None` when the whole array is.
    pub resync_start: Option<u64>,
    /// How long writes stay quiet before md reports the array idle, for the monitor to
    /// mark it clean; the kernel's default when `None`.
    pub safe_mode_delay_ms: Option<u64>,
    pub members: Vec<SubarrayMember>,
}

/// How a subarray starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubarrayStart {
    /// `readonly`, for a monitor to switch to `read-auto` (or `active` when it must resync).
    ReadonlyForMonitor,
    /// `readonly` and marked so (`external:-`): no monitor may make it writable.
    ReadonlyOnly,
}

/// Makes `device` subarray `index` of container `container` (`md127`) and starts it:
/// `metadata_version` `external:/md127/N` (`external:-md127/N` when it must stay
/// read-only), the geometry, each member by `new_dev` with `offset`, `size`, `slot` and its
/// recovery point, then `array_state` `readonly`, as mdadm's `assemble_container_content`.
/// An array left half-made by a failure is cleared.
pub fn assemble_subarray(
    device: &str,
    container: &str,
    index: usize,
    array: &Subarray,
    start: SubarrayStart,
) -> Result<Assembled> {
    make_array(device)?;
    let sep = match start {
        SubarrayStart::ReadonlyForMonitor => '/',
        SubarrayStart::ReadonlyOnly => '-',
    };
    let made = (|| {
        write_attr(
            device,
            "metadata_version",
            &format!("external:{sep}{container}/{index}"),
        )?;
        write_attr(device, "level", &array.level)?;
        write_attr(device, "raid_disks", &array.raid_disks.to_string())?;
        write_attr(device, "chunk_size", &array.chunk_bytes.to_string())?;
        write_attr(device, "layout", &array.layout.to_string())?;
        write_attr(
            device,
            "component_size",
            &(array.component_sectors / 2).to_string(),
        )?;
        if let Some(sectors) = array.array_sectors {
            write_attr(device, "array_size", &(sectors / 2).to_string())?;
        }
        if array.level != "raid0" {
            let at = array
                .resync_start
                .map_or_else(|| "none".to_string(), |s| s.to_string());
            write_attr(device, "resync_start", &at)?;
        }
        for m in &array.members {
            let devno = format!("{}:{}", m.disk.major, m.disk.minor);
            write_attr(device, "new_dev", &devno)?;
            let dev = format!("dev-{}", member_kernel_name(m.disk)?);
            let member_attr = |a: &str, v: &str| write_attr(device, &format!("{dev}/{a}"), v);
            member_attr("offset", &m.offset_sectors.to_string())?;
            member_attr("size", &m.size_sectors.div_ceil(2).to_string())?;
            if m.recovery_start.is_none() {
                member_attr("state", "insync")?;
            }
            member_attr("slot", &m.slot.to_string())?;
            if let Some(at) = m.recovery_start {
                member_attr("recovery_start", &at.to_string())?;
            }
        }
        write_attr(device, "array_state", "readonly")?;
        // Starting sets the kernel's default: the metadata's delay goes in after.
        if let Some(ms) = array.safe_mode_delay_ms {
            write_attr(
                device,
                "safe_mode_delay",
                &format!("{}.{:03}", ms / 1000, ms % 1000),
            )?;
        }
        Ok(())
    })();
    if let Err(e) = made {
        let _ = write_attr(device, "array_state", "clear");
        return Err(e);
    }
    let (major, minor) = device_number(device)?;
    Ok(Assembled {
        state: read_attr(device, "array_state").unwrap_or_default(),
        device: device.into(),
        major,
        minor,
    })
}

/// Adds `member` to running subarray `device` as mdmon activates a spare (mdadm's
/// `sysfs_add_disk`): `new_dev`, then its `offset`, `size` and `slot` (md's personality
/// takes it into the slot out of sync, and leaves starting the rebuild to user space: write
/// `recover` to `sync_action`). Returns its entry (`dev-loop3`). A member md took but
/// would not put in the slot is let go again.
pub fn add_subarray_member(device: &str, member: &SubarrayMember) -> Result<String> {
    let devno = format!("{}:{}", member.disk.major, member.disk.minor);
    write_attr(device, "new_dev", &devno)?;
    let entry = format!("dev-{}", member_kernel_name(member.disk)?);
    let placed = (|| {
        let member_attr = |a: &str, v: &str| write_attr(device, &format!("{entry}/{a}"), v);
        member_attr("offset", &member.offset_sectors.to_string())?;
        member_attr("size", &member.size_sectors.div_ceil(2).to_string())?;
        member_attr("slot", &member.slot.to_string())
    })();
    if let Err(e) = placed {
        let _ = write_attr(device, &format!("{entry}/state"), "remove");
        return Err(e);
    }
    Ok(entry)
}

/// Sectors md's running sync (`sync_completed`, `DONE / TOTAL`) has finished; `None` when
/// none runs.
pub fn sync_completed(device: &str) -> Option<u64> {
    parse_sync_completed(&read_attr(device, "sync_completed")?)
}

fn parse_sync_completed(text: &str) -> Option<u64> {
    text.split_once('/')?.0.trim().parse().ok()
}

/// The kernel's name of the block device `disk` (`loop0`), as md names its `dev-*` entry.
pub fn member_kernel_name(disk: Member) -> Result<String> {
    let link = format!("/sys/dev/block/{}:{}", disk.major, disk.minor);
    fs::read_link(&link)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .ok_or_else(|| MdKernelError::Other(format!("{link}: no such block device")))
}

/// Writes `value` to attribute `a` of array `device` (`md126`, `dev-loop0/state`...).
pub fn write_array_attr(device: &str, a: &str, value: &str) -> Result<()> {
    write_attr(device, a, value)
}

/// The path of attribute `a` of array `device`, to watch it.
pub fn attr_path(device: &str, a: &str) -> PathBuf {
    attr(device, a)
}

/// Stops array `device` (`md126`) by its kernel name; `false` if it was not there.
pub fn stop_device(device: &str) -> Result<bool> {
    match read_attr(device, "array_state") {
        None => Ok(false),
        Some(s) if s == "clear" => Ok(false),
        Some(_) => {
            write_attr(device, "array_state", "clear")?;
            Ok(true)
        }
    }
}

/// The arrays the kernel runs (`md126`...), with their `metadata_version`.
pub fn arrays() -> Vec<(String, String)> {
    let Ok(dir) = fs::read_dir(SYS_BLOCK) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("md") {
                return None;
            }
            let version = read_attr(&name, "metadata_version")?;
            Some((name, version))
        })
        .collect();
    out.sort();
    out
}

/// What an external-metadata `metadata_version` says: a container of a kind
/// (`external:imsm`), or a subarray of a container (`external:/md127/0`, `-` for
/// `/` when it is held read-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum External {
    Container {
        kind: String,
    },
    Subarray {
        container: String,
        index: usize,
        read_only: bool,
    },
}

pub fn parse_external(version: &str) -> Option<External> {
    let rest = version.strip_prefix("external:")?;
    let (read_only, path) = match rest.chars().next()? {
        '/' => (false, &rest[1..]),
        '-' => (true, &rest[1..]),
        _ => {
            return Some(External::Container {
                kind: rest.to_string(),
            })
        }
    };
    let (container, index) = path.split_once('/')?;
    Some(External::Subarray {
        container: container.to_string(),
        index: index.parse().ok()?,
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_versions_are_told_apart() {
        assert_eq!(
            parse_external("external:imsm"),
            Some(External::Container {
                kind: "imsm".into()
            })
        );
        assert_eq!(
            parse_external("external:/md127/1"),
            Some(External::Subarray {
                container: "md127".into(),
                index: 1,
                read_only: false
            })
        );
        assert_eq!(
            parse_external("external:-md126/0"),
            Some(External::Subarray {
                container: "md126".into(),
                index: 0,
                read_only: true
            })
        );
        assert_eq!(parse_external("1.2"), None);
        assert_eq!(parse_external("external:/md127/x"), None);
        assert_eq!(parse_external("external:"), None);
    }

    #[test]
    fn sync_progress_is_read_from_mds_fraction() {
        assert_eq!(parse_sync_completed("2048 / 32768"), Some(2048));
        assert_eq!(parse_sync_completed("none"), None);
        assert_eq!(parse_sync_completed("x / 3"), None);
    }
}
