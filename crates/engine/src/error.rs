use tessera_block::BlockError;
use tessera_formats::lvm2::label::LabelError;
use tessera_formats::lvm2::mda::MdaError;
use tessera_formats::lvm2::vg::VgError;
use thiserror::Error;

/// What the engine refuses or fails at; each message names the device or volume and says
/// what to do where there is something to do.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The kernel's device-mapper refused or failed.
    #[error("{0}")]
    Kernel(String),
    #[error(transparent)]
    Label(#[from] LabelError),
    #[error(transparent)]
    Mda(#[from] MdaError),
    #[error(transparent)]
    Md(#[from] tessera_formats::md::MdError),
    #[error(transparent)]
    Luks(#[from] tessera_formats::luks::LuksError),
    // The cause is printed in the message, so it is not also given as `source()`: a
    // printed chain (`{:#}`) would say it twice.
    #[error("{device}: {cause}")]
    Metadata { device: String, cause: VgError },
    #[error(transparent)]
    Model(#[from] VgError),
    #[error("{device}: holds {what}; use --force to overwrite it")]
    Occupied { device: String, what: String },
    #[error("{device}: is not an LVM2 physical volume")]
    NotPv { device: String },
    #[error("{device}: is a physical volume of VG '{vg}'")]
    PvInUse { device: String, vg: String },
    #[error("{device}: {why}")]
    DeviceUnusable { device: String, why: String },
    #[error("volume group '{0}' not found")]
    VgNotFound(String),
    #[error("volume group '{0}' already exists")]
    VgExists(String),
    #[error("logical volume '{vg}/{lv}' not found")]
    LvNotFound { vg: String, lv: String },
    #[error("logical volume '{vg}/{lv}' already exists")]
    LvExists { vg: String, lv: String },
    #[error("volume group '{vg}' is missing {count} physical volume(s): {list}; it can be read but not changed")]
    VgPartial {
        vg: String,
        count: usize,
        list: String,
    },
    #[error("volume group '{vg}': {why}")]
    Refused { vg: String, why: String },
    #[error("volume group '{vg}': insufficient free space: {need} extents needed, {free} available{detail}")]
    NoSpace {
        vg: String,
        need: u64,
        free: u64,
        detail: String,
    },
    #[error("{0}")]
    BadArgument(String),
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error(transparent)]
    Mapper(#[from] tessera_mapper::MapperError),
    #[error("table of {device}: {cause}")]
    Table {
        device: String,
        cause: tessera_mapper::TableError,
    },
    #[error("{path}: {why}")]
    BadFile { path: String, why: String },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl From<tessera_kernel::dm::DmError> for EngineError {
    fn from(e: tessera_kernel::dm::DmError) -> Self {
        EngineError::Kernel(e.to_string())
    }
}
