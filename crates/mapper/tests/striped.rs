//! dm-stripe's mapping against a naive model: chunks dealt to the stripes in turn.

mod common;

use common::{pattern, read, Devices};
use proptest::prelude::*;
use tessera_block::BlockDevice;

#[derive(Debug, Clone)]
struct Layout {
    stripes: usize,
    chunk: u64,
    chunks_per_stripe: u64,
    offsets: Vec<u64>,
    /// Sectors of a linear row before the striped one (0: none).
    prefix: u64,
}

fn layout() -> impl Strategy<Value = Layout> {
    (1usize..=6, 1u64..=24, 1u64..=4, 0u64..=3).prop_flat_map(|(stripes, chunk, cps, prefix)| {
        prop::collection::vec(0u64..=16, stripes).prop_map(move |offsets| Layout {
            stripes,
            chunk,
            chunks_per_stripe: cps,
            offsets,
            prefix,
        })
    })
}

/// Spare sectors after each stripe's area, which must stay untouched.
const SLACK: u64 = 3;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn striped_matches_round_robin_chunks(
        l in layout(),
        ops in prop::collection::vec((any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()), 1..12),
    ) {
        let width = l.chunk * l.chunks_per_stripe;
        let len = width * l.stripes as u64;
        let mut devs = Devices::default();
        devs.add("pre", 4);
        let names: Vec<String> = (0..l.stripes).map(|i| format!("s{i}")).collect();
        for (name, off) in names.iter().zip(&l.offsets) {
            devs.add(name, off + width + SLACK);
        }
        let areas: Vec<String> = names.iter().zip(&l.offsets).map(|(n, o)| format!("{n} {o}")).collect();
        let mut table = String::new();
        if l.prefix > 0 {
            table += &format!("0 {} linear pre 0\n", l.prefix);
        }
        table += &format!("{} {len} striped {} {} {}\n", l.prefix, l.stripes, l.chunk, areas.join(" "));
        let dev = devs.activate("s", &table);
        prop_assert_eq!(dev.table().unwrap().to_string(), table);

        // Random writes and zeroings anywhere, unaligned, mirrored in a byte model.
        let size = dev.size_bytes();
        let mut model = vec![0u8; size as usize];
        for (a, b, seed, zero) in ops {
            let (x, y) = (a % (size + 1), b % (size + 1));
            let (lo, hi) = (x.min(y), x.max(y));
            if zero {
                dev.write_zeroes(lo, hi - lo).unwrap();
                model[lo as usize..hi as usize].fill(0);
            } else {
                let data = pattern(seed, (hi - lo) as usize);
                dev.write_at(&data, lo).unwrap();
                model[lo as usize..hi as usize].copy_from_slice(&data);
            }
            prop_assert_eq!(read(&dev, lo, (hi - lo) as usize), &model[lo as usize..hi as usize]);
        }
        prop_assert_eq!(read(&dev, 0, size as usize), &model[..]);

        // The naive model: deal the striped row's chunks to the stripes in turn.
        let chunk_bytes = (l.chunk * 512) as usize;
        let striped = &model[(l.prefix * 512) as usize..];
        let mut images: Vec<Vec<u8>> = names
            .iter()
            .map(|n| vec![0u8; devs.get(n).size_bytes() as usize])
            .collect();
        let mut cursor: Vec<usize> = l.offsets.iter().map(|&o| (o * 512) as usize).collect();
        for (i, chunk) in striped.chunks(chunk_bytes).enumerate() {
            let s = i % l.stripes;
            images[s][cursor[s]..cursor[s] + chunk_bytes].copy_from_slice(chunk);
            cursor[s] += chunk_bytes;
        }
        for (name, want) in names.iter().zip(&images) {
            let got = devs.get(name).contents();
            if let Some(b) = (0..got.len()).find(|&b| got[b] != want[b]) {
                prop_assert!(false, "{}: byte {} is {}, model says {}", name, b, got[b], want[b]);
            }
        }
        let pre = devs.get("pre").contents();
        prop_assert_eq!(&pre[..(l.prefix * 512) as usize], &model[..(l.prefix * 512) as usize]);
        prop_assert!(pre[(l.prefix * 512) as usize..].iter().all(|&b| b == 0));
    }
}
