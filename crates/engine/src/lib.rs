//! tessera's engine: finds the devices, reads every PV and VG on them into one model, and
//! makes each change to a VG a transaction that lands crash-safely in every metadata area.
//!
//! The engine never touches data bytes; it reads and writes metadata through the formats
//! crate and leaves I/O scheduling to the block layer.

pub mod activate;
pub mod alloc;
mod archive;
pub mod claim;
mod commit;
pub mod devices;
pub mod discover;
mod error;
pub mod kernel;
mod lock;
pub mod md;
pub mod md_records;
pub mod ops;
pub mod raid_create;
pub mod raid_lv;
pub mod scan;
pub mod units;

pub use archive::{Archive, ArchiveEntry};
pub use error::{EngineError, Result};
pub use ops::{
    Engine, LvCreateOptions, MdCreateOptions, MdScan, NamedDevices, PvCreateOptions,
    DEFAULT_EXTENT_BYTES, DEFAULT_PE_START_BYTES, DEFAULT_STRIPE_BYTES,
};
pub use scan::{PvInfo, Scan, VgState};
