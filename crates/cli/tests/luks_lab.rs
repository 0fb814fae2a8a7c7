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
        // The key: LUKS1 tables carry it in hex in both, the header's volume key; LUKS2 keys
        // go through the kernel keyring under the same description in both tables.
        let volume_key = cryptsetup_volume_key(&d.join(format!("{n}.img")), &d.join("k1"));
        assert_eq!(volume_key.len(), 128, "{n}: a 512-bit volume key");
        if n == "luks1" {
            assert_eq!(
                t[4], cs[4],
                "{n}: the hex key of tessera's and of cryptsetup's table"
            );
            assert_eq!(t[4], volume_key, "{n}: the key is the header's volume key");
        } else {
            assert!(
                cs[4].starts_with(":64:logon:cryptsetup:"),
                "{n}: cryptsetup's key {}",
                cs[4]
            );
            assert_eq!(
                t[4], cs[4],
                "{n}: the same kernel keyring reference in both tables"
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

const INSIDE_INSTALL: &str = r#"set -u
cd "$(dirname "$0")"
mkdir -p /tmp/lvmconf /tmp/m
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
# An encrypted Ubuntu install's disk: ESP, /boot, LUKS2 > PV > ubuntu-vg > root + swap_1.
truncate -s 192M disk.img
printf 'label: gpt\nsize=16MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI System Partition"\nsize=32MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n' \
  | sfdisk -q disk.img || echo "sfdisk-failed"
L=$(losetup -P -f --show disk.img)
mkfs.vfat -n ESP "${L}p1" > /dev/null || echo "vfat-failed"
mkfs.ext4 -q -L boot "${L}p2" || echo "boot-mkfs-failed"
mount "${L}p2" /tmp/m && { printf 'set default=0\nmenuentry "Ubuntu" { linux /vmlinuz root=/dev/mapper/ubuntu--vg-root }\n' > /tmp/m/grub.cfg; umount /tmp/m; } || echo "boot-mount-failed"
cryptsetup luksFormat -q --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "${L}p3" k1 || echo "luks-failed"
cryptsetup open --key-file k1 "${L}p3" dm_crypt-0 || echo "open-failed"
dmsetup mknodes
pvcreate -q /dev/mapper/dm_crypt-0 || echo "pvcreate-failed"
vgcreate -q ubuntu-vg /dev/mapper/dm_crypt-0 || echo "vgcreate-failed"
lvcreate -q -an -Zn -L 88M -n root ubuntu-vg || echo "lvcreate-failed root"
lvcreate -q -an -Zn -l 100%FREE -n swap_1 ubuntu-vg || echo "lvcreate-failed swap_1"
vgchange -q -ay ubuntu-vg
dmsetup mknodes
R=/dev/mapper/ubuntu--vg-root S=/dev/mapper/ubuntu--vg-swap_1
mkfs.ext4 -q "$R" || echo "root-mkfs-failed"
mount "$R" /tmp/m && {
  seq 1 100000 > /tmp/m/numbers
  cp /etc/services /tmp/m/services
  echo "file numbers $(sha256sum < /tmp/m/numbers | cut -d' ' -f1)"
  echo "file services $(sha256sum < /tmp/m/services | cut -d' ' -f1)"
  umount /tmp/m
} || echo "root-mount-failed"
mkswap -q "$S" || echo "mkswap-failed"
echo "kernel root $(blockdev --getsize64 "$R") $(sha256sum < "$R" | cut -d' ' -f1)"
echo "kernel swap_1 $(blockdev --getsize64 "$S") $(blkid -p -o value -s UUID "$S")"
echo "kernel dm_crypt-0 $(blockdev --getsize64 /dev/mapper/dm_crypt-0) -"
echo "lvs $(lvs --noheadings --units b --nosuffix -o lv_name,lv_size ubuntu-vg | tr -s ' \n' ' ')"
vgchange -q -an ubuntu-vg
cryptsetup close dm_crypt-0
losetup -d "$L"
echo install-lab-done
"#;

/// The chain of nodes from a top-level device of `show --json` down to the node called
/// `name`: (kind, name) of each.
fn chain_to(report: &Value, name: &str) -> Option<Vec<(String, String)>> {
    fn go(node: &Value, name: &str, path: &mut Vec<(String, String)>) -> bool {
        path.push((
            node["kind"].as_str().unwrap_or("").to_string(),
            node["name"].as_str().unwrap_or("").to_string(),
        ));
        if node["name"] == name {
            return true;
        }
        if let Some(children) = node["children"].as_array() {
            if children.iter().any(|c| go(c, name, path)) {
                return true;
            }
        }
        path.pop();
        false
    }
    report["devices"].as_array()?.iter().find_map(|d| {
        let mut path = Vec::new();
        go(d, name, &mut path).then_some(path)
    })
}

#[test]
fn an_encrypted_install_disk_is_served_as_the_installer_laid_it_out() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = tmp.path();
    write_keys(d);
    let (lab_text, took) = lab(d, INSIDE_INSTALL);
    eprintln!("lab run (the install's disk): {:.0} s", took.as_secs_f64());
    assert!(lab_text.contains("install-lab-done"), "lab:\n{lab_text}");
    assert!(!lab_text.contains("-failed"), "lab:\n{lab_text}");
    let figures = kernel_figures(&lab_text);
    if let Some(l) = lab_text.lines().find(|l| l.starts_with("lvs ")) {
        eprintln!("lab: {l}");
    }
    let disk = d.join("disk.img");
    let disk_name = disk.display().to_string();
    let p3 = format!("{disk_name}3");

    let daemon = Daemon::start(d, std::slice::from_ref(&disk));
    let show = |what: &str| -> Value {
        serde_json::from_str(&daemon.ok(what, &["show", "--json"]))
            .unwrap_or_else(|e| panic!("{what}: show --json: {e}"))
    };
    let before = show("before luks open");
    let out = daemon.ok(
        "luks open of partition 3",
        &[
            "luks",
            "open",
            &p3,
            "dm_crypt-0",
            "--key-file",
            &d.join("k1").display().to_string(),
        ],
    );
    eprintln!("luks open: {}", out.trim());
    for lv in ["ubuntu-vg/root", "ubuntu-vg/swap_1"] {
        assert!(out.contains(lv), "luks open names {lv}: {out}");
    }
    let exports = daemon.exports();
    for e in ["dm_crypt-0", "ubuntu-vg/root", "ubuntu-vg/swap_1"] {
        assert!(
            exports.iter().any(|x| x == e),
            "{e} is exported after luks open: {exports:?}"
        );
    }
    let after = show("after luks open");
    // disk > partition 3 > the open volume (the PV) > ubuntu-vg > root, and swap_1 beside.
    let chain = chain_to(&after, "ubuntu-vg/root")
        .unwrap_or_else(|| panic!("show --json has no ubuntu-vg/root: {after:#}"));
    eprintln!("show: {chain:?}");
    let expected: Vec<(String, String)> = [
        ("disk", disk_name.as_str()),
        ("partition", p3.as_str()),
        ("crypt", "dm_crypt-0"),
        ("vg", "ubuntu-vg"),
        ("lv", "ubuntu-vg/root"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(
        chain, expected,
        "show --json: the tree from the disk down to root"
    );
    let swap_chain = chain_to(&after, "ubuntu-vg/swap_1").expect("show --json has swap_1");
    assert_eq!(
        swap_chain[..4],
        expected[..4],
        "show --json: swap_1 beside root"
    );
    let node = |report: &Value, path: &[(String, String)]| -> Value {
        let mut n = report["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == path[0].1.as_str())
            .unwrap()
            .clone();
        for (_, name) in &path[1..] {
            n = n["children"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name.as_str())
                .unwrap()
                .clone();
        }
        n
    };
    let crypt = node(&after, &chain[..3]);
    assert_eq!(
        crypt["format"], "LVM2_member",
        "show --json: the open volume holds the PV"
    );
    assert_eq!(
        crypt["size_bytes"].as_u64(),
        Some(figures["dm_crypt-0"].0),
        "show --json: the open volume's size is cryptsetup's"
    );
    let root = node(&after, &chain);
    assert_eq!(root["format"], "ext4", "show --json: root holds ext4");
    assert_eq!(
        root["size_bytes"].as_u64(),
        Some(figures["root"].0),
        "show --json: root's size is lvm2's"
    );
    let swap = node(&after, &swap_chain);
    assert_eq!(swap["format"], "swap", "show --json: swap_1 holds swap");
    assert!(
        swap["summary"]
            .as_str()
            .unwrap_or("")
            .contains(&figures["swap_1"].1),
        "show --json: swap_1's uuid is mkswap's {}: {swap:#}",
        figures["swap_1"].1
    );
    let parts = node(&after, &chain[..1])["children"].clone();
    let formats: Vec<&str> = parts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["format"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        formats,
        ["vfat", "ext4", "crypto_LUKS"],
        "show --json: the partitions' formats"
    );
    let locked = node(&before, &chain[..2]);
    assert!(
        locked["summary"].as_str().unwrap_or("").ends_with("locked")
            && locked["children"].as_array().is_none_or(|c| c.is_empty()),
        "show --json before luks open: partition 3 is locked with nothing inside: {locked:#}"
    );

    // The root file system, copied out of the export.
    let root_img = d.join("root.img");
    let start = std::time::Instant::now();
    common::run_ok(
        Command::new("nbdcopy")
            .arg(format!("{}/ubuntu-vg/root", daemon.addr()))
            .arg(&root_img),
    );
    eprintln!(
        "nbdcopy of ubuntu-vg/root: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let bytes = std::fs::read(&root_img).unwrap();
    let (k_size, k_sha) = &figures["root"];
    assert_eq!(
        bytes.len() as u64,
        *k_size,
        "root: size of the export and of the kernel's LV"
    );
    assert_eq!(
        &sha256_hex(&bytes),
        k_sha,
        "root: sha256 of the export and of the kernel's LV"
    );
    eprintln!("root: sha256 {k_sha} = the kernel's");
    let fsck = output(Command::new("fsck.ext4").args(["-n", "-f"]).arg(&root_img));
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "root: fsck.ext4 -n -f on the copy is clean: {}",
        text(&fsck)
    );
    for file in ["numbers", "services"] {
        let out = output(
            Command::new("debugfs")
                .args(["-R", &format!("cat /{file}")])
                .arg(&root_img),
        );
        assert!(
            out.status.success(),
            "root: debugfs cat /{file}: {}",
            text(&out)
        );
        let want = lab_line(&lab_text, "file", file);
        assert_eq!(
            sha256_hex(&out.stdout),
            want,
            "root: sha256 of /{file} read out of the copy and in the lab"
        );
        eprintln!("root: /{file} sha256 {want} = the lab's");
    }
    let (size, _) = daemon.export_sha("swap_1", "ubuntu-vg/swap_1");
    assert_eq!(
        size, figures["swap_1"].0,
        "swap_1: size of the export and of the kernel's LV"
    );

    // Closing the volume takes its LVs away.
    let out = daemon.ok("luks close", &["luks", "close", "dm_crypt-0"]);
    eprintln!("luks close: {}", out.trim());
    let exports = daemon.exports();
    for e in ["dm_crypt-0", "ubuntu-vg/root", "ubuntu-vg/swap_1"] {
        assert!(
            !exports.iter().any(|x| x == e),
            "{e} is no longer exported after luks close: {exports:?}"
        );
    }
    let closed = show("after luks close");
    assert!(
        chain_to(&closed, "ubuntu-vg/root").is_none() && chain_to(&closed, "dm_crypt-0").is_none(),
        "show --json after luks close: nothing inside partition 3: {closed:#}"
    );
    daemon.stop();
}
