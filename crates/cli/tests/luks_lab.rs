//! LUKS with the real cryptsetup and the kernel's dm-crypt, byte for byte, both ways.
//!
//! - cryptsetup to tessera: in the kernel lab cryptsetup makes LUKS1, LUKS2 (pbkdf2, argon2id,
//!   three key slots, 4096-byte sectors) and plain dm-crypt volumes and fills them with random
//!   data; on the host `tessera luks open` (and `tessera dm create` with the same crypt table)
//!   serves the same bytes. In the same run `tessera luks open --kernel` loads the table
//!   cryptsetup loads (cipher, key, IV offset, offset, sector size) and the same bytes appear
//!   at /dev/mapper/NAME.
//! - tessera to cryptsetup: `tessera luks format` on the host, data written through NBD, key
//!   slots added and removed; cryptsetup tests the passphrases on the host and opens each
//!   volume in the lab with the same bytes.
//! - The whole stack as an encrypted Ubuntu install lays it out (GPT: ESP, /boot, LUKS2 > PV >
//!   ubuntu-vg > root + swap_1), built by the real tools; `tessera luks open` on partition 3
//!   serves the LVs, and the root file system read out of the export is whole.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Passphrases (key files, read whole as cryptsetup reads them).
const KEYS: [(&str, &str); 3] = [
    ("k1", "the first passphrase of the lab"),
    ("k2", "a second one, for key slot 1"),
    ("k3", "and a third\nwith a newline inside"),
];

/// A fixed 512-bit key for the plain dm-crypt tables.
const PLAIN_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
                         f0e1d2c3b4a5968778695a4b3c2d1e0fdeadbeefcafef00d0123456789abcdef";

/// Plain dm-crypt tables (name, image size, table; DEV is the device: a loop device in the
/// lab, the image file's path in the daemon): a whole 4 MiB image with 512-byte sectors, and
/// 4 MiB at an offset of 1 MiB with an IV offset and 4096-byte sectors.
const PLAIN_TABLES: [(&str, &str, &str); 2] = [
    ("plain", "4M", "0 8192 crypt aes-xts-plain64 KEY 0 DEV 0"),
    (
        "plain4k",
        "5M",
        "0 8192 crypt aes-xts-plain64 KEY 16 DEV 2048 1 sector_size:4096",
    ),
];

/// The LUKS volumes cryptsetup makes in part 1 (4 MiB of data each, passphrase k1 in slot 0).
const CS_VOLUMES: [&str; 5] = ["luks1", "pbkdf2", "argon2id", "slots", "sector4k"];

/// The ones `tessera luks open --kernel` opens beside cryptsetup in the lab (a LUKS1 table
/// with the key in hex, LUKS2 ones with cryptsetup's keyring key, 4096-byte sectors); the KDFs
/// of the others are the daemon's part (debug builds run argon2 slowly under emulation).
const KERNEL_VOLUMES: [&str; 3] = ["luks1", "pbkdf2", "sector4k"];

const INSIDE_CRYPTSETUP: &str = r#"set -u
cd "$(dirname "$0")"
T=./tessera
PB=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)
# Explicit loop devices: cryptsetup's own loop attachment of an image on the lab's shared
# folder fails its keyslot I/O.
declare -A L
fmt() { # NAME SIZE OPTIONS... (4 MiB of data after the header)
  local n=$1; shift
  truncate -s "$1" "$n.img"; shift
  L[$n]=$(losetup -f --show "$n.img")
  cryptsetup luksFormat -q --batch-mode "$@" "${L[$n]}" k1 || echo "format-failed $n"
}
fmt luks1 6M --type luks1 "${PB[@]}"
fmt pbkdf2 20M --type luks2 "${PB[@]}"
fmt argon2id 20M --type luks2 --pbkdf argon2id --pbkdf-memory 32768 --pbkdf-force-iterations 4 --pbkdf-parallel 1
fmt slots 20M --type luks2 "${PB[@]}"
cryptsetup luksAddKey -q --batch-mode "${PB[@]}" --key-file k1 "${L[slots]}" k2 || echo "addkey-failed k2"
cryptsetup luksAddKey -q --batch-mode "${PB[@]}" --key-file k1 "${L[slots]}" k3 || echo "addkey-failed k3"
fmt sector4k 20M --type luks2 "${PB[@]}" --sector-size 4096
echo "formatted-at $SECONDS s"
# Random data through the kernel's dm-crypt; its size and sha256.
fill() { # NAME (a /dev/mapper name)
  dmsetup mknodes "$1"
  head -c "$(blockdev --getsize64 "/dev/mapper/$1")" /dev/urandom > "/dev/mapper/$1" || echo "fill-failed $1"
  sync
  echo "kernel $1 $(blockdev --getsize64 "/dev/mapper/$1") $(sha256sum < "/dev/mapper/$1" | cut -d' ' -f1)"
}
for n in luks1 pbkdf2 argon2id slots sector4k; do
  loop=${L[$n]}
  start=$(date +%s)
  cryptsetup open --key-file k1 "$loop" "cs-$n" || echo "open-failed $n"
  echo "cs-open-seconds $n $(( $(date +%s) - start ))"
  fill "cs-$n"
  echo "cs-table $n $(dmsetup table --showkeys "cs-$n")"
  cryptsetup close "cs-$n" || echo "close-failed $n"
  # The same device opened by tessera into the kernel.
  start=$(date +%s)
  [ "$n" = argon2id ] || [ "$n" = slots ] && { losetup -d "$loop"; continue; }
  "$T" luks open "$loop" "t-$n" --key-file k1 --kernel > topen.out 2>&1
  echo "t-open $n rc $? $(tr '\n' ' ' < topen.out)"
  echo "t-open-seconds $n $(( $(date +%s) - start ))"
  [ -b "/dev/mapper/t-$n" ] && echo "t-node $n"
  echo "t-table $n $(dmsetup table --showkeys "t-$n")"
  echo "t-sha $n $(sha256sum < "/dev/mapper/t-$n" | cut -d' ' -f1)"
  "$T" luks close "t-$n" --kernel > tclose.out 2>&1
  echo "t-close $n rc $? $(tr '\n' ' ' < tclose.out)"
  dmsetup info "t-$n" > /dev/null 2>&1 && echo "t-left $n"
  [ -e "/dev/mapper/t-$n" ] && echo "t-node-left $n"
  losetup -d "$loop"
  echo "done-at $n $SECONDS s"
done
for n in plain plain4k; do
  truncate -s "$(cat "$n.size")" "$n.img"
  loop=$(losetup -f --show "$n.img")
  dmsetup create --noudevsync "$n" --table "$(sed "s|DEV|$loop|" "$n.table")" || echo "dm-failed $n"
  fill "$n"
  echo "cs-table $n $(dmsetup table --showkeys "$n")"
  dmsetup remove "$n"
  losetup -d "$loop"
done
echo cryptsetup-lab-done
"#;

/// One kernel lab at a time from this file (each is CPU-bound emulation on a shared machine).
fn lab_lock() -> std::fs::File {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("luks-lab.lock");
    let f = std::fs::File::create(path).expect("lock file");
    // SAFETY: flock on a descriptor this File owns.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) },
        0
    );
    f
}

/// Runs a lab script under the lock; returns its output and how long it took.
fn lab(dir: &Path, script: &str) -> (String, std::time::Duration) {
    let _lock = lab_lock();
    let start = std::time::Instant::now();
    let text = common::lab_script(dir, script, 300);
    (text, start.elapsed())
}

/// The tessera binary, linked into `dir` so that the lab runs this build even if the target
/// folder is rebuilt meanwhile.
fn link_tessera(dir: &Path) {
    let to = dir.join("tessera");
    if std::fs::hard_link(common::tessera_path(), &to).is_err() {
        std::fs::copy(common::tessera_path(), &to).expect("copy tessera");
    }
}

fn write_keys(dir: &Path) {
    for (name, text) in KEYS {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The lab line `PREFIX KEY rest...`: the rest.
fn lab_line<'a>(text: &'a str, prefix: &str, key: &str) -> &'a str {
    let head = format!("{prefix} {key} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&head))
        .or_else(|| text.lines().any(|l| l == head.trim_end()).then_some(""))
        .unwrap_or_else(|| panic!("no lab line `{head}...`:\n{text}"))
}

/// `kernel NAME SIZE SHA` lines: NAME -> (size, sha).
fn kernel_figures(text: &str) -> HashMap<String, (u64, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("kernel ")?.split_whitespace();
            let (name, size, sha) = (w.next()?, w.next()?, w.next()?);
            Some((name.to_string(), (size.parse().ok()?, sha.to_string())))
        })
        .collect()
}

/// A running daemon with its state folder, and the tessera CLI talking to it.
struct Daemon {
    served: Option<common::Served>,
    state: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, devices: &[PathBuf]) -> Daemon {
        let state = dir.join("state");
        let list: Vec<String> = devices.iter().map(|p| p.display().to_string()).collect();
        let served = common::serve(&list.join(","), &state, &[]);
        Daemon {
            served: Some(served),
            state,
        }
    }

    fn addr(&self) -> &str {
        &self.served.as_ref().unwrap().addr
    }

    fn cli(&self, args: &[&str]) -> Output {
        output(
            Command::new(common::tessera_path())
                .arg("--state-dir")
                .arg(&self.state)
                .args(args),
        )
    }

    /// Runs the CLI, which must succeed; its output.
    fn ok(&self, what: &str, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{what}: tessera {} failed: {}",
            args.join(" "),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The bytes of an export: (length, sha256).
    fn export_sha(&self, what: &str, export: &str) -> (u64, String) {
        let out = output(
            Command::new("nbdcopy")
                .arg(format!("{}/{export}", self.addr()))
                .arg("-"),
        );
        assert!(
            out.status.success(),
            "{what}: nbdcopy of {export}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.stdout.len() as u64, sha256_hex(&out.stdout))
    }

    fn exports(&self) -> Vec<String> {
        let out = output(Command::new("nbdinfo").args(["--list", "--json", self.addr()]));
        assert!(out.status.success(), "nbdinfo --list: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("nbdinfo JSON");
        v["exports"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["export-name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn stop(mut self) {
        let status = self.served.take().unwrap().stop();
        assert!(status.success(), "tessera serve exits cleanly: {status:?}");
    }
}

/// `dmsetup table` fields: start, length, target, cipher, key, iv offset, device, offset,
/// options.
fn table_fields(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

/// The volume key as `cryptsetup luksDump --dump-volume-key` prints it, in hex.
fn cryptsetup_volume_key(image: &Path, key_file: &Path) -> String {
    let out = output(
        Command::new("cryptsetup")
            .args([
                "luksDump",
                "--dump-volume-key",
                "-q",
                "--batch-mode",
                "--key-file",
            ])
            .arg(key_file)
            .arg(image),
    );
    assert!(
        out.status.success(),
        "cryptsetup luksDump --dump-volume-key {}: {}",
        image.display(),
        text(&out)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let (_, dump) = s
        .split_once("MK dump:")
        .unwrap_or_else(|| panic!("no MK dump in {s}"));
    dump.split_whitespace().collect()
}

#[test]
fn cryptsetup_volumes_open_in_tessera_and_tessera_loads_the_kernel_table_cryptsetup_does() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = tmp.path();
    write_keys(d);
    link_tessera(d);
    for (name, size, table) in PLAIN_TABLES {
        std::fs::write(d.join(format!("{name}.size")), size).unwrap();
        std::fs::write(
            d.join(format!("{name}.table")),
            table.replace("KEY", PLAIN_KEY),
        )
        .unwrap();
    }
    let (lab_text, took) = lab(d, INSIDE_CRYPTSETUP);
    eprintln!(
        "lab run (cryptsetup makes the volumes): {:.0} s",
        took.as_secs_f64()
    );
    assert!(lab_text.contains("cryptsetup-lab-done"), "lab:\n{lab_text}");
    for bad in [
        "format-failed",
        "addkey-failed",
        "open-failed",
        "fill-failed",
        "close-failed",
        "dm-failed",
    ] {
        assert!(!lab_text.contains(bad), "lab: {bad}\n{lab_text}");
    }
    for l in lab_text.lines().filter(|l| l.contains("-seconds ")) {
        eprintln!("{l}");
    }
    let figures = kernel_figures(&lab_text);
    for n in CS_VOLUMES {
        let (size, sha) = &figures[&format!("cs-{n}")];
        eprintln!("kernel {n}: {size} bytes sha256 {sha}");
        assert_eq!(
            *size,
            4 << 20,
            "{n}: the plaintext cryptsetup opens is 4 MiB"
        );
    }

    // Part 3: `tessera luks open --kernel` in the lab beside cryptsetup.
    for n in KERNEL_VOLUMES {
        let open = lab_line(&lab_text, "t-open", n);
        assert!(
            open.starts_with("rc 0 ") && open.contains(&format!("/dev/mapper/t-{n}")),
            "{n}: tessera luks open --kernel: {open}"
        );
        assert!(
            lab_text.lines().any(|l| l == format!("t-node {n}")),
            "{n}: tessera luks open --kernel makes the block device /dev/mapper/t-{n}\n{lab_text}"
        );
        let (_, cs_sha) = &figures[&format!("cs-{n}")];
        let t_sha = lab_line(&lab_text, "t-sha", n);
        assert_eq!(
            t_sha, cs_sha,
            "{n}: sha256 of /dev/mapper/t-{n} (tessera --kernel) and of cryptsetup's mapping"
        );
        let cs = table_fields(lab_line(&lab_text, "cs-table", n));
        let t = table_fields(lab_line(&lab_text, "t-table", n));
        eprintln!("{n}: cryptsetup's table: {}", cs.join(" "));
        eprintln!("{n}: tessera's table:    {}", t.join(" "));
        assert!(cs.len() >= 8 && t.len() >= 8, "{n}: tables\n{cs:?}\n{t:?}");
        // Everything but the key: start, length, target, cipher; IV offset, device (the same
        // loop device was opened by both), offset and the options (sector_size).
        assert_eq!(
            t[..4],
            cs[..4],
            "{n}: start, length, target and cipher of the table"
        );
        assert_eq!(
            t[5..],
            cs[5..],
            "{n}: IV offset, device, offset and options of the table"
        );
        if n == "sector4k" {
            assert!(
                t[8..].iter().any(|o| o == "sector_size:4096"),
                "{n}: the 4096-byte sector option in tessera's table {t:?}"
            );
        } else {
            assert_eq!(t.len(), 8, "{n}: no optional parameters in {t:?}");
        }
        // The key: LUKS1 tables carry it in hex in both; cryptsetup loads LUKS2 keys through
        // the kernel keyring, so tessera's key is compared with the volume key cryptsetup
        // reads out of the header.
        let volume_key = cryptsetup_volume_key(&d.join(format!("{n}.img")), &d.join("k1"));
        assert_eq!(volume_key.len(), 128, "{n}: a 512-bit volume key");
        if cs[4].starts_with(':') {
            assert_ne!(n, "luks1", "cryptsetup uses the keyring for LUKS2 only");
            assert!(
                cs[4].starts_with(":64:logon:cryptsetup:"),
                "{n}: cryptsetup's key {}",
                cs[4]
            );
        } else {
            assert_eq!(
                t[4], cs[4],
                "{n}: the hex key of tessera's and of cryptsetup's table"
            );
        }
        if t[4].starts_with(':') {
            assert!(
                t[4].starts_with(":64:logon:"),
                "{n}: tessera's keyring key {}",
                t[4]
            );
        } else {
            assert_eq!(
                t[4], volume_key,
                "{n}: tessera's hex key is the header's volume key"
            );
        }
        let close = lab_line(&lab_text, "t-close", n);
        assert!(
            close.starts_with("rc 0"),
            "{n}: tessera luks close --kernel: {close}"
        );
        assert!(
            !lab_text
                .lines()
                .any(|l| l == format!("t-left {n}") || l == format!("t-node-left {n}")),
            "{n}: tessera luks close --kernel removes the device and its node\n{lab_text}"
        );
    }

    // Part 1: the same images opened in the daemon.
    let images: Vec<PathBuf> = CS_VOLUMES
        .iter()
        .chain(["plain", "plain4k"].iter())
        .map(|n| d.join(format!("{n}.img")))
        .collect();
    let daemon = Daemon::start(d, &images);
    let key = |k: &str| d.join(k).display().to_string();
    let open_check = |n: &str, export: &str, extra: &[&str], key_file: &str, slot: u32| {
        let image = d.join(format!("{n}.img")).display().to_string();
        let mut args = vec!["luks", "open", &image, export, "--key-file"];
        let kf = key(key_file);
        args.push(&kf);
        args.extend(extra);
        let what = format!("{n} opened with {key_file} {}", extra.join(" "));
        let out = daemon.ok(&what, &args);
        assert!(
            out.contains(&format!("key slot {slot} opened it as {export}")),
            "{what}: luks open names key slot {slot}: {out}"
        );
        let (size, sha) = daemon.export_sha(&what, export);
        let (k_size, k_sha) = &figures[&format!("cs-{n}")];
        assert_eq!(
            size, *k_size,
            "{what}: size of the export and of cryptsetup's mapping"
        );
        assert_eq!(
            &sha, k_sha,
            "{what}: sha256 of the export and of cryptsetup's mapping"
        );
        eprintln!("{what}: export {export} sha256 {sha} = the kernel's");
        let closed = daemon.ok(&what, &["luks", "close", export]);
        assert!(closed.contains(export), "{what}: luks close: {closed}");
        assert!(
            !daemon.exports().iter().any(|e| e == export),
            "{what}: {export} is no longer exported after luks close"
        );
    };
    for n in ["luks1", "pbkdf2", "argon2id", "sector4k"] {
        open_check(n, &format!("d-{n}"), &[], "k1", 0);
    }
    for (slot, k) in ["k1", "k2", "k3"].into_iter().enumerate() {
        open_check("slots", "d-slots", &[], k, slot as u32);
    }
    open_check("slots", "d-slots", &["--key-slot", "1"], "k2", 1);
    // A passphrase of another slot does not open slot 1; a wrong one opens nothing.
    let slots = d.join("slots.img").display().to_string();
    let out = daemon.cli(&[
        "luks",
        "open",
        &slots,
        "d-x",
        "--key-file",
        &key("k1"),
        "--key-slot",
        "1",
    ]);
    assert!(
        !out.status.success(),
        "slots: --key-slot 1 with slot 0's passphrase is refused: {}",
        text(&out)
    );
    std::fs::write(d.join("wrong"), "not a passphrase of this volume").unwrap();
    let out = daemon.cli(&["luks", "open", &slots, "d-x", "--key-file", &key("wrong")]);
    assert!(
        !out.status.success(),
        "slots: a wrong passphrase is refused: {}",
        text(&out)
    );
    assert!(
        !daemon.exports().iter().any(|e| e == "d-x"),
        "nothing is exported after refused opens"
    );

    // The plain tables, with the image files as the devices.
    for (name, _, table) in PLAIN_TABLES {
        let image = d.join(format!("{name}.img")).display().to_string();
        let table = table.replace("KEY", PLAIN_KEY).replace("DEV", &image);
        let what = format!("plain dm-crypt table {name}");
        daemon.ok(&what, &["dm", "create", name, "--table", &table]);
        let shown = daemon.ok(&what, &["dm", "table", name]);
        eprintln!("{what}: tessera dm table: {}", shown.trim());
        let (size, sha) = daemon.export_sha(&what, name);
        let (k_size, k_sha) = &figures[name];
        assert_eq!(
            size, *k_size,
            "{what}: size of the export and of the kernel's mapping"
        );
        assert_eq!(
            &sha, k_sha,
            "{what}: sha256 of the export and of the kernel's mapping"
        );
        eprintln!("{what}: sha256 {sha} = the kernel's");
        daemon.ok(&what, &["dm", "remove", name]);
    }
    daemon.stop();
}

/// The volumes tessera formats in part 2: (name, image size, `luks format` options).
const T_VOLUMES: [(&str, u64, &[&str]); 4] = [
    (
        "t-luks1",
        6 << 20,
        &[
            "--type",
            "luks1",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
    ),
    (
        "t-pbkdf2",
        20 << 20,
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--label",
            "tessera-lab",
        ],
    ),
    (
        "t-argon2id",
        20 << 20,
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
    ),
    (
        "t-sector4k",
        20 << 20,
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--sector-size",
            "4096",
        ],
    ),
];

/// The volumes whose passphrase k1 (slot 0) is replaced by k2 (slot 1) with `tessera luks
/// add-key` and `remove-key`.
const REKEYED: [&str; 2] = ["t-luks1", "t-pbkdf2"];

const INSIDE_TESSERA: &str = r#"set -u
cd "$(dirname "$0")"
for n in t-luks1 t-pbkdf2 t-argon2id t-sector4k; do
  loop=$(losetup -f --show "$n.img")
  key=k1
  case $n in t-luks1|t-pbkdf2)
    key=k2
    cryptsetup open --test-passphrase --key-file k1 "$loop" 2> /dev/null; echo "old-key $n rc $?"
    cryptsetup open --key-file k1 "$loop" "$n-old" 2> /dev/null; echo "old-open $n rc $?"
    ;;
  esac
  cryptsetup open --key-file "$key" "$loop" "$n"; echo "open $n rc $?"
  dmsetup mknodes "$n"
  echo "table $n $(dmsetup table "$n")"
  echo "kernel $n $(blockdev --getsize64 "/dev/mapper/$n") $(sha256sum < "/dev/mapper/$n" | cut -d' ' -f1)"
  cryptsetup close "$n"
  losetup -d "$loop"
done
echo tessera-lab-done
"#;

/// `bytes` random bytes.
fn random_bytes(bytes: u64) -> Vec<u8> {
    use std::io::Read;
    let mut v = Vec::new();
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .take(bytes)
        .read_to_end(&mut v)
        .unwrap();
    assert_eq!(v.len() as u64, bytes);
    v
}

/// `cryptsetup open --test-passphrase` on the host: did the passphrase open the image?
fn cryptsetup_accepts(image: &Path, key_file: &Path) -> bool {
    output(
        Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "--key-file"])
            .arg(key_file)
            .arg(image),
    )
    .status
    .success()
}

#[test]
fn tessera_volumes_open_in_cryptsetup() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = tmp.path();
    write_keys(d);
    let key = |k: &str| d.join(k).display().to_string();
    let image = |n: &str| d.join(format!("{n}.img"));
    let state = d.join("state");
    for (n, size, opts) in T_VOLUMES {
        std::fs::File::create(image(n))
            .and_then(|f| f.set_len(size))
            .unwrap();
        let img = image(n).display().to_string();
        let mut args = vec!["luks", "format", img.as_str(), "--key-file"];
        let k1 = key("k1");
        args.push(&k1);
        args.extend(opts);
        let out = common::tessera(&img, &state, &args);
        eprintln!("{}", out.trim());
        assert!(
            out.contains(&format!("{img}: LUKS")),
            "{n}: luks format says what it made: {out}"
        );
    }

    // Random data written through the daemon.
    let images: Vec<PathBuf> = T_VOLUMES.iter().map(|(n, _, _)| image(n)).collect();
    let daemon = Daemon::start(d, &images);
    let mut written = HashMap::new();
    for (n, size, _) in T_VOLUMES {
        let img = image(n).display().to_string();
        let what = format!("{n} (tessera's)");
        let out = daemon.ok(&what, &["luks", "open", &img, n, "--key-file", &key("k1")]);
        assert!(
            out.contains(&format!("key slot 0 opened it as {n}")),
            "{what}: luks open: {out}"
        );
        let header = if n == "t-luks1" { 2 << 20 } else { 16 << 20 };
        let data = random_bytes(size - header);
        let file = d.join(format!("{n}.data"));
        std::fs::write(&file, &data).unwrap();
        common::run_ok(
            Command::new("nbdcopy")
                .arg(&file)
                .arg(format!("{}/{n}", daemon.addr())),
        );
        let sha = sha256_hex(&data);
        assert_eq!(
            daemon.export_sha(&what, n),
            (data.len() as u64, sha.clone()),
            "{what}: what nbdcopy wrote reads back through the export"
        );
        written.insert(n, sha);
        daemon.ok(&what, &["luks", "close", n]);
    }
    daemon.stop();

    // Key slots: k2 added, then k1's slot removed.
    for n in REKEYED {
        let img = image(n).display().to_string();
        let out = common::tessera(
            &img,
            &state,
            &[
                "luks",
                "add-key",
                &img,
                "--key-file",
                &key("k1"),
                "--new-key-file",
                &key("k2"),
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
            ],
        );
        assert!(out.contains("key slot 1 added"), "{n}: luks add-key: {out}");
        let out = common::tessera(
            &img,
            &state,
            &["luks", "remove-key", &img, "--key-file", &key("k1")],
        );
        assert!(
            out.contains("key slot 0 removed"),
            "{n}: luks remove-key: {out}"
        );
    }

    // cryptsetup on the host reads the headers.
    for (n, _, _) in T_VOLUMES {
        let (good, old) = if REKEYED.contains(&n) {
            ("k2", Some("k1"))
        } else {
            ("k1", None)
        };
        assert!(
            cryptsetup_accepts(&image(n), &d.join(good)),
            "{n}: cryptsetup open --test-passphrase with {good} on the host"
        );
        if let Some(old) = old {
            assert!(
                !cryptsetup_accepts(&image(n), &d.join(old)),
                "{n}: cryptsetup refuses the removed passphrase {old} on the host"
            );
        }
        let dump = common::run_ok(Command::new("cryptsetup").arg("luksDump").arg(image(n)));
        let words = dump.split_whitespace().collect::<Vec<_>>().join(" ");
        match n {
            "t-luks1" => assert!(
                words.contains("Version: 1 "),
                "{n}: LUKS1 for cryptsetup:\n{dump}"
            ),
            "t-pbkdf2" => assert!(
                words.contains("Label: tessera-lab "),
                "{n}: the label for cryptsetup:\n{dump}"
            ),
            "t-argon2id" => assert!(
                words.contains("PBKDF: argon2id ") && words.contains("Memory: 32768 "),
                "{n}: argon2id for cryptsetup:\n{dump}"
            ),
            "t-sector4k" => assert!(
                words.contains("sector: 4096 [bytes]"),
                "{n}: 4096-byte sectors for cryptsetup:\n{dump}"
            ),
            _ => unreachable!(),
        }
    }

    // The kernel's dm-crypt, set up by cryptsetup, reads what tessera wrote.
    let (lab_text, took) = lab(d, INSIDE_TESSERA);
    eprintln!(
        "lab run (cryptsetup opens tessera's volumes): {:.0} s",
        took.as_secs_f64()
    );
    assert!(lab_text.contains("tessera-lab-done"), "lab:\n{lab_text}");
    let figures = kernel_figures(&lab_text);
    for (n, _, _) in T_VOLUMES {
        assert_eq!(
            lab_line(&lab_text, "open", n),
            "rc 0",
            "{n}: cryptsetup open in the lab\n{lab_text}"
        );
        if REKEYED.contains(&n) {
            assert_ne!(
                lab_line(&lab_text, "old-key", n),
                "rc 0",
                "{n}: the removed passphrase is refused by --test-passphrase in the lab"
            );
            assert_ne!(
                lab_line(&lab_text, "old-open", n),
                "rc 0",
                "{n}: the removed passphrase does not open it in the lab"
            );
        }
        let table = lab_line(&lab_text, "table", n);
        eprintln!("{n}: cryptsetup's table {table}");
        assert_eq!(
            table.contains("sector_size:4096"),
            n == "t-sector4k",
            "{n}: the sector size in cryptsetup's table {table}"
        );
        let (size, sha) = &figures[n];
        let header = if n == "t-luks1" { 2 << 20 } else { 16 << 20 };
        let data = T_VOLUMES.iter().find(|v| v.0 == n).unwrap().1 - header;
        assert_eq!(*size, data, "{n}: size of cryptsetup's mapping");
        assert_eq!(
            sha, &written[n],
            "{n}: sha256 of cryptsetup's mapping and of what tessera wrote"
        );
        eprintln!("{n}: sha256 {sha} through tessera's NBD export and cryptsetup's dm-crypt");
    }
}
