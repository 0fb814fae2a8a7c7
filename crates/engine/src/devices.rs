//! Where to look for PVs: the paths and globs given with `--devices`, or else every block
//! device the kernel lists.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::error::{EngineError, Result};

/// Expands `--devices` arguments: each is a path or a glob; a glob that matches nothing and a
/// path that does not exist are errors, so a typo never silently hides a PV.
pub fn expand(patterns: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for pattern in patterns {
        // A remote PV: connecting to it is what tells whether it is there.
        if is_remote(pattern) {
            push_unique(&mut out, pattern.clone());
            continue;
        }
        let is_glob = pattern.contains(['*', '?', '[']);
        if !is_glob {
            if !Path::new(pattern).exists() {
                return Err(EngineError::DeviceUnusable {
                    device: pattern.clone(),
                    why: "no such file or device".into(),
                });
            }
            push_unique(&mut out, pattern.clone());
            continue;
        }
        let paths = glob::glob(pattern)
            .map_err(|e| EngineError::BadArgument(format!("--devices '{pattern}': {e}")))?;
        let mut matched = false;
        for path in paths.flatten() {
            matched = true;
            push_unique(&mut out, path.to_string_lossy().into_owned());
        }
        if !matched {
            return Err(EngineError::DeviceUnusable {
                device: pattern.clone(),
                why: "the pattern matches no file or device".into(),
            });
        }
    }
    Ok(out)
}

/// True if `name` is an NBD URI (`nbd://HOST:PORT/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`)
/// rather than a path.
pub fn is_remote(name: &str) -> bool {
    tessera_block::nbd::is_nbd_uri(name)
}

/// Connects to the NBD export `uri` names, read-only unless `write`. Its name in every
/// message and in `show` is the URI as given.
pub fn open_remote(uri: &str, write: bool) -> Result<tessera_block::SharedDevice> {
    let options = tessera_block::NbdOptions {
        read_only: !write,
        ..Default::default()
    };
    Ok(std::sync::Arc::new(tessera_block::NbdDevice::open(
        uri, options,
    )?))
}

fn push_unique(out: &mut Vec<String>, path: String) {
    if !out.contains(&path) {
        out.push(path);
    }
}

/// Every block device in /sys/class/block that has a size, as /dev paths. Loop devices
/// without a backing file and zero-sized devices are left out.
pub fn block_devices() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let size: u64 = std::fs::read_to_string(e.path().join("size"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            // LVs active in the kernel show under their VG, not as disks of their own.
            let uuid = std::fs::read_to_string(e.path().join("dm/uuid")).unwrap_or_default();
            if uuid.starts_with("LVM-") {
                return None;
            }
            let dev = format!("/dev/{name}");
            // Nothing lives in 1 KiB: that is the kernel's device for an extended partition.
            (size > 2 && Path::new(&dev).exists()).then_some(dev)
        })
        .collect();
    out.sort();
    out
}

/// The file or device to claim for `name`: itself when it exists, the disk or image file
/// for a partition tessera read from its table (`disk.img1`, `/dev/loop0p1`), None for a
/// device that runs on others (an array, claimed through its members).
pub fn backing_path(name: &str) -> Option<String> {
    if Path::new(name).exists() {
        return Some(name.to_string());
    }
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.len() == name.len() {
        return None;
    }
    // `loop0p1` names disk `loop0`; `disk.img1` names `disk.img`.
    let disk = match stem.strip_suffix('p') {
        Some(d) if d.ends_with(|c: char| c.is_ascii_digit()) => d,
        _ => stem,
    };
    Path::new(disk).exists().then(|| disk.to_string())
}

/// `major:minor` of a block device path, as tables name devices in the kernel.
pub fn devno(path: &str) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| EngineError::DeviceUnusable {
        device: path.into(),
        why: e.to_string(),
    })?;
    if !meta.file_type().is_block_device() {
        return Err(EngineError::DeviceUnusable {
            device: path.into(),
            why: "is not a block device: the kernel maps block devices only (attach an image \
                  with losetup, or serve it in user space)"
                .into(),
        });
    }
    let rdev = meta.rdev();
    Ok(format!("{}:{}", libc::major(rdev), libc::minor(rdev)))
}

/// Devices with the names used in messages.
pub type NamedDevices = Vec<(String, tessera_block::SharedDevice)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_claimed_through_their_disk() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, b"x").unwrap();
        let img = img.to_string_lossy().into_owned();
        assert_eq!(backing_path(&img).as_deref(), Some(img.as_str()));
        assert_eq!(
            backing_path(&format!("{img}1")).as_deref(),
            Some(img.as_str())
        );
        assert_eq!(
            backing_path(&format!("{img}12")).as_deref(),
            Some(img.as_str())
        );
        assert_eq!(backing_path("md/stack"), None);
        let digits = dir.path().join("disk0");
        std::fs::write(&digits, b"x").unwrap();
        let digits = digits.to_string_lossy().into_owned();
        assert_eq!(
            backing_path(&format!("{digits}p1")).as_deref(),
            Some(digits.as_str())
        );
    }
}
