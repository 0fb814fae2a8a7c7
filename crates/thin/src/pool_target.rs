//! `thin-pool <metadata dev> <data dev> <data block size> <low water mark> [<#features>
//! <feature>...]`: opens (or formats) the pool metadata, maps its own I/O straight onto the
//! data device, takes the pool's messages and reports its status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tessera_block::{Result as BlockResult, SharedDevice};
use tessera_formats::thin::{
    PoolMetadata, MAX_DATA_BLOCK_SECTORS, MAX_DEV_ID, METADATA_BLOCK_BYTES, MIN_DATA_BLOCK_SECTORS,
};
use tessera_mapper::{escape_arg, StatusType, Target, TargetArgs, TargetError};

use crate::pool::{
    free_metadata_blocks, metadata_dev_blocks, pool_for, Binding, Features, Found, Mode, Pool,
    SECTOR_BYTES,
};

struct PoolTarget {
    pool: Arc<Pool>,
    metadata_arg: String,
    data_arg: String,
    metadata: SharedDevice,
    data: SharedDevice,
    low_water_blocks: u64,
    /// The features as the table asked for them (the table line echoes these).
    requested: Features,
    nr_data_blocks: u64,
    suspended: AtomicBool,
}

fn parse_features(r: &mut tessera_mapper::ArgReader<'_>) -> Result<Features, TargetError> {
    let mut f = Features::default();
    if r.remaining() == 0 {
        return Ok(f);
    }
    let n: usize = r.number("#feature args")?;
    if n > r.remaining() {
        return Err(TargetError::Invalid(format!(
            "{n} feature arguments announced, {} given",
            r.remaining()
        )));
    }
    for _ in 0..n {
        let arg = r.next("feature")?;
        match arg.to_ascii_lowercase().as_str() {
            "skip_block_zeroing" => f.zero_new_blocks = false,
            "ignore_discard" => f.discard_enabled = false,
            "no_discard_passdown" => f.discard_passdown = false,
            "read_only" => f.read_only = true,
            "error_if_no_space" => f.error_if_no_space = true,
            _ => {
                return Err(TargetError::Invalid(format!(
                    "unrecognised pool feature {arg:?}"
                )))
            }
        }
    }
    Ok(f)
}

/// True if the metadata device's first block is all zeroes: a new pool, to be formatted.
fn superblock_all_zeroes(dev: &SharedDevice, arg: &str) -> Result<bool, TargetError> {
    let mut block = vec![0u8; METADATA_BLOCK_BYTES];
    if dev.size_bytes() < METADATA_BLOCK_BYTES as u64 {
        return Err(TargetError::Invalid(format!(
            "metadata device {arg:?} is smaller than one metadata block"
        )));
    }
    dev.read_at(&mut block, 0)
        .map_err(|source| TargetError::Open {
            name: arg.to_string(),
            source,
        })?;
    Ok(block.iter().all(|&b| b == 0))
}

pub(crate) fn construct(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    let mut r = args.reader();
    let metadata_arg = r.next("metadata dev")?;
    let data_arg = r.next("data dev")?;
    let block_sectors: u32 = r.number("data block size")?;
    let low_water_blocks: u64 = r.number("low water mark")?;
    let requested = parse_features(&mut r)?;
    r.finish()?;
    if !(MIN_DATA_BLOCK_SECTORS..=MAX_DATA_BLOCK_SECTORS).contains(&block_sectors)
        || block_sectors % MIN_DATA_BLOCK_SECTORS != 0
    {
        return Err(TargetError::Invalid(format!(
            "invalid data block size {block_sectors} sectors: it must be a multiple of {MIN_DATA_BLOCK_SECTORS} from {MIN_DATA_BLOCK_SECTORS} to {MAX_DATA_BLOCK_SECTORS}"
        )));
    }
    if metadata_arg == data_arg {
        return Err(TargetError::Invalid(
            "the metadata and data devices must differ".into(),
        ));
    }
    let metadata = args.open(metadata_arg, 0, 0)?;
    let data = args.open(data_arg, 0, args.length_sectors)?;
    let nr_data_blocks = args.length_sectors / u64::from(block_sectors);
    let binding = Binding {
        features: requested,
        data: data.clone(),
        low_water_blocks,
    };

    let make = || -> Result<Arc<Pool>, String> {
        let fail = |e: tessera_formats::thin::ThinMetadataError| {
            format!("metadata device {metadata_arg:?}: {e}")
        };
        let meta = if superblock_all_zeroes(&metadata, metadata_arg).map_err(|e| e.to_string())? {
            if requested.read_only {
                return Err(format!(
                    "metadata device {metadata_arg:?} is blank; a read_only pool cannot format it"
                ));
            }
            PoolMetadata::format(metadata.clone(), block_sectors, nr_data_blocks).map_err(fail)?
        } else {
            PoolMetadata::open(metadata.clone()).map_err(fail)?
        };
        let on_disk = meta.info().data_block_sectors;
        if on_disk != block_sectors {
            return Err(format!(
                "metadata device {metadata_arg:?} was formatted with a data block size of {on_disk} sectors; changing it to {block_sectors} is not supported"
            ));
        }
        Ok(Pool::new(
            args.device,
            metadata.clone(),
            Box::new(meta),
            block_sectors,
            binding.clone(),
        ))
    };
    let pool = match pool_for(args.device, metadata.name(), make).map_err(TargetError::Invalid)? {
        Found::New(pool) => pool,
        Found::Existing(pool) => {
            if pool.block_sectors != block_sectors {
                return Err(TargetError::Invalid(format!(
                    "the live pool's data block size is {} sectors; changing it to {block_sectors} is not supported",
                    pool.block_sectors
                )));
            }
            pool
        }
    };
    Ok(Box::new(PoolTarget {
        pool,
        metadata_arg: metadata_arg.to_string(),
        data_arg: data_arg.to_string(),
        metadata,
        data,
        low_water_blocks,
        requested,
        nr_data_blocks,
        suspended: AtomicBool::new(false),
    }))
}

fn read_dev_id(arg: &str) -> Result<u32, TargetError> {
    match arg.parse::<u32>() {
        Ok(id) if id <= MAX_DEV_ID => Ok(id),
        _ => Err(TargetError::Message(format!(
            "invalid device id {arg:?} (0 to {MAX_DEV_ID})"
        ))),
    }
}

fn arg_count(args: &[&str], n: usize) -> Result<(), TargetError> {
    if args.len() != n {
        return Err(TargetError::Message(format!(
            "{} takes {} arguments, not {}",
            args[0],
            n - 1,
            args.len() - 1
        )));
    }
    Ok(())
}

/// The kernel's threshold of free metadata blocks for its low-metadata event: 4 MiB of
/// blocks or a quarter of the metadata device, whichever is less.
fn metadata_threshold(metadata: &SharedDevice) -> u64 {
    (metadata_dev_blocks(metadata) / 4).min(1024)
}

impl PoolTarget {
    fn binding(&self) -> Binding {
        Binding {
            features: self.requested,
            data: self.data.clone(),
            low_water_blocks: self.low_water_blocks,
        }
    }

    fn metadata_message(&self, args: &[&str]) -> Result<(), TargetError> {
        let pool = &self.pool;
        let refused =
            |e: tessera_formats::thin::ThinMetadataError| TargetError::Message(e.to_string());
        match args[0].to_ascii_lowercase().as_str() {
            "create_thin" => {
                arg_count(args, 2)?;
                let id = read_dev_id(args[1])?;
                pool.change("create a thin device", |m| m.create_thin(id))
                    .map_err(refused)
            }
            "create_snap" => {
                arg_count(args, 3)?;
                let id = read_dev_id(args[1])?;
                let origin = read_dev_id(args[2])?;
                pool.change("create a snapshot", |m| m.create_snap(id, origin))
                    .map_err(refused)
            }
            "delete" => {
                arg_count(args, 2)?;
                let id = read_dev_id(args[1])?;
                pool.delete(id).map_err(TargetError::Message)
            }
            "set_transaction_id" => {
                arg_count(args, 3)?;
                let number = |s: &str| {
                    s.parse::<u64>().map_err(|_| {
                        TargetError::Message(format!("set_transaction_id: unrecognised id {s:?}"))
                    })
                };
                let (cur, new) = (number(args[1])?, number(args[2])?);
                pool.change("set the transaction id", |m| m.set_transaction_id(cur, new))
                    .map_err(refused)
            }
            "reserve_metadata_snap" => {
                arg_count(args, 1)?;
                // The held copy is of committed metadata.
                let _ = pool.commit();
                pool.change("reserve a metadata snapshot", |m| m.reserve_metadata_snap())
                    .map_err(refused)
            }
            "release_metadata_snap" => {
                arg_count(args, 1)?;
                pool.change("release the metadata snapshot", |m| {
                    m.release_metadata_snap()
                })
                .map_err(refused)
            }
            _ => Err(TargetError::Message(format!(
                "unrecognised thin-pool message {:?}",
                args[0]
            ))),
        }
    }
}

impl Target for PoolTarget {
    // I/O to the pool device itself maps straight onto the data device, as the kernel's
    // pool_map does.
    fn read(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        self.data.read_at(buf, sector * SECTOR_BYTES)
    }

    fn write(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        self.data.write_at(buf, sector * SECTOR_BYTES)
    }

    fn flush(&self) -> BlockResult<()> {
        self.data.flush()
    }

    fn discard(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        self.data
            .discard(sector * SECTOR_BYTES, len_sectors * SECTOR_BYTES)
    }

    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        self.data
            .write_zeroes(sector * SECTOR_BYTES, len_sectors * SECTOR_BYTES)
    }

    fn status(&self, kind: StatusType) -> String {
        match kind {
            StatusType::Info => {
                let pool = &self.pool;
                if pool.mode() == Mode::Fail {
                    return "Fail".into();
                }
                // Commit so the figures are current, as the kernel does unless suspended.
                if !self.suspended.load(Ordering::Acquire) && pool.mode() <= Mode::OutOfDataSpace {
                    let _ = pool.commit();
                }
                let info = pool.info();
                let features = pool.features();
                let mode = pool.mode();
                format!(
                    "{} {}/{} {}/{} {} {} {} {} {} {}",
                    info.transaction_id,
                    info.nr_metadata_blocks - free_metadata_blocks(&info),
                    info.nr_metadata_blocks,
                    info.nr_data_blocks - info.free_data_blocks,
                    info.nr_data_blocks,
                    info.metadata_snap
                        .map_or_else(|| "-".to_string(), |b| b.to_string()),
                    if mode == Mode::OutOfDataSpace {
                        "out_of_data_space"
                    } else if mode.is_read_only() {
                        "ro"
                    } else {
                        "rw"
                    },
                    if !features.discard_enabled {
                        "ignore_discard"
                    } else if features.discard_passdown {
                        "discard_passdown"
                    } else {
                        "no_discard_passdown"
                    },
                    if features.error_if_no_space {
                        "error_if_no_space"
                    } else {
                        "queue_if_no_space"
                    },
                    if info.needs_check { "needs_check" } else { "-" },
                    metadata_threshold(&self.metadata),
                )
            }
            StatusType::Table => {
                let f = &self.requested;
                let mut words = Vec::new();
                if !f.zero_new_blocks {
                    words.push("skip_block_zeroing");
                }
                if !f.discard_enabled {
                    words.push("ignore_discard");
                }
                if !f.discard_passdown {
                    words.push("no_discard_passdown");
                }
                if f.read_only {
                    words.push("read_only");
                }
                if f.error_if_no_space {
                    words.push("error_if_no_space");
                }
                let mut line = format!(
                    "{} {} {} {} {}",
                    escape_arg(&self.metadata_arg),
                    escape_arg(&self.data_arg),
                    self.pool.block_sectors,
                    self.low_water_blocks,
                    words.len()
                );
                for w in words {
                    line.push(' ');
                    line.push_str(w);
                }
                line
            }
        }
    }

    fn message(&self, args: &[&str]) -> Result<String, TargetError> {
        if args.is_empty() {
            return Err(TargetError::Message("empty message".into()));
        }
        if self.pool.mode() >= Mode::OutOfMetadataSpace {
            return Err(TargetError::Message(format!(
                "{}: unable to service pool messages in read-only or fail mode",
                self.pool.name
            )));
        }
        self.metadata_message(args)?;
        // Each message is committed, as the kernel does.
        self.pool.commit().map_err(|e| {
            TargetError::Message(format!("the change was made but not committed: {e}"))
        })?;
        Ok(String::new())
    }

    fn devices(&self) -> Vec<SharedDevice> {
        vec![self.data.clone()]
    }

    fn postsuspend(&self) {
        self.suspended.store(true, Ordering::Release);
        if let Err(e) = self.pool.commit() {
            tracing::error!("{}: commit on suspend failed: {e}", self.pool.name);
        }
    }

    fn preresume(&self) -> Result<(), TargetError> {
        // This table takes control of the pool (a reload hands the open metadata over).
        self.pool.bind(&self.binding());
        match self.pool.grow(self.nr_data_blocks) {
            Ok(()) => Ok(()),
            // A failed pool still resumes, so its I/O can be errored.
            Err(_) if self.pool.mode() == Mode::Fail => Ok(()),
            Err(e) => Err(TargetError::Invalid(e)),
        }
    }

    fn resume(&self) {
        self.suspended.store(false, Ordering::Release);
        self.pool.resumed();
    }
}
