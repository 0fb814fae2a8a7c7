//! tessera's thin provisioning targets, with dm-thin's table lines and messages over the
//! pool metadata format ([`tessera_formats::thin`]), so a pool moves between tessera and the
//! kernel (and lvm2) either way:
//!
//! ```text
//! thin-pool <metadata dev> <data dev> <data block size> <low water mark> [<#features> <feature>...]
//! thin <pool dev> <dev id> [<external origin dev>]
//! ```
//!
//! - `thin-pool`: opens the pool metadata on the metadata device, or formats it when the
//!   device's first block is all zeroes (as the kernel does). The pool has
//!   `<length> / <data block size>` data blocks; a table with a longer row grows the data
//!   space when it is resumed, and a grown metadata device grows the metadata space. I/O to
//!   the pool device itself goes straight to the data device. Features:
//!   `skip_block_zeroing`, `ignore_discard`, `no_discard_passdown`, `read_only`,
//!   `error_if_no_space`. Messages (`dmsetup message <pool> 0 ...`), each committed:
//!   `create_thin <id>`, `create_snap <id> <origin id>`, `delete <id>` (refused while a
//!   `thin` target has the device open), `set_transaction_id <current> <new>`,
//!   `reserve_metadata_snap`, `release_metadata_snap`.
//! - `thin`: a thin device of the pool. Unmapped blocks read as zeroes, or from the external
//!   origin. The first write to a block allocates a data block, zeroing the rest of it
//!   (unless `skip_block_zeroing`, or the write covers the whole block; with an external
//!   origin the rest is copied from the origin), then maps it; a write to a block shared
//!   with a snapshot copies the block to a new one first. Discards unmap whole blocks and
//!   pass the freed data blocks down to the data device (parts of blocks are left alone,
//!   as the kernel does). A flush commits the metadata; concurrent flushes share one
//!   commit, and changed metadata is committed every second anyway.
//!
//! Status (`dmsetup status`) of `thin-pool`, as the kernel prints it:
//! `<transaction id> <used metadata blocks>/<total metadata blocks> <used data blocks>/<total
//! data blocks> <held metadata root>|- rw|ro|out_of_data_space
//! discard_passdown|no_discard_passdown|ignore_discard error_if_no_space|queue_if_no_space
//! needs_check|- <metadata low water mark>`, or `Fail`. Of `thin`: `<mapped sectors>
//! <highest mapped sector>|-`, or `Fail`. (The kernel ends its lines with a space; tessera
//! does not.)
//!
//! # Out of space
//!
//! When no data block is free (after a commit has returned the blocks freed since the last
//! one), the pool's mode becomes `out_of_data_space`. With `error_if_no_space` a write that
//! needs a new block fails at once; otherwise it waits until a reload grows the pool (or any
//! resume lets it retry), or until the no-space timeout ([`set_no_space_timeout`], 60 s by
//! default, as the kernel's), after which the pool errors such writes as if
//! `error_if_no_space` were set. Writes to blocks already provisioned go on. When the
//! metadata reaches its reserve (the kernel's: a tenth of it, at most 4096 blocks) the pool
//! commits and goes read-only (`ro`); a metadata operation that fails outright aborts the
//! transaction, sets `needs_check` and makes the pool read-only, as the kernel does.
//!
//! # How thin devices find their pool
//!
//! The kernel finds a pool by its mapped device. tessera keys pools by the name of the
//! mapped device whose table holds the `thin-pool` row ([`tessera_mapper::TargetArgs::device`],
//! e.g. `vg-pool-tpool`), in a process-wide registry; a `thin` target opens its `<pool dev>`
//! argument and looks the pool up by the opened device's name, so the resolver must return
//! the pool's mapped device (or a device of the same name). A `thin-pool` table loaded on a
//! device that already has a live pool takes that pool over with its open metadata (the
//! kernel's handover), provided it names the same metadata device; the new table's data
//! device, features and size take effect when it is resumed. A metadata device in use by
//! one pool is refused to another.

mod metadata;
mod pool;
mod pool_target;
mod prison;
mod thin_target;

#[cfg(test)]
mod tests;

pub use pool::set_no_space_timeout;

use tessera_mapper::{RegistryError, TargetRegistry};

/// Adds `thin-pool` and `thin` to `registry`. It fails only if one of them is already
/// registered there.
pub fn register(registry: &mut TargetRegistry) -> Result<(), RegistryError> {
    registry.register("thin-pool", pool_target::construct)?;
    registry.register("thin", thin_target::construct)
}
