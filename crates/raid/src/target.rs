//! The `raid` target: an MD array run in user space, in dm-raid's table syntax,
//!
//! `raid <raid_type> <#params> <chunk_size> [data_offset <sectors>] [raid10_copies <n>]
//!  [raid10_format near|far|offset] [sync|nosync] <#devs> <meta_dev> <dev>...`
//!
//! with `-` for a missing device (and for the metadata devices, which tessera does not use
//! yet). Types are dm-raid's (raid0, raid1, raid10, raid4 = parity on the first member,
//! raid5_la/ra/ls/rs/n, raid6_zr/nr/nc/n_6/la_6/ra_6/ls_6/rs_6/0_6) plus the md raid6 layouts
//! dm-raid has no name for (raid6_la/ra/ls/rs/0/n, and raid5_0 for parity-first raid5), so
//! every array mdadm makes can be described. As dm-raid does, the per-member data size is
//! derived from the row's length.
//!
//! Reads of a present member go straight to it; a missing member's data is rebuilt from the
//! rest of its stripe (one member for raid5, any two for raid6). Writes to parity levels
//! lock their stripe, then either read-modify-write (few chunks of a raid5 stripe touched)
//! or reconstruct-write (the rest of the stripe read, parity computed anew; always when
//! degraded), so concurrent writers to one stripe never mix their parity updates.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, PoisonError};

use tessera_block::{BlockError, Result as BlockResult, SharedDevice};
use tessera_mapper::{escape_arg, StatusType, Target, TargetArgs, TargetError};

use crate::layout::{Geometry, Level, StripeInfo};
use crate::parity;

const SECTOR: u64 = 512;

/// dm-raid's type names (and tessera's additions) as md levels and layouts.
fn raid_type(name: &str) -> Option<(Level, u32)> {
    Some(match name {
        "raid0" => (Level::Raid0, 0),
        "raid1" => (Level::Raid1, 0),
        "raid10" => (Level::Raid10, 0x102),
        "raid4" | "raid5_0" => (Level::Raid5, 4),
        "raid5_la" => (Level::Raid5, 0),
        "raid5_ra" => (Level::Raid5, 1),
        "raid5_ls" => (Level::Raid5, 2),
        "raid5_rs" => (Level::Raid5, 3),
        "raid5_n" => (Level::Raid5, 5),
        "raid6_la" => (Level::Raid6, 0),
        "raid6_ra" => (Level::Raid6, 1),
        "raid6_ls" => (Level::Raid6, 2),
        "raid6_rs" => (Level::Raid6, 3),
        "raid6_0" => (Level::Raid6, 4),
        "raid6_n" | "raid6_n_6" => (Level::Raid6, 5),
        "raid6_zr" => (Level::Raid6, 8),
        "raid6_nr" => (Level::Raid6, 9),
        "raid6_nc" => (Level::Raid6, 10),
        "raid6_la_6" => (Level::Raid6, 16),
        "raid6_ra_6" => (Level::Raid6, 17),
        "raid6_ls_6" => (Level::Raid6, 18),
        "raid6_rs_6" => (Level::Raid6, 19),
        "raid6_0_6" => (Level::Raid6, 20),
        _ => return None,
    })
}

/// The dm-raid type name for an md level and layout (md's level 4 is raid5 with parity on
/// the last member), for building tables from superblocks.
pub fn type_name(level: i32, layout: u32) -> Option<&'static str> {
    Some(match (level, layout) {
        (0, _) => "raid0",
        (1, _) => "raid1",
        (10, _) => "raid10",
        (4, _) => "raid5_n",
        (5, 0) => "raid5_la",
        (5, 1) => "raid5_ra",
        (5, 2) => "raid5_ls",
        (5, 3) => "raid5_rs",
        (5, 4) => "raid5_0",
        (5, 5) => "raid5_n",
        (6, 0) => "raid6_la",
        (6, 1) => "raid6_ra",
        (6, 2) => "raid6_ls",
        (6, 3) => "raid6_rs",
        (6, 4) => "raid6_0",
        (6, 5) => "raid6_n_6",
        (6, 8) => "raid6_zr",
        (6, 9) => "raid6_nr",
        (6, 10) => "raid6_nc",
        (6, 16) => "raid6_la_6",
        (6, 17) => "raid6_ra_6",
        (6, 18) => "raid6_ls_6",
        (6, 19) => "raid6_rs_6",
        (6, 20) => "raid6_0_6",
        _ => return None,
    })
}

/// md's raid10 layout word from dm-raid's copies and format.
fn raid10_layout(copies: u32, format: &str) -> Option<u32> {
    Some(match format {
        "near" => copies | (1 << 8),
        "far" => 1 | (copies << 8),
        "offset" => 1 | (copies << 8) | (1 << 16),
        _ => return None,
    })
}

/// Stripes being written (or rebuilt for a degraded read), so that two of them never
/// interleave their reads and writes of one stripe.
#[derive(Default)]
struct StripeLocks {
    held: Mutex<HashSet<u64>>,
    released: Condvar,
}

struct StripeGuard<'a> {
    locks: &'a StripeLocks,
    stripe: u64,
}

impl StripeLocks {
    fn lock(&self, stripe: u64) -> StripeGuard<'_> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while held.contains(&stripe) {
            held = self
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        held.insert(stripe);
        StripeGuard {
            locks: self,
            stripe,
        }
    }
}

impl Drop for StripeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self
            .locks
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.remove(&self.stripe);
        self.locks.released.notify_all();
    }
}

pub struct Raid {
    type_name: String,
    params: Vec<String>,
    geo: Geometry,
    chunk_sectors: u64,
    data_offset: u64,
    /// The members in slot order; `None` where one is missing.
    members: Vec<Option<SharedDevice>>,
    names: Vec<String>,
    locks: StripeLocks,
}

/// Builds the target from its table row; registered as `raid`.
pub fn construct(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    let mut r = args.reader();
    let type_name = r.next("raid_type")?;
    let (level, mut layout) = raid_type(type_name)
        .ok_or_else(|| TargetError::Invalid(format!("unknown raid type {type_name:?}")))?;
    let nparams: usize = r.number("#raid_params")?;
    if nparams == 0 {
        return Err(TargetError::Missing("chunk_size"));
    }
    let chunk_sectors: u64 = r.number("chunk_size")?;
    if chunk_sectors == 0 && level != Level::Raid1 {
        return Err(TargetError::Invalid(
            "chunk_size 0: only raid1 has no chunks".into(),
        ));
    }
    let mut params = vec![chunk_sectors.to_string()];
    let mut data_offset = 0u64;
    let mut copies = 2u32;
    let mut format = "near".to_string();
    let mut left = nparams - 1;
    while left > 0 {
        let key = r.next("raid_param")?;
        params.push(key.to_string());
        left -= 1;
        match key {
            "sync" | "nosync" => continue,
            "data_offset" | "raid10_copies" | "raid10_format" | "region_size" | "stripe_cache"
            | "min_recovery_rate" | "max_recovery_rate" | "rebuild" | "write_mostly"
            | "max_write_behind" | "daemon_sleep" => {}
            other => {
                return Err(TargetError::Invalid(format!(
                    "unknown raid parameter {other:?}"
                )))
            }
        }
        if left == 0 {
            return Err(TargetError::Missing("raid parameter value"));
        }
        let value = r.next("raid parameter value")?;
        params.push(value.to_string());
        left -= 1;
        match key {
            "data_offset" => data_offset = parse(value, "data_offset")?,
            "raid10_copies" => copies = parse(value, "raid10_copies")?,
            "raid10_format" => format = value.to_string(),
            _ => {}
        }
    }
    if level == Level::Raid10 {
        layout = raid10_layout(copies, &format).ok_or_else(|| {
            TargetError::Invalid(format!("raid10_format {format:?}: near, far or offset"))
        })?;
    }
    let ndevs: usize = r.number("#raid_devs")?;
    if ndevs == 0 || ndevs > 256 {
        return Err(TargetError::Invalid(format!(
            "{ndevs} devices: a raid set has 1 to 256"
        )));
    }
    let mut names = Vec::with_capacity(ndevs);
    let mut devices = Vec::with_capacity(ndevs);
    for _ in 0..ndevs {
        let meta = r.next("meta_dev")?;
        if meta != "-" {
            return Err(TargetError::Unsupported(format!(
                "metadata device {meta:?} (give '-')"
            )));
        }
        names.push(r.next("data_dev")?.to_string());
    }
    r.finish()?;

    // raid1 has no chunks; I/O is still split into pieces of this size to spread reads.
    let chunk_sectors = if level == Level::Raid1 {
        chunk_sectors.max(128)
    } else {
        chunk_sectors
    };
    let member_sectors = member_sectors(
        level,
        layout,
        ndevs as u64,
        chunk_sectors,
        args.length_sectors,
    )
    .ok_or_else(|| {
        TargetError::Invalid("the raid set's size does not divide among its members".into())
    })?;
    let geo = Geometry::new(
        level,
        layout,
        chunk_sectors,
        ndevs,
        &vec![member_sectors; ndevs],
    )
    .map_err(|e| TargetError::Invalid(e.to_string()))?;
    if geo.array_sectors() < args.length_sectors {
        return Err(TargetError::Invalid(format!(
            "the row is {} sectors, the raid set holds {}",
            args.length_sectors,
            geo.array_sectors()
        )));
    }
    for name in &names {
        devices.push(if name == "-" {
            None
        } else {
            Some(args.open(name, data_offset, member_sectors)?)
        });
    }
    let missing = devices.iter().filter(|d| d.is_none()).count();
    let tolerated = match level {
        Level::Raid0 => 0,
        Level::Raid1 => ndevs - 1,
        Level::Raid4 | Level::Raid5 => 1,
        Level::Raid6 => 2,
        Level::Raid10 => ndevs - 1,
    };
    if missing > tolerated {
        return Err(TargetError::Invalid(format!(
            "{missing} of {ndevs} devices missing; {type_name} survives {tolerated}"
        )));
    }
    Ok(Box::new(Raid {
        type_name: type_name.to_string(),
        params,
        geo,
        chunk_sectors,
        data_offset,
        members: devices,
        names,
        locks: StripeLocks::default(),
    }))
}

fn parse<T: std::str::FromStr>(value: &str, what: &'static str) -> Result<T, TargetError> {
    value.parse().map_err(|_| TargetError::BadNumber {
        what,
        value: value.to_string(),
    })
}

/// The data sectors each member contributes to a row of `len` sectors, as dm-raid derives
/// them.
fn member_sectors(level: Level, layout: u32, n: u64, chunk: u64, len: u64) -> Option<u64> {
    let per = match level {
        Level::Raid0 => len.div_ceil(n),
        Level::Raid1 => len,
        Level::Raid4 | Level::Raid5 => len.div_ceil(n.checked_sub(1).filter(|&d| d > 0)?),
        Level::Raid6 => len.div_ceil(n.checked_sub(2).filter(|&d| d > 0)?),
        Level::Raid10 => {
            let near = u64::from(layout & 0xff).max(1);
            let far = u64::from((layout >> 8) & 0xff).max(1);
            len.checked_mul(near * far)?.div_ceil(n)
        }
    };
    // Whole chunks, as md sizes members.
    per.checked_next_multiple_of(chunk.max(1))
}

impl Raid {
    fn member(&self, index: usize) -> Option<&SharedDevice> {
        self.members.get(index).and_then(Option::as_ref)
    }

    fn at(&self, member_sector: u64) -> u64 {
        (self.data_offset + member_sector) * SECTOR
    }

    fn missing(&self, index: usize) -> BlockError {
        BlockError::Io {
            device: self.names.get(index).cloned().unwrap_or_default(),
            offset: 0,
            len: 0,
            source: std::io::Error::other("member missing and no redundancy to rebuild it"),
        }
    }

    fn is_parity_level(&self) -> bool {
        matches!(self.geo.level(), Level::Raid4 | Level::Raid5 | Level::Raid6)
    }

    /// Splits `len` sectors from `sector` at chunk boundaries: (sector, sectors, byte index).
    fn pieces(&self, sector: u64, len: u64) -> Vec<(u64, u64, usize)> {
        let mut out = Vec::new();
        let mut s = sector;
        let end = sector + len;
        while s < end {
            let in_chunk = self.chunk_sectors - s % self.chunk_sectors;
            let n = in_chunk.min(end - s);
            out.push((s, n, ((s - sector) * SECTOR) as usize));
            s += n;
        }
        out
    }

    fn read_mirrored(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        for (s, n, at) in self.pieces(sector, buf.len() as u64 / SECTOR) {
            let piece = &mut buf[at..at + (n * SECTOR) as usize];
            let copies = self.geo.data_location(s);
            // Spread reads over the copies, one chunk to each in turn.
            let turn = (s / self.chunk_sectors) as usize;
            let present: Vec<&(usize, u64)> = copies
                .iter()
                .filter(|(m, _)| self.member(*m).is_some())
                .collect();
            let Some(&&(m, ms)) = present.get(turn % present.len().max(1)) else {
                return Err(self.missing(copies.first().map_or(0, |c| c.0)));
            };
            self.member(m)
                .expect("present")
                .read_at(piece, self.at(ms))?;
        }
        Ok(())
    }

    fn write_mirrored(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        for (s, n, at) in self.pieces(sector, buf.len() as u64 / SECTOR) {
            let piece = &buf[at..at + (n * SECTOR) as usize];
            let mut written = false;
            for (m, ms) in self.geo.data_location(s) {
                if let Some(dev) = self.member(m) {
                    dev.write_at(piece, self.at(ms))?;
                    written = true;
                }
            }
            if !written {
                return Err(self.missing(0));
            }
        }
        Ok(())
    }

    /// Reads rows `[lo, lo + len)` (sectors within the chunk) of every member of a stripe
    /// that is present, `None` for the missing ones.
    fn read_rows(&self, info: &StripeInfo, lo: u64, len: u64) -> BlockResult<Vec<Option<Vec<u8>>>> {
        let mut rows = Vec::with_capacity(self.members.len());
        for m in 0..self.members.len() {
            rows.push(match self.member(m) {
                Some(dev) => {
                    let mut b = vec![0u8; (len * SECTOR) as usize];
                    dev.read_at(&mut b, self.at(info.member_sector + lo))?;
                    Some(b)
                }
                None => None,
            });
        }
        Ok(rows)
    }

    /// Fills in the missing members' rows from the others' (data, P and Q alike).
    fn rebuild(&self, info: &StripeInfo, rows: &mut [Option<Vec<u8>>]) -> BlockResult<()> {
        let missing: Vec<usize> = (0..rows.len()).filter(|&m| rows[m].is_none()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let len = rows.iter().flatten().next().map_or(0, Vec::len);
        let data_missing: Vec<usize> = info
            .data
            .iter()
            .enumerate()
            .filter(|(_, m)| rows[**m].is_none())
            .map(|(i, _)| i)
            .collect();
        let p_missing = rows[info.p].is_none();
        let q_missing = info.q.is_some_and(|q| rows[q].is_none());
        match (data_missing.as_slice(), p_missing) {
            ([], _) => {}
            ([i], false) => {
                // XOR of P and the other data.
                let mut out = rows[info.p].clone().expect("P present");
                for (j, m) in info.data.iter().enumerate() {
                    if j != *i {
                        parity::xor_into(&mut out, rows[*m].as_deref().expect("present"));
                    }
                }
                rows[info.data[*i]] = Some(out);
            }
            ([i], true) => {
                let q = info
                    .q
                    .and_then(|q| rows[q].clone())
                    .ok_or_else(|| self.missing(info.p))?;
                let data: Vec<Option<&[u8]>> = self.syndrome_order(info, rows);
                let mut out = vec![0u8; len];
                parity::recover_one_from_q(&data, self.syndrome_index(info, *i), &q, &mut out);
                rows[info.data[*i]] = Some(out);
            }
            ([a, b], false) if info.q.is_some() && !q_missing => {
                let p = rows[info.p].clone().expect("P present");
                let q = rows[info.q.expect("raid6")].clone().expect("Q present");
                let data = self.syndrome_order(info, rows);
                let (mut oa, mut ob) = (vec![0u8; len], vec![0u8; len]);
                parity::recover_two(
                    &data,
                    self.syndrome_index(info, *a),
                    self.syndrome_index(info, *b),
                    &p,
                    &q,
                    &mut oa,
                    &mut ob,
                );
                rows[info.data[*a]] = Some(oa);
                rows[info.data[*b]] = Some(ob);
            }
            _ => return Err(self.missing(missing[0])),
        }
        // Parity rows that are missing are recomputed from the (now whole) data.
        if p_missing || q_missing {
            let (p, q) = self.compute_parity(info, rows, len);
            if p_missing {
                rows[info.p] = Some(p);
            }
            if let (true, Some(qi), Some(q)) = (q_missing, info.q, q) {
                rows[qi] = Some(q);
            }
        }
        Ok(())
    }

    /// The data rows in the order of the Q syndrome's coefficients.
    fn syndrome_order<'a>(
        &self,
        info: &StripeInfo,
        rows: &'a [Option<Vec<u8>>],
    ) -> Vec<Option<&'a [u8]>> {
        info.syndrome
            .iter()
            .map(|slot| slot.and_then(|m| rows[m].as_deref()))
            .collect()
    }

    /// Where data index `i` of the stripe sits in the syndrome.
    fn syndrome_index(&self, info: &StripeInfo, i: usize) -> usize {
        let member = info.data[i];
        info.syndrome
            .iter()
            .position(|s| *s == Some(member))
            .expect("every data member is in the syndrome")
    }

    fn compute_parity(
        &self,
        info: &StripeInfo,
        rows: &[Option<Vec<u8>>],
        len: usize,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut p = vec![0u8; len];
        match info.q {
            None => {
                let data: Vec<&[u8]> = info
                    .data
                    .iter()
                    .map(|m| rows[*m].as_deref().expect("whole"))
                    .collect();
                parity::xor_blocks(&mut p, &data);
                (p, None)
            }
            Some(_) => {
                let zero = vec![0u8; len];
                let data: Vec<&[u8]> = info
                    .syndrome
                    .iter()
                    .map(|slot| slot.and_then(|m| rows[m].as_deref()).unwrap_or(&zero))
                    .collect();
                let mut q = vec![0u8; len];
                parity::gen_pq(&data, &mut p, &mut q);
                (p, Some(q))
            }
        }
    }

    fn read_parity_level(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        for (s, n, at) in self.pieces(sector, buf.len() as u64 / SECTOR) {
            let piece = &mut buf[at..at + (n * SECTOR) as usize];
            let info = self.geo.stripe_of(s);
            let i = ((s / self.chunk_sectors) % info.data.len() as u64) as usize;
            let off = s % self.chunk_sectors;
            let member = info.data[i];
            if let Some(dev) = self.member(member) {
                dev.read_at(piece, self.at(info.member_sector + off))?;
                continue;
            }
            let _stripe = self.locks.lock(info.stripe);
            let mut rows = self.read_rows(&info, off, n)?;
            self.rebuild(&info, &mut rows)?;
            piece.copy_from_slice(rows[member].as_deref().expect("rebuilt"));
        }
        Ok(())
    }

    fn write_parity_level(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        let pieces = self.pieces(sector, buf.len() as u64 / SECTOR);
        let mut k = 0;
        while k < pieces.len() {
            let info = self.geo.stripe_of(pieces[k].0);
            // The pieces of this write that fall in this stripe.
            let mut group = vec![pieces[k]];
            k += 1;
            while k < pieces.len() && self.geo.stripe_of(pieces[k].0).stripe == info.stripe {
                group.push(pieces[k]);
                k += 1;
            }
            let _stripe = self.locks.lock(info.stripe);
            self.write_stripe(&info, &group, buf)?;
        }
        Ok(())
    }

    /// Writes the pieces of one stripe and its new parity.
    fn write_stripe(
        &self,
        info: &StripeInfo,
        group: &[(u64, u64, usize)],
        buf: &[u8],
    ) -> BlockResult<()> {
        let ndata = info.data.len() as u64;
        let touched: Vec<(usize, u64, u64, usize)> = group
            .iter()
            .map(|&(s, n, at)| {
                (
                    ((s / self.chunk_sectors) % ndata) as usize,
                    s % self.chunk_sectors,
                    n,
                    at,
                )
            })
            .collect();
        let lo = touched.iter().map(|t| t.1).min().unwrap_or(0);
        let hi = touched.iter().map(|t| t.1 + t.2).max().unwrap_or(0);
        let degraded = self.members.iter().any(Option::is_none);
        if !degraded && info.q.is_none() && touched.len() * 2 < info.data.len() {
            return self.read_modify_write(info, &touched, buf);
        }
        // Reconstruct-write over rows [lo, hi): the new data laid over the rest of the
        // stripe's rows, parity computed anew. Whole stripes are taken as they come, with no
        // reads; otherwise only the data rows the write does not cover are read (all rows,
        // with the missing ones rebuilt, when degraded).
        let mut rows = if degraded {
            let mut rows = self.read_rows(info, lo, hi - lo)?;
            self.rebuild(info, &mut rows)?;
            rows
        } else {
            let len = ((hi - lo) * SECTOR) as usize;
            let mut rows: Vec<Option<Vec<u8>>> = vec![None; self.members.len()];
            for (i, &m) in info.data.iter().enumerate() {
                let covered = touched
                    .iter()
                    .any(|t| t.0 == i && t.1 <= lo && t.1 + t.2 >= hi);
                let mut row = vec![0u8; len];
                if !covered {
                    let dev = self.member(m).expect("not degraded");
                    dev.read_at(&mut row, self.at(info.member_sector + lo))?;
                }
                rows[m] = Some(row);
            }
            rows
        };
        for &(i, off, n, at) in &touched {
            let row = rows[info.data[i]].as_mut().expect("rebuilt");
            let from = ((off - lo) * SECTOR) as usize;
            row[from..from + (n * SECTOR) as usize]
                .copy_from_slice(&buf[at..at + (n * SECTOR) as usize]);
        }
        let (p, q) = self.compute_parity(info, &rows, ((hi - lo) * SECTOR) as usize);
        for &(i, off, n, at) in &touched {
            if let Some(dev) = self.member(info.data[i]) {
                dev.write_at(
                    &buf[at..at + (n * SECTOR) as usize],
                    self.at(info.member_sector + off),
                )?;
            }
        }
        if let Some(dev) = self.member(info.p) {
            dev.write_at(&p, self.at(info.member_sector + lo))?;
        }
        if let (Some(qi), Some(q)) = (info.q, q) {
            if let Some(dev) = self.member(qi) {
                dev.write_at(&q, self.at(info.member_sector + lo))?;
            }
        }
        Ok(())
    }

    /// raid4/5 with every member present and few chunks touched: new P = old P ^ old data ^
    /// new data, reading only what changes.
    fn read_modify_write(
        &self,
        info: &StripeInfo,
        touched: &[(usize, u64, u64, usize)],
        buf: &[u8],
    ) -> BlockResult<()> {
        let pdev = self.member(info.p).expect("not degraded");
        for &(i, off, n, at) in touched {
            let bytes = (n * SECTOR) as usize;
            let dev = self.member(info.data[i]).expect("not degraded");
            let mut old = vec![0u8; bytes];
            dev.read_at(&mut old, self.at(info.member_sector + off))?;
            let mut p = vec![0u8; bytes];
            pdev.read_at(&mut p, self.at(info.member_sector + off))?;
            let new = &buf[at..at + bytes];
            parity::xor_into(&mut p, &old);
            parity::xor_into(&mut p, new);
            dev.write_at(new, self.at(info.member_sector + off))?;
            pdev.write_at(&p, self.at(info.member_sector + off))?;
        }
        Ok(())
    }
}

impl Target for Raid {
    fn read(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        match self.geo.level() {
            Level::Raid0 | Level::Raid1 | Level::Raid10 => self.read_mirrored(sector, buf),
            _ => self.read_parity_level(sector, buf),
        }
    }

    fn write(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        match self.geo.level() {
            Level::Raid0 | Level::Raid1 | Level::Raid10 => self.write_mirrored(sector, buf),
            _ => self.write_parity_level(sector, buf),
        }
    }

    fn flush(&self) -> BlockResult<()> {
        for dev in self.members.iter().flatten() {
            dev.flush()?;
        }
        Ok(())
    }

    fn discard(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        // Parity levels keep their parity consistent by not discarding at all (a discard
        // may leave any data behind); the others pass it to every copy.
        if self.is_parity_level() {
            return Ok(());
        }
        for (s, n, _) in self.pieces(sector, len_sectors) {
            for (m, ms) in self.geo.data_location(s) {
                if let Some(dev) = self.member(m) {
                    dev.discard(self.at(ms), n * SECTOR)?;
                }
            }
        }
        Ok(())
    }

    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        if !self.is_parity_level() {
            for (s, n, _) in self.pieces(sector, len_sectors) {
                for (m, ms) in self.geo.data_location(s) {
                    if let Some(dev) = self.member(m) {
                        dev.write_zeroes(self.at(ms), n * SECTOR)?;
                    }
                }
            }
            return Ok(());
        }
        // Through the write path, so parity follows; 1 MiB at a time.
        let step = 2048;
        let zeros = vec![0u8; (step.min(len_sectors) * SECTOR) as usize];
        let mut s = sector;
        let end = sector + len_sectors;
        while s < end {
            let n = step.min(end - s);
            self.write_parity_level(s, &zeros[..(n * SECTOR) as usize])?;
            s += n;
        }
        Ok(())
    }

    fn status(&self, kind: StatusType) -> String {
        match kind {
            StatusType::Info => {
                let health: String = self
                    .members
                    .iter()
                    .map(|m| if m.is_some() { 'A' } else { 'D' })
                    .collect();
                let size = self.geo.array_sectors();
                format!(
                    "{} {} {health} {size}/{size} idle 0",
                    self.type_name,
                    self.members.len()
                )
            }
            StatusType::Table => {
                let devs: Vec<String> = self
                    .names
                    .iter()
                    .map(|n| format!("- {}", escape_arg(n)))
                    .collect();
                format!(
                    "{} {} {} {} {}",
                    self.type_name,
                    self.params.len(),
                    self.params.join(" "),
                    self.names.len(),
                    devs.join(" ")
                )
            }
        }
    }

    fn devices(&self) -> Vec<SharedDevice> {
        self.members.iter().flatten().cloned().collect()
    }
}
