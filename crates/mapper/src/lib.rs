//! tessera's transform layer: device-mapper's model in user space.
//!
//! A [`Table`] lists rows of (start, length, target type, parameters) in dmsetup's syntax,
//! in 512-byte sectors. A [`TargetRegistry`] turns each row into a [`Target`] that maps or
//! performs I/O on the row's sectors; the mapper registers linear, striped, zero, error,
//! flakey and delay, and other crates register theirs (raid, snapshot, thin, crypt), as
//! kernel modules register with dm. A [`MappedDevice`] holds a live and an inactive table
//! with dm's load/suspend/resume, and is itself a [`tessera_block::BlockDevice`].
//!
//! Nothing here panics on a table's contents: every problem is an error naming the line or
//! the device and row.

mod device;
mod table;
mod target;
mod targets;

pub use device::{MappedDevice, MapperError};
pub use table::{escape_arg, split_args, Row, Table, TableError, MAX_SECTORS};
pub use target::{
    ArgReader, Constructor, RegistryError, Resolver, StatusType, Target, TargetArgs, TargetError,
    TargetRegistry,
};

/// Bytes in a sector, the unit of tables and targets.
pub const SECTOR_BYTES: u64 = 512;
