//! A pool that runs out of data space: error_if_no_space fails writes and loses nothing;
//! a queueing pool holds a write until a reload grows the pool, or until the no-space
//! timeout. One test per process-wide timeout setting, so they live in one test.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use tessera_block::BlockDevice;

const META_BYTES: u64 = 4 << 20;

#[test]
fn out_of_data_space() {
    error_if_no_space();
    queue_until_the_pool_grows();
    queue_until_the_timeout();
}

fn error_if_no_space() {
    let s = Stack::new();
    let meta = s.file("meta.img", META_BYTES);
    let data = s.file("data.img", 8 * BLOCK);
    let pool = s.activate(
        "s1-pool",
        &pool_table(&meta, &data, 8, &["error_if_no_space"]),
    );
    s.message("s1-pool", "create_thin 0").unwrap();
    let thin = s.activate("s1-thin", &thin_table("s1-pool", 0, 32 * BLOCK / SECTOR));
    let full = Rng(1).bytes((8 * BLOCK) as usize);
    thin.write_at(&full, 0).unwrap();
    let err = thin.write_at(&[1u8; 512], 8 * BLOCK).unwrap_err();
    assert!(err.to_string().contains("out of data space"), "{err}");
    let w = status_words(&pool);
    assert_eq!(w[2], "8/8");
    assert_eq!(&w[4], "out_of_data_space");
    assert_eq!(&w[6], "error_if_no_space");
    // Provisioned blocks are still written in place; nothing earlier is lost.
    thin.write_at(&[5u8; 512], 0).unwrap();
    thin.flush().unwrap();
    let mut model = full.clone();
    model[..512].fill(5);
    assert!(read(&*thin, 0, model.len()) == model);
    assert_eq!(read(&*thin, 8 * BLOCK, 512), vec![0; 512]);
    drop((thin, pool));
    s.remove_all();
    thin_check(&meta);
}

fn queue_until_the_pool_grows() {
    tessera_thin::set_no_space_timeout(Duration::from_secs(60));
    let s = Stack::new();
    let meta = s.file("meta.img", META_BYTES);
    let data = s.file("data.img", 8 * BLOCK);
    let pool = s.activate("s2-pool", &pool_table(&meta, &data, 8, &[]));
    s.message("s2-pool", "create_thin 0").unwrap();
    let thin = s.activate("s2-thin", &thin_table("s2-pool", 0, 32 * BLOCK / SECTOR));
    let full = Rng(2).bytes((8 * BLOCK) as usize);
    thin.write_at(&full, 0).unwrap();

    let (done_tx, done_rx) = mpsc::channel();
    std::thread::scope(|sc| {
        let thin = &thin;
        sc.spawn(move || {
            let r = thin.write_at(&[3u8; 4096], 9 * BLOCK);
            done_tx.send(r.map_err(|e| e.to_string())).unwrap();
        });
        // The write waits, and the pool says why.
        assert!(done_rx.recv_timeout(Duration::from_millis(500)).is_err());
        let w = status_words(&pool);
        assert_eq!(&w[4], "out_of_data_space");
        assert_eq!(&w[6], "queue_if_no_space");
        // lvextend: the data device grows and the pool table is reloaded longer.
        s.file("data.img", 16 * BLOCK);
        s.activate("s2-pool", &pool_table(&meta, &data, 16, &[]));
        let r = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the write finished");
        r.unwrap();
    });
    let w = status_words(&pool);
    assert_eq!(w[2], "9/16");
    assert_eq!(&w[4], "rw");
    assert_eq!(read(&*thin, 9 * BLOCK, 4096), vec![3u8; 4096]);
    assert!(read(&*thin, 0, full.len()) == full);
    thin.flush().unwrap();
    drop((thin, pool));
    s.remove_all();
    thin_check(&meta);
    assert!(thin_dump(&meta).contains("nr_data_blocks=\"16\""));
}

fn queue_until_the_timeout() {
    tessera_thin::set_no_space_timeout(Duration::from_millis(300));
    let s = Stack::new();
    let meta = s.file("meta.img", META_BYTES);
    let data = s.file("data.img", 4 * BLOCK);
    let pool = s.activate("s3-pool", &pool_table(&meta, &data, 4, &[]));
    s.message("s3-pool", "create_thin 0").unwrap();
    let thin = s.activate("s3-thin", &thin_table("s3-pool", 0, 32 * BLOCK / SECTOR));
    thin.write_at(&vec![1u8; (4 * BLOCK) as usize], 0).unwrap();
    let started = std::time::Instant::now();
    assert!(thin.write_at(&[1u8; 512], 4 * BLOCK).is_err());
    assert!(started.elapsed() >= Duration::from_millis(250));
    // After the timeout the pool errors at once, as error_if_no_space.
    assert_eq!(&status_words(&pool)[6], "error_if_no_space");
    let started = std::time::Instant::now();
    assert!(thin.write_at(&[1u8; 512], 5 * BLOCK).is_err());
    assert!(started.elapsed() < Duration::from_millis(250));
    tessera_thin::set_no_space_timeout(Duration::from_secs(60));
}
