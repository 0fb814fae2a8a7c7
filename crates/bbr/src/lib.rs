//! tessera's `bbr` target: bad block relocation for volumes without redundancy, in the
//! model of EVMS's dm-bbr, registered into the mapper as dm-bbr registered with dm.
//!
//! ```text
//! bbr <dev> <offset> <table1_lsn> <table2_lsn> <table_size> <start_replacement> <nr_replacement_blks> <block_size>
//! ```
//!
//! - `dev`, `offset`: the data lives on `dev` from sector `offset`, one sector per sector of
//!   the row.
//! - `table1_lsn`, `table2_lsn`, `table_size`: the two copies of the relocation table, each
//!   `table_size` sectors, at those sectors of `dev` (see [`tessera_formats::bbr`]).
//! - `start_replacement`, `nr_replacement_blks`: the pool of replacement sectors on `dev`.
//! - `block_size`: bytes relocated as one unit; tessera relocates single sectors, so this
//!   must be 512.
//!
//! All sector numbers are `dev`'s own (not the row's), as dm-bbr's. The areas must lie
//! inside `dev` and must not overlap each other or the data.
//!
//! Every write is flushed before it is answered, and writes run one at a time: a file or a
//! block device opened without O_DIRECT takes writes into the page cache and reports a bad
//! sector only at writeback, which the flush waits for (this costs a flush per write: BBR
//! trades speed for knowing). A write that fails with a media error, at once or at its
//! flush, is retried sector by sector (each flushed); each sector that still
//! fails is written to the next replacement sector, which is flushed, and the table sector
//! recording it is committed (copy 1 written and flushed, then copy 2) before the write
//! returns. Reads and writes of relocated sectors go to their replacements. A replacement that
//! fails is recorded as skipped and the next one is tried. When the pool is used up the write
//! fails with an error that says so, and the status shows `exhausted`.
//!
//! What this does not do: it does not recover data from a sector that cannot be read (a
//! failed read is returned as it is; only writes relocate), it does not protect against a
//! whole disk failing, and it cannot tell bad data that a disk returns without an error.
//!
//! Status (`dmsetup status`): `<relocated> <used>/<pool> <state>`: sectors relocated now,
//! replacement sectors used (relocations, earlier relocations of the same sector and skipped
//! replacements) of the pool, and `ok`, `full` (none left) or `exhausted` (a write failed
//! for want of one). Messages: `list` prints `<bad> <replacement>` lines (row sectors and
//! device sectors), `relocate <sector>` moves a row sector to a replacement now (for a sector
//! known to be failing).

mod target;

use tessera_mapper::{RegistryError, TargetRegistry};

pub use target::{parse_status, BbrStatus};

/// Adds the `bbr` target type to `registry`. It fails only if a `bbr` type is already
/// registered there.
pub fn register(registry: &mut TargetRegistry) -> Result<(), RegistryError> {
    registry.register("bbr", target::construct)
}
