//! FileDevice against real files (on the target directory's filesystem, not a tmpfs /tmp) and,
//! when running as root with losetup, a real loop block device.

use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_block::{BlockDevice, BlockError, FileDevice, OpenOptions};

const DIRECT: OpenOptions = OpenOptions {
    read_only: false,
    direct: true,
};
const BUFFERED: OpenOptions = OpenOptions {
    read_only: false,
    direct: false,
};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn image(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// Random unaligned reads and writes, checked against an in-memory model and the file itself.
fn model_check(dev: &FileDevice, model: &mut [u8]) {
    let size = model.len() as u64;
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for round in 0..300 {
        let offset = next(size);
        let len = next((size - offset).min(3 * 4096 + 1) + 1) as usize;
        if round % 2 == 0 {
            let data = pattern(len, round as u8);
            dev.write_at(&data, offset).unwrap();
            model[offset as usize..offset as usize + len].copy_from_slice(&data);
        } else {
            let mut buf = vec![0u8; len];
            dev.read_at(&mut buf, offset).unwrap();
            assert_eq!(
                buf,
                &model[offset as usize..offset as usize + len],
                "read {len} at {offset}"
            );
        }
    }
    let mut all = vec![0u8; model.len()];
    dev.read_at(&mut all, 0).unwrap();
    assert_eq!(all, model);
}

#[test]
fn buffered_round_trip_and_size() {
    let dir = tempdir();
    let mut model = pattern(100_000, 7);
    let path = image(dir.path(), "a.img", &model);
    let dev = FileDevice::open(&path, BUFFERED).unwrap();
    assert_eq!(dev.size_bytes(), 100_000);
    assert_eq!(dev.name(), path.display().to_string());
    assert!(!dev.is_block_device() && !dev.is_direct());
    model_check(&dev, &mut model);
    dev.flush().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), model);
}

#[test]
fn direct_unaligned_round_trip() {
    let dir = tempdir();
    // Not a multiple of 4096: the last partial block goes through the buffered tail path.
    let mut model = pattern(5 * 4096 + 1234, 3);
    let path = image(dir.path(), "d.img", &model);
    let dev = FileDevice::open(&path, DIRECT).unwrap();
    assert!(
        dev.is_direct(),
        "ext4/xfs under the target dir accepts O_DIRECT"
    );
    model_check(&dev, &mut model);

    // Requests straddling every interesting boundary, including the device end.
    let size = model.len() as u64;
    for (offset, len) in [
        (0u64, 1usize),
        (4095, 2),
        (4096, 4096),
        (1, 3 * 4096),
        (5 * 4096 - 1, 2),
        (size - 1, 1),
        (0, size as usize),
    ] {
        let data = pattern(len, offset as u8 ^ 0x5A);
        dev.write_at(&data, offset).unwrap();
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
        let mut back = vec![0u8; len];
        dev.read_at(&mut back, offset).unwrap();
        assert_eq!(back, data);
    }
    dev.flush().unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(
        on_disk.len(),
        model.len(),
        "direct writes never extend the file"
    );
    assert_eq!(on_disk, model);
}

#[test]
fn direct_on_shm_works_whether_or_not_o_direct_is_taken() {
    // tmpfs refuses O_DIRECT before Linux 6.6; then the device falls back to buffered I/O.
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let mut model = pattern(9000, 1);
    let path = image(dir.path(), "s.img", &model);
    let dev = FileDevice::open(&path, DIRECT).unwrap();
    model_check(&dev, &mut model);
}

#[test]
fn range_checks_and_errors_name_the_device() {
    let dir = tempdir();
    let path = image(dir.path(), "r.img", &[0; 8192]);
    for opts in [BUFFERED, DIRECT] {
        let dev = FileDevice::open(&path, opts).unwrap();
        let mut buf = [0u8; 10];
        let err = dev.read_at(&mut buf, 8190).unwrap_err();
        assert!(matches!(
            err,
            BlockError::OutOfRange {
                offset: 8190,
                len: 10,
                size: 8192,
                ..
            }
        ));
        assert!(err.to_string().contains("r.img"));
        assert!(matches!(
            dev.write_at(&buf, u64::MAX - 3),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.discard(8000, 193),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.write_zeroes(8193, 0),
            Err(BlockError::OutOfRange { .. })
        ));
        dev.read_at(&mut buf, 8182).unwrap();
        dev.write_at(&[], 8192).unwrap();
    }

    let missing = dir.path().join("missing.img");
    let err = FileDevice::open(&missing, BUFFERED).unwrap_err();
    assert!(
        matches!(err, BlockError::Open { ref device, .. } if device == &missing.display().to_string())
    );
    let err = FileDevice::open(
        dir.path(),
        OpenOptions {
            read_only: true,
            direct: false,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, BlockError::Open { .. }),
        "a directory is not a device: {err}"
    );
}

#[test]
fn discard_and_write_zeroes_read_back_zero() {
    let dir = tempdir();
    let size = 64 * 1024 + 700;
    for opts in [BUFFERED, DIRECT] {
        let path = image(dir.path(), "z.img", &vec![0xAA; size]);
        let dev = FileDevice::open(&path, opts).unwrap();
        dev.write_zeroes(100, 5000).unwrap();
        dev.discard(20_000, 12_345).unwrap();
        dev.write_zeroes(size as u64 - 300, 300).unwrap();
        dev.discard(50_000, 0).unwrap();
        dev.flush().unwrap();
        let mut back = vec![0u8; size];
        dev.read_at(&mut back, 0).unwrap();
        for (i, &b) in back.iter().enumerate() {
            let zero = (100..5100).contains(&i) || (20_000..32_345).contains(&i) || i >= size - 300;
            assert_eq!(b, if zero { 0 } else { 0xAA }, "byte {i}, {opts:?}");
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            size as u64,
            "size kept"
        );
    }
}

#[test]
fn read_only_refuses_writes() {
    let dir = tempdir();
    let path = image(dir.path(), "ro.img", &pattern(4096, 9));
    let dev = FileDevice::open(
        &path,
        OpenOptions {
            read_only: true,
            direct: false,
        },
    )
    .unwrap();
    assert!(dev.is_read_only());
    let mut buf = [0u8; 16];
    dev.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..], &pattern(4096, 9)[..16]);
    assert!(matches!(
        dev.write_at(&buf, 0),
        Err(BlockError::ReadOnly { .. })
    ));
    assert!(matches!(
        dev.discard(0, 512),
        Err(BlockError::ReadOnly { .. })
    ));
    assert!(matches!(
        dev.write_zeroes(0, 512),
        Err(BlockError::ReadOnly { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), pattern(4096, 9));
}

/// A loop device that detaches itself.
struct Loop(String);

impl Loop {
    fn attach(path: &Path) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(["--show", "-f"])
            .arg(path)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| Loop(String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn loop_block_device() {
    let dir = tempdir();
    let size = 4 << 20;
    let mut model = pattern(size, 11);
    let path = image(dir.path(), "loop.img", &model);
    let Some(lo) = Loop::attach(&path) else {
        eprintln!("skipped: cannot attach a loop device (needs root and losetup)");
        return;
    };
    for opts in [BUFFERED, DIRECT] {
        let dev = FileDevice::open(&lo.0, opts).unwrap();
        assert!(dev.is_block_device());
        assert_eq!(dev.name(), lo.0);
        assert_eq!(dev.size_bytes(), size as u64, "BLKGETSIZE64");
        assert!(dev.logical_block_size() >= 512 && dev.logical_block_size().is_power_of_two());
        assert!(dev.physical_block_size() >= dev.logical_block_size());
        model_check(&dev, &mut model);

        // Unaligned edges exercise the zero-buffer path around BLKZEROOUT.
        dev.write_zeroes(1000, 70_000).unwrap();
        model[1000..71_000].fill(0);
        // BLKDISCARD on a loop device punches a hole in its file, so the aligned part reads zero.
        dev.discard(1 << 20, 1 << 20).unwrap();
        model[1 << 20..2 << 20].fill(0);
        dev.flush().unwrap();
        let mut all = vec![0u8; size];
        dev.read_at(&mut all, 0).unwrap();
        assert!(all == model, "{opts:?}: contents differ from the model");
    }
}
