//! `flakey <device> <offset> <up_seconds> <down_seconds> [<#features> <feature>...]`: a
//! linear mapping that works for `up_seconds`, then misbehaves for `down_seconds`, in a cycle
//! that starts when the table is loaded, as dm-flakey does.
//!
//! Features: `error_reads`, `drop_writes` (writes succeed but are thrown away),
//! `error_writes`, `corrupt_bio_byte <nth> <r|w> <value> <flags>` (while down, byte `nth`,
//! from 1, of each read or write request is replaced by `value`; tessera's requests carry no
//! flags, so only `flags` 0 matches). With no features, reads and writes both fail while down.
//! Writes include discards, write-zeroes and flushes.

use std::time::Instant;

use tessera_block::{BlockError, Result, SharedDevice};

use super::byte_offset;
use crate::table::escape_arg;
use crate::target::{ArgReader, StatusType, Target, TargetArgs, TargetError};
use crate::SECTOR_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy)]
struct Corrupt {
    /// 1-based byte index into a request.
    nth: u32,
    direction: Direction,
    value: u8,
    flags: u32,
}

#[derive(Debug, Default)]
struct Features {
    error_reads: bool,
    drop_writes: bool,
    error_writes: bool,
    corrupt: Option<Corrupt>,
}

struct Flakey {
    name: String,
    dev: SharedDevice,
    start: u64,
    up: u32,
    down: u32,
    features: Features,
    loaded: Instant,
    /// The mapped device and the row's start, to name injected errors.
    device: String,
    begin: u64,
}

pub(super) fn construct(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    let mut r = args.reader();
    let name = r.next("device")?;
    let start = r.number("offset")?;
    let up: u32 = r.number("up_interval")?;
    let down: u32 = r.number("down_interval")?;
    match up.checked_add(down) {
        Some(0) => {
            return Err(TargetError::Invalid(
                "the up and down intervals are both 0".into(),
            ))
        }
        None => return Err(TargetError::Invalid("up + down interval overflows".into())),
        Some(_) => {}
    }
    let features = parse_features(&mut r)?;
    r.finish()?;
    let dev = args.open(name, start, args.length_sectors)?;
    Ok(Box::new(Flakey {
        name: name.to_string(),
        dev,
        start,
        up,
        down,
        features,
        loaded: Instant::now(),
        device: args.device.to_string(),
        begin: args.start_sectors,
    }))
}

/// Parses the optional feature group with dm-flakey's rules.
fn parse_features(r: &mut ArgReader<'_>) -> Result<Features, TargetError> {
    let invalid = |s: &str| Err(TargetError::Invalid(s.to_string()));
    let mut f = Features::default();
    let mut count: u32 = if r.remaining() > 0 {
        r.number("#features")?
    } else {
        0
    };
    if count > 11 {
        return invalid("the feature count must be at most 11");
    }
    if count as usize > r.remaining() {
        return Err(TargetError::Invalid(format!(
            "{count} feature arguments announced, {} given",
            r.remaining()
        )));
    }
    while count > 0 {
        let feature = r.next("feature")?;
        count -= 1;
        let set = |flag: &mut bool| {
            if std::mem::replace(flag, true) {
                return Err(TargetError::Invalid(format!(
                    "feature {feature} given twice"
                )));
            }
            Ok(())
        };
        match feature.to_ascii_lowercase().as_str() {
            "error_reads" => set(&mut f.error_reads)?,
            "drop_writes" if f.error_writes => {
                return invalid("drop_writes conflicts with error_writes")
            }
            "drop_writes" => set(&mut f.drop_writes)?,
            "error_writes" if f.drop_writes => {
                return invalid("error_writes conflicts with drop_writes")
            }
            "error_writes" => set(&mut f.error_writes)?,
            "corrupt_bio_byte" => {
                if f.corrupt.is_some() {
                    return invalid("feature corrupt_bio_byte given twice");
                }
                if count < 4 {
                    return invalid(
                        "corrupt_bio_byte needs 4 parameters: <nth_byte> <r|w> <value> <flags>",
                    );
                }
                count -= 4;
                let nth: u32 = r.number("nth_byte")?;
                if nth == 0 {
                    return invalid("corrupt_bio_byte counts bytes from 1");
                }
                let direction = match r.next("direction")? {
                    d if d.eq_ignore_ascii_case("r") => Direction::Read,
                    d if d.eq_ignore_ascii_case("w") => Direction::Write,
                    d => {
                        return Err(TargetError::Invalid(format!(
                            "corrupt_bio_byte direction {d:?} is not r or w"
                        )))
                    }
                };
                let value = r.number("value")?;
                let flags = r.number("flags")?;
                f.corrupt = Some(Corrupt {
                    nth,
                    direction,
                    value,
                    flags,
                });
            }
            "random_read_corrupt" | "random_write_corrupt" => {
                return Err(TargetError::Unsupported(format!(
                    "flakey feature {feature}"
                )))
            }
            _ => {
                return Err(TargetError::Invalid(format!(
                    "unknown flakey feature {feature:?}"
                )))
            }
        }
    }
    let corrupts = |d| f.corrupt.is_some_and(|c| c.direction == d);
    if (f.drop_writes || f.error_writes) && corrupts(Direction::Write) {
        return invalid("drop_writes and error_writes exclude corrupt_bio_byte on writes");
    }
    if f.error_reads && corrupts(Direction::Read) {
        return invalid("error_reads excludes corrupt_bio_byte on reads");
    }
    // Nothing asked for: fail everything while down.
    if !f.error_reads && !f.drop_writes && !f.error_writes && f.corrupt.is_none() {
        f.error_reads = true;
        f.error_writes = true;
    }
    Ok(f)
}

/// True if `elapsed_secs` after loading falls in a down interval.
fn is_down(elapsed_secs: u64, up: u32, down: u32) -> bool {
    elapsed_secs % (u64::from(up) + u64::from(down)) >= u64::from(up)
}

/// What happens to a write while down.
enum WriteFate {
    Pass,
    Drop,
    Fail,
}

impl Flakey {
    fn down(&self) -> bool {
        is_down(self.loaded.elapsed().as_secs(), self.up, self.down)
    }

    fn injected(&self, sector: u64) -> BlockError {
        BlockError::Injected {
            device: self.device.clone(),
            offset: byte_offset(self.begin, sector),
        }
    }

    fn write_fate(&self, down: bool) -> WriteFate {
        if !down {
            WriteFate::Pass
        } else if self.features.drop_writes {
            WriteFate::Drop
        } else if self.features.error_writes {
            WriteFate::Fail
        } else {
            WriteFate::Pass
        }
    }

    /// The corruption configured for requests in `direction`: (byte index, value).
    fn corruption(&self, direction: Direction) -> Option<(usize, u8)> {
        let c = self.features.corrupt?;
        (c.direction == direction && c.flags == 0).then(|| (c.nth as usize - 1, c.value))
    }

    /// Passes a data-less write (discard, write-zeroes, flush) through, drops or fails it.
    fn dataless(&self, sector: u64, op: impl FnOnce() -> Result<()>) -> Result<()> {
        match self.write_fate(self.down()) {
            WriteFate::Pass => op(),
            WriteFate::Drop => Ok(()),
            WriteFate::Fail => Err(self.injected(sector)),
        }
    }
}

impl Target for Flakey {
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<()> {
        let down = self.down();
        if down && self.features.error_reads {
            return Err(self.injected(sector));
        }
        self.dev.read_at(buf, byte_offset(self.start, sector))?;
        if let Some((nth, value)) = self.corruption(Direction::Read).filter(|_| down) {
            if let Some(b) = buf.get_mut(nth) {
                *b = value;
            }
        }
        Ok(())
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<()> {
        let offset = byte_offset(self.start, sector);
        let down = self.down();
        match self.write_fate(down) {
            WriteFate::Drop => Ok(()),
            WriteFate::Fail => Err(self.injected(sector)),
            WriteFate::Pass => match self.corruption(Direction::Write).filter(|_| down) {
                Some((nth, value)) if nth < buf.len() => {
                    let mut copy = buf.to_vec();
                    copy[nth] = value;
                    self.dev.write_at(&copy, offset)
                }
                _ => self.dev.write_at(buf, offset),
            },
        }
    }

    fn flush(&self) -> Result<()> {
        self.dataless(0, || self.dev.flush())
    }

    fn discard(&self, sector: u64, len_sectors: u64) -> Result<()> {
        self.dataless(sector, || {
            let offset = byte_offset(self.start, sector);
            self.dev.discard(offset, len_sectors * SECTOR_BYTES)
        })
    }

    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> Result<()> {
        self.dataless(sector, || {
            let offset = byte_offset(self.start, sector);
            self.dev.write_zeroes(offset, len_sectors * SECTOR_BYTES)
        })
    }

    fn status(&self, kind: StatusType) -> String {
        if kind == StatusType::Info {
            return String::new();
        }
        let f = &self.features;
        let mut words = Vec::new();
        if f.error_reads {
            words.push("error_reads".to_string());
        }
        if f.drop_writes {
            words.push("drop_writes".to_string());
        } else if f.error_writes {
            words.push("error_writes".to_string());
        }
        if let Some(c) = f.corrupt {
            let dir = if c.direction == Direction::Write {
                'w'
            } else {
                'r'
            };
            words.push(format!(
                "corrupt_bio_byte {} {dir} {} {}",
                c.nth, c.value, c.flags
            ));
        }
        // The count is of argument words, as dm-flakey prints it.
        let count = words.iter().map(|w| w.split(' ').count()).sum::<usize>();
        let mut out = format!(
            "{} {} {} {} {count}",
            escape_arg(&self.name),
            self.start,
            self.up,
            self.down
        );
        for w in words {
            out.push(' ');
            out.push_str(&w);
        }
        out
    }

    fn devices(&self) -> Vec<SharedDevice> {
        vec![self.dev.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::is_down;

    #[test]
    fn up_then_down_cycle() {
        let states: Vec<bool> = (0..7).map(|s| is_down(s, 2, 1)).collect();
        assert_eq!(states, [false, false, true, false, false, true, false]);
        assert!((0..5).all(|s| is_down(s, 0, 1)), "up 0: always down");
        assert!((0..5).all(|s| !is_down(s, 1, 0)), "down 0: always up");
        // Largest values: no overflow.
        let _ = is_down(u64::MAX, u32::MAX, u32::MAX);
    }
}
