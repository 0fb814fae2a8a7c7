//! The crypt target through a mapped device: table refusals, round trips over image files,
//! dm-crypt's IV numbers checked against an independent XTS (the `xts-mode` crate), the
//! table printed back, and a LUKS2 volume that cryptsetup formats.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use aes::cipher::KeyInit;
use aes::Aes256;
use tessera_block::{BlockDevice, BlockError, FileDevice, MemoryDevice, OpenOptions, SharedDevice};
use tessera_mapper::{MappedDevice, MapperError, Table, TargetRegistry};
use xts_mode::{get_tweak_default, Xts128};

/// A 512-bit aes-xts key (two AES-256 keys) that is not a pattern of one byte.
fn key() -> Vec<u8> {
    (0..64u8)
        .map(|i| i.wrapping_mul(73).wrapping_add(5))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn registry() -> Arc<TargetRegistry> {
    let mut reg = TargetRegistry::new();
    tessera_crypt::register(&mut reg).unwrap();
    assert!(
        tessera_crypt::register(&mut reg).is_err(),
        "registered once"
    );
    Arc::new(reg)
}

/// `len` bytes that differ per `seed` and per position.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = i
                .wrapping_mul(0x9e37_79b9)
                .wrapping_add(seed.wrapping_mul(0x85eb_ca6b));
            (x ^ (x >> 13)) as u8
        })
        .collect()
}

/// An image file of `sectors` 512-byte sectors, filled with a pattern.
fn image(dir: &Path, name: &str, sectors: u64) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pattern(sectors, (sectors * 512) as usize)).unwrap();
    path.display().to_string()
}

fn open_file(name: &str) -> tessera_block::Result<SharedDevice> {
    Ok(Arc::new(FileDevice::open(name, OpenOptions::default())?) as SharedDevice)
}

fn activate(name: &str, table: &str) -> Result<MappedDevice, MapperError> {
    let dev = MappedDevice::new(name, registry());
    dev.load(&Table::parse(table).unwrap(), &open_file)?;
    dev.resume()?;
    Ok(dev)
}

fn read(dev: &dyn BlockDevice, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    dev.read_at(&mut buf, offset).unwrap();
    buf
}

fn read_file(path: &str, offset: u64, len: usize) -> Vec<u8> {
    std::fs::read(path).unwrap()[offset as usize..offset as usize + len].to_vec()
}

/// The reference: XTS-AES-256 from the `xts-mode` crate, one crypt sector at a time, the
/// IV number given per sector by `iv_of(byte offset of the crypt sector in the row)`.
struct Reference {
    xts: Xts128<Aes256>,
    sector_size: usize,
}

impl Reference {
    fn new(key: &[u8], sector_size: usize) -> Self {
        let xts = Xts128::new(
            Aes256::new_from_slice(&key[..32]).unwrap(),
            Aes256::new_from_slice(&key[32..]).unwrap(),
        );
        Reference { xts, sector_size }
    }

    fn encrypt(&self, data: &mut [u8], iv_of: impl Fn(u64) -> u64) {
        for (i, s) in data.chunks_mut(self.sector_size).enumerate() {
            let iv = iv_of((i * self.sector_size) as u64);
            self.xts
                .encrypt_sector(s, get_tweak_default(u128::from(iv)));
        }
    }

    fn decrypt(&self, data: &mut [u8], iv_of: impl Fn(u64) -> u64) {
        for (i, s) in data.chunks_mut(self.sector_size).enumerate() {
            let iv = iv_of((i * self.sector_size) as u64);
            self.xts
                .decrypt_sector(s, get_tweak_default(u128::from(iv)));
        }
    }
}

#[test]
fn table_refusals_name_the_problem_and_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "img", 256);
    let k = hex(&key());
    let cases = [
        (
            format!("0 64 crypt aes-xts-plain64 {}zz 0 {img} 0", &k[..126]),
            "the key is not hexadecimal",
        ),
        (
            format!("0 64 crypt aes-xts-plain64 {} 0 {img} 0", &k[..40]),
            "a 20-byte key does not fit cipher 'aes-xts-plain64' (it takes 32, 48, 64 bytes)",
        ),
        (
            format!("0 64 crypt aes-cbc-essiv:sha256 {k} 0 {img} 0"),
            "a 64-byte key does not fit cipher",
        ),
        (
            format!("0 64 crypt serpent-xts-plain64 {k} 0 {img} 0"),
            "cipher 'serpent-xts-plain64' is not supported",
        ),
        (
            format!("0 64 crypt aes-xts-plain64 {k} 0 {img} 0 1 sector_size:3000"),
            "sector_size:3000: the sector size must be 512 to 4096 bytes, a power of two",
        ),
        (
            format!("0 60 crypt aes-xts-plain64 {k} 0 {img} 0 1 sector_size:4096"),
            "the row's length (60 sectors) is not a whole number of 4096-byte crypt sectors",
        ),
        (
            format!("0 4 zero\n4 64 crypt aes-xts-plain64 {k} 0 {img} 0 1 sector_size:4096"),
            "the row starts at sector 4",
        ),
        (
            format!("0 64 crypt aes-xts-plain64 {k} 12 {img} 0 1 sector_size:4096"),
            "<iv_offset> 12 is not a whole number of 4096-byte crypt sectors",
        ),
        (
            format!("0 64 crypt aes-xts-plain64 {k} 0 {img} 0 2 allow_discards go_faster"),
            "unknown option \"go_faster\"",
        ),
        (
            format!("0 64 crypt aes-xts-plain64 :64:logon:cryptsetup:vol 0 {img} 0"),
            "kernel keyring keys are not supported in user space; give the key in hex",
        ),
        (
            format!("0 64 crypt aes-xts-plain64 {k} 0 {img}"),
            "missing argument <offset>",
        ),
        (
            "0 64 crypt aes-xts-plain64".to_string(),
            "missing argument <key>",
        ),
        ("0 64 crypt".to_string(), "missing argument <cipher>"),
        (
            format!("0 64 crypt aes-xts-plain64 - 0 {img} 0"),
            "needs one; give the key in hex",
        ),
        (
            format!("0 64 crypt cipher_null-ecb - 0 {img} 0"),
            "cipher \"cipher_null-ecb\" (no encryption) is not supported",
        ),
        (
            format!("0 64 crypt aes-xts-plain64 {k} 0 {img} 200"),
            "is too small",
        ),
        (
            format!("0 64 crypt aes-xts-plain64 {k} 0 {img}.missing 0"),
            "cannot open device",
        ),
    ];
    for (table, want) in cases {
        let err = activate("vg-secret", &table).unwrap_err().to_string();
        assert!(err.starts_with("vg-secret: table row"), "{err}");
        assert!(err.contains(want), "{table}\n  gave: {err}\n  want: {want}");
        assert!(!err.contains(&k[..20]), "the key leaked: {err}");
    }
}

#[test]
fn round_trip_through_a_mapped_device_over_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "img", 4096 + 64);
    let table = format!("0 4096 crypt aes-xts-plain64 {} 0 {img} 64", hex(&key()));
    let dev = activate("vg-secret", &table).unwrap();
    assert_eq!(dev.size_bytes(), 4096 * 512);
    let mut model = read(&dev, 0, 4096 * 512);
    let before_raw = read_file(&img, 0, 64 * 512);
    for (i, (offset, len)) in [
        (0u64, 4096usize),
        (8192, 1 << 20),
        (4096 * 512 - 65536, 65536),
        (1536, 512),
        (3000, 777), // not whole sectors: the mapped device reads, patches and writes back
        (1 << 19, 3 << 19),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(i as u64 + 100, len);
        let copy = data.clone();
        dev.write_at(&data, offset).unwrap();
        assert_eq!(data, copy, "the caller's buffer is left alone");
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
        let raw = read_file(&img, 64 * 512 + offset, len);
        assert_ne!(raw, data, "ciphertext on the device, not plaintext");
    }
    dev.flush().unwrap();
    assert_eq!(read(&dev, 0, 4096 * 512), model);
    assert_eq!(
        read_file(&img, 0, 64 * 512),
        before_raw,
        "nothing before the offset"
    );

    // The same table over the same image, loaded afresh, reads the same plaintext.
    drop(dev);
    let again = activate("vg-secret", &table).unwrap();
    assert_eq!(read(&again, 0, 4096 * 512), model);
}

/// Writes through `table` (a linear row of 64 sectors, then a crypt row) and checks the
/// ciphertext on the image against the reference with IV numbers from `iv_of(row sector)`;
/// then writes ciphertext made by the reference and reads it back through the device.
fn check_ivs(options: &str, sector_size: usize, iv_of: impl Fn(u64) -> u64) {
    let dir = tempfile::tempdir().unwrap();
    let lin = image(dir.path(), "lin", 64);
    let img = image(dir.path(), "img", 2048 + 16);
    let (rows, dev_offset) = (2048u64, 16u64);
    let table = format!(
        "0 64 linear {lin} 0\n64 {rows} crypt aes-xts-plain64 {} 24 {img} {dev_offset} {options}",
        hex(&key())
    );
    let dev = activate("vg-iv", &table).unwrap();
    let row = 64 * 512u64;
    let len = (rows * 512) as usize;
    // One large write, then smaller ones over it at other crypt-sector boundaries.
    let mut plain = pattern(7, len);
    dev.write_at(&plain, row).unwrap();
    for (i, (at, n)) in [(4096usize, 4096usize), (65536, 12288), (len - 8192, 8192)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(20 + i as u64, n);
        dev.write_at(&data, row + at as u64).unwrap();
        plain[at..at + n].copy_from_slice(&data);
    }
    let reference = Reference::new(&key(), sector_size);
    let mut raw = read_file(&img, dev_offset * 512, len);
    let mut expected = plain.clone();
    reference.encrypt(&mut expected, |byte| iv_of(byte / 512));
    assert!(
        raw == expected,
        "ciphertext differs from the reference ({options})"
    );
    reference.decrypt(&mut raw, |byte| iv_of(byte / 512));
    assert!(raw == plain);

    // The read side: ciphertext the reference made is read back as the plaintext.
    let fresh = pattern(99, len);
    let mut ciphertext = fresh.clone();
    reference.encrypt(&mut ciphertext, |byte| iv_of(byte / 512));
    let file = FileDevice::open(&img, OpenOptions::default()).unwrap();
    file.write_at(&ciphertext, dev_offset * 512).unwrap();
    assert!(read(&dev, row, len) == fresh);
    assert!(read(&dev, row + 8192, 4096) == fresh[8192..12288]);
}

#[test]
fn ivs_count_512_byte_sectors_from_the_row_plus_iv_offset() {
    // sector_size 4096: crypt sector k of the row has IV 24 + 8k (its first 512-byte
    // sector's number, plus iv_offset).
    check_ivs("1 sector_size:4096", 4096, |sector| sector + 24);
}

#[test]
fn iv_large_sectors_count_crypt_sectors() {
    // With iv_large_sectors, crypt sector k has IV (24 + 8k) / 8 = 3 + k.
    check_ivs("2 sector_size:4096 iv_large_sectors", 4096, |sector| {
        (sector + 24) / 8
    });
}

#[test]
fn ivs_with_512_byte_sectors() {
    check_ivs("", 512, |sector| sector + 24);
}

/// With sector_size 4096 the mapped device's blocks are 4096 bytes (as the kernel raises the
/// queue's logical block size): smaller or unaligned requests are served by reading,
/// patching and writing whole crypt sectors, and the rest of each sector is kept.
#[test]
fn small_io_on_large_crypt_sectors_is_patched_in_whole_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "img", 256);
    let table = format!(
        "0 256 crypt aes-xts-plain64 {} 0 {img} 0 1 sector_size:4096",
        hex(&key())
    );
    let dev = activate("vg-4k", &table).unwrap();
    assert_eq!(dev.logical_block_size(), 4096);
    let base: Vec<u8> = (0..3 * 4096).map(|i| (i % 253) as u8).collect();
    dev.write_at(&base, 0).unwrap();
    let mut model = base.clone();
    for (offset, len) in [(512u64, 4096usize), (0, 512), (4096, 6144), (100, 7)] {
        let patch: Vec<u8> = (0..len).map(|i| (i as u8) ^ 0xa5 ^ offset as u8).collect();
        dev.write_at(&patch, offset).unwrap();
        model[offset as usize..offset as usize + len].copy_from_slice(&patch);
        let mut back = vec![0u8; len];
        dev.read_at(&mut back, offset).unwrap();
        assert_eq!(back, patch, "read back at {offset}+{len}");
    }
    dev.write_zeroes(4096 + 512, 512).unwrap();
    model[4096 + 512..4096 + 1024].fill(0);
    let mut all = vec![0u8; 3 * 4096];
    dev.read_at(&mut all, 0).unwrap();
    assert!(
        all == model,
        "the whole range equals the model after sub-sector writes"
    );
}

#[test]
fn write_zeroes_writes_encrypted_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "img", 8192);
    let table = format!(
        "0 8192 crypt aes-xts-plain64 {} 0 {img} 0 1 sector_size:4096",
        hex(&key())
    );
    let dev = activate("vg-z", &table).unwrap();
    dev.write_at(&pattern(3, 8192 * 512), 0).unwrap();
    // Past one internal buffer (1 MiB), at a crypt-sector boundary.
    let (offset, len) = (8192u64, 3 << 20);
    dev.write_zeroes(offset, len as u64).unwrap();
    let back = read(&dev, 0, 8192 * 512);
    assert!(back[offset as usize..][..len].iter().all(|&b| b == 0));
    assert_eq!(back[..offset as usize], pattern(3, offset as usize)[..]);
    let end = offset as usize + len;
    assert_eq!(back[end..], pattern(3, 8192 * 512)[end..]);
    let raw = read_file(&img, offset, len);
    assert!(
        raw.iter().filter(|&&b| b == 0).count() < len / 64,
        "ciphertext on disk"
    );
    // The zeroes are the reference's encryption of zeroes.
    let mut expected = vec![0u8; len];
    Reference::new(&key(), 4096).encrypt(&mut expected, |byte| (offset + byte) / 512);
    assert!(raw == expected);
}

#[test]
fn discards_pass_down_only_with_allow_discards() {
    for allow in [false, true] {
        let mem = Arc::new(MemoryDevice::with_contents("mem", &pattern(1, 64 * 512)));
        let devices: HashMap<&str, SharedDevice> = [("mem", mem.clone() as SharedDevice)].into();
        let resolve = |n: &str| {
            devices.get(n).cloned().ok_or_else(|| BlockError::Open {
                device: n.to_string(),
                source: io::Error::from(io::ErrorKind::NotFound),
            })
        };
        let opts = if allow {
            "2 allow_discards sector_size:4096"
        } else {
            "1 sector_size:4096"
        };
        let table = format!("0 64 crypt aes-xts-plain64 {} 0 mem 0 {opts}", hex(&key()));
        let dev = MappedDevice::new("vg-d", registry());
        dev.load(&Table::parse(&table).unwrap(), &resolve).unwrap();
        dev.resume().unwrap();
        // Sectors 4..28: only the whole crypt sectors inside, 8..24, may go down.
        dev.discard(4 * 512, 24 * 512).unwrap();
        let after = mem.contents();
        let before = pattern(1, 64 * 512);
        if allow {
            assert!(after[8 * 512..24 * 512].iter().all(|&b| b == 0));
            assert_eq!(after[..8 * 512], before[..8 * 512]);
            assert_eq!(after[24 * 512..], before[24 * 512..]);
        } else {
            assert_eq!(after, before, "no discard without allow_discards");
        }
    }
}

#[test]
fn table_status_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "img", 4096);
    let lin = image(dir.path(), "lin", 64);
    let k = hex(&key());
    let text = format!(
        "0 64 linear {lin} 0\n\
         64 1024 crypt aes-xts-plain64 {k} 8 {img} 16 4 allow_discards no_read_workqueue sector_size:4096 iv_large_sectors\n\
         1088 512 crypt capi:xts(aes)-plain64 {k} 3 {img} 2000\n\
         1600 8 crypt aes-cbc-essiv:sha256 {} 0 {img} 3000\n",
        &k[..64]
    );
    let dev = activate("vg-t", &text).unwrap();
    let table = dev.table().unwrap();
    assert_eq!(table, Table::parse(&text).unwrap());
    assert_eq!(table.to_string(), text);
    assert_eq!(dev.status().lines().nth(1), Some("64 1024 crypt"));
    // A table printed for people hides the key, as `dmsetup table` does.
    let masked = tessera_crypt::mask_key(&table.rows()[1].params);
    assert_eq!(
        masked,
        format!("aes-xts-plain64 {} 8 {img} 16 4 allow_discards no_read_workqueue sector_size:4096 iv_large_sectors", "0".repeat(128))
    );
    let devices = dev.load(&table, &open_file);
    assert!(devices.is_ok(), "the printed table loads again");
}

/// Parses `cryptsetup luksDump` output: the volume key after "MK dump:" and the data
/// segment's offset in bytes.
fn luks_volume(img: &str, keyfile: &str) -> Option<(Vec<u8>, u64)> {
    let run = |args: &[&str]| -> Option<String> {
        let out = Command::new("cryptsetup").args(args).output().ok()?;
        if !out.status.success() {
            eprintln!(
                "cryptsetup {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let dump = run(&[
        "luksDump",
        "--dump-volume-key",
        "--batch-mode",
        "--key-file",
        keyfile,
        img,
    ])?;
    let mut key = Vec::new();
    let mut in_key = false;
    for line in dump.lines() {
        let text = match line.split_once("MK dump:") {
            Some((_, rest)) => {
                in_key = true;
                rest
            }
            None if in_key && line.starts_with(char::is_whitespace) => line,
            None => {
                in_key = false;
                continue;
            }
        };
        for byte in text.split_whitespace() {
            key.push(u8::from_str_radix(byte, 16).ok()?);
        }
    }
    let info = run(&["luksDump", img])?;
    let segments = info.split("Data segments:").nth(1)?;
    let offset = segments
        .lines()
        .find_map(|l| l.trim().strip_prefix("offset:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((key, offset))
}

#[test]
fn luks2_volume_made_by_cryptsetup() {
    if Command::new("cryptsetup")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("cryptsetup not installed; skipping the LUKS2 peer check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("luks.img").display().to_string();
    let keyfile = dir.path().join("keyfile").display().to_string();
    std::fs::write(&img, vec![0u8; 20 << 20]).unwrap();
    std::fs::write(&keyfile, b"tessera test passphrase").unwrap();
    let status = Command::new("cryptsetup")
        .args([
            "luksFormat",
            "--type",
            "luks2",
            "--cipher",
            "aes-xts-plain64",
            "--key-size",
            "512",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--sector-size",
            "4096",
            "--batch-mode",
            &img,
            &keyfile,
        ])
        .status()
        .unwrap();
    assert!(status.success(), "cryptsetup luksFormat failed");
    let (volume_key, offset_bytes) = luks_volume(&img, &keyfile).expect("luksDump output");
    assert_eq!(volume_key.len(), 64, "a 512-bit volume key");
    assert_eq!(offset_bytes % 4096, 0);
    let offset = offset_bytes / 512;
    let size = std::fs::metadata(&img).unwrap().len() / 512;
    let len = size - offset;
    let table = format!(
        "0 {len} crypt aes-xts-plain64 {} 0 {img} {offset} 1 sector_size:4096",
        hex(&volume_key)
    );
    let dev = activate("luks-vol", &table).unwrap();
    let plain = pattern(2024, (len * 512) as usize);
    dev.write_at(&plain, 0).unwrap();
    dev.flush().unwrap();
    let mut expected = plain.clone();
    // LUKS2 counts IVs in 512-byte sectors from the data segment's start.
    Reference::new(&volume_key, 4096).encrypt(&mut expected, |byte| byte / 512);
    let raw = read_file(&img, offset_bytes, plain.len());
    assert!(
        raw == expected,
        "the ciphertext differs from XTS over the volume key"
    );
    // The header is untouched: cryptsetup still opens the key slot with the key file.
    let (again, _) = luks_volume(&img, &keyfile).expect("luksDump after writing");
    assert!(again == volume_key);
}

#[test]
fn threads_write_and_read_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "img", 8192);
    let table = format!(
        "0 8192 crypt aes-xts-plain64 {} 0 {img} 0 1 sector_size:4096",
        hex(&key())
    );
    let dev = activate("vg-mt", &table).unwrap();
    let part = 8192 * 512 / 8;
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let dev = &dev;
            s.spawn(move || {
                for round in 0..4u64 {
                    let data = pattern(t * 10 + round, part);
                    dev.write_at(&data, t * part as u64).unwrap();
                    assert!(read(dev, t * part as u64, part) == data);
                }
            });
        }
    });
    for t in 0..8u64 {
        assert!(read(&dev, t * part as u64, part) == pattern(t * 10 + 3, part));
    }
}
