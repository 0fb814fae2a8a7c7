//! A device's table of known-bad sector ranges, with md's rules (linux block/badblocks.c):
//! ranges are kept in blocks of `1 << shift` sectors, sorted and merged; each table entry
//! covers at most [`MAX_LEN`] blocks; the table holds at most `capacity` entries (md's one
//! page, [`MAX_ENTRIES`]); a range is "acknowledged" once it is durable in the device's
//! bad-block log. Setting a range rounds it out to whole blocks, clearing rounds it in.

/// Blocks one entry covers at most (md's BB_MAX_LEN).
pub const MAX_LEN: u64 = 512;
/// Entries md keeps per device: one 4 KiB page of 64-bit entries (MAX_BADBLOCKS).
pub const MAX_ENTRIES: usize = 512;
/// Sectors md can name: entries keep 54 bits of block number.
pub const MAX_SECTOR: u64 = (1 << 54) - 1;

/// One entry as md keeps it: start and length in sectors, acknowledged or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRange {
    pub start: u64,
    pub len: u64,
    pub acked: bool,
}

/// What [`BadBlocks::check`] finds in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadHit {
    /// The first bad sector in the range, and how many bad sectors follow it there.
    pub first: u64,
    pub sectors: u64,
    /// Every bad sector in the range is acknowledged.
    pub acked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBlocks {
    shift: u32,
    capacity: usize,
    /// Disjoint runs `(start, end, acked)` in blocks, sorted; neighbouring runs with the
    /// same acknowledgement are merged.
    runs: Vec<(u64, u64, bool)>,
}

impl BadBlocks {
    /// An empty table of blocks of `1 << shift` sectors holding up to `capacity` entries.
    /// `shift` is capped so that block arithmetic cannot overflow.
    pub fn new(shift: u32, capacity: usize) -> BadBlocks {
        BadBlocks {
            shift: shift.min(16),
            capacity: capacity.min(MAX_ENTRIES),
            runs: Vec::new(),
        }
    }

    pub fn shift(&self) -> u32 {
        self.shift
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Entries the table uses: each run split into pieces of at most [`MAX_LEN`] blocks.
    pub fn count(&self) -> usize {
        count_entries(&self.runs)
    }

    /// The entries, sorted, in sectors.
    pub fn entries(&self) -> Vec<BadRange> {
        let mut out = Vec::with_capacity(self.count());
        for &(s, e, acked) in &self.runs {
            let mut at = s;
            while at < e {
                let n = (e - at).min(MAX_LEN);
                out.push(BadRange {
                    start: at << self.shift,
                    len: n << self.shift,
                    acked,
                });
                at += n;
            }
        }
        out
    }

    /// Records `sectors` from `start` as bad. Returns false, leaving the table as it was,
    /// if it has no room for them (md then fails the device) or they lie past what a
    /// table can name.
    pub fn set(&mut self, start: u64, sectors: u64, acked: bool) -> bool {
        if sectors == 0 {
            return true;
        }
        let Some(end) = start.checked_add(sectors).filter(|&e| e <= MAX_SECTOR + 1) else {
            return false;
        };
        let unit = 1u64 << self.shift;
        let (s, e) = (start >> self.shift, end.div_ceil(unit));
        let mut next = Vec::with_capacity(self.runs.len() + 2);
        // The new range's blocks take the acknowledgement of either, sector by sector: a
        // block once durable in the log stays acknowledged.
        for &(rs, re, ra) in &self.runs {
            if re <= s || rs >= e {
                next.push((rs, re, ra));
                continue;
            }
            if rs < s {
                next.push((rs, s, ra));
            }
            if ra && !acked {
                next.push((rs.max(s), re.min(e), true));
            }
            if re > e {
                next.push((e, re, ra));
            }
        }
        // The new range fills what no acknowledged run covers.
        let mut covered: Vec<(u64, u64)> = next
            .iter()
            .filter(|r| r.0 < e && r.1 > s && r.0 >= s && r.1 <= e)
            .map(|r| (r.0, r.1))
            .collect();
        covered.sort_unstable();
        let mut at = s;
        for (cs, ce) in covered {
            if cs > at {
                next.push((at, cs, acked));
            }
            at = at.max(ce);
        }
        if at < e {
            next.push((at, e, acked));
        }
        let next = normalise(next);
        if count_entries(&next) > self.capacity {
            return false;
        }
        self.runs = next;
        true
    }

    /// Forgets `sectors` from `start` (whole blocks only). Returns false, leaving the
    /// table as it was, if splitting an entry would need more room than the table has.
    pub fn clear(&mut self, start: u64, sectors: u64) -> bool {
        let unit = 1u64 << self.shift;
        let end = start.saturating_add(sectors);
        let (s, e) = (start.div_ceil(unit), end >> self.shift);
        if s >= e {
            return true;
        }
        let mut next = Vec::with_capacity(self.runs.len() + 1);
        for &(rs, re, ra) in &self.runs {
            if re <= s || rs >= e {
                next.push((rs, re, ra));
                continue;
            }
            if rs < s {
                next.push((rs, s, ra));
            }
            if re > e {
                next.push((e, re, ra));
            }
        }
        let next = normalise(next);
        if count_entries(&next) > self.capacity {
            return false;
        }
        self.runs = next;
        true
    }

    /// The bad sectors in `sectors` from `start`, if any (md's badblocks_check).
    pub fn check(&self, start: u64, sectors: u64) -> Option<BadHit> {
        let end = start.saturating_add(sectors);
        let mut hit: Option<BadHit> = None;
        for &(rs, re, ra) in &self.runs {
            let (a, b) = (rs << self.shift, re << self.shift);
            if b <= start || a >= end {
                continue;
            }
            let first = a.max(start);
            let last = b.min(end);
            hit = Some(match hit {
                None => BadHit {
                    first,
                    sectors: last - first,
                    acked: ra,
                },
                Some(h) => BadHit {
                    // Only the run starting at `first` counts towards its length.
                    sectors: if h.first + h.sectors == first {
                        h.sectors + (last - first)
                    } else {
                        h.sectors
                    },
                    acked: h.acked && ra,
                    ..h
                },
            });
        }
        hit
    }

    /// Marks every entry acknowledged: the log holding them is durable.
    pub fn ack_all(&mut self) {
        for r in &mut self.runs {
            r.2 = true;
        }
        self.runs = normalise(std::mem::take(&mut self.runs));
    }

    /// Whether some entry is not yet acknowledged.
    pub fn has_unacked(&self) -> bool {
        self.runs.iter().any(|r| !r.2)
    }
}

fn count_entries(runs: &[(u64, u64, bool)]) -> usize {
    runs.iter()
        .map(|&(s, e, _)| (e - s).div_ceil(MAX_LEN) as usize)
        .sum()
}

/// Sorts runs and merges neighbours of the same acknowledgement.
fn normalise(mut runs: Vec<(u64, u64, bool)>) -> Vec<(u64, u64, bool)> {
    runs.retain(|r| r.1 > r.0);
    runs.sort_unstable();
    let mut out: Vec<(u64, u64, bool)> = Vec::with_capacity(runs.len());
    for r in runs {
        match out.last_mut() {
            Some(l) if l.1 >= r.0 && l.2 == r.2 => l.1 = l.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The model: one flag per sector (bad, acked) over a small device.
    const SECTORS: u64 = 4096;

    #[derive(Clone, Debug)]
    enum Op {
        Set(u64, u64, bool),
        Clear(u64, u64),
        Ack,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..SECTORS, 1..1200u64, any::<bool>()).prop_map(|(s, n, a)| Op::Set(s, n, a)),
            (0..SECTORS, 1..600u64).prop_map(|(s, n)| Op::Clear(s, n)),
            Just(Op::Ack),
        ]
    }

    fn model_of(t: &BadBlocks) -> Vec<Option<bool>> {
        let mut m = vec![None; (SECTORS + 2048) as usize];
        for e in t.entries() {
            for x in e.start..e.start + e.len {
                m[x as usize] = Some(e.acked);
            }
        }
        m
    }

    proptest! {
        #[test]
        fn the_table_matches_a_per_sector_model(
            shift in 0u32..4,
            capacity in 1usize..24,
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let unit = 1u64 << shift;
            let mut t = BadBlocks::new(shift, capacity);
            let mut model = vec![None; (SECTORS + 2048) as usize];
            for op in ops {
                let before = t.clone();
                let mut want = model.clone();
                let ok = match op {
                    Op::Set(s, n, a) => {
                        let (bs, be) = (s / unit * unit, (s + n).div_ceil(unit) * unit);
                        for x in bs..be {
                            let old: Option<bool> = want[x as usize];
                            want[x as usize] = Some(old.unwrap_or(false) || a);
                        }
                        t.set(s, n, a)
                    }
                    Op::Clear(s, n) => {
                        let (bs, be) = (s.div_ceil(unit) * unit, (s + n) / unit * unit);
                        for x in bs..be.max(bs) {
                            want[x as usize] = None;
                        }
                        t.clear(s, n)
                    }
                    Op::Ack => {
                        for w in want.iter_mut().flatten() {
                            *w = true;
                        }
                        t.ack_all();
                        true
                    }
                };
                if ok {
                    model = want;
                } else {
                    prop_assert_eq!(&t, &before, "a refused change leaves the table");
                }
                prop_assert_eq!(model_of(&t), model.clone());
                prop_assert!(t.count() <= capacity);
                let entries = t.entries();
                for w in entries.windows(2) {
                    prop_assert!(w[0].start + w[0].len <= w[1].start, "sorted, disjoint");
                }
                for e in &entries {
                    prop_assert!(e.len >= 1 && e.len <= MAX_LEN << shift);
                    prop_assert_eq!(e.start % unit, 0);
                }
                // check agrees with the model on a few windows.
                for (s, n) in [(0u64, 64u64), (100, 900), (2000, 3000), (4000, 200)] {
                    let bad: Vec<u64> = (s..s + n).filter(|x| model[*x as usize].is_some()).collect();
                    match t.check(s, n) {
                        None => prop_assert!(bad.is_empty()),
                        Some(h) => {
                            prop_assert_eq!(h.first, bad[0]);
                            let run = bad.iter().enumerate().take_while(|(i, x)| **x == bad[0] + *i as u64).count() as u64;
                            prop_assert_eq!(h.sectors, run);
                            prop_assert_eq!(h.acked, bad.iter().all(|x| model[*x as usize] == Some(true)));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn long_ranges_take_several_entries_and_a_full_table_refuses() {
        let mut t = BadBlocks::new(0, 3);
        assert!(t.set(0, 1200, true));
        assert_eq!(t.count(), 3);
        assert!(!t.set(5000, 1, true));
        assert!(t.set(1200, 300, true), "joins the last entry");
        assert_eq!(t.count(), 3);
        assert!(!t.clear(100, 10), "a split needs a fourth entry");
        assert!(t.clear(0, 1500));
        assert!(t.is_empty());
    }
}
