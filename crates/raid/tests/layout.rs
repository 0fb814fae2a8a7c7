//! md's layouts against simple reference models, written from the rules as md's sources and
//! mdadm's manual state them in words rather than from the kernel's arithmetic: for random
//! geometries and sectors, the mapping agrees with the model, no two array sectors share a
//! member sector, no data lands on parity, and copies sit on distinct members. (The 33
//! reference arrays that mdadm and the kernel built check the same mappings byte for byte.)

use std::collections::HashSet;

use proptest::prelude::*;
use tessera_raid::layout::{algorithm::*, Geometry, Level};

/// raid5 (and raid4): for stripe s over n members, where P sits and in which order the
/// data chunks fill the others.
fn raid5_model(layout: u32, n: usize, s: u64) -> (usize, Vec<usize>) {
    let r = (s % n as u64) as usize;
    match layout {
        // "left": parity starts on the last member and moves left each stripe.
        // "asymmetric": data fills the other members left to right.
        LEFT_ASYMMETRIC => {
            let p = n - 1 - r;
            (p, (0..n).filter(|&m| m != p).collect())
        }
        // "right": parity starts on the first member and moves right.
        RIGHT_ASYMMETRIC => (r, (0..n).filter(|&m| m != r).collect()),
        // "symmetric": data starts on the member after parity and wraps around.
        LEFT_SYMMETRIC => {
            let p = n - 1 - r;
            (p, (1..n).map(|k| (p + k) % n).collect())
        }
        RIGHT_SYMMETRIC => (r, (1..n).map(|k| (r + k) % n).collect()),
        PARITY_0 => (0, (1..n).collect()),
        _ => (n - 1, (0..n - 1).collect()),
    }
}

/// raid6 over n members: P, Q and the data order of stripe s.
fn raid6_model(layout: u32, n: usize, s: u64) -> (usize, usize, Vec<usize>) {
    let r = (s % n as u64) as usize;
    let others = |p: usize, q: usize| (0..n).filter(move |&m| m != p && m != q);
    match layout {
        // Asymmetric: P rotates; Q follows P (wrapping to the first member when P is
        // last); data fills the rest left to right.
        LEFT_ASYMMETRIC | RIGHT_ASYMMETRIC | ROTATING_ZERO_RESTART | ROTATING_N_RESTART => {
            let p = match layout {
                LEFT_ASYMMETRIC => n - 1 - r,
                ROTATING_N_RESTART => n - 1 - ((s + 1) % n as u64) as usize,
                _ => r,
            };
            let q = (p + 1) % n;
            (p, q, others(p, q).collect())
        }
        // Symmetric: data starts after Q and wraps.
        LEFT_SYMMETRIC | RIGHT_SYMMETRIC => {
            let p = if layout == LEFT_SYMMETRIC {
                n - 1 - r
            } else {
                r
            };
            let q = (p + 1) % n;
            (p, q, (2..n).map(|k| (p + k) % n).collect())
        }
        PARITY_0 => (0, 1, (2..n).collect()),
        PARITY_N => (n - 2, n - 1, (0..n - 2).collect()),
        // DDF N-continue: left-symmetric, with Q just before P.
        ROTATING_N_CONTINUE => {
            let p = n - 1 - r;
            let q = (p + n - 1) % n;
            (p, q, (1..n - 1).map(|k| (p + k) % n).collect())
        }
        // The *_6 layouts: raid5's layout on the first n-1 members, Q on the last.
        l => {
            let (p, data) = raid5_model(l - 16, n - 1, s);
            (p, n - 1, data)
        }
    }
}

/// raid10: chunk k's copies. Near copies go to consecutive slots of the chunk grid; far
/// copies repeat the whole grid `stride` further down, shifted by `near` members; offset
/// copies repeat each row right below it, shifted the same way.
fn raid10_model(
    near: usize,
    far: usize,
    offset: bool,
    n: usize,
    chunk: u64,
    stride: u64,
    sector: u64,
) -> Vec<(usize, u64)> {
    let k = sector / chunk;
    let within = sector % chunk;
    let mut out = Vec::new();
    for c in 0..near {
        let slot = k * near as u64 + c as u64;
        let row = slot / n as u64;
        let dev = (slot % n as u64) as usize;
        for f in 0..far {
            let d = (dev + f * near) % n;
            let s = if offset {
                (row * far as u64 + f as u64) * chunk + within
            } else {
                row * chunk + within + f as u64 * stride
            };
            out.push((d, s));
        }
    }
    out
}

const RAID6_LAYOUTS: [u32; 14] = [0, 1, 2, 3, 4, 5, 8, 9, 10, 16, 17, 18, 19, 20];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn raid5_and_raid4_follow_the_model(layout in 0u32..6, n in 2usize..10, chunk_shift in 3u32..11, sector in 0u64..1 << 30, raid4 in any::<bool>()) {
        let chunk = 1u64 << chunk_shift;
        let level = if raid4 { Level::Raid4 } else { Level::Raid5 };
        let g = Geometry::new(level, layout, chunk, n, &vec![1 << 31; n]).unwrap();
        let sector = sector % g.array_sectors();
        let info = g.stripe_of(sector);
        let stripe = sector / chunk / (n as u64 - 1);
        let (p, data) = if raid4 { (n - 1, (0..n - 1).collect()) } else { raid5_model(layout, n, stripe) };
        prop_assert_eq!(info.stripe, stripe);
        prop_assert_eq!(info.p, p);
        prop_assert_eq!(&info.data, &data);
        let i = ((sector / chunk) % (n as u64 - 1)) as usize;
        prop_assert_eq!(g.data_location(sector), vec![(data[i], stripe * chunk + sector % chunk)]);
    }

    #[test]
    fn raid6_follows_the_model(li in 0usize..14, n in 4usize..12, chunk_shift in 3u32..11, sector in 0u64..1 << 30) {
        let layout = RAID6_LAYOUTS[li];
        let chunk = 1u64 << chunk_shift;
        let g = Geometry::new(Level::Raid6, layout, chunk, n, &vec![1 << 31; n]).unwrap();
        let sector = sector % g.array_sectors();
        let info = g.stripe_of(sector);
        let stripe = sector / chunk / (n as u64 - 2);
        let (p, q, data) = raid6_model(layout, n, stripe);
        prop_assert_eq!((info.p, info.q), (p, Some(q)));
        prop_assert_eq!(&info.data, &data);
        // The syndrome holds every data member once (and zeros for ddf's P and Q places).
        let mut syn: Vec<usize> = info.syndrome.iter().flatten().copied().collect();
        syn.sort();
        let mut want = data.clone();
        want.sort();
        prop_assert_eq!(syn, want);
    }

    #[test]
    fn raid10_follows_the_model(near in 1usize..4, far in 1usize..4, offset in any::<bool>(), extra in 0usize..4, chunk_shift in 3u32..9, chunks in 8u64..64, sector in any::<u64>()) {
        // mdadm makes near, far or offset layouts, not mixtures (n2, f2, o2, n3...).
        prop_assume!(near * far > 1 && (near == 1 || far == 1));
        let n = near * far + extra;
        let chunk = 1u64 << chunk_shift;
        let layout = near as u32 | ((far as u32) << 8) | if offset { 1 << 16 } else { 0 };
        let member = chunks * chunk;
        let g = Geometry::new(Level::Raid10, layout, chunk, n, &vec![member; n]).unwrap();
        let sector = sector % g.array_sectors();
        let stride = if offset { chunk } else { member / chunk / far as u64 * chunk };
        let want = raid10_model(near, far, offset, n, chunk, stride, sector);
        let got = g.data_location(sector);
        prop_assert_eq!(&got, &want);
        let members: HashSet<usize> = got.iter().map(|c| c.0).collect();
        prop_assert_eq!(members.len(), near * far, "copies on distinct members");
        prop_assert!(got.iter().all(|&(_, s)| s < member), "inside the member");
        // Every copy leads back to the sector: recovery finds what a member sector holds.
        for &(m, s) in &got {
            prop_assert_eq!(g.raid10_virtual(m, s), Some(sector), "copy on {} at {}", m, s);
        }
    }

    #[test]
    fn raid0_stripes_chunks_round_robin(n in 1usize..10, chunk_shift in 3u32..11, sector in 0u64..1 << 30) {
        let chunk = 1u64 << chunk_shift;
        let g = Geometry::new(Level::Raid0, 0, chunk, n, &vec![1 << 31; n]).unwrap();
        let sector = sector % g.array_sectors();
        let k = sector / chunk;
        prop_assert_eq!(g.data_location(sector), vec![((k % n as u64) as usize, (k / n as u64) * chunk + sector % chunk)]);
    }
}

/// Whole small arrays: every array sector maps to its own member sector, never onto
/// parity, and every member sector of a parity level holds data or parity.
#[test]
fn parity_layouts_are_bijections_onto_the_members() {
    for (level, layouts, least) in [
        (Level::Raid5, (0u32..6).collect::<Vec<_>>(), 2),
        (Level::Raid6, RAID6_LAYOUTS.to_vec(), 4),
        (Level::Raid4, vec![0], 2),
    ] {
        for layout in layouts {
            for n in least..8 {
                let chunk = 8;
                let member = chunk * 12;
                let g = Geometry::new(level, layout, chunk, n, &vec![member; n]).unwrap();
                let mut used = HashSet::new();
                for s in 0..g.array_sectors() {
                    let (m, ms) = g.data_location(s)[0];
                    assert!(
                        used.insert((m, ms)),
                        "{level:?} {layout} n={n}: sector {s} collides"
                    );
                    let info = g.stripe_of(s);
                    assert!(
                        m != info.p && Some(m) != info.q,
                        "{level:?} {layout} n={n}: data on parity"
                    );
                    used_parity(&mut used, &info, ms % chunk, info.member_sector);
                }
                assert_eq!(
                    used.len() as u64,
                    member * n as u64,
                    "{level:?} {layout} n={n}: holes"
                );
            }
        }
    }
}

fn used_parity(
    used: &mut HashSet<(usize, u64)>,
    info: &tessera_raid::layout::StripeInfo,
    row: u64,
    base: u64,
) {
    used.insert((info.p, base + row));
    if let Some(q) = info.q {
        used.insert((q, base + row));
    }
}
