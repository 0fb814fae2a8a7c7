//! The LUKS header decoder against headers made by the real cryptsetup on image files (no
//! loop device or root needed), checked field by field against `cryptsetup luksDump`.
//! cryptsetup must be installed (package cryptsetup-bin): these tests fail, not skip,
//! without it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_block::{FileDevice, OpenOptions};
use tessera_formats::luks::{parse, read_header, LuksError, LuksHeader};

/// Quick key derivation: these images guard nothing. (Ciphers are kept to AES, which
/// cryptsetup's userspace crypto has without device-mapper.)
const FAST_PBKDF: [&str; 4] = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

struct Image {
    path: PathBuf,
    key: PathBuf,
    dir: tempfile::TempDir,
}

impl Image {
    /// A sparse image of `mib` MiB formatted by `cryptsetup luksFormat` with `args`.
    fn format(mib: u64, args: &[&str]) -> Image {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary folder");
        let path = dir.path().join("luks.img");
        File::create(&path)
            .and_then(|f| f.set_len(mib << 20))
            .expect("create image");
        let key = dir.path().join("key");
        std::fs::write(&key, "first passphrase").unwrap();
        let mut all = vec!["luksFormat", "--batch-mode", "-q"];
        all.extend(args);
        let image = Image { path, key, dir };
        cryptsetup(
            &all.iter()
                .map(|s| s.to_string())
                .chain([image.path_str(), image.key.display().to_string()])
                .collect::<Vec<_>>(),
        );
        image
    }

    fn path_str(&self) -> String {
        self.path.display().to_string()
    }

    fn add_key(&self, slot: Option<u32>) {
        let new_key = self.dir.path().join("new-key");
        std::fs::write(&new_key, "another passphrase").unwrap();
        let mut args: Vec<String> = ["luksAddKey", "--batch-mode", "--key-file"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(self.key.display().to_string());
        if let Some(slot) = slot {
            args.extend(["--key-slot".to_string(), slot.to_string()]);
        }
        args.extend(FAST_PBKDF.iter().map(|s| s.to_string()));
        args.extend([self.path_str(), new_key.display().to_string()]);
        cryptsetup(&args);
    }

    fn read(&self) -> Result<Option<LuksHeader>, LuksError> {
        let options = OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        };
        let dev = FileDevice::open(&self.path, options).expect("open image");
        read_header(&dev)
    }

    fn header(&self) -> LuksHeader {
        self.read()
            .expect("read_header")
            .expect("a LUKS header is found")
    }

    fn dump(&self) -> Dump {
        Dump::parse(&cryptsetup(&["luksDump".into(), self.path_str()]))
    }

    /// Overwrites `len` bytes at `offset` with a pattern.
    fn scribble(&self, offset: u64, len: usize) {
        let file = File::options().write(true).open(&self.path).unwrap();
        file.write_all_at(&vec![b'#'; len], offset).unwrap();
    }
}

fn cryptsetup(args: &[String]) -> String {
    let out = Command::new("cryptsetup")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run cryptsetup ({e}): install it (package cryptsetup-bin)")
        });
    assert!(
        out.status.success(),
        "cryptsetup {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The fields of `cryptsetup luksDump` this test compares, from either version's layout.
#[derive(Debug, Default)]
struct Dump {
    version: u16,
    uuid: String,
    label: String,
    cipher: String,
    key_bits: u32,
    data_offset_bytes: u64,
    metadata_bytes: Option<u64>,
    active_keyslots: Vec<u32>,
}

impl Dump {
    fn parse(text: &str) -> Dump {
        let mut fields: HashMap<&str, &str> = HashMap::new();
        let mut dump = Dump::default();
        let mut section = "";
        for line in text.lines() {
            // LUKS2 sections: "Data segments:", "Keyslots:"; their entries are "  N: type".
            if !line.starts_with([' ', '\t']) && line.ends_with(':') {
                section = line.trim_end_matches(':');
                continue;
            }
            let trimmed = line.trim();
            if let Some(slot) = trimmed.strip_prefix("Key Slot ") {
                // LUKS1: "Key Slot 3: ENABLED".
                let (n, state) = slot.split_once(':').unwrap();
                if state.trim() == "ENABLED" {
                    dump.active_keyslots.push(n.parse().unwrap());
                }
                continue;
            }
            let Some((key, value)) = trimmed.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match section {
                "Keyslots" if line.starts_with("  ") && !line.starts_with("   ") => {
                    dump.active_keyslots.push(key.parse().unwrap());
                }
                "Keyslots" if key == "Key" && dump.key_bits == 0 => {
                    dump.key_bits = number(value);
                }
                "Data segments" if key == "offset" && dump.data_offset_bytes == 0 => {
                    dump.data_offset_bytes = number(value);
                }
                "Data segments" if key == "cipher" && dump.cipher.is_empty() => {
                    dump.cipher = value.to_string();
                }
                _ => {
                    fields.entry(key).or_insert(value);
                }
            }
        }
        dump.version = number(fields["Version"]);
        dump.uuid = fields["UUID"].to_string();
        if dump.version == 1 {
            dump.cipher = format!("{}-{}", fields["Cipher name"], fields["Cipher mode"]);
            dump.key_bits = number(fields["MK bits"]);
            dump.data_offset_bytes = number::<u64>(fields["Payload offset"]) * 512;
        } else {
            dump.label = match fields["Label"] {
                "(no label)" => String::new(),
                label => label.to_string(),
            };
            dump.metadata_bytes = Some(number(fields["Metadata area"]));
        }
        dump
    }
}

/// The leading number of "512 bits", "16777216 [bytes]", "4096".
fn number<T: std::str::FromStr>(text: &str) -> T {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number in luksDump value '{text}'"))
}

fn assert_matches_dump(image: &Image) {
    let header = image.header();
    let dump = image.dump();
    assert_eq!(header.version, dump.version, "{dump:?}");
    assert_eq!(header.uuid, dump.uuid);
    assert_eq!(header.label, dump.label);
    assert_eq!(header.cipher, dump.cipher);
    assert_eq!(header.key_bytes * 8, dump.key_bits);
    assert_eq!(header.data_offset_bytes, dump.data_offset_bytes);
    assert_eq!(header.active_keyslots, dump.active_keyslots);
    if let Some(metadata) = dump.metadata_bytes {
        assert_eq!(header.header_bytes, metadata);
    }
    assert_eq!(header.warning, None);
}

fn luks2_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--type", "luks2", "--label", "vault"];
    args.extend(FAST_PBKDF);
    args.extend(extra);
    args
}

fn luks1_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--type", "luks1", "--pbkdf-force-iterations", "1000"];
    args.extend(extra);
    args
}

#[test]
fn luks2_matches_luksdump() {
    let image = Image::format(32, &luks2_args(&[]));
    assert_matches_dump(&image);
    let header = image.header();
    assert_eq!(header.version, 2);
    assert_eq!(header.label, "vault");
    assert_eq!(header.data_size_bytes, None);
    assert_eq!(header.active_keyslots, vec![0]);

    image.add_key(None);
    assert_matches_dump(&image);
    assert_eq!(image.header().active_keyslots, vec![0, 1]);
}

#[test]
fn luks2_other_cipher_metadata_size_and_subsystem() {
    let image = Image::format(
        48,
        &luks2_args(&[
            "--cipher",
            "aes-cbc-essiv:sha256",
            "--key-size",
            "256",
            "--luks2-metadata-size",
            "64k",
            "--subsystem",
            "tessera-test",
        ]),
    );
    assert_matches_dump(&image);
    let header = image.header();
    assert_eq!(header.cipher, "aes-cbc-essiv:sha256");
    assert_eq!(header.key_bytes, 32);
    assert_eq!(header.header_bytes, 64 << 10);
    assert_eq!(header.subsystem, "tessera-test");
    image.add_key(Some(7));
    assert_eq!(image.header().active_keyslots, vec![0, 7]);
    assert_matches_dump(&image);
}

#[test]
fn luks1_matches_luksdump() {
    let image = Image::format(8, &luks1_args(&[]));
    assert_matches_dump(&image);
    let header = image.header();
    assert_eq!((header.version, header.label.as_str()), (1, ""));
    assert_eq!(header.header_bytes, header.data_offset_bytes);

    image.add_key(None);
    assert_matches_dump(&image);
    assert_eq!(image.header().active_keyslots, vec![0, 1]);
    image.add_key(Some(5));
    assert_eq!(image.header().active_keyslots, vec![0, 1, 5]);

    let image = Image::format(
        8,
        &luks1_args(&["--cipher", "aes-cbc-plain", "--key-size", "128"]),
    );
    assert_matches_dump(&image);
    let header = image.header();
    assert_eq!(
        (header.cipher.as_str(), header.key_bytes),
        ("aes-cbc-plain", 16)
    );
}

#[test]
fn damaged_primary_luks2_header_falls_back_to_the_secondary() {
    let image = Image::format(32, &luks2_args(&[]));
    let before = image.header();
    let hdr_size = before.header_bytes;
    // Into the JSON text of the primary copy.
    image.scribble(4096 + 20, 8);
    let after = image.header();
    let warning = after
        .warning
        .clone()
        .expect("a warning about the primary header");
    assert!(warning.contains("checksum mismatch"), "{warning}");
    assert!(
        warning.contains(&format!("secondary header at byte {hdr_size}")),
        "{warning}"
    );
    assert_eq!(
        LuksHeader {
            warning: None,
            ..after
        },
        before
    );

    // Both copies damaged: a clear error naming the image.
    image.scribble(hdr_size + 4096 + 20, 8);
    let err = image.read().expect_err("both headers are damaged");
    let text = err.to_string();
    assert!(matches!(err, LuksError::Malformed { .. }), "{err:?}");
    assert!(text.starts_with(&image.path_str()), "{text}");
    assert!(
        text.contains("primary header: sha256 checksum mismatch"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "secondary header at byte {hdr_size}: sha256 checksum mismatch"
        )),
        "{text}"
    );
}

#[test]
fn plain_files_hold_no_luks() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("plain.img");
    File::create(&path)
        .and_then(|f| f.set_len(8 << 20))
        .unwrap();
    let dev = FileDevice::open(&path, OpenOptions::default()).unwrap();
    assert!(read_header(&dev).unwrap().is_none());
    // cryptsetup agrees.
    let status = Command::new("cryptsetup")
        .arg("isLuks")
        .arg(&path)
        .status()
        .expect("cannot run cryptsetup: install it (package cryptsetup-bin)");
    assert!(!status.success());
}

/// The fuzz target's seeds are real headers cut short, and still decode.
#[test]
fn fuzz_seeds_decode() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/luks_header");
    for (seed, version) in [("seed-luks1", 1), ("seed-luks2", 2)] {
        let bytes = std::fs::read(corpus.join(seed)).unwrap();
        let header = parse(seed, &bytes).unwrap().unwrap();
        assert_eq!(header.version, version);
    }
}
