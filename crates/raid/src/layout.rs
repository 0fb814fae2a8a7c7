//! Where md puts every chunk of an array on its members, as the kernel's raid0, raid1,
//! raid5 (levels 4, 5, 6) and raid10 personalities compute it, and the order of a raid6
//! stripe's data blocks in its Q syndrome.

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Raid0,
    Raid1,
    Raid4,
    Raid5,
    Raid6,
    Raid10,
}

impl Level {
    /// Members given to parity.
    pub fn parity_members(self) -> usize {
        match self {
            Level::Raid4 | Level::Raid5 => 1,
            Level::Raid6 => 2,
            _ => 0,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("chunk of {0} sectors: md chunks are a power of two of at least 8 sectors (4 KiB)")]
    Chunk(u64),
    #[error("{level:?} with {members} members: it needs at least {least}")]
    TooFewMembers {
        level: Level,
        members: usize,
        least: usize,
    },
    #[error("{level:?} has no layout {layout}")]
    UnknownLayout { level: Level, layout: u32 },
    #[error("raid10 layout {0:#x}: {1}")]
    Raid10(u32, &'static str),
    #[error("{0} member sizes given for {1} members")]
    Sizes(usize, usize),
    #[error(
        "members of different sizes ({0} and {1} sectors): md's multi-zone raid0 is not supported"
    )]
    Zones(u64, u64),
    #[error("the array's size overflows")]
    Overflow,
}

/// md's raid5/6 algorithms.
pub mod algorithm {
    pub const LEFT_ASYMMETRIC: u32 = 0;
    pub const RIGHT_ASYMMETRIC: u32 = 1;
    pub const LEFT_SYMMETRIC: u32 = 2;
    pub const RIGHT_SYMMETRIC: u32 = 3;
    pub const PARITY_0: u32 = 4;
    pub const PARITY_N: u32 = 5;
    pub const ROTATING_ZERO_RESTART: u32 = 8;
    pub const ROTATING_N_RESTART: u32 = 9;
    pub const ROTATING_N_CONTINUE: u32 = 10;
    pub const LEFT_ASYMMETRIC_6: u32 = 16;
    pub const RIGHT_ASYMMETRIC_6: u32 = 17;
    pub const LEFT_SYMMETRIC_6: u32 = 18;
    pub const RIGHT_SYMMETRIC_6: u32 = 19;
    pub const PARITY_0_6: u32 = 20;
}

/// One stripe of a parity array: chunk-sized, at the same place on every member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeInfo {
    pub stripe: u64,
    /// Where the stripe starts on every member, in sectors from the data offset.
    pub member_sector: u64,
    /// The member holding each data chunk, in array order.
    pub data: Vec<usize>,
    pub p: usize,
    pub q: Option<usize>,
    /// The Q syndrome's blocks in coefficient order: a member, or `None` for a zero block
    /// (the ddf layouts count P and Q's places as zeros).
    pub syndrome: Vec<Option<usize>>,
}

#[derive(Debug, Clone)]
pub struct Geometry {
    level: Level,
    layout: u32,
    chunk_sectors: u64,
    disks: usize,
    /// Sectors of each member the array uses, whole chunks.
    member_sectors: u64,
    near: usize,
    far: usize,
    far_offset: bool,
    /// Sectors between far copies.
    stride: u64,
}

impl Geometry {
    pub fn new(
        level: Level,
        layout: u32,
        chunk_sectors: u64,
        raid_disks: usize,
        member_sectors: &[u64],
    ) -> Result<Geometry, LayoutError> {
        use algorithm::*;
        if member_sectors.len() != raid_disks {
            return Err(LayoutError::Sizes(member_sectors.len(), raid_disks));
        }
        let chunked = level != Level::Raid1;
        if chunked && (chunk_sectors < 8 || !chunk_sectors.is_power_of_two()) {
            return Err(LayoutError::Chunk(chunk_sectors));
        }
        let least = match level {
            Level::Raid0 | Level::Raid1 => 1,
            Level::Raid4 | Level::Raid5 => 2,
            Level::Raid6 => 4,
            Level::Raid10 => 2,
        };
        if raid_disks < least || raid_disks > 4096 {
            return Err(LayoutError::TooFewMembers {
                level,
                members: raid_disks,
                least,
            });
        }
        let unit = if chunked { chunk_sectors } else { 1 };
        let smallest = member_sectors.iter().copied().min().unwrap_or(0) / unit * unit;
        if level == Level::Raid0 {
            let largest = member_sectors.iter().copied().max().unwrap_or(0) / unit * unit;
            if largest != smallest {
                return Err(LayoutError::Zones(smallest, largest));
            }
        }
        let (mut near, mut far, mut far_offset) = (1, 1, false);
        match level {
            Level::Raid5 if !matches!(layout, 0..=5) => {
                return Err(LayoutError::UnknownLayout { level, layout });
            }
            Level::Raid6 => {
                let known = [
                    LEFT_ASYMMETRIC,
                    RIGHT_ASYMMETRIC,
                    LEFT_SYMMETRIC,
                    RIGHT_SYMMETRIC,
                    PARITY_0,
                    PARITY_N,
                    ROTATING_ZERO_RESTART,
                    ROTATING_N_RESTART,
                    ROTATING_N_CONTINUE,
                    LEFT_ASYMMETRIC_6,
                    RIGHT_ASYMMETRIC_6,
                    LEFT_SYMMETRIC_6,
                    RIGHT_SYMMETRIC_6,
                    PARITY_0_6,
                ];
                if !known.contains(&layout) {
                    return Err(LayoutError::UnknownLayout { level, layout });
                }
            }
            Level::Raid10 => {
                near = (layout & 0xff) as usize;
                far = ((layout >> 8) & 0xff) as usize;
                far_offset = layout & (1 << 16) != 0;
                if layout >> 17 != 0 {
                    return Err(LayoutError::Raid10(layout, "far sets are not supported"));
                }
                if near == 0 || far == 0 {
                    return Err(LayoutError::Raid10(layout, "no copies"));
                }
                if near * far > raid_disks {
                    return Err(LayoutError::Raid10(layout, "more copies than members"));
                }
            }
            _ => {}
        }
        let stride = if far_offset {
            chunk_sectors
        } else {
            smallest / chunk_sectors.max(1) / far as u64 * chunk_sectors
        };
        let geometry = Geometry {
            level,
            layout,
            chunk_sectors,
            disks: raid_disks,
            member_sectors: smallest,
            near,
            far,
            far_offset,
            stride,
        };
        // Sizes come from superblocks: the array's size and every member offset below it
        // must fit in a u64 (with room for the copies' far offsets).
        geometry
            .checked_array_sectors()
            .and_then(|a| a.checked_mul((near * far) as u64))
            .and_then(|a| a.checked_add(stride.checked_mul(far as u64)?))
            .ok_or(LayoutError::Overflow)?;
        Ok(geometry)
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn chunk_sectors(&self) -> u64 {
        self.chunk_sectors
    }

    pub fn raid_disks(&self) -> usize {
        self.disks
    }

    /// The array's size, as md computes it.
    pub fn array_sectors(&self) -> u64 {
        self.checked_array_sectors().expect("checked when built")
    }

    fn checked_array_sectors(&self) -> Option<u64> {
        let n = self.disks as u64;
        match self.level {
            Level::Raid0 => self.member_sectors.checked_mul(n),
            Level::Raid1 => Some(self.member_sectors),
            Level::Raid4 | Level::Raid5 | Level::Raid6 => self
                .member_sectors
                .checked_mul(n - self.level.parity_members() as u64),
            Level::Raid10 => {
                let chunks = self.member_sectors / self.chunk_sectors / self.far as u64;
                (chunks.checked_mul(n)? / self.near as u64).checked_mul(self.chunk_sectors)
            }
        }
    }

    /// Data sectors in one stripe of a parity level.
    pub fn data_sectors_per_stripe(&self) -> u64 {
        (self.disks - self.level.parity_members()) as u64 * self.chunk_sectors
    }

    /// Every copy of array sector `sector` (raid0, raid1, raid10; for parity levels, the
    /// one data copy): (member, sector on the member).
    pub fn data_location(&self, sector: u64) -> Vec<(usize, u64)> {
        let chunk = self.chunk_sectors;
        match self.level {
            Level::Raid1 => (0..self.disks).map(|m| (m, sector)).collect(),
            Level::Raid0 => {
                let c = sector / chunk;
                let n = self.disks as u64;
                vec![((c % n) as usize, (c / n) * chunk + sector % chunk)]
            }
            Level::Raid10 => self.raid10_copies(sector),
            _ => {
                let info = self.stripe_of(sector);
                let i = ((sector / chunk) % info.data.len() as u64) as usize;
                vec![(info.data[i], info.member_sector + sector % chunk)]
            }
        }
    }

    /// md's __raid10_find_phys: near copies on neighbouring members, each far copy `near`
    /// members on and `stride` sectors further.
    fn raid10_copies(&self, sector: u64) -> Vec<(usize, u64)> {
        let chunk_sectors = self.chunk_sectors;
        let disks = self.disks as u64;
        let chunk = (sector / chunk_sectors) * self.near as u64;
        let mut in_chunk = sector % chunk_sectors;
        let mut stripe = chunk / disks;
        let mut dev = (chunk % disks) as usize;
        if self.far_offset {
            stripe *= self.far as u64;
        }
        in_chunk += stripe * chunk_sectors;
        let mut out = Vec::with_capacity(self.near * self.far);
        let mut s0 = in_chunk;
        for _ in 0..self.near {
            let mut d = dev;
            let mut s = s0;
            out.push((d, s));
            for _ in 1..self.far {
                d = (d + self.near) % self.disks;
                s += self.stride;
                out.push((d, s));
            }
            dev += 1;
            if dev >= self.disks {
                dev = 0;
                s0 += chunk_sectors;
            }
        }
        out
    }

    /// The array sector whose copy lies at `member_sector` of `member` (md's
    /// raid10_find_virt): the inverse of [`Geometry::data_location`] for raid10. `None` for
    /// other levels and for member sectors past the far copies.
    pub fn raid10_virtual(&self, member: usize, member_sector: u64) -> Option<u64> {
        if self.level != Level::Raid10 || member >= self.disks {
            return None;
        }
        let chunk = self.chunk_sectors;
        let (near, far, disks) = (self.near, self.far as u64, self.disks);
        let offset = member_sector % chunk;
        let mut dev = member;
        let chunk_no = if self.far_offset {
            let c = member_sector / chunk;
            let copy = (c % far) as usize;
            dev = (dev + disks - copy * near % disks) % disks;
            c / far
        } else {
            let copy = member_sector / self.stride.max(1);
            if copy >= far {
                return None;
            }
            for _ in 0..copy {
                dev = if dev < near {
                    dev + disks - near
                } else {
                    dev - near
                };
            }
            (member_sector - copy * self.stride) / chunk
        };
        let virtual_chunk = (chunk_no.checked_mul(disks as u64)? + dev as u64) / near as u64;
        virtual_chunk.checked_mul(chunk)?.checked_add(offset)
    }

    /// md's raid5_compute_sector for the stripe holding array sector `sector`.
    pub fn stripe_of(&self, sector: u64) -> StripeInfo {
        use algorithm::*;
        let n = self.disks;
        let data_disks = n - self.level.parity_members();
        let chunk_number = sector / self.chunk_sectors;
        let stripe = chunk_number / data_disks as u64;
        let rot = |m: usize| (stripe % m as u64) as usize;
        let mut ddf = false;
        // Where data index 0..data_disks goes, P and Q.
        // Where P and Q go, and where data index i goes.
        type Places = (usize, Option<usize>, Box<dyn Fn(usize) -> usize>);
        let (p, q, place): Places = match self.level {
            Level::Raid4 => (data_disks, None, Box::new(|i| i)),
            Level::Raid5 => match self.layout {
                LEFT_ASYMMETRIC => {
                    let p = data_disks - rot(n);
                    (p, None, Box::new(move |i| if i >= p { i + 1 } else { i }))
                }
                RIGHT_ASYMMETRIC => {
                    let p = rot(n);
                    (p, None, Box::new(move |i| if i >= p { i + 1 } else { i }))
                }
                LEFT_SYMMETRIC => {
                    let p = data_disks - rot(n);
                    (p, None, Box::new(move |i| (p + 1 + i) % n))
                }
                RIGHT_SYMMETRIC => {
                    let p = rot(n);
                    (p, None, Box::new(move |i| (p + 1 + i) % n))
                }
                PARITY_0 => (0, None, Box::new(|i| i + 1)),
                _ => (data_disks, None, Box::new(|i| i)),
            },
            _ => match self.layout {
                LEFT_ASYMMETRIC | RIGHT_ASYMMETRIC | ROTATING_ZERO_RESTART | ROTATING_N_RESTART => {
                    let p = match self.layout {
                        LEFT_ASYMMETRIC => n - 1 - rot(n),
                        ROTATING_N_RESTART => n - 1 - ((stripe + 1) % n as u64) as usize,
                        _ => rot(n),
                    };
                    ddf = matches!(self.layout, ROTATING_ZERO_RESTART | ROTATING_N_RESTART);
                    if p == n - 1 {
                        // Q D D D P
                        (p, Some(0), Box::new(|i| i + 1))
                    } else {
                        // D D P Q D
                        (
                            p,
                            Some(p + 1),
                            Box::new(move |i| if i >= p { i + 2 } else { i }),
                        )
                    }
                }
                LEFT_SYMMETRIC | RIGHT_SYMMETRIC => {
                    let p = if self.layout == LEFT_SYMMETRIC {
                        n - 1 - rot(n)
                    } else {
                        rot(n)
                    };
                    (p, Some((p + 1) % n), Box::new(move |i| (p + 2 + i) % n))
                }
                PARITY_0 => (0, Some(1), Box::new(|i| i + 2)),
                PARITY_N => (data_disks, Some(data_disks + 1), Box::new(|i| i)),
                ROTATING_N_CONTINUE => {
                    ddf = true;
                    let p = n - 1 - rot(n);
                    (p, Some((p + n - 1) % n), Box::new(move |i| (p + 1 + i) % n))
                }
                LEFT_ASYMMETRIC_6 | RIGHT_ASYMMETRIC_6 => {
                    let p = if self.layout == LEFT_ASYMMETRIC_6 {
                        data_disks - rot(n - 1)
                    } else {
                        rot(n - 1)
                    };
                    (
                        p,
                        Some(n - 1),
                        Box::new(move |i| if i >= p { i + 1 } else { i }),
                    )
                }
                LEFT_SYMMETRIC_6 | RIGHT_SYMMETRIC_6 => {
                    let p = if self.layout == LEFT_SYMMETRIC_6 {
                        data_disks - rot(n - 1)
                    } else {
                        rot(n - 1)
                    };
                    (p, Some(n - 1), Box::new(move |i| (p + 1 + i) % (n - 1)))
                }
                // PARITY_0_6
                _ => (0, Some(n - 1), Box::new(|i| i + 1)),
            },
        };
        let data: Vec<usize> = (0..data_disks).map(&place).collect();
        let syndrome = match q {
            None => data.iter().map(|&m| Some(m)).collect(),
            Some(q) if ddf => (0..n).map(|d| (d != p && d != q).then_some(d)).collect(),
            Some(q) => {
                // md starts just after Q (at 0 when Q is last) and skips P and Q.
                let d0 = if q == n - 1 { 0 } else { q + 1 };
                (0..n)
                    .map(|k| (d0 + k) % n)
                    .filter(|&d| d != p && d != q)
                    .map(Some)
                    .collect()
            }
        };
        StripeInfo {
            stripe,
            member_sector: stripe * self.chunk_sectors,
            data,
            p,
            q,
            syndrome,
        }
    }
}
