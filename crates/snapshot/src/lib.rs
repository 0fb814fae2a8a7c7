//! tessera's snapshot targets, with dm-snapshot's table lines and on-disk COW format, so a
//! snapshot moves between tessera and the kernel (and lvm2) either way:
//!
//! ```text
//! snapshot-origin <origin>
//! snapshot <origin> <COW> P|PO|N <chunksize> [<#feat> discard_zeroes_cow discard_passdown_origin]
//! snapshot-merge <origin> <COW> P <chunksize>
//! ```
//!
//! - `snapshot-origin`: reads pass through; before a write reaches a chunk of the origin,
//!   that chunk is copied out to every snapshot of the origin that has no copy of it yet
//!   (a COW chunk allocated, the old data copied there, the exception committed durably).
//! - `snapshot`: a chunk with an exception is read and written on the COW device, others
//!   are read from the origin; the first write to a chunk copies it out first. `P` keeps the
//!   exceptions in the persistent store ([`tessera_formats::snapshot`]), `N` in memory only.
//!   The chunk size on disk wins over the table's. A snapshot whose COW device fills up (or
//!   fails) is invalidated as the kernel does it: `valid = 0` is written to its header, every
//!   later I/O to it fails and its status says `Invalid`; the origin keeps working.
//! - `snapshot-merge`: loaded in place of `snapshot-origin` to fold a snapshot back into its
//!   origin. A background thread, started on resume and stopped on suspend, copies chunks back
//!   from the last exception backwards, in runs, clearing each run's entries durably once the
//!   origin is flushed, so a merge stopped anywhere (even by a power cut) resumes from the
//!   store. Until a chunk is merged, the origin reads it from the COW device and writes go
//!   there too. `dmsetup message <dev> 0 progress` answers `<exceptions left> <state>`.
//!
//! Status (`dmsetup status`) of `snapshot` and `snapshot-merge`: `<sectors_allocated>/
//! <total_sectors> <metadata_sectors>`, or `Invalid`, or `Merge failed`; a finished merge
//! shows `<metadata_sectors>/<total_sectors> <metadata_sectors>`.
//!
//! # How snapshots find their origin
//!
//! The kernel keys origins by block device. tessera keys them by the resolved origin
//! device's name ([`tessera_block::BlockDevice::name`]: the path for files and block
//! devices), in a process-wide registry, because a resolver may open the same file twice
//! (two `Arc`s) for two tables. Tables must therefore name one origin the same way (as
//! lvm2's tables do: `vg-lv-real`), and two distinct devices must not share a name within a
//! process. Likewise a snapshot is identified by its COW device's name: a `snapshot` or
//! `snapshot-merge` loaded over a COW device already in use by a live snapshot of the same
//! origin takes over its exceptions (dm's handover), so reloading a table never leaves two
//! copies of one store in memory.

mod exceptions;
mod origin;
mod target;

use tessera_mapper::{RegistryError, TargetRegistry};

/// Adds `snapshot-origin`, `snapshot` and `snapshot-merge` to `registry`. It fails only if
/// one of them is already registered there.
pub fn register(registry: &mut TargetRegistry) -> Result<(), RegistryError> {
    registry.register("snapshot-origin", target::construct_origin)?;
    registry.register("snapshot", target::construct_snapshot)?;
    registry.register("snapshot-merge", target::construct_merge)
}
