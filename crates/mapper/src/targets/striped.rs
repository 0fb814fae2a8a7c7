//! `striped <#stripes> <chunk_sectors> (<device> <offset>)...`: chunks of the row go to the
//! stripes in turn, as dm-stripe maps them. As in the kernel, the chunk size may be any
//! number of sectors (lvm2 only writes powers of two), the row's length must divide evenly
//! into stripes, and each stripe's share must be whole chunks.

use std::sync::atomic::{AtomicU32, Ordering};

use tessera_block::{BlockDevice, Result, SharedDevice};

use super::byte_offset;
use crate::table::escape_arg;
use crate::target::{StatusType, Target, TargetArgs, TargetError};
use crate::SECTOR_BYTES;

struct Stripe {
    name: String,
    dev: SharedDevice,
    start: u64,
    /// I/O errors seen, for the A/D health letters of `dmsetup status`.
    errors: AtomicU32,
}

struct Striped {
    chunk: u64,
    stripes: Vec<Stripe>,
}

pub(super) fn construct(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    let mut r = args.reader();
    let count: u32 = r.number("#stripes")?;
    let chunk: u32 = r.number("chunk_sectors")?;
    if count == 0 {
        return Err(TargetError::Invalid(
            "the stripe count must be at least 1".into(),
        ));
    }
    if chunk == 0 {
        return Err(TargetError::Invalid(
            "the chunk size must be at least 1 sector".into(),
        ));
    }
    let (count, chunk) = (u64::from(count), u64::from(chunk));
    // Check the count before allocating anything sized by it.
    if r.remaining() as u64 != 2 * count {
        return Err(TargetError::Invalid(format!(
            "{count} stripes need {} <device> <offset> arguments after the chunk size, found {}",
            2 * count,
            r.remaining()
        )));
    }
    let len = args.length_sectors;
    if len % count != 0 {
        return Err(TargetError::Invalid(format!(
            "the row's length ({len} sectors) does not divide into {count} stripes"
        )));
    }
    let width = len / count;
    if width % chunk != 0 {
        return Err(TargetError::Invalid(format!(
            "each stripe's share ({width} sectors) is not a whole number of {chunk}-sector chunks"
        )));
    }
    let mut stripes = Vec::new();
    for _ in 0..count {
        let name = r.next("device")?;
        let start = r.number("offset")?;
        let dev = args.open(name, start, width)?;
        stripes.push(Stripe {
            name: name.to_string(),
            dev,
            start,
            errors: AtomicU32::new(0),
        });
    }
    Ok(Box::new(Striped { chunk, stripes }))
}

impl Striped {
    /// Where `sector` of the row lives: stripe index, sector on that stripe, and how many
    /// sectors remain in its chunk (dm-stripe's `stripe_map_sector`).
    fn map(&self, sector: u64) -> (usize, u64, u64) {
        let n = self.stripes.len() as u64;
        let (chunk, within) = (sector / self.chunk, sector % self.chunk);
        let stripe = (chunk % n) as usize;
        (
            stripe,
            (chunk / n) * self.chunk + within,
            self.chunk - within,
        )
    }

    /// Where the range starting or ending at `sector` begins or ends on stripe `target`
    /// (dm-stripe's `stripe_map_range_sector`): a contiguous range of the row covers one
    /// contiguous range on each stripe.
    fn range_edge(&self, sector: u64, target: usize) -> u64 {
        let (stripe, on_stripe, _) = self.map(sector);
        if stripe == target {
            return on_stripe;
        }
        let chunk_start = on_stripe - on_stripe % self.chunk;
        if target < stripe {
            chunk_start + self.chunk
        } else {
            chunk_start
        }
    }

    /// Runs `io` on each chunk-sized piece: (stripe, byte offset on it, piece's byte range
    /// in the request).
    fn each_piece(
        &self,
        sector: u64,
        len_bytes: usize,
        mut io: impl FnMut(&Stripe, u64, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0usize;
        while done < len_bytes {
            let (index, on_stripe, left) = self.map(sector + (done as u64) / SECTOR_BYTES);
            let stripe = &self.stripes[index];
            let n = (len_bytes - done).min((left * SECTOR_BYTES).try_into().unwrap_or(usize::MAX));
            io(stripe, byte_offset(stripe.start, on_stripe), done..done + n)
                .inspect_err(|_| stripe.note_error())?;
            done += n;
        }
        Ok(())
    }

    /// Runs `op` once per stripe on the stripe's part of a range of the row.
    fn each_stripe_range(
        &self,
        sector: u64,
        len_sectors: u64,
        op: impl Fn(&dyn BlockDevice, u64, u64) -> Result<()>,
    ) -> Result<()> {
        for (index, stripe) in self.stripes.iter().enumerate() {
            let begin = self.range_edge(sector, index);
            let end = self.range_edge(sector + len_sectors, index);
            if begin < end {
                let len = (end - begin) * SECTOR_BYTES;
                op(&*stripe.dev, byte_offset(stripe.start, begin), len)
                    .inspect_err(|_| stripe.note_error())?;
            }
        }
        Ok(())
    }
}

impl Stripe {
    fn note_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

impl Target for Striped {
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<()> {
        self.each_piece(sector, buf.len(), |s, offset, range| {
            s.dev.read_at(&mut buf[range], offset)
        })
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<()> {
        self.each_piece(sector, buf.len(), |s, offset, range| {
            s.dev.write_at(&buf[range], offset)
        })
    }

    fn flush(&self) -> Result<()> {
        // Flush every stripe even if one fails, then report the first failure.
        let mut first = Ok(());
        for s in &self.stripes {
            if let Err(e) = s.dev.flush() {
                s.note_error();
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    fn discard(&self, sector: u64, len_sectors: u64) -> Result<()> {
        self.each_stripe_range(sector, len_sectors, |dev, offset, len| {
            dev.discard(offset, len)
        })
    }

    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> Result<()> {
        self.each_stripe_range(sector, len_sectors, |dev, offset, len| {
            dev.write_zeroes(offset, len)
        })
    }

    fn status(&self, kind: StatusType) -> String {
        let n = self.stripes.len();
        match kind {
            // "<#stripes> <dev>... 1 <A|D per stripe>", as dm-stripe prints.
            StatusType::Info => {
                let names: String = self
                    .stripes
                    .iter()
                    .map(|s| format!("{} ", escape_arg(&s.name)))
                    .collect();
                let health: String = self
                    .stripes
                    .iter()
                    .map(|s| match s.errors.load(Ordering::Relaxed) {
                        0 => 'A',
                        _ => 'D',
                    })
                    .collect();
                format!("{n} {names}1 {health}")
            }
            StatusType::Table => {
                let mut out = format!("{n} {}", self.chunk);
                for s in &self.stripes {
                    out.push_str(&format!(" {} {}", escape_arg(&s.name), s.start));
                }
                out
            }
        }
    }

    fn devices(&self) -> Vec<SharedDevice> {
        self.stripes.iter().map(|s| s.dev.clone()).collect()
    }
}
