//! Locks held for the whole of a change, as lvm2's file locks: one per VG name, and one for
//! the set of orphan PVs. flock releases them when the process dies, so a crash never
//! leaves a VG locked.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{EngineError, Result};

pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the exclusive lock `name` in `dir`, waiting for whoever holds it.
    pub fn exclusive(dir: &Path, name: &str) -> Result<Lock> {
        std::fs::create_dir_all(dir).map_err(|source| EngineError::Io {
            path: dir.display().to_string(),
            cause: source,
        })?;
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| EngineError::Io {
                path: path.display().to_string(),
                cause: source,
            })?;
        loop {
            // SAFETY: flock on a descriptor we own; it has no memory effects.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Lock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(EngineError::Io {
                    path: path.display().to_string(),
                    cause: err,
                });
            }
        }
    }
}
