//! `thin <pool dev> <dev id> [<external origin dev>]`: a thin device of a pool. Mapped
//! blocks are read and written on the pool's data device; unmapped blocks read as zeroes
//! (or from the external origin); the first write to a block provisions it, and a write to
//! a block shared with a snapshot copies it first.

use std::sync::Arc;

use tessera_block::{BlockError, Result as BlockResult, SharedDevice};
use tessera_formats::thin::{ThinMetadataError, MAX_DEV_ID};
use tessera_mapper::{escape_arg, StatusType, Target, TargetArgs, TargetError};

use crate::pool::{find_pool, io_error, AllocError, Mode, Pool, SECTOR_BYTES};

struct ExternalOrigin {
    arg: String,
    dev: SharedDevice,
}

struct ThinTarget {
    /// The thin mapped device, for errors.
    name: String,
    pool: Arc<Pool>,
    pool_arg: String,
    dev_id: u32,
    origin: Option<ExternalOrigin>,
}

pub(crate) fn construct(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    let mut r = args.reader();
    let pool_arg = r.next("pool dev")?;
    let id_arg = r.next("dev id")?;
    let origin_arg = if r.remaining() > 0 {
        Some(r.next("external origin dev")?)
    } else {
        None
    };
    r.finish()?;
    let dev_id = match id_arg.parse::<u32>() {
        Ok(id) if id <= MAX_DEV_ID => id,
        _ => {
            return Err(TargetError::BadNumber {
                what: "dev id",
                value: id_arg.to_string(),
            })
        }
    };
    if origin_arg == Some(pool_arg) {
        return Err(TargetError::Invalid(
            "the external origin cannot be the pool".into(),
        ));
    }
    let origin = match origin_arg {
        Some(arg) => Some(ExternalOrigin {
            arg: arg.to_string(),
            dev: args.open(arg, 0, 0)?,
        }),
        None => None,
    };
    let pool_dev = args.open(pool_arg, 0, 0)?;
    let pool = find_pool(pool_dev.name()).ok_or_else(|| {
        TargetError::Invalid(format!(
            "{pool_arg:?} (device {:?}) is not a thin pool: no thin-pool table is loaded on it",
            pool_dev.name()
        ))
    })?;
    if pool.mode() == Mode::Fail {
        return Err(TargetError::Invalid(format!(
            "cannot open thin device {dev_id}: pool {:?} is in fail mode",
            pool.name
        )));
    }
    match pool.has_device(dev_id) {
        Ok(true) => {}
        Ok(false) => {
            return Err(TargetError::Invalid(format!(
                "pool {:?} has no thin device {dev_id} (create it with the create_thin message)",
                pool.name
            )))
        }
        Err(e) => return Err(TargetError::Invalid(e.to_string())),
    }
    Ok(Box::new(ThinTarget::new(
        args.device,
        pool,
        pool_arg,
        dev_id,
        origin,
    )))
}

/// The pieces of `len` bytes at `offset` in blocks of `bb` bytes: (block, offset in the
/// block, offset in the request, length).
fn pieces(offset: u64, len: u64, bb: u64) -> impl Iterator<Item = (u64, u64, usize, usize)> {
    let end = offset + len;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let (block, within) = (at / bb, at % bb);
        let n = (bb - within).min(end - at);
        let item = (block, within, (at - offset) as usize, n as usize);
        at += n;
        Some(item)
    })
}

impl ThinTarget {
    fn new(
        name: &str,
        pool: Arc<Pool>,
        pool_arg: &str,
        dev_id: u32,
        origin: Option<ExternalOrigin>,
    ) -> ThinTarget {
        pool.open_thin(dev_id);
        ThinTarget {
            name: name.to_string(),
            pool,
            pool_arg: pool_arg.to_string(),
            dev_id,
            origin,
        }
    }

    fn meta_error(&self, offset: u64, len: u64, e: ThinMetadataError) -> BlockError {
        io_error(&self.name, offset, len, format!("pool metadata: {e}"))
    }

    fn alloc_error(&self, offset: u64, len: u64, e: AllocError) -> BlockError {
        io_error(&self.name, offset, len, e.to_string())
    }

    fn check_failed(&self, offset: u64, len: u64) -> BlockResult<()> {
        if self.pool.mode() == Mode::Fail {
            return Err(io_error(
                &self.name,
                offset,
                len,
                format!("pool {:?} has failed", self.pool.name),
            ));
        }
        Ok(())
    }

    /// Reads bytes of the external origin (zeroes past its end, or without one).
    fn read_unmapped(&self, offset: u64, buf: &mut [u8]) -> BlockResult<()> {
        let Some(origin) = &self.origin else {
            buf.fill(0);
            return Ok(());
        };
        let size = origin.dev.size_bytes();
        let inside = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        if inside > 0 {
            origin.dev.read_at(&mut buf[..inside], offset)?;
        }
        buf[inside..].fill(0);
        Ok(())
    }

    /// A write that changes the block's mapping: provisioning or breaking sharing, under
    /// the block's cell.
    fn write_slow(&self, vblock: u64, within: u64, data: &[u8]) -> BlockResult<()> {
        let pool = &self.pool;
        let bb = pool.block_bytes;
        let offset = vblock * bb + within;
        let len = data.len() as u64;
        let _cell = pool.prison.lock(self.dev_id, vblock);
        let found = pool
            .lookup(self.dev_id, vblock)
            .map_err(|e| self.meta_error(offset, len, e))?;
        let dev = pool.data();
        let whole = within == 0 && len == bb;
        match found {
            // Provisioned by another writer while this one waited for the cell.
            Some(l) if !l.shared => dev.write_at(data, l.mapping.data_block * bb + within),
            Some(l) => {
                let new = pool
                    .alloc_data_block()
                    .map_err(|e| self.alloc_error(offset, len, e))?;
                let dev = pool.data();
                let copied = if whole {
                    dev.write_at(data, new * bb)
                } else {
                    let mut block = vec![0u8; bb as usize];
                    dev.read_at(&mut block, l.mapping.data_block * bb)
                        .and_then(|()| {
                            block[within as usize..][..data.len()].copy_from_slice(data);
                            dev.write_at(&block, new * bb)
                        })
                };
                pool.release_if_failed(new, copied)?;
                pool.insert(self.dev_id, vblock, new, true)
                    .map_err(|e| self.meta_error(offset, len, e))
            }
            None => {
                let new = pool
                    .alloc_data_block()
                    .map_err(|e| self.alloc_error(offset, len, e))?;
                let dev = pool.data();
                let written = if whole {
                    dev.write_at(data, new * bb)
                } else if self.origin.is_some() {
                    // The rest of the block comes from the external origin.
                    let mut block = vec![0u8; bb as usize];
                    self.read_unmapped(vblock * bb, &mut block).and_then(|()| {
                        block[within as usize..][..data.len()].copy_from_slice(data);
                        dev.write_at(&block, new * bb)
                    })
                } else if pool.features().zero_new_blocks {
                    let mut block = vec![0u8; bb as usize];
                    block[within as usize..][..data.len()].copy_from_slice(data);
                    dev.write_at(&block, new * bb)
                } else {
                    dev.write_at(data, new * bb + within)
                };
                pool.release_if_failed(new, written)?;
                pool.insert(self.dev_id, vblock, new, false)
                    .map_err(|e| self.meta_error(offset, len, e))
            }
        }
    }

    /// Writes `data` (zeroes if `None`) over `len` bytes at `offset`.
    fn write_bytes(&self, offset: u64, len: u64, data: Option<&[u8]>) -> BlockResult<()> {
        self.check_failed(offset, len)?;
        let pool = &self.pool;
        let bb = pool.block_bytes;
        let mut zeroes = Vec::new();
        for (vblock, within, at, n) in pieces(offset, len, bb) {
            let piece: &[u8] = match data {
                Some(d) => &d[at..at + n],
                None => {
                    zeroes.resize(n, 0);
                    &zeroes[..n]
                }
            };
            {
                let _epoch = pool.io_epoch.read().unwrap_or_else(|e| e.into_inner());
                let found = pool
                    .lookup(self.dev_id, vblock)
                    .map_err(|e| self.meta_error(offset, len, e))?;
                match found {
                    Some(l) if !l.shared => {
                        pool.data()
                            .write_at(piece, l.mapping.data_block * bb + within)?;
                        continue;
                    }
                    // Unmapped blocks read as zeroes already.
                    None if data.is_none() && self.origin.is_none() => continue,
                    _ => {}
                }
            }
            self.write_slow(vblock, within, piece)?;
        }
        Ok(())
    }
}

impl Target for ThinTarget {
    fn read(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        let offset = sector * SECTOR_BYTES;
        let len = buf.len() as u64;
        self.check_failed(offset, len)?;
        let pool = &self.pool;
        let bb = pool.block_bytes;
        for (vblock, within, at, n) in pieces(offset, len, bb) {
            let dst = &mut buf[at..at + n];
            let _epoch = pool.io_epoch.read().unwrap_or_else(|e| e.into_inner());
            match pool.lookup(self.dev_id, vblock) {
                Ok(Some(l)) => pool
                    .data()
                    .read_at(dst, l.mapping.data_block * bb + within)?,
                Ok(None) => self.read_unmapped(vblock * bb + within, dst)?,
                Err(e) => return Err(self.meta_error(offset, len, e)),
            }
        }
        Ok(())
    }

    fn write(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        self.write_bytes(sector * SECTOR_BYTES, buf.len() as u64, Some(buf))
    }

    fn flush(&self) -> BlockResult<()> {
        self.pool.flush().map_err(|why| BlockError::Flush {
            device: self.name.clone(),
            source: std::io::Error::other(why),
        })
    }

    /// Unmaps the whole blocks in the range, freeing data blocks no other device uses and
    /// passing their ranges down to the data device unless the pool says not to. Parts of
    /// blocks at the edges are left as they are, as the kernel does.
    fn discard(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        let offset = sector * SECTOR_BYTES;
        let len = len_sectors * SECTOR_BYTES;
        self.check_failed(offset, len)?;
        let pool = &self.pool;
        let features = pool.features();
        if !features.discard_enabled || pool.mode() > Mode::OutOfDataSpace {
            return Ok(());
        }
        let bb = pool.block_bytes;
        let begin = offset.div_ceil(bb);
        let end = (offset + len) / bb;
        // A run of blocks at a time, their cells taken in ascending order.
        const RUN: u64 = 64;
        let mut b = begin;
        while b < end {
            let e = (b + RUN).min(end);
            let _cells: Vec<_> = (b..e).map(|v| pool.prison.lock(self.dev_id, v)).collect();
            pool.unmap(self.dev_id, b, e, features.discard_passdown)
                .map_err(|err| self.meta_error(offset, len, err))?;
            b = e;
        }
        Ok(())
    }

    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        self.write_bytes(sector * SECTOR_BYTES, len_sectors * SECTOR_BYTES, None)
    }

    fn status(&self, kind: StatusType) -> String {
        if self.pool.mode() == Mode::Fail {
            return "Fail".into();
        }
        match kind {
            StatusType::Info => {
                let sectors = u64::from(self.pool.block_sectors);
                let meta = self.pool.meta_read();
                let mapped = meta.device_details(self.dev_id);
                let highest = meta.highest_mapped_block(self.dev_id);
                match (mapped, highest) {
                    (Ok(Some(d)), Ok(Some(highest))) => format!(
                        "{} {}",
                        d.mapped_blocks * sectors,
                        (highest + 1) * sectors - 1
                    ),
                    (Ok(Some(d)), Ok(None)) => format!("{} -", d.mapped_blocks * sectors),
                    _ => "Error".into(),
                }
            }
            StatusType::Table => {
                let mut line = format!("{} {}", escape_arg(&self.pool_arg), self.dev_id);
                if let Some(o) = &self.origin {
                    line.push(' ');
                    line.push_str(&escape_arg(&o.arg));
                }
                line
            }
        }
    }

    fn devices(&self) -> Vec<SharedDevice> {
        let mut devs = vec![self.pool.data()];
        devs.extend(self.origin.as_ref().map(|o| o.dev.clone()));
        devs
    }
}

impl Drop for ThinTarget {
    fn drop(&mut self) {
        self.pool.close_thin(self.dev_id);
    }
}

/// A thin target on `pool` without a table line, for unit tests.
#[cfg(test)]
pub(crate) fn for_test(
    name: &str,
    pool: Arc<Pool>,
    dev_id: u32,
    origin: Option<SharedDevice>,
) -> Box<dyn Target> {
    let origin = origin.map(|dev| ExternalOrigin {
        arg: dev.name().to_string(),
        dev,
    });
    Box::new(ThinTarget::new(name, pool, "pool", dev_id, origin))
}
