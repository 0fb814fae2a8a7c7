//! tessera's engine: finds the devices, reads what every format holds into one model, and
//! makes each change a transaction that lands crash-safely on the devices.
//!
//! The layout follows the objects: the core ([`Engine`]: devices, locks, claims, state)
//! knows no format; each on-disk format is a module under [`modules`] behind the
//! [`format::FormatModule`] trait, holding its probe, its model, its verbs and its
//! activation; [`discover`] puts the stack together through the trait alone. The engine
//! never touches data bytes except through mapped devices.

pub mod claim;
pub mod conflict;
pub mod devices;
pub mod discover;
mod engine;
mod error;
pub mod format;
mod lock;
pub mod modules;
pub mod raid_row;
pub mod subarrays;
pub mod units;

pub use engine::Engine;
pub use error::{EngineError, Result};

// The public face, independent of where each piece lives.
pub use devices::NamedDevices;
pub use modules::luks::ops::check_open_name;
pub use modules::luks::{crypt_params, LuksOpenOptions, LuksOpened};
pub use modules::lvm2::archive::{Archive, ArchiveEntry};
pub use modules::lvm2::bbr;
pub use modules::lvm2::pvmove;
pub use modules::lvm2::scan::{PvInfo, Scan, VgState};
pub use modules::lvm2::{
    activate, alloc, kernel, raid_create, raid_lv, scan, thin, LvCreateOptions, PvCreateOptions,
    DEFAULT_EXTENT_BYTES, DEFAULT_PE_START_BYTES, DEFAULT_STRIPE_BYTES,
};
pub use modules::md::array as md;
pub use modules::md::ops::{MdCreateOptions, MdScan};
pub use modules::md::records as md_records;
