//! The built-in targets, each as small as its kernel counterpart.

mod delay;
mod flakey;
mod linear;
mod striped;
mod zero;

use std::io;

use tessera_block::BlockError;

use crate::target::{Target, TargetArgs, TargetError, TargetRegistry};
use crate::SECTOR_BYTES;

type Ctor = fn(&TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError>;

pub(crate) fn register_builtins(reg: &mut TargetRegistry) {
    let builtins: [(&str, Ctor); 6] = [
        ("linear", linear::construct),
        ("striped", striped::construct),
        ("zero", zero::construct_zero),
        ("error", zero::construct_error),
        ("flakey", flakey::construct),
        ("delay", delay::construct),
    ];
    for (name, ctor) in builtins {
        // Fixed, distinct names: registering them in a fresh registry cannot fail.
        let _ = reg.register(name, ctor);
    }
}

/// Byte offset of `sector` on a device whose area starts at `start` sectors. Constructors
/// check areas against device sizes, which are bytes in a `u64`, so this cannot overflow.
fn byte_offset(start: u64, sector: u64) -> u64 {
    (start + sector) * SECTOR_BYTES
}

/// The error a target returns for I/O it refuses, naming the mapped device and the byte
/// range in it.
fn refused(device: &str, begin: u64, sector: u64, len_sectors: u64, why: &str) -> BlockError {
    BlockError::Io {
        device: device.to_string(),
        offset: byte_offset(begin, sector),
        len: len_sectors * SECTOR_BYTES,
        source: io::Error::other(why.to_string()),
    }
}
