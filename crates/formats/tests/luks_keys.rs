//! Unlocking, formatting and key management against the real cryptsetup, on image files
//! (no loop device or root needed: `open --test-passphrase`, `luksDump --dump-volume-key`,
//! `luksAddKey` and `luksKillSlot` work on files). cryptsetup must be installed (package
//! cryptsetup-bin): these tests fail, not skip, without it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tessera_block::{FileDevice, MemoryDevice, OpenOptions};
use tessera_cipher::{Argon2Variant, Hash, Kdf, KdfLimits, SecretBytes};
use tessera_formats::luks::{
    add_key, dump, format, kill_slot, read_metadata, remove_key, unlock, AddKeyOptions,
    FormatOptions, LuksError, LuksMetadata, RemoveKeyOptions, UnlockOptions,
};

const FAST: Kdf = Kdf::Pbkdf2 {
    hash: Hash::Sha256,
    iterations: 1000,
};

struct Image {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Image {
    fn new(mib: u64) -> Image {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary folder");
        let path = dir.path().join("luks.img");
        File::create(&path)
            .and_then(|f| f.set_len(mib << 20))
            .expect("create image");
        Image { dir, path }
    }

    fn p(&self) -> String {
        self.path.display().to_string()
    }

    /// A key file holding `pass`.
    fn key(&self, pass: &str) -> String {
        let digest: String = Sha256::digest(pass.as_bytes())
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        let path = self.dir.path().join(format!("key-{digest}"));
        std::fs::write(&path, pass).unwrap();
        path.display().to_string()
    }

    fn dev(&self) -> FileDevice {
        FileDevice::open(&self.path, OpenOptions::default()).expect("open image")
    }

    /// `cryptsetup luksFormat` with `pass` and `args`.
    fn cs_format(&self, pass: &str, args: &[&str]) {
        let key = self.key(pass);
        let mut all = vec!["luksFormat", "--batch-mode", "-q"];
        all.extend(args);
        let p = self.p();
        all.extend([p.as_str(), key.as_str()]);
        cs_ok(&all);
    }

    /// `cryptsetup luksAddKey`, opening with `old`.
    fn cs_add_key(&self, old: &str, new: &str, slot: Option<u32>) {
        let (old, new) = (self.key(old), self.key(new));
        let slot = slot.map(|s| s.to_string());
        let mut args = vec!["luksAddKey", "--batch-mode", "--key-file", &old];
        args.extend(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]);
        if let Some(s) = &slot {
            args.extend(["--key-slot", s]);
        }
        let p = self.p();
        args.extend([p.as_str(), new.as_str()]);
        cs_ok(&args);
    }

    /// Whether cryptsetup opens the image with `pass` (in `slot`, if given).
    fn cs_opens(&self, pass: &str, slot: Option<u32>) -> bool {
        let key = self.key(pass);
        let slot = slot.map(|s| s.to_string());
        let mut args = vec!["open", "--test-passphrase", "--key-file", &key];
        if let Some(s) = &slot {
            args.extend(["--key-slot", s]);
        }
        let p = self.p();
        args.push(&p);
        cs(&args).status.success()
    }

    /// The volume key as `luksDump --dump-volume-key` prints it.
    fn cs_volume_key(&self, pass: &str) -> Vec<u8> {
        let key = self.key(pass);
        let p = self.p();
        let out = cs_ok(&[
            "luksDump",
            "--dump-volume-key",
            "--batch-mode",
            "--key-file",
            &key,
            &p,
        ]);
        let (_, rest) = out.split_once("MK dump:").expect("an MK dump");
        let mut bytes = Vec::new();
        for (i, line) in rest.lines().enumerate() {
            if i > 0 && line.contains(':') {
                break;
            }
            for token in line.split_whitespace() {
                bytes.push(u8::from_str_radix(token, 16).expect("hex"));
            }
        }
        bytes
    }

    fn cs_dump(&self) -> String {
        cs_ok(&["luksDump", &self.p()])
    }

    fn unlock(
        &self,
        pass: &str,
        slot: Option<u32>,
    ) -> Result<tessera_formats::luks::Unlocked, LuksError> {
        unlock(
            &self.dev(),
            pass.as_bytes(),
            &UnlockOptions {
                key_slot: slot,
                limits: KdfLimits::default(),
            },
        )
    }

    /// Unlocks and checks the key against cryptsetup's; returns the slot.
    fn unlock_matches_cryptsetup(&self, pass: &str) -> u32 {
        let u = self.unlock(pass, None).expect("tessera unlocks");
        assert_eq!(&u.volume_key[..], &self.cs_volume_key(pass)[..]);
        u.key_slot
    }
}

fn cs(args: &[&str]) -> Output {
    Command::new("cryptsetup")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run cryptsetup ({e}): install it (package cryptsetup-bin)")
        })
}

fn cs_ok(args: &[&str]) -> String {
    let out = cs(args);
    assert!(
        out.status.success(),
        "cryptsetup {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value after "key:" on the first line that has it (luksDump's "Key:   value").
fn field<'a>(dump: &'a str, key: &str) -> &'a str {
    dump.lines()
        .find_map(|l| l.trim().strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no '{key}' in luksDump:\n{dump}"))
        .trim()
}

fn limits() -> KdfLimits {
    KdfLimits::default()
}

fn fast_format(version: u16) -> FormatOptions {
    FormatOptions {
        version,
        pbkdf: Some(FAST),
        ..FormatOptions::default()
    }
}

#[test]
fn cryptsetup_luks1_is_unlocked() {
    let img = Image::new(8);
    img.cs_format(
        "first",
        &["--type", "luks1", "--pbkdf-force-iterations", "1000"],
    );
    img.cs_add_key("first", "second", None);
    img.cs_add_key("first", "sixth", Some(5));
    assert_eq!(img.unlock_matches_cryptsetup("first"), 0);
    assert_eq!(img.unlock_matches_cryptsetup("second"), 1);
    assert_eq!(img.unlock_matches_cryptsetup("sixth"), 5);
    let u = img.unlock("sixth", Some(5)).unwrap();
    assert_eq!(
        (
            u.cipher.as_str(),
            u.sector_bytes,
            u.data_offset_bytes,
            u.data_size_bytes,
            u.iv_tweak
        ),
        ("aes-xts-plain64", 512, 2 << 20, None, 0)
    );
    let err = img.unlock("wrong", None).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("no key slot of {} opens with this passphrase", img.p())
    );
    let err = img.unlock("first", Some(5)).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "key slot 5 of {} does not open with this passphrase",
            img.p()
        )
    );

    // Another cipher and key size.
    let img = Image::new(8);
    img.cs_format(
        "p",
        &[
            "--type",
            "luks1",
            "--pbkdf-force-iterations",
            "1000",
            "--cipher",
            "aes-cbc-essiv:sha256",
            "--key-size",
            "256",
            "--hash",
            "sha1",
        ],
    );
    assert_eq!(img.unlock_matches_cryptsetup("p"), 0);
    assert_eq!(
        img.unlock("p", None).unwrap().cipher,
        "aes-cbc-essiv:sha256"
    );
}

#[test]
fn cryptsetup_luks2_pbkdf2_is_unlocked() {
    let img = Image::new(32);
    img.cs_format(
        "first",
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--sector-size",
            "4096",
            "--label",
            "vault",
        ],
    );
    img.cs_add_key("first", "second", None);
    img.cs_add_key("first", "twelfth", Some(12));
    assert_eq!(img.unlock_matches_cryptsetup("first"), 0);
    assert_eq!(img.unlock_matches_cryptsetup("second"), 1);
    assert_eq!(img.unlock_matches_cryptsetup("twelfth"), 12);
    let u = img.unlock("second", None).unwrap();
    assert_eq!(
        (
            u.cipher.as_str(),
            u.sector_bytes,
            u.data_offset_bytes,
            u.data_size_bytes,
            u.iv_tweak
        ),
        ("aes-xts-plain64", 4096, 16 << 20, None, 0)
    );
    assert!(img
        .unlock("nope", None)
        .unwrap_err()
        .to_string()
        .contains("no key slot of"));

    // The dump has luksDump's sections and agrees with it on the numbers.
    let meta = read_metadata(&img.dev()).unwrap();
    let ours = dump(&meta);
    let theirs = img.cs_dump();
    for key in [
        "Version",
        "Epoch",
        "Metadata area",
        "Keyslots area",
        "UUID",
        "Label",
    ] {
        assert_eq!(field(&ours, key), field(&theirs, key), "{key}");
    }
    for section in [
        "Data segments:",
        "Keyslots:",
        "Tokens:",
        "Digests:",
        "  12: luks2",
    ] {
        assert!(ours.contains(section), "{section}\n{ours}");
    }
    assert!(!ours.contains(&hex(&u.volume_key)[..8]));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn cryptsetup_luks2_argon2id_is_unlocked() {
    let img = Image::new(32);
    img.cs_format(
        "first",
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32768",
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-parallel",
            "1",
        ],
    );
    assert_eq!(img.unlock_matches_cryptsetup("first"), 0);
    let LuksMetadata::Luks2(m) = read_metadata(&img.dev()).unwrap() else {
        panic!("LUKS2 expected")
    };
    let text = dump(&LuksMetadata::Luks2(m));
    assert!(text.contains("PBKDF:      argon2id"), "{text}");
    assert!(text.contains("Memory:     32768"), "{text}");
}

#[test]
fn tessera_luks2_opens_in_cryptsetup() {
    let img = Image::new(24);
    let uuid = "0f4a8f57-3b5e-4a43-9c2e-1b8e4cdb2a77";
    let opts = FormatOptions {
        sector_bytes: 4096,
        label: "tessera-vault".into(),
        uuid: Some(uuid.into()),
        ..fast_format(2)
    };
    let meta = format(&img.dev(), b"secret one", &opts).unwrap();
    assert_eq!(meta.uuid(), uuid);
    assert!(img.cs_opens("secret one", None));
    assert!(!img.cs_opens("secret two", None));
    let theirs = img.cs_dump();
    assert_eq!(field(&theirs, "UUID"), uuid);
    assert_eq!(field(&theirs, "Label"), "tessera-vault");
    assert_eq!(field(&theirs, "cipher"), "aes-xts-plain64");
    assert_eq!(field(&theirs, "sector"), "4096 [bytes]");
    assert_eq!(field(&theirs, "offset"), "16777216 [bytes]");
    assert_eq!(field(&theirs, "Keyslots area"), "16744448 [bytes]");
    assert_eq!(field(&theirs, "Area length"), "258048 [bytes]");
    let ours = dump(&meta);
    for key in [
        "Metadata area",
        "Keyslots area",
        "UUID",
        "Label",
        "Area offset",
    ] {
        assert_eq!(field(&ours, key), field(&theirs, key), "{key}");
    }
    let key = img.unlock("secret one", None).unwrap().volume_key;
    assert_eq!(&key[..], &img.cs_volume_key("secret one")[..]);

    // argon2id, a given volume key and a 256-bit cbc cipher.
    let img = Image::new(24);
    let volume_key = SecretBytes::from_slice(&[7u8; 32]);
    let opts = FormatOptions {
        cipher: "aes-cbc-essiv:sha256".into(),
        key_bytes: 32,
        pbkdf: Some(Kdf::Argon2 {
            variant: Argon2Variant::Id,
            time: 4,
            memory_kib: 32768,
            lanes: 1,
        }),
        volume_key: Some(volume_key.clone()),
        key_slot: 3,
        ..FormatOptions::default()
    };
    format(&img.dev(), b"argon", &opts).unwrap();
    assert!(img.cs_opens("argon", Some(3)));
    assert_eq!(img.cs_volume_key("argon"), vec![7u8; 32]);
    let theirs = img.cs_dump();
    assert!(theirs.contains("PBKDF:      argon2id"), "{theirs}");
    assert!(theirs.contains("  3: luks2"), "{theirs}");
    assert_eq!(img.unlock("argon", None).unwrap().key_slot, 3);
}

#[test]
fn tessera_luks1_opens_in_cryptsetup() {
    let img = Image::new(8);
    let uuid = "5d1b0a52-8f0e-4c1e-a4a1-3f7e9a0c1b2d";
    let meta = format(
        &img.dev(),
        b"one",
        &FormatOptions {
            uuid: Some(uuid.into()),
            ..fast_format(1)
        },
    )
    .unwrap();
    assert!(img.cs_opens("one", Some(0)));
    let theirs = img.cs_dump();
    assert_eq!(field(&theirs, "UUID"), uuid);
    assert_eq!(field(&theirs, "Cipher name"), "aes");
    assert_eq!(field(&theirs, "Cipher mode"), "xts-plain64");
    assert_eq!(field(&theirs, "Payload offset"), "4096");
    assert_eq!(field(&theirs, "MK bits"), "512");
    assert_eq!(
        img.cs_volume_key("one"),
        &img.unlock("one", None).unwrap().volume_key[..]
    );
    // The same layout as cryptsetup's own: every field of the dump but the random ones.
    let ours = dump(&meta);
    let other = Image::new(8);
    other.cs_format(
        "one",
        &["--type", "luks1", "--pbkdf-force-iterations", "1000"],
    );
    let reference = other.cs_dump();
    let layout = |d: &str| -> Vec<String> {
        d.lines()
            .filter(|l| {
                l.contains("offset")
                    || l.contains("stripes")
                    || l.contains("Key Slot")
                    || l.contains("MK bits")
                    || l.contains("Hash spec")
            })
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(layout(&ours), layout(&reference));
    assert_eq!(layout(&theirs), layout(&reference));

    // 128-bit cbc: cryptsetup puts the data at 1 MiB.
    let img = Image::new(8);
    format(
        &img.dev(),
        b"two",
        &FormatOptions {
            cipher: "aes-cbc-plain".into(),
            key_bytes: 16,
            ..fast_format(1)
        },
    )
    .unwrap();
    assert!(img.cs_opens("two", None));
    assert_eq!(field(&img.cs_dump(), "Payload offset"), "2048");
}

fn key_management(version: u16) {
    let img = Image::new(24);
    format(&img.dev(), b"alpha", &fast_format(version)).unwrap();
    let add = |existing: &str, new: &str, slot: Option<u32>| {
        add_key(
            &img.dev(),
            existing.as_bytes(),
            new.as_bytes(),
            &AddKeyOptions {
                key_slot: slot,
                pbkdf: Some(FAST),
                limits: limits(),
            },
        )
    };
    // tessera adds, cryptsetup opens.
    assert_eq!(add("alpha", "beta", None).unwrap(), 1);
    assert_eq!(add("beta", "gamma", Some(6)).unwrap(), 6);
    assert!(img.cs_opens("beta", Some(1)));
    assert!(img.cs_opens("gamma", Some(6)));
    assert!(img.cs_opens("alpha", Some(0)));
    let err = add("nope", "delta", None).unwrap_err().to_string();
    assert!(err.contains("no key slot of"), "{err}");
    let err = add("alpha", "delta", Some(6)).unwrap_err().to_string();
    assert!(err.contains("key slot 6 is already in use"), "{err}");
    // cryptsetup adds, tessera opens.
    img.cs_add_key("gamma", "delta", Some(2));
    assert_eq!(img.unlock_matches_cryptsetup("delta"), 2);
    // tessera removes, cryptsetup no longer opens.
    let removed = remove_key(
        &img.dev(),
        b"beta",
        &RemoveKeyOptions {
            limits: limits(),
            force: false,
        },
    )
    .unwrap();
    assert_eq!(removed, 1);
    assert!(!img.cs_opens("beta", None));
    assert!(img.cs_opens("delta", None));
    // cryptsetup kills a slot, tessera no longer opens it.
    cs_ok(&[
        "luksKillSlot",
        "--batch-mode",
        "--key-file",
        &img.key("alpha"),
        &img.p(),
        "6",
    ]);
    let err = img.unlock("gamma", None).unwrap_err().to_string();
    assert!(err.contains("no key slot of"), "{err}");
    assert_eq!(img.unlock_matches_cryptsetup("alpha"), 0);
    // tessera kills a slot; the last one needs force.
    kill_slot(&img.dev(), 2, false).unwrap();
    assert!(!img.cs_opens("delta", None));
    let err = kill_slot(&img.dev(), 2, false).unwrap_err().to_string();
    assert!(
        err.contains("key slot 2: the key slot is not in use"),
        "{err}"
    );
    let err = remove_key(&img.dev(), b"alpha", &RemoveKeyOptions::default()).unwrap_err();
    assert!(err.to_string().contains("the last one"), "{err}");
    assert!(err.to_string().contains(&img.p()), "{err}");
    assert!(img.cs_opens("alpha", None));
    kill_slot(&img.dev(), 0, true).unwrap();
    assert!(!img.cs_opens("alpha", None));
    let err = img.unlock("alpha", None).unwrap_err().to_string();
    assert!(err.contains("no key slot is in use"), "{err}");
    // cryptsetup still reads the header.
    img.cs_dump();
}

#[test]
fn luks2_keys_between_tessera_and_cryptsetup() {
    key_management(2);
}

#[test]
fn luks1_keys_between_tessera_and_cryptsetup() {
    key_management(1);
}

#[test]
fn round_trip_in_memory() {
    for version in [1, 2] {
        let dev = MemoryDevice::new("mem0", 20 << 20);
        let opts = FormatOptions {
            label: if version == 2 {
                "rt".into()
            } else {
                String::new()
            },
            ..fast_format(version)
        };
        let formatted = format(&dev, b"pw", &opts).unwrap();
        let read = read_metadata(&dev).unwrap();
        assert_eq!(formatted, read);
        assert_eq!(read.version(), version);
        assert_eq!(read.active_keyslots(), vec![0]);
        assert_eq!(read.cipher(), "aes-xts-plain64");
        let u = unlock(&dev, b"pw", &UnlockOptions::default()).unwrap();
        assert_eq!(u.volume_key.len(), 64);
        assert_eq!(
            u.data_offset_bytes,
            if version == 1 { 2 << 20 } else { 16 << 20 }
        );
        assert!(!format!("{u:?}").contains(&hex(&u.volume_key)[..8]));
        // A second format is refused without force.
        let err = format(&dev, b"pw", &opts).unwrap_err().to_string();
        assert!(err.starts_with("mem0: it already holds a LUKS"), "{err}");
        assert!(err.contains("--force"), "{err}");
        let again = format(
            &dev,
            b"pw2",
            &FormatOptions {
                force: true,
                ..opts.clone()
            },
        )
        .unwrap();
        assert_ne!(again.uuid(), read.uuid());
        assert!(unlock(&dev, b"pw", &UnlockOptions::default()).is_err());
        // Too small a device.
        let small = MemoryDevice::new("small", 1 << 20);
        let err = format(&small, b"pw", &opts).unwrap_err().to_string();
        assert!(
            err.starts_with("small: the device (1048576 bytes) is too small"),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Bad input: every error names the device and the problem.

/// The primary and secondary LUKS2 JSON of an image file rewritten by `edit`, checksums
/// recomputed.
fn edit_luks2_json(path: &Path, edit: impl Fn(&mut Value)) {
    let file = File::options().read(true).write(true).open(path).unwrap();
    for at in [0u64, 16384] {
        let mut h = vec![0u8; 16384];
        file.read_exact_at(&mut h, at).unwrap();
        let end = h[4096..].iter().position(|&b| b == 0).unwrap();
        let mut json: Value = serde_json::from_slice(&h[4096..4096 + end]).unwrap();
        edit(&mut json);
        let text = serde_json::to_string(&json).unwrap();
        h[4096..].fill(0);
        h[4096..4096 + text.len()].copy_from_slice(text.as_bytes());
        h[448..512].fill(0);
        let sum = Sha256::digest(&h);
        h[448..480].copy_from_slice(&sum);
        file.write_all_at(&h, at).unwrap();
    }
}

fn luks2_image(args: &[&str]) -> Image {
    let img = Image::new(20);
    let mut all = vec![
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
    ];
    all.extend(args);
    img.cs_format("pw", &all);
    img
}

fn err_of(img: &Image, pass: &str, slot: Option<u32>, limits: KdfLimits) -> String {
    let err = unlock(
        &img.dev(),
        pass.as_bytes(),
        &UnlockOptions {
            key_slot: slot,
            limits,
        },
    )
    .expect_err("unlock must fail")
    .to_string();
    assert!(err.contains(&img.p()), "the error names the device: {err}");
    err
}

fn expect(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "'{part}' not in: {err}");
    }
}

#[test]
fn bad_input_is_named() {
    let d = limits();
    // 1. Wrong passphrase.
    let img = luks2_image(&[]);
    expect(
        &err_of(&img, "wrong", None, d),
        &["no key slot of", "opens with this passphrase"],
    );
    // 2. An inactive key slot asked for; 3. one that does not exist.
    expect(
        &err_of(&img, "pw", Some(4), d),
        &["key slot 4: the key slot is not in use"],
    );
    expect(
        &err_of(&img, "pw", Some(40), d),
        &["key slot 40: there is no such key slot"],
    );

    // 4. Damaged key material: the digest does not match, so the passphrase opens nothing.
    let img = luks2_image(&[]);
    let file = File::options().write(true).open(&img.path).unwrap();
    file.write_all_at(&[0x55; 64], 32768 + 1000).unwrap();
    expect(
        &err_of(&img, "pw", None, d),
        &["no key slot of", "opens with this passphrase"],
    );

    // 5. Unknown KDF type.
    let img = luks2_image(&[]);
    edit_luks2_json(&img.path, |j| {
        j["keyslots"]["0"]["kdf"]["type"] = "scrypt".into()
    });
    expect(
        &err_of(&img, "pw", None, d),
        &["key slot 0", "key derivation 'scrypt' is not supported"],
    );
    // 6. Unknown cipher for the key material.
    let img = luks2_image(&[]);
    edit_luks2_json(&img.path, |j| {
        j["keyslots"]["0"]["area"]["encryption"] = "twofish-xts-plain64".into()
    });
    expect(
        &err_of(&img, "pw", None, d),
        &["key slot 0", "twofish-xts-plain64", "not supported"],
    );
    // 7. Unknown hash (anti-forensic splitter).
    let img = luks2_image(&[]);
    edit_luks2_json(&img.path, |j| {
        j["keyslots"]["0"]["af"]["hash"] = "whirlpool".into()
    });
    expect(
        &err_of(&img, "pw", None, d),
        &["key slot 0", "hash 'whirlpool' is not supported"],
    );
    // 8. Argon2 memory above the limit.
    let img = Image::new(20);
    img.cs_format(
        "pw",
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32768",
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-parallel",
            "1",
        ],
    );
    let tight = KdfLimits {
        max_memory_kib: 16384,
        ..d
    };
    expect(
        &err_of(&img, "pw", None, tight),
        &[
            "key slot 0",
            "memory (KiB) 32768 is above the limit of 16384",
        ],
    );
    // 9. PBKDF2 iterations above the limit.
    let img = luks2_image(&[]);
    let tight = KdfLimits {
        max_pbkdf2_iterations: 500,
        ..d
    };
    expect(
        &err_of(&img, "pw", None, tight),
        &["key slot 0", "iterations 1000 is above the limit of 500"],
    );
    // 10. Stripes other than 4000.
    let img = luks2_image(&[]);
    edit_luks2_json(&img.path, |j| {
        j["keyslots"]["0"]["af"]["stripes"] = 4_000_000.into()
    });
    expect(
        &err_of(&img, "pw", None, d),
        &["key slot 0", "4000000 anti-forensic stripes"],
    );
    // 11. Key material area past the end of the device (inside the declared key slots area).
    let img = luks2_image(&[]);
    edit_luks2_json(&img.path, |j| {
        j["config"]["keyslots_size"] = "4294967296".into();
        j["keyslots"]["0"]["area"]["offset"] = "4000000000".into();
    });
    expect(
        &err_of(&img, "pw", None, d),
        &["key slot 0", "runs past the end of the device"],
    );
    // 12. Area overlapping the headers.
    let img = luks2_image(&[]);
    edit_luks2_json(&img.path, |j| {
        j["keyslots"]["0"]["area"]["offset"] = "4096".into()
    });
    expect(
        &err_of(&img, "pw", None, d),
        &["key slot 0", "outside the key slots area"],
    );
    // 13. key_size mismatch.
    let img = luks2_image(&[]);
    edit_luks2_json(&img.path, |j| {
        j["keyslots"]["0"]["area"]["key_size"] = 20.into()
    });
    expect(
        &err_of(&img, "pw", None, d),
        &["key slot 0", "key_size mismatch", "20-byte key"],
    );
    let img = luks2_image(&[]);
    edit_luks2_json(&img.path, |j| j["keyslots"]["0"]["key_size"] = 16.into());
    expect(
        &err_of(&img, "pw", None, d),
        &["key slot 0", "key_size 16 does not fit"],
    );

    // 14. A damaged slot does not stop another from opening; when it is the only one
    // tried, it is named.
    let img = luks2_image(&[]);
    img.cs_add_key("pw", "other", None);
    edit_luks2_json(&img.path, |j| {
        j["keyslots"]["0"]["kdf"]["type"] = "scrypt".into()
    });
    assert_eq!(img.unlock("other", None).unwrap().key_slot, 1);
    expect(
        &err_of(&img, "pw", None, d),
        &[
            "no key slot of",
            "not tried: key slot 0: key derivation 'scrypt'",
        ],
    );
    expect(
        &err_of(&img, "pw", Some(0), d),
        &["key slot 0: key derivation 'scrypt' is not supported"],
    );

    // 15. LUKS1: damaged header (impossible key size), unknown hash, key material past the
    // end.
    let img = Image::new(8);
    img.cs_format(
        "pw",
        &["--type", "luks1", "--pbkdf-force-iterations", "1000"],
    );
    let file = File::options().write(true).open(&img.path).unwrap();
    file.write_all_at(&[0xff; 4], 108).unwrap();
    expect(&err_of(&img, "pw", None, d), &["impossible key size"]);
    let img = Image::new(8);
    img.cs_format(
        "pw",
        &["--type", "luks1", "--pbkdf-force-iterations", "1000"],
    );
    let file = File::options().write(true).open(&img.path).unwrap();
    file.write_all_at(b"md5\0\0\0\0", 72).unwrap();
    expect(
        &err_of(&img, "pw", None, d),
        &["LUKS1 header", "hash 'md5' is not supported"],
    );
    let img = Image::new(8);
    img.cs_format(
        "pw",
        &["--type", "luks1", "--pbkdf-force-iterations", "1000"],
    );
    let file = File::options().write(true).open(&img.path).unwrap();
    file.write_all_at(&0x00ff_0000u32.to_be_bytes(), 208 + 40)
        .unwrap();
    expect(
        &err_of(&img, "pw", None, d),
        &["key slot 0", "runs past the end of the device"],
    );
    file.write_all_at(&0u32.to_be_bytes(), 208 + 40).unwrap();
    expect(
        &err_of(&img, "pw", None, d),
        &["key slot 0", "overlaps the LUKS1 header"],
    );
    file.write_all_at(&8u32.to_be_bytes(), 208 + 40).unwrap();
    file.write_all_at(&7u32.to_be_bytes(), 208 + 44).unwrap();
    expect(
        &err_of(&img, "pw", None, d),
        &["key slot 0", "7 anti-forensic stripes"],
    );

    // 16. Both LUKS2 copies damaged.
    let img = luks2_image(&[]);
    let file = File::options().write(true).open(&img.path).unwrap();
    file.write_all_at(b"####", 4096 + 30).unwrap();
    file.write_all_at(b"####", 16384 + 4096 + 30).unwrap();
    expect(
        &err_of(&img, "pw", None, d),
        &[
            "no usable LUKS2 header",
            "primary header: sha256 checksum mismatch",
        ],
    );
    // Only the primary damaged: the secondary is used.
    let img = luks2_image(&[]);
    let file = File::options().write(true).open(&img.path).unwrap();
    file.write_all_at(b"####", 4096 + 30).unwrap();
    assert_eq!(img.unlock("pw", None).unwrap().key_slot, 0);

    // 17. A truncated device (the key material is cut off).
    let img = luks2_image(&[]);
    File::options()
        .write(true)
        .open(&img.path)
        .unwrap()
        .set_len(40000)
        .unwrap();
    expect(
        &err_of(&img, "pw", None, d),
        &["key slot 0", "runs past the end of the device"],
    );
    File::options()
        .write(true)
        .open(&img.path)
        .unwrap()
        .set_len(3000)
        .unwrap();
    expect(
        &err_of(&img, "pw", None, d),
        &["no usable LUKS2 header", "truncated"],
    );

    // 18. No LUKS at all.
    let img = Image::new(1);
    expect(&err_of(&img, "pw", None, d), &["holds no LUKS header"]);
}

// ---------------------------------------------------------------------------------------
// The fuzz target's seeds.

fn fix_luks2_checksums(b: &mut [u8]) {
    for at in [0usize, 16384] {
        if b.len() >= at + 16384 && (&b[at..at + 4] == b"LUKS" || &b[at..at + 4] == b"SKUL") {
            let h = &mut b[at..at + 16384];
            h[448..512].fill(0);
            let sum = Sha256::digest(&*h);
            h[448..480].copy_from_slice(&sum);
        }
    }
}

/// The seeds are real cryptsetup headers with KDF costs cut to `KdfLimits::fuzzing()`, so
/// unlocking runs the KDF, decrypts, merges and checks the digest (and fails: the costs no
/// longer match the key material). Mutations of them never panic.
#[test]
fn fuzz_seeds_reach_the_kdf() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/luks_unlock");
    for (seed, version, deep) in [
        ("seed-luks1", 1, true),
        ("seed-luks2-pbkdf2", 2, true),
        ("seed-luks2-argon2id", 2, true),
        ("seed-luks2-headers", 2, false),
    ] {
        let bytes = std::fs::read(corpus.join(seed)).unwrap();
        let dev = MemoryDevice::with_contents(seed, &bytes);
        let meta = read_metadata(&dev).unwrap();
        assert_eq!(meta.version(), version);
        assert!(dump(&meta).starts_with("LUKS header information"));
        let opts = UnlockOptions {
            key_slot: None,
            limits: KdfLimits::fuzzing(),
        };
        let err = unlock(&dev, b"fuzz", &opts).unwrap_err();
        if deep {
            assert!(
                matches!(err, LuksError::WrongPassphrase { .. }),
                "{seed}: {err}"
            );
        } else {
            assert!(
                err.to_string().contains("runs past the end"),
                "{seed}: {err}"
            );
        }
        // Bit flips through the binary header and the JSON, checksums made right.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..120 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut m = bytes.clone();
            let span = if version == 1 { 1024 } else { 4096 + 1400 };
            let at = (state % span) as usize;
            m[at] ^= 1 << (i % 8);
            if version == 2 && i % 2 == 0 {
                // Replace a JSON character to keep the mutation inside the text.
                let at = 4096 + (state % 1200) as usize;
                m[at] = b"0123456789\"{}:,ax"[(state >> 20) as usize % 17];
            }
            fix_luks2_checksums(&mut m);
            let dev = MemoryDevice::with_contents("mut", &m);
            if let Ok(meta) = read_metadata(&dev) {
                let _ = dump(&meta);
                let _ = unlock(&dev, b"fuzz", &opts);
            }
        }
    }
}
