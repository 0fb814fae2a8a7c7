//! Exclusive claims on the members of what a tessera daemon runs: a block device is opened
//! with O_EXCL, as the kernel's own users claim it (so mount, mkfs and mdadm are refused
//! too), an image file is locked with flock. A second claim is refused with the member and,
//! for files, the process that holds it (from /proc/locks).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;

use crate::error::{EngineError, Result};

/// A held claim; dropping it lets go.
#[derive(Debug)]
pub struct Claim {
    pub path: String,
    _file: File,
}

/// Claims `path` exclusively.
pub fn claim(path: &str) -> Result<Claim> {
    let unusable = |why: String| EngineError::DeviceUnusable {
        device: path.to_string(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| unusable(e.to_string()))?;
    if meta.file_type().is_block_device() {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    unusable(format!(
                        "is in use: mounted, a member of an active array or device, or claimed \
                         by another program{}",
                        holders(path)
                    ))
                } else {
                    unusable(e.to_string())
                }
            })?;
        return Ok(Claim {
            path: path.into(),
            _file: file,
        });
    }
    let file = File::open(path).map_err(|e| unusable(e.to_string()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(unusable(format!(
                "is claimed by {}: it runs an array or VG this member belongs to",
                holder_of(meta.ino()).unwrap_or_else(|| "another process".into())
            )));
        }
        return Err(unusable(format!("cannot lock it: {err}")));
    }
    Ok(Claim {
        path: path.into(),
        _file: file,
    })
}

/// ", held by dm-0, md127" from sysfs, where the kernel says who holds the device.
fn holders(path: &str) -> String {
    let Ok(real) = std::fs::canonicalize(path) else {
        return String::new();
    };
    let name = real.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(name) = name else {
        return String::new();
    };
    let dir = format!("/sys/class/block/{name}/holders");
    let held: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if held.is_empty() {
        String::new()
    } else {
        format!(" (held by {})", held.join(", "))
    }
}

/// "process 1234 (tessera serve ...)" for the flock on inode `ino`, from /proc/locks.
fn holder_of(ino: u64) -> Option<String> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let inode = f[5].rsplit(':').next()?.parse::<u64>().ok()?;
        if inode != ino {
            continue;
        }
        let pid = f[4];
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .split('\0')
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        return Some(format!("process {pid} ({cmd})"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_on_a_file_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        let path = p.display().to_string();
        let first = claim(&path).unwrap();
        let e = claim(&path).unwrap_err().to_string();
        assert!(
            e.contains("m.img") && e.contains("claimed by process"),
            "{e}"
        );
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(first);
        claim(&path).unwrap();
    }
}
