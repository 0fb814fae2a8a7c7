//! Shared pieces of the tests that run tessera beside the real lvm2: image files attached
//! as loop devices, lvm2 commands restricted to those devices, and the tessera binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Image files in a fresh folder, each attached to a loop device until dropped.
pub struct Loops {
    pub dir: tempfile::TempDir,
    pub images: Vec<PathBuf>,
    pub devices: Vec<String>,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is it installed? .ci/run installs it)")
    });
    out
}

impl Loops {
    /// `count` images of `mib` MiB each, attached to loop devices.
    pub fn new(count: usize, mib: u64) -> Loops {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary folder");
        let mut loops = Loops {
            dir,
            images: Vec::new(),
            devices: Vec::new(),
        };
        for i in 0..count {
            let path = loops.dir.path().join(format!("pv{i}.img"));
            let f = std::fs::File::create(&path).expect("create image");
            f.set_len(mib << 20).expect("size image");
            loops.images.push(path);
        }
        loops.attach();
        loops
    }

    /// Attaches every image to a loop device.
    pub fn attach(&mut self) {
        assert!(self.devices.is_empty());
        for path in &self.images {
            let out = run(Command::new("losetup").args(["-f", "--show"]).arg(path));
            assert!(
                out.status.success(),
                "losetup {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            self.devices
                .push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
    }

    /// Detaches the loop devices; the images stay.
    pub fn detach(&mut self) {
        for dev in self.devices.drain(..) {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
    }

    /// The loop devices, comma-separated, as `--devices` takes them.
    pub fn list(&self) -> String {
        self.devices.join(",")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Runs an lvm2 command restricted to `devices`; panics with its output if it fails.
pub fn lvm(devices: &str, args: &[&str]) -> String {
    let out = lvm_output(devices, args);
    assert!(
        out.status.success(),
        "lvm {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn lvm_output(devices: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("lvm");
    cmd.arg(args[0])
        .args(["--devices", devices])
        .args(&args[1..])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1");
    run(&mut cmd)
}

/// The tessera binary built for these tests.
pub fn tessera_path() -> &'static str {
    env!("CARGO_BIN_EXE_tessera")
}

pub fn tessera_output(devices: &str, state: &Path, args: &[&str]) -> Output {
    run(Command::new(tessera_path())
        .arg("--devices")
        .arg(devices)
        .arg("--state-dir")
        .arg(state)
        .args(args))
}

/// Runs tessera; panics with its output if it fails.
pub fn tessera(devices: &str, state: &Path, args: &[&str]) -> String {
    let out = tessera_output(devices, state, args);
    assert!(
        out.status.success(),
        "tessera {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rows of an lvm2-shaped JSON report (`{"report":[{"lv":[...]}]}`), sorted.
pub fn report_rows(json: &str) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("bad JSON report ({e}): {json}"));
    let report = &v["report"][0];
    let obj = report.as_object().expect("report object");
    let mut rows: Vec<Value> = obj
        .values()
        .next()
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    rows.sort_by_key(|r| r.to_string());
    rows
}

/// The same report from lvm2 and from tessera, as sorted rows, for the fields given.
pub fn both_reports(
    loops: &Loops,
    lvm_cmd: &[&str],
    tessera_cmd: &[&str],
    fields: &str,
) -> (Vec<Value>, Vec<Value>) {
    let mut l: Vec<&str> = lvm_cmd.to_vec();
    l.extend([
        "-o",
        fields,
        "--units",
        "b",
        "--nosuffix",
        "--reportformat",
        "json",
    ]);
    let lvm_rows = report_rows(&lvm(&loops.list(), &l));
    let mut t: Vec<&str> = tessera_cmd.to_vec();
    t.extend(["-o", fields, "--units", "b", "--nosuffix", "--json"]);
    let tessera_rows = report_rows(&tessera(&loops.list(), &loops.state_dir(), &t));
    (lvm_rows, tessera_rows)
}

/// A running `tessera serve`, killed when dropped.
pub struct Served {
    pub child: std::process::Child,
    /// `nbd://HOST:PORT`, to which an export name is appended.
    pub addr: String,
    /// The image files it was given, claimed (flock) while it runs.
    files: Vec<String>,
}

impl Served {
    /// Stops the daemon as a supervisor would (SIGTERM) and waits for it to exit.
    #[allow(dead_code)]
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: a signal to the child this handle owns.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().expect("tessera serve exits");
        wait_released(&self.files);
        status
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        wait_released(&self.files);
    }
}

/// Waits (at most 20 s) until no process holds a claim on `files`, so that the next daemon
/// over them does not race the last one's exit on a busy machine (a claim was once seen
/// held just after the daemon was reaped).
fn wait_released(files: &[String]) {
    use std::os::unix::io::AsRawFd;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for f in files {
        let Ok(file) = std::fs::File::open(f) else {
            continue;
        };
        loop {
            // SAFETY: flock on a descriptor this function owns; closing it unlocks.
            let locked =
                unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0;
            if !locked || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Starts `tessera serve --listen 127.0.0.1:0` over `devices` and reads its address.
pub fn serve(devices: &str, state: &Path, extra: &[&str]) -> Served {
    use std::io::BufRead;
    let mut child = Command::new(tessera_path())
        .args(["--devices", devices, "--state-dir"])
        .arg(state)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tessera serve starts");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut first = String::new();
    out.read_line(&mut first).expect("serve prints its address");
    // Keep reading, so the daemon never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = first
        .split_whitespace()
        .find(|w| w.starts_with("nbd://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .trim_end_matches("/VG/LV")
        .to_string();
    let files = devices
        .split(',')
        .filter(|d| std::fs::metadata(d).is_ok_and(|m| m.is_file()))
        .map(str::to_string)
        .collect();
    Served { child, addr, files }
}

/// Runs a command that must succeed; returns its standard output.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sparse image files `DIR/PREFIX-N.img` of `bytes` each; their paths.
#[allow(dead_code)]
pub fn image_files(dir: &Path, prefix: &str, count: usize, bytes: u64) -> Vec<String> {
    (0..count)
        .map(|i| {
            let p = dir.join(format!("{prefix}-{i}.img"));
            std::fs::File::create(&p)
                .and_then(|f| f.set_len(bytes))
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            p.display().to_string()
        })
        .collect()
}

/// Runs `script` with bash in the kernel lab (`$TESSERA_KERNEL_LAB`, by default the shared
/// one), `dir` shared read-write; returns what it printed (stdout, then stderr).
#[allow(dead_code)]
pub fn lab_script(dir: &Path, script: &str, seconds: u32) -> String {
    let path = dir.join("inside.sh");
    std::fs::write(&path, script).expect("write the lab script");
    let lab =
        std::env::var("TESSERA_KERNEL_LAB").unwrap_or_else(|_| "/work/shared/kernel-lab".into());
    let out = Command::new(format!("{lab}/vm-run"))
        .args(["-t", &seconds.to_string(), "-w"])
        .arg(dir)
        .arg("--")
        .arg(format!("bash {}", path.display()))
        .output()
        .expect("kernel lab runs");
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// Pseudo-random bytes (xorshift), the same for the same seed: data to write and check.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` at byte `offset` of an export (qemu-io, so only those bytes are written).
pub fn patch(addr: &str, export: &str, dir: &Path, offset: usize, data: &[u8]) {
    let file = dir.join("patch.bin");
    std::fs::write(&file, data).unwrap();
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        &format!("write -s {} {offset} {}", file.display(), data.len()),
        &format!("{addr}/{export}"),
    ]));
}

/// An export read whole with nbdcopy.
pub fn read_export(addr: &str, export: &str, dir: &Path) -> Vec<u8> {
    let file = dir.join("read.bin");
    let _ = std::fs::remove_file(&file);
    run_ok(
        Command::new("nbdcopy")
            .arg(format!("{addr}/{export}"))
            .arg(&file),
    );
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    bytes
}

pub fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// The sha256 of an export, read whole with nbdcopy.
pub fn export_sum(addr: &str, export: &str, dir: &Path) -> String {
    sha(&read_export(addr, export, dir))
}

/// The image files in `dir`, sorted and comma-separated, as `--devices` takes them.
pub fn images_in(dir: &Path) -> String {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".img"))
        .collect();
    v.sort();
    v.join(",")
}

/// The rest of the line of a lab's output `text` that starts with `prefix`.
pub fn lab_line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in the lab's output:\n{text}"))
        .trim()
}

/// The bytes of a linear LV, read from the image files through `lv table`'s rows.
pub fn lv_bytes(devices: &str, state: &Path, lv: &str) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let table = tessera(devices, state, &["lv", "table", lv]);
    let mut out = Vec::new();
    for row in table.lines().filter(|l| !l.trim().is_empty()) {
        let w: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(w[2], "linear", "{lv}: {row}");
        let len: u64 = w[1].parse().unwrap();
        let offset: u64 = w[4].parse().unwrap();
        let f = std::fs::File::open(w[3]).unwrap();
        let mut buf = vec![0u8; (len * 512) as usize];
        f.read_exact_at(&mut buf, offset * 512).unwrap();
        out.extend(buf);
    }
    out
}

/// `thin_check` on a copy of the pool's `_tmeta`, then `thin_dump`'s XML.
pub fn check_and_dump(devices: &str, state: &Path, dir: &Path, pool: &str) -> String {
    let meta = lv_bytes(devices, state, &format!("{pool}_tmeta"));
    let copy = dir.join("tmeta.bin");
    std::fs::write(&copy, &meta).unwrap();
    let out = Command::new("/usr/sbin/thin_check")
        .arg(&copy)
        .output()
        .expect("thin_check (thin-provisioning-tools) is installed");
    assert!(
        out.status.success(),
        "thin_check on {pool}_tmeta: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("/usr/sbin/thin_dump")
        .arg(&copy)
        .output()
        .expect("thin_dump is installed");
    assert!(out.status.success(), "thin_dump on {pool}_tmeta");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The start of a kernel-lab script that runs lvm2: strict, in the script's folder, lvm2
/// without udev, and helpers to attach the images of a folder (`attach DIR`, `detach`), take
/// an LV's sha256 (`sum LV` of VG `vg`) and squeeze JSON onto one line (`json`).
pub const LVM_LAB_PRELUDE: &str = r#"set -u
cd "$(dirname "$0")"
mkdir -p /tmp/lvmconf
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
devs=()
attach() { devs=(); for f in "$1"/*.img; do devs+=("$(losetup -f --show "$f")"); done; }
detach() { for d in "${devs[@]}"; do losetup -d "$d"; done; devs=(); }
sum() { sha256sum < "/dev/mapper/vg-$1" | cut -d' ' -f1; }
json() { tr -d ' \n'; echo; }
"#;

/// Unmounts the FUSE mount at `dir` for good. A loop device just detached may still hold a
/// file of the mount for a moment, so a plain unmount is retried; if the mount is still busy
/// after that, it is detached lazily. A mount left behind with its server gone answers
/// "Transport endpoint is not connected" to every later stat of the mount table, which
/// breaks tools run by other tests (mkfs.btrfs checks every mount point).
pub fn unmount_fuse(dir: &Path) {
    let mounted = || {
        std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(dir.to_str().unwrap_or("")))
    };
    for _ in 0..30 {
        if !mounted() {
            return;
        }
        let _ = Command::new("fusermount3").arg("-u").arg(dir).output();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if mounted() {
        let _ = Command::new("fusermount3").arg("-uz").arg(dir).output();
    }
}
