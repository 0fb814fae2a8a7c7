//! `lv create --bbr`: LVs that relocate bad blocks, and what the help says about them.

use std::path::Path;

use anyhow::Result;
use tessera_engine::{Engine, LvCreateOptions};

/// The long help of `lv create --bbr`: what bad block relocation does and does not do.
pub const LONG_HELP: &str = "Relocate bad blocks (EVMS's BBR): keep a pool of replacement \
sectors and a table of relocations at the LV's end, for a linear or striped LV on disks that may \
develop bad sectors and have no redundancy to fall back on.

What it does: when a write to a sector fails with an I/O error, tessera writes that sector to the \
next replacement sector, records the move in the table (two copies, each table sector with a \
sequence number and a CRC; copy 1 written and flushed before copy 2) and only then tells the \
writer that the write succeeded. Later reads and writes of the sector go to its replacement. After \
a crash the table reads back as it was before or after the last relocation; a copy damaged on \
disk is repaired from the other when the LV is next served. When the pool is used up, a write to a \
failing sector fails with an error that says so, and `lv list` shows the pool full.

What it does not do: it cannot bring back data from a sector that can no longer be READ \
(relocation happens on writes; a failed read stays an error, so keep backups or use raid1); it \
does not survive the loss of a whole disk; it does not notice a disk that returns wrong data \
without an error. Disks remap bad sectors themselves, so a write that fails means the disk's own \
spare sectors ran out: plan to replace it.

The pool takes about 0.1% of the LV (at least 248 sectors, at most 64 MiB; --bbr-pool sets it), \
and the LV's usable size is smaller by the pool and its two tables. lvm2 sees a linear LV tagged \
tessera_bbr:v1:... and flagged to be skipped by vgchange -ay: activating it with lvm2 (-K) would \
read relocated sectors from the bad sectors themselves. Serve it with tessera serve; the kernel \
has no bbr target. `tessera lv list -o +bbr_relocated,bbr_pool,bbr_state` shows how many sectors \
were relocated.";

/// Creates a BBR LV: in this process, after making sure no daemon serves the VG.
pub fn create(
    engine: &Engine,
    socket: &Path,
    vg: &str,
    lv: &str,
    options: &LvCreateOptions,
    pool: Option<u64>,
) -> Result<String> {
    crate::refuse_if_served(socket, vg)?;
    let made = engine.lv_create_bbr(vg, lv, options, pool)?;
    let scan = engine.scan()?;
    let state = scan
        .vg(vg)
        .ok_or_else(|| anyhow::anyhow!("volume group '{vg}' vanished after the LV was made"))?;
    let g = tessera_engine::bbr::geometry(&state.vg, &made)?
        .ok_or_else(|| anyhow::anyhow!("LV '{lv}' was made without its BBR tag"))?;
    Ok(format!(
        "  Logical volume \"{lv}\" created: {} MiB of data, {} replacement sectors for bad blocks \
         (tables at LV sectors {} and {}).\n",
        g.data_sectors / 2048,
        g.pool_sectors,
        g.table1,
        g.table2
    ))
}
