//! LUKS on the host, as a user meets it: a volume the real cryptsetup formatted (LUKS2,
//! 4096-byte sectors) is opened in a running `tessera serve` and holds an ext4 made through
//! nbdfuse and a loop device (512-byte I/O on 4096-byte crypt sectors), fsck clean after a
//! close and a second open; no plaintext reaches the image. The key commands work with
//! cryptsetup both ways, and bad input is refused naming the device.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{run_ok as run, serve, tessera_path};

fn tessera_in(state: &Path, devices: &str, args: &[&str]) -> Output {
    Command::new(tessera_path())
        .args(["--devices", devices, "--state-dir"])
        .arg(state)
        .args(args)
        .output()
        .expect("tessera runs")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what}: should have been refused: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn image(dir: &Path, name: &str, mib: u64) -> String {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    p.display().to_string()
}

fn key(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// cryptsetup's luksFormat with a small KDF cost.
fn cryptsetup_format(img: &str, key: &str, extra: &[&str]) {
    run(Command::new("cryptsetup")
        .args(["luksFormat", "-q", "--batch-mode", "--pbkdf", "pbkdf2"])
        .args(["--pbkdf-force-iterations", "1000"])
        .args(extra)
        .args([img, key]));
}

fn cryptsetup_accepts(img: &str, key: &str) -> bool {
    Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file", key, img])
        .status()
        .unwrap()
        .success()
}

/// Undoes a mount, a loop device and an nbdfuse mount, in that order, even on failure.
#[derive(Default)]
struct Stack {
    mounted: Option<PathBuf>,
    loop_dev: Option<String>,
    fuse: Option<PathBuf>,
    nbdfuse: Option<std::process::Child>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(m) = self.mounted.take() {
            let _ = Command::new("umount").arg(&m).status();
        }
        if let Some(l) = self.loop_dev.take() {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
        if let Some(f) = self.fuse.take() {
            common::unmount_fuse(&f);
        }
        // Unmounted, nbdfuse exits.
        if let Some(mut child) = self.nbdfuse.take() {
            let _ = child.wait();
        }
    }
}

/// nbdfuse of `uri` at `dir`, then a loop device (512-byte sectors) over its file.
fn attach(stack: &mut Stack, dir: &Path, uri: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let child = Command::new("nbdfuse")
        .arg(dir)
        .arg(uri)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nbdfuse runs");
    stack.nbdfuse = Some(child);
    stack.fuse = Some(dir.to_path_buf());
    let file = dir.join("nbd");
    let start = Instant::now();
    while !file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nbdfuse did not mount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&file))
        .trim()
        .to_string();
    stack.loop_dev = Some(dev.clone());
    dev
}

fn exports(addr: &str) -> String {
    run(Command::new("nbdinfo").args(["--list", "--json", addr]))
}

const MARKER: &str = "tessera plaintext marker 7f3a9c";

#[test]
fn a_cryptsetup_volume_opens_in_the_daemon_and_holds_a_filesystem() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let img = image(d, "vault.img", 96);
    let k = key(d, "key", "correct horse");
    let wrong = key(d, "wrong", "battery staple");
    cryptsetup_format(
        &img,
        &k,
        &[
            "--type",
            "luks2",
            "--sector-size",
            "4096",
            "--label",
            "vault",
        ],
    );

    let server = serve(&img, &state, &[]);
    let addr = server.addr.clone();
    let err = refused(
        tessera_in(
            &state,
            &img,
            &["luks", "open", &img, "secret", "--key-file", &wrong],
        ),
        "a wrong passphrase",
    );
    assert!(err.contains(&img) && err.contains("no key slot"), "{err}");
    let opened = ok(
        tessera_in(
            &state,
            &img,
            &["luks", "open", &img, "secret", "--key-file", &k],
        ),
        "luks open",
    );
    assert!(
        opened.contains("key slot 0") && opened.contains("secret"),
        "{opened}"
    );
    let list = exports(&addr);
    assert!(list.contains("\"secret\""), "{list}");
    // 96 MiB less the 16 MiB header area.
    let size = run(Command::new("nbdinfo").args(["--size", &format!("{addr}/secret")]));
    assert_eq!(size.trim(), (80u64 << 20).to_string());

    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let numbers: String = (1..=60_000).map(|i| format!("{i} {MARKER}\n")).collect();
    {
        let mut stack = Stack::default();
        let dev = attach(&mut stack, &d.join("fuse"), &format!("{addr}/secret"));
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-b", "1024", &dev]));
        run(Command::new("mount").arg(&dev).arg(&mnt));
        stack.mounted = Some(mnt.clone());
        std::fs::write(mnt.join("numbers"), &numbers).unwrap();
        run(Command::new("umount").arg(&mnt));
        stack.mounted = None;
        let fsck = Command::new("fsck.ext4")
            .args(["-n", "-f", &dev])
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "fsck: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }
    // What show sees through the daemon: the open volume under the image, ext4 inside.
    let shown = ok(tessera_in(&state, &img, &["show", "--json"]), "show");
    let report: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let disk = &report["devices"][0];
    assert_eq!(disk["format"], "crypto_LUKS", "{shown}");
    let open = &disk["children"][0];
    assert_eq!(open["name"], "secret", "{shown}");
    assert_eq!(open["kind"], "crypt", "{shown}");
    assert_eq!(open["format"], "ext4", "{shown}");

    let closed = ok(
        tessera_in(&state, &img, &["luks", "close", "secret"]),
        "luks close",
    );
    assert!(closed.contains("secret closed"), "{closed}");
    assert!(!exports(&addr).contains("\"secret\""));
    // The plaintext never reached the image; the header is still cryptsetup's.
    let bytes = std::fs::read(&img).unwrap();
    assert!(
        !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "plaintext found in the image"
    );
    assert!(cryptsetup_accepts(&img, &k));

    // Opened again: the filesystem is whole and the file reads back.
    ok(
        tessera_in(
            &state,
            &img,
            &[
                "luks",
                "open",
                &img,
                "again",
                "--key-file",
                &k,
                "--read-only",
            ],
        ),
        "second open",
    );
    let mut stack = Stack::default();
    let dev = attach(&mut stack, &d.join("fuse2"), &format!("{addr}/again"));
    let fsck = Command::new("fsck.ext4")
        .args(["-n", "-f", &dev])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "fsck after reopening: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let cat = run(Command::new("debugfs").args(["-R", "cat /numbers", &dev]));
    assert!(cat == numbers, "the file reads back after reopening");
    drop(stack);
    drop(server);
}

#[test]
fn key_commands_interchange_with_cryptsetup() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let k0 = key(d, "k0", "first");
    let k1 = key(d, "k1", "second");
    let k2 = key(d, "k2", "third");
    for kind in ["luks1", "luks2"] {
        let img = image(d, &format!("{kind}.img"), 24);
        let t = |args: &[&str]| tessera_in(&state, &img, args);
        ok(
            t(&[
                "luks",
                "format",
                &img,
                "--type",
                kind,
                "--key-file",
                &k0,
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
            ]),
            "luks format",
        );
        assert!(
            cryptsetup_accepts(&img, &k0),
            "{kind}: cryptsetup opens tessera's format"
        );
        // tessera adds a key; cryptsetup takes it.
        let added = ok(
            t(&[
                "luks",
                "add-key",
                &img,
                "--key-file",
                &k0,
                "--new-key-file",
                &k1,
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
            ]),
            "add-key",
        );
        assert!(added.contains("key slot 1 added"), "{added}");
        assert!(
            cryptsetup_accepts(&img, &k1),
            "{kind}: the added key opens in cryptsetup"
        );
        // cryptsetup adds a key; tessera's dump shows three slots, and tessera removes the
        // first, which cryptsetup then refuses.
        run(Command::new("cryptsetup").args([
            "luksAddKey",
            "-q",
            "--batch-mode",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            &k0,
            &img,
            &k2,
        ]));
        let dump = ok(t(&["luks", "dump", &img]), "dump");
        for slot in ["0", "1", "2"] {
            let enabled = if kind == "luks1" {
                dump.contains(&format!("Key Slot {slot}: ENABLED"))
            } else {
                dump.contains(&format!("  {slot}: luks2"))
            };
            assert!(enabled, "{kind}: slot {slot} in the dump:\n{dump}");
        }
        let removed = ok(
            t(&["luks", "remove-key", &img, "--key-file", &k2]),
            "remove-key",
        );
        assert!(removed.contains("key slot 2 removed"), "{removed}");
        assert!(
            !cryptsetup_accepts(&img, &k2),
            "{kind}: a removed key no longer opens"
        );
        ok(t(&["luks", "kill-slot", &img, "0"]), "kill-slot");
        assert!(
            !cryptsetup_accepts(&img, &k0),
            "{kind}: a killed slot no longer opens"
        );
        assert!(
            cryptsetup_accepts(&img, &k1),
            "{kind}: the other slot still opens"
        );
        let last = refused(
            t(&["luks", "remove-key", &img, "--key-file", &k1]),
            "last slot",
        );
        assert!(last.contains(&img) && last.contains("last"), "{last}");
    }
}

#[test]
fn bad_input_is_refused_naming_the_device() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let k = key(d, "k", "pass");
    let img = image(d, "a.img", 24);
    let t = |args: &[&str]| tessera_in(&state, &img, args);

    // No daemon to open into.
    let e = refused(
        t(&["luks", "open", &img, "x", "--key-file", &k]),
        "no daemon",
    );
    assert!(e.contains("tessera serve"), "{e}");
    // A device that holds ext4 is kept unless --force.
    run(Command::new("mkfs.ext4").args(["-q", "-F", &img]));
    let e = refused(
        t(&[
            "luks",
            "format",
            &img,
            "--key-file",
            &k,
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ]),
        "format over ext4",
    );
    assert!(
        e.contains(&img) && e.contains("ext4") && e.contains("--force"),
        "{e}"
    );
    ok(
        t(&[
            "luks",
            "format",
            &img,
            "--key-file",
            &k,
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--force",
        ]),
        "format --force",
    );
    // Formatting over LUKS also needs --force.
    let e = refused(
        t(&[
            "luks",
            "format",
            &img,
            "--key-file",
            &k,
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ]),
        "format over LUKS",
    );
    assert!(e.contains(&img) && e.contains("--force"), "{e}");
    // Unknown cipher and KDF names.
    let e = refused(
        t(&[
            "luks",
            "format",
            &img,
            "--key-file",
            &k,
            "--cipher",
            "serpent-xts-plain64",
            "--force",
        ]),
        "unknown cipher",
    );
    assert!(e.contains("serpent-xts-plain64"), "{e}");
    let e = refused(
        t(&[
            "luks",
            "format",
            &img,
            "--key-file",
            &k,
            "--pbkdf",
            "scrypt",
            "--force",
        ]),
        "unknown KDF",
    );
    assert!(e.contains("scrypt"), "{e}");

    let server = serve(&img, &state, &[]);
    // A name that cannot be a device name.
    let e = refused(
        t(&["luks", "open", &img, "a/b", "--key-file", &k]),
        "bad name",
    );
    assert!(e.contains("a/b"), "{e}");
    // An inactive key slot.
    let e = refused(
        t(&[
            "luks",
            "open",
            &img,
            "x",
            "--key-file",
            &k,
            "--key-slot",
            "5",
        ]),
        "inactive slot",
    );
    assert!(e.contains(&img) && e.contains('5'), "{e}");
    // Damaged: the LUKS2 header's checksum broken in both copies.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[4096 + 10] ^= 0xff;
    bytes[16384 + 4096 + 10] ^= 0xff;
    std::fs::write(d.join("damaged.img"), &bytes).unwrap();
    let damaged = d.join("damaged.img").display().to_string();
    let e = refused(
        tessera_in(&state, &damaged, &["luks", "dump", &damaged]),
        "damaged headers",
    );
    assert!(e.contains(&damaged) && e.contains("checksum"), "{e}");
    // Opened once is enough: a second open of the same device is refused naming the first.
    ok(t(&["luks", "open", &img, "x", "--key-file", &k]), "open");
    let e = refused(
        t(&["luks", "open", &img, "y", "--key-file", &k]),
        "second open",
    );
    assert!(e.contains(&img) && e.contains("open already as x"), "{e}");
    drop(server);
}
