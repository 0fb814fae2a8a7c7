//! The FUSE export: every volume of an [`ExportSet`] as a regular file, `DIR/VG/LV` for an
//! export named `VG/LV` (and `DIR/NAME` for a name without '/'), that `losetup` can attach
//! and tools can read and write. The tree is read from the export set on every request, so
//! volumes that come, go or change size while mounted are seen at once. Files are opened
//! with direct I/O, so the kernel's page cache never hides a change made through NBD.
//!
//! read and write go to the device (writes past the end are refused), fsync and flush flush
//! it, `fallocate` with PUNCH_HOLE discards and with ZERO_RANGE writes zeroes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};
use tessera_export::{Export, ExportSet};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FuseError {
    #[error("cannot mount on {dir}: {why}")]
    NotADirectory { dir: String, why: String },
    #[error("cannot mount on {dir}: {source}")]
    Mount {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, Default)]
pub struct MountOptions {
    /// Refuse every write, whatever the exports allow.
    pub read_only: bool,
    /// Let other users than the one who mounted reach the files (FUSE's allow_other).
    pub allow_other: bool,
}

/// A live mount; dropping it unmounts.
pub struct Mount {
    dir: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Mount {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unmounts now.
    pub fn unmount(mut self) -> Result<(), FuseError> {
        if let Some(s) = self.session.take() {
            s.join();
        }
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            s.join();
        }
    }
}

/// Mounts `exports` on `dir`, served from a background thread.
pub fn mount(dir: &Path, exports: ExportSet, options: MountOptions) -> Result<Mount, FuseError> {
    let shown = dir.display().to_string();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(FuseError::NotADirectory {
                dir: shown,
                why: "not a directory".into(),
            })
        }
        Err(e) => {
            return Err(FuseError::NotADirectory {
                dir: shown,
                why: e.to_string(),
            })
        }
    }
    let mut opts = vec![
        MountOption::FSName("tessera".into()),
        MountOption::Subtype("tessera".into()),
    ];
    if options.read_only {
        opts.push(MountOption::RO);
    }
    if options.allow_other {
        opts.push(MountOption::AllowOther);
    }
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = Volumes {
        exports,
        read_only: options.read_only,
        paths: vec![String::new()],
        inodes: HashMap::from([(String::new(), ROOT)]),
        uid,
        gid,
        started: SystemTime::now(),
    };
    let session = fuser::spawn_mount2(fs, dir, &opts)
        .map_err(|source| FuseError::Mount { dir: shown, source })?;
    Ok(Mount {
        dir: dir.to_path_buf(),
        session: Some(session),
    })
}

const ROOT: u64 = 1;
/// Attributes are not cached: volumes change size and come and go.
const TTL: Duration = Duration::ZERO;

enum Node {
    Dir,
    File(Export),
}

struct Volumes {
    exports: ExportSet,
    read_only: bool,
    /// Inode numbers handed out, by path ("" is the root, "vg0", "vg0/data").
    paths: Vec<String>,
    inodes: HashMap<String, u64>,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

impl Volumes {
    fn inode(&mut self, path: &str) -> u64 {
        if let Some(&ino) = self.inodes.get(path) {
            return ino;
        }
        self.paths.push(path.to_string());
        let ino = self.paths.len() as u64;
        self.inodes.insert(path.to_string(), ino);
        ino
    }

    fn path(&self, ino: u64) -> Option<&str> {
        self.paths
            .get(ino.checked_sub(1)? as usize)
            .map(String::as_str)
    }

    fn node(&self, path: &str) -> Option<Node> {
        if path.is_empty() {
            return Some(Node::Dir);
        }
        if let Some(e) = self.exports.get(path) {
            return Some(Node::File(e));
        }
        let prefix = format!("{path}/");
        self.exports
            .names()
            .iter()
            .any(|n| n.starts_with(&prefix))
            .then_some(Node::Dir)
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, size, perm, nlink) = match node {
            Node::Dir => (FileType::Directory, 0, 0o755, 2),
            Node::File(e) => {
                let writable = !self.read_only && !e.is_read_only();
                (
                    FileType::RegularFile,
                    e.device.size_bytes(),
                    if writable { 0o600 } else { 0o400 },
                    1,
                )
            }
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn file(&self, ino: u64) -> Result<Export, i32> {
        match self.path(ino).and_then(|p| self.node(p)) {
            Some(Node::File(e)) => Ok(e),
            Some(Node::Dir) => Err(libc::EISDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn writable(&self, ino: u64) -> Result<Export, i32> {
        let e = self.file(ino)?;
        if self.read_only || e.is_read_only() {
            return Err(libc::EROFS);
        }
        Ok(e)
    }
}

fn child_path(parent: &str, name: &OsStr) -> Option<String> {
    let name = name.to_str()?;
    Some(if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    })
}

impl Filesystem for Volumes {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(path) = self.path(parent).and_then(|p| child_path(p, name)) else {
            return reply.error(libc::ENOENT);
        };
        match self.node(&path) {
            Some(node) => {
                let ino = self.inode(&path);
                reply.entry(&TTL, &self.attr(ino, &node), 0);
            }
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.path(ino).and_then(|p| self.node(p)) {
            Some(node) => reply.attr(&TTL, &self.attr(ino, &node)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let Some(node) = self.path(ino).and_then(|p| self.node(p)) else {
            return reply.error(libc::ENOENT);
        };
        // A volume's size is its own: truncating to it is fine, to anything else is not.
        if let (Some(size), Node::File(e)) = (size, &node) {
            if size != e.device.size_bytes() {
                return reply.error(libc::EPERM);
            }
        }
        reply.attr(&TTL, &self.attr(ino, &node));
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let wants_write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let checked = if wants_write {
            self.writable(ino)
        } else {
            self.file(ino)
        };
        match checked {
            Ok(_) => reply.opened(0, fuser::consts::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let e = match self.file(ino) {
            Ok(e) => e,
            Err(err) => return reply.error(err),
        };
        let end = e.device.size_bytes();
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        let len = end.saturating_sub(offset).min(u64::from(size)) as usize;
        let mut buf = vec![0u8; len];
        if len > 0 {
            if let Err(err) = e.device.read_at(&mut buf, offset) {
                tracing::warn!("read of {ino} at {offset}: {err}");
                return reply.error(libc::EIO);
            }
        }
        reply.data(&buf);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let e = match self.writable(ino) {
            Ok(e) => e,
            Err(err) => return reply.error(err),
        };
        let end = e.device.size_bytes();
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        if offset >= end {
            return reply.error(libc::ENOSPC);
        }
        let len = (end - offset).min(data.len() as u64) as usize;
        match e.device.write_at(&data[..len], offset) {
            Ok(()) => reply.written(len as u32),
            Err(err) => {
                tracing::warn!("write of {ino} at {offset}: {err}");
                reply.error(libc::EIO)
            }
        }
    }

    fn flush(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _lock: u64, reply: ReplyEmpty) {
        self.fsync_file(ino, reply);
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        self.fsync_file(ino, reply);
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let e = match self.writable(ino) {
            Ok(e) => e,
            Err(err) => return reply.error(err),
        };
        let (Ok(offset), Ok(length)) = (u64::try_from(offset), u64::try_from(length)) else {
            return reply.error(libc::EINVAL);
        };
        let size = e.device.size_bytes();
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return reply.error(libc::ENOSPC);
        }
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let result = if mode == libc::FALLOC_FL_PUNCH_HOLE | keep {
            e.device.discard(offset, length)
        } else if mode & !keep == libc::FALLOC_FL_ZERO_RANGE {
            e.device.write_zeroes(offset, length)
        } else if mode & !keep == 0 {
            // Everything inside a volume is allocated already.
            Ok(())
        } else {
            return reply.error(libc::EOPNOTSUPP);
        };
        match result {
            Ok(()) => reply.ok(),
            Err(err) => {
                tracing::warn!("fallocate of {ino}: {err}");
                reply.error(libc::EIO)
            }
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(path) = self.path(ino).map(str::to_string) else {
            return reply.error(libc::ENOENT);
        };
        if !matches!(self.node(&path), Some(Node::Dir)) {
            return reply.error(libc::ENOTDIR);
        }
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut children: Vec<(String, FileType)> = Vec::new();
        for name in self.exports.names() {
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let (child, kind) = match rest.split_once('/') {
                Some((dir, _)) => (dir, FileType::Directory),
                None => (rest, FileType::RegularFile),
            };
            if !children.iter().any(|(c, _)| c == child) {
                children.push((child.to_string(), kind));
            }
        }
        let mut entries = vec![
            (ino, FileType::Directory, ".".to_string()),
            (ino, FileType::Directory, "..".to_string()),
        ];
        for (child, kind) in children {
            let ino = self.inode(&format!("{prefix}{child}"));
            entries.push((ino, kind, child));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

impl Volumes {
    fn fsync_file(&self, ino: u64, reply: ReplyEmpty) {
        match self.file(ino) {
            Ok(e) => match e.device.flush() {
                Ok(()) => reply.ok(),
                Err(err) => {
                    tracing::warn!("flush of {ino}: {err}");
                    reply.error(libc::EIO)
                }
            },
            Err(err) => reply.error(err),
        }
    }
}
