//! The target interface, in the style of the kernel's `struct target_type`: build from a table
//! row, do I/O on sectors relative to the row, report status, take messages. And the registry
//! that maps type names to constructors, which other crates extend with their own targets.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use tessera_block::{BlockError, Result as BlockResult, SharedDevice};
use thiserror::Error;

use crate::SECTOR_BYTES;

/// What a target reports: `dmsetup status` (`Info`) or `dmsetup table` (`Table`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusType {
    Info,
    Table,
}

/// Maps a device name in a table (`pv0.img`, `/dev/loop0`) to an open device.
pub type Resolver<'a> = &'a dyn Fn(&str) -> BlockResult<SharedDevice>;

/// A mapping for one table row. The mapped device calls it only with ranges inside the row:
/// `sector` is relative to the row's start and buffers are whole sectors (a multiple of 512
/// bytes, never empty). Calls come from many threads at once.
pub trait Target: Send + Sync {
    fn read(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()>;
    fn write(&self, sector: u64, buf: &[u8]) -> BlockResult<()>;
    /// Makes completed writes durable on the devices under this target.
    fn flush(&self) -> BlockResult<()>;
    fn discard(&self, sector: u64, len_sectors: u64) -> BlockResult<()>;
    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> BlockResult<()>;
    /// The target's part of a `dmsetup status` or `dmsetup table` line, after the type name.
    fn status(&self, kind: StatusType) -> String;
    /// Handles `dmsetup message`; most targets take none.
    fn message(&self, args: &[&str]) -> Result<String, TargetError> {
        let _ = args;
        Err(TargetError::NoMessages)
    }
    /// The smallest I/O this target takes, in bytes (dm's `io_hints`): 512 for most; a
    /// crypt row with a larger sector_size takes whole crypt sectors only, and the mapped
    /// device reads, patches and writes whole blocks of this size for smaller requests.
    fn block_bytes(&self) -> u32 {
        512
    }
    /// The devices under this target (dm's `iterate_devices`), for block sizes and claims.
    fn devices(&self) -> Vec<SharedDevice> {
        Vec::new()
    }
    /// Called when a suspend starts, before in-flight I/O drains (dm-delay releases its
    /// held I/O here).
    fn presuspend(&self) {}
    /// Called once the device is suspended and idle.
    fn postsuspend(&self) {}
    /// Called before the target goes live on resume; an error keeps the device suspended.
    fn preresume(&self) -> Result<(), TargetError> {
        Ok(())
    }
    /// Called after the target is live again and I/O is readmitted.
    fn resume(&self) {}
}

/// Why a target refused its table line or a message. The mapped device adds the device
/// name, row and type.
#[derive(Debug, Error)]
pub enum TargetError {
    #[error("missing argument <{0}>")]
    Missing(&'static str),
    #[error("<{what}> {value:?} is not a valid number")]
    BadNumber { what: &'static str, value: String },
    #[error("unexpected extra arguments {0:?}")]
    Extra(Vec<String>),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot open device {name:?}: {source}")]
    Open {
        name: String,
        #[source]
        source: BlockError,
    },
    #[error("device {name:?} is too small: the area of {length} sectors at sector {start} ends past its end ({size} sectors)")]
    TooSmall {
        name: String,
        start: u64,
        length: u64,
        size: u64,
    },
    #[error("{0} is not supported")]
    Unsupported(String),
    #[error("this target type takes no messages")]
    NoMessages,
    #[error("message refused: {0}")]
    Message(String),
}

/// What a constructor gets: its row and a way to open devices, as the kernel's `dm_target`.
pub struct TargetArgs<'a> {
    /// The mapped device's name, for error messages.
    pub device: &'a str,
    pub start_sectors: u64,
    pub length_sectors: u64,
    /// The row's parameters, split as [`crate::Row::args`] does.
    pub args: &'a [&'a str],
    pub resolve: Resolver<'a>,
}

impl<'a> TargetArgs<'a> {
    /// A cursor over the arguments.
    pub fn reader(&self) -> ArgReader<'a> {
        ArgReader {
            args: self.args,
            pos: 0,
        }
    }

    /// Opens `name` and checks that `length_sectors` from `start_sectors` lie inside it, as
    /// `dm_get_device` and the table's area check do.
    pub fn open(
        &self,
        name: &str,
        start_sectors: u64,
        length_sectors: u64,
    ) -> Result<SharedDevice, TargetError> {
        let dev = (self.resolve)(name).map_err(|source| TargetError::Open {
            name: name.to_string(),
            source,
        })?;
        let size = dev.size_bytes() / SECTOR_BYTES;
        match start_sectors.checked_add(length_sectors) {
            Some(end) if end <= size => Ok(dev),
            _ => Err(TargetError::TooSmall {
                name: name.to_string(),
                start: start_sectors,
                length: length_sectors,
                size,
            }),
        }
    }
}

/// Reads a target's arguments in order, like the kernel's `dm_arg_set`.
#[derive(Debug, Clone)]
pub struct ArgReader<'a> {
    args: &'a [&'a str],
    pos: usize,
}

impl<'a> ArgReader<'a> {
    pub fn remaining(&self) -> usize {
        self.args.len() - self.pos
    }

    /// The next argument; `what` names it in the error if there is none.
    pub fn next(&mut self, what: &'static str) -> Result<&'a str, TargetError> {
        let arg = self.args.get(self.pos).ok_or(TargetError::Missing(what))?;
        self.pos += 1;
        Ok(arg)
    }

    /// The next argument as a number.
    pub fn number<T: FromStr>(&mut self, what: &'static str) -> Result<T, TargetError> {
        let arg = self.next(what)?;
        arg.parse().map_err(|_| TargetError::BadNumber {
            what,
            value: arg.to_string(),
        })
    }

    /// Fails if arguments are left over.
    pub fn finish(&self) -> Result<(), TargetError> {
        match &self.args[self.pos..] {
            [] => Ok(()),
            rest => Err(TargetError::Extra(
                rest.iter().map(|s| s.to_string()).collect(),
            )),
        }
    }
}

/// Builds a target from its row.
pub type Constructor =
    Arc<dyn Fn(&TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> + Send + Sync>;

/// Target types by name, as dm's list of registered targets. The default registry holds
/// the built-in types.
#[derive(Clone)]
pub struct TargetRegistry {
    types: BTreeMap<String, Constructor>,
}

/// Why a target type cannot be registered.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("target type {0:?} is already registered")]
    Duplicate(String),
    #[error("target type name {0:?} must be one word")]
    BadName(String),
}

impl TargetRegistry {
    /// A registry that knows no types.
    pub fn empty() -> Self {
        TargetRegistry {
            types: BTreeMap::new(),
        }
    }

    /// A registry with the mapper's built-in types: linear, striped, zero, error, flakey,
    /// delay.
    pub fn new() -> Self {
        let mut reg = Self::empty();
        crate::targets::register_builtins(&mut reg);
        reg
    }

    /// Adds a type. Names are unique, as `dm_register_target` requires.
    pub fn register<F>(&mut self, name: &str, constructor: F) -> Result<(), RegistryError>
    where
        F: Fn(&TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> + Send + Sync + 'static,
    {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(RegistryError::BadName(name.to_string()));
        }
        if self.types.contains_key(name) {
            return Err(RegistryError::Duplicate(name.to_string()));
        }
        self.types.insert(name.to_string(), Arc::new(constructor));
        Ok(())
    }

    /// Gives `name` a new constructor, registered or not: a device's own copy of the
    /// registry may bind a type to that device's records (an MD array's superblocks).
    pub fn set<F>(&mut self, name: &str, constructor: F) -> Result<(), RegistryError>
    where
        F: Fn(&TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> + Send + Sync + 'static,
    {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(RegistryError::BadName(name.to_string()));
        }
        self.types.insert(name.to_string(), Arc::new(constructor));
        Ok(())
    }

    /// The constructor for `name`, if registered.
    pub fn get(&self, name: &str) -> Option<&Constructor> {
        self.types.get(name)
    }

    /// Registered type names, sorted (`dmsetup targets`).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}

impl Default for TargetRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TargetRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}
