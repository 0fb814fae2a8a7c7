//! Crash safety of adding and removing LUKS passphrases, by cutting the power at every write.
//!
//! A LUKS1 and a LUKS2 device (opened by "alpha" and "beta") have a passphrase added or
//! removed through a fault-injecting device; the change is replayed with the power cut
//! after 0, 1, 2, ... writes, once losing every unflushed write and with torn writes (each
//! 512-byte sector of an unflushed write lands or not). After every cut, the passphrases
//! that open the device (for tessera and, on clean cuts, for the real cryptsetup) must be
//! the old set or the new one, never fewer, and the device must take further changes.

use std::process::Command;
use std::sync::Arc;

use tessera_block::{BlockDevice, BlockError, FaultDevice, MemoryDevice, PowerDomain};
use tessera_cipher::{Hash, Kdf, KdfLimits};
use tessera_formats::luks::{
    add_key, format, read_header, read_metadata, remove_key, unlock, AddKeyOptions, FormatOptions,
    LuksError, RemoveKeyOptions, UnlockOptions,
};

const FAST: Kdf = Kdf::Pbkdf2 {
    hash: Hash::Sha256,
    iterations: 1000,
};
const SIZE: u64 = 20 << 20;

fn opens(dev: &dyn BlockDevice, pass: &str) -> bool {
    match unlock(dev, pass.as_bytes(), &UnlockOptions::default()) {
        Ok(_) => true,
        Err(LuksError::WrongPassphrase { .. }) => false,
        Err(e) => panic!("unlock after the cut fails otherwise: {e}"),
    }
}

/// Whether cryptsetup opens the image `bytes` with `pass`.
fn cryptsetup_opens(dir: &tempfile::TempDir, bytes: &[u8], pass: &str) -> bool {
    let img = dir.path().join("cut.img");
    std::fs::write(&img, bytes).unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, pass).unwrap();
    Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&key)
        .arg(&img)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("cannot run cryptsetup: install it (package cryptsetup-bin)")
        .success()
}

fn base(version: u16) -> Vec<u8> {
    let dev = MemoryDevice::new("base", SIZE);
    let opts = FormatOptions {
        version,
        pbkdf: Some(FAST),
        ..FormatOptions::default()
    };
    format(&dev, b"alpha", &opts).unwrap();
    let add = AddKeyOptions {
        key_slot: None,
        pbkdf: Some(FAST),
        limits: KdfLimits::default(),
    };
    assert_eq!(add_key(&dev, b"alpha", b"beta", &add).unwrap(), 1);
    dev.contents()
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Adds "gamma" in the given slot.
    Add(u32),
    /// Removes "beta".
    Remove,
}

fn run(op: Op, dev: &dyn BlockDevice) -> Result<(), LuksError> {
    match op {
        Op::Add(slot) => add_key(
            dev,
            b"alpha",
            b"gamma",
            &AddKeyOptions {
                key_slot: Some(slot),
                pbkdf: Some(FAST),
                limits: KdfLimits::default(),
            },
        )
        .map(|s| assert_eq!(s, slot)),
        Op::Remove => remove_key(dev, b"beta", &RemoveKeyOptions::default()).map(|s| {
            assert_eq!(s, 1);
        }),
    }
}

fn replay(version: u16, op: Op) {
    let base = base(version);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // How many writes the change takes.
    let domain = PowerDomain::new();
    let dev = FaultDevice::new(
        Arc::new(MemoryDevice::with_contents("count", &base)),
        domain.clone(),
    );
    run(op, &dev).unwrap();
    let writes = domain.writes_seen();
    assert!(writes >= 2, "{writes} writes");

    let (old, new): (&[&str], &[&str]) = match op {
        Op::Add(_) => (&["alpha", "beta"], &["alpha", "beta", "gamma"]),
        Op::Remove => (&["alpha", "beta"], &["alpha"]),
    };
    let mut seen_old = false;
    let mut seen_new = false;
    for torn in [None, Some(1), Some(2), Some(3), Some(4)] {
        for cut in 0..=writes {
            let domain = PowerDomain::new();
            if let Some(seed) = torn {
                domain.set_torn(seed);
            }
            domain.cut_after(cut);
            let dev = FaultDevice::new(
                Arc::new(MemoryDevice::with_contents("luks", &base)),
                domain.clone(),
            );
            match run(op, &dev) {
                Ok(()) => assert_eq!(cut, writes, "finished before the cut"),
                Err(LuksError::Block(BlockError::PowerCut { .. })) => {}
                Err(e) => panic!("cut {cut}: {e}"),
            }
            // Reboot: what reached the medium.
            let inner = dev.inner().clone();
            let what = format!("LUKS{version} {op:?}, cut after {cut} of {writes}, torn {torn:?}");
            let meta = read_metadata(inner.as_ref()).unwrap_or_else(|e| panic!("{what}: {e}"));
            // The description discovery shows agrees with what unlocking uses.
            let described = read_header(inner.as_ref()).unwrap().unwrap();
            assert_eq!(described.active_keyslots, meta.active_keyslots(), "{what}");
            let opening: Vec<&str> = ["alpha", "beta", "gamma"]
                .into_iter()
                .filter(|p| opens(inner.as_ref(), p))
                .collect();
            assert!(
                opening == old || opening == new,
                "{what}: {opening:?} open, neither the old {old:?} nor the new {new:?}"
            );
            seen_old |= opening == old;
            seen_new |= opening == new;
            if cut == writes {
                assert_eq!(opening, new, "{what}");
            }
            if torn.is_none() {
                let bytes = read_all(inner.as_ref());
                for pass in ["alpha", "beta", "gamma"] {
                    assert_eq!(
                        cryptsetup_opens(&dir, &bytes, pass),
                        opening.contains(&pass),
                        "{what}: cryptsetup disagrees about {pass}"
                    );
                }
            }
            // The device takes further changes after the crash.
            let again = AddKeyOptions {
                key_slot: Some(7),
                pbkdf: Some(FAST),
                limits: KdfLimits::default(),
            };
            add_key(inner.as_ref(), b"alpha", b"omega", &again)
                .unwrap_or_else(|e| panic!("{what}: adding after the cut: {e}"));
            assert!(opens(inner.as_ref(), "omega"), "{what}");
            assert!(opens(inner.as_ref(), "alpha"), "{what}");
        }
    }
    assert!(seen_old && seen_new);
}

fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut buf = vec![0u8; dev.size_bytes() as usize];
    dev.read_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn luks2_add_key_survives_power_cuts() {
    replay(2, Op::Add(2));
}

#[test]
fn luks2_remove_key_survives_power_cuts() {
    replay(2, Op::Remove);
}

#[test]
fn luks1_add_key_survives_power_cuts() {
    // Slot 6's entry straddles the header's first two sectors (bytes 496..544).
    replay(1, Op::Add(6));
}

#[test]
fn luks1_remove_key_survives_power_cuts() {
    replay(1, Op::Remove);
}
