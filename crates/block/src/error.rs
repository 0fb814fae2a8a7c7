use thiserror::Error;

/// What can go wrong with a block device; every variant names the device.
#[derive(Debug, Error)]
pub enum BlockError {
    #[error("{device}: cannot open: {source}")]
    Open {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{device}: I/O error at byte {offset} (length {len}): {source}")]
    Io {
        device: String,
        offset: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{device}: cannot make writes durable (flush failed): {source}")]
    Flush {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{device}: request at byte {offset} of length {len} runs past the end of the device ({size} bytes)")]
    OutOfRange {
        device: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("{device}: offset {offset} or length {len} is not a multiple of the {block} byte block size")]
    Misaligned {
        device: String,
        offset: u64,
        len: u64,
        block: u32,
    },
    #[error("{device}: device is read-only")]
    ReadOnly { device: String },
    #[error("{device}: injected I/O error at byte {offset}")]
    Injected { device: String, offset: u64 },
    #[error("{device}: power was cut; the device accepts no more I/O")]
    PowerCut { device: String },
}

pub type Result<T, E = BlockError> = std::result::Result<T, E>;
