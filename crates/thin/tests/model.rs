//! Random sequences of writes, discards, snapshots, deletes, flushes and pool reloads on
//! thin devices of one pool, checked byte for byte against a model after every step, and
//! the metadata checked by thin_check at the end.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use tessera_block::BlockDevice;

const DEV_BLOCKS: u64 = 12;
const DEV_BYTES: u64 = DEV_BLOCKS * BLOCK;
const DATA_BLOCKS: u64 = 64;

#[derive(Debug, Clone)]
enum Op {
    Write {
        dev: usize,
        at: u64,
        len: u64,
        seed: u64,
    },
    Discard {
        dev: usize,
        at: u64,
        len: u64,
    },
    Snapshot {
        from: usize,
    },
    Delete {
        dev: usize,
    },
    Flush,
    Reload,
}

fn op() -> impl Strategy<Value = Op> {
    let span = (0..DEV_BYTES / 512, 1..(3 * BLOCK / 512)).prop_map(|(s, n)| {
        let at = s * 512;
        (at, (n * 512).min(DEV_BYTES - at))
    });
    prop_oneof![
        6 => (0..4usize, span.clone(), any::<u64>())
            .prop_map(|(dev, (at, len), seed)| Op::Write { dev, at, len, seed }),
        2 => (0..4usize, span).prop_map(|(dev, (at, len))| Op::Discard { dev, at, len }),
        1 => (0..4usize).prop_map(|from| Op::Snapshot { from }),
        1 => (0..4usize).prop_map(|dev| Op::Delete { dev }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reload),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn thin_devices_match_their_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(&ops);
    }
}

fn run(ops: &[Op]) {
    let s = Stack::new();
    let meta = s.file("meta.img", 4 << 20);
    let data = s.file("data.img", DATA_BLOCKS * BLOCK);
    let pool_name = format!(
        "m-pool-{}",
        s.dir.path().file_name().unwrap().to_string_lossy()
    );
    let pool_line = pool_table(&meta, &data, DATA_BLOCKS, &["error_if_no_space"]);
    let pool = s.activate(&pool_name, &pool_line);
    // Four slots, each a thin device id (slot + 10 * generation) and its model.
    let mut devs: BTreeMap<usize, (u32, Vec<u8>, std::sync::Arc<tessera_mapper::MappedDevice>)> =
        BTreeMap::new();
    let mut next_id = 0u32;
    let activate = |slot: usize, id: u32| {
        s.activate(
            &format!("{pool_name}-{slot}"),
            &thin_table(&pool_name, id, DEV_BYTES / SECTOR),
        )
    };
    for slot in 0..2 {
        s.message(&pool_name, &format!("create_thin {next_id}"))
            .unwrap();
        devs.insert(
            slot,
            (
                next_id,
                vec![0; DEV_BYTES as usize],
                activate(slot, next_id),
            ),
        );
        next_id += 1;
    }
    for op in ops {
        match op {
            Op::Write { dev, at, len, seed } => {
                let Some((_, model, thin)) = devs.get_mut(dev) else {
                    continue;
                };
                let bytes = Rng(*seed).bytes(*len as usize);
                match thin.write_at(&bytes, *at) {
                    Ok(()) => model[*at as usize..(*at + *len) as usize].copy_from_slice(&bytes),
                    // Out of space: nothing is promised of the range, so take what is there.
                    Err(_) => {
                        let got = read(&**thin, *at, *len as usize);
                        model[*at as usize..(*at + *len) as usize].copy_from_slice(&got);
                    }
                }
            }
            Op::Discard { dev, at, len } => {
                let Some((_, model, thin)) = devs.get_mut(dev) else {
                    continue;
                };
                thin.discard(*at, *len).unwrap();
                // Whole blocks only read back as zeroes.
                let (b, e) = (at.div_ceil(BLOCK), (at + len) / BLOCK);
                for block in b..e {
                    model[(block * BLOCK) as usize..((block + 1) * BLOCK) as usize].fill(0);
                }
            }
            Op::Snapshot { from } => {
                let Some((origin_id, model, origin)) = devs.get(from) else {
                    continue;
                };
                let Some(slot) = (0..4).find(|s| !devs.contains_key(s)) else {
                    continue;
                };
                let (origin_id, model) = (*origin_id, model.clone());
                origin.suspend();
                s.message(&pool_name, &format!("create_snap {next_id} {origin_id}"))
                    .unwrap();
                origin.resume().unwrap();
                devs.insert(slot, (next_id, model, activate(slot, next_id)));
                next_id += 1;
            }
            Op::Delete { dev } => {
                if devs.len() == 1 {
                    continue;
                }
                let Some((id, _, thin)) = devs.remove(dev) else {
                    continue;
                };
                drop(thin);
                s.remove(&format!("{pool_name}-{dev}"));
                s.message(&pool_name, &format!("delete {id}")).unwrap();
            }
            Op::Flush => devs.values().next().unwrap().2.flush().unwrap(),
            Op::Reload => {
                s.activate(&pool_name, &pool_line);
            }
        }
        for (slot, (_, model, thin)) in &devs {
            assert!(
                read(&**thin, 0, DEV_BYTES as usize) == *model,
                "slot {slot} after {op:?}"
            );
        }
    }
    // Used blocks as the pool counts them match thin_dump's view after close.
    let (used, _) = data_usage(&pool);
    drop((devs, pool));
    s.remove_all();
    thin_check(&meta);
    assert_eq!(dumped_data_blocks(&thin_dump(&meta)).len() as u64, used);
}
