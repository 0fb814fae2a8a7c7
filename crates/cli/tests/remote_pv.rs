//! Remote PVs over NBD. A second "host" is a network namespace joined to this one by a veth
//! pair, running nbdkit's file plugin over its own disk image; tessera names its disk
//! `nbd://ADDRESS:PORT/` in `--devices`.
//!
//! A VG over a local image and the remote disk: an LV spanning both takes mkfs.ext4 (through
//! `tessera mount`, losetup and the kernel's ext4); the remote server is killed and started
//! again while files are being written, and after that fsck finds the filesystem clean and
//! every file reads back whole.
//!
//! An MD raid1 with a write-intent bitmap over a local image and a remote disk (nbdkit on a
//! Unix socket here), served by `tessera serve` under fio's verifying random writes: the
//! remote server is killed mid-write; fio finishes with no error and no verify failure, and
//! the local member's superblock records the array degraded.
//!
//! Needs root (network namespaces, veth, losetup, mount): the loop-devices group.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::run_ok as run;

/// A network namespace with a veth link to this one, where a server runs.
struct RemoteHost {
    ns: String,
    veth: String,
    address: String,
    server: Option<Child>,
}

impl RemoteHost {
    fn new() -> RemoteHost {
        let id = std::process::id() % 100_000;
        let net = std::process::id() % 250 + 1;
        let ns = format!("tsr{id}");
        let veth = format!("tsrh{id}");
        let peer = format!("tsrp{id}");
        let host_ip = format!("10.233.{net}.1/30");
        let address = format!("10.233.{net}.2");
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        let _ = Command::new("ip").args(["link", "del", &veth]).status();
        run(Command::new("ip").args(["netns", "add", &ns]));
        let host = RemoteHost {
            ns: ns.clone(),
            veth: veth.clone(),
            address: address.clone(),
            server: None,
        };
        run(Command::new("ip").args(["link", "add", &veth, "type", "veth", "peer", "name", &peer]));
        run(Command::new("ip").args(["link", "set", &peer, "netns", &ns]));
        run(Command::new("ip").args(["addr", "add", &host_ip, "dev", &veth]));
        run(Command::new("ip").args(["link", "set", &veth, "up"]));
        let inside = |args: &[&str]| {
            run(Command::new("ip").args(["netns", "exec", &ns]).args(args));
        };
        inside(&["ip", "addr", "add", &format!("{address}/30"), "dev", &peer]);
        inside(&["ip", "link", "set", &peer, "up"]);
        inside(&["ip", "link", "set", "lo", "up"]);
        host
    }

    fn uri(&self) -> String {
        format!("nbd://{}:10809/", self.address)
    }

    /// Starts nbdkit's file plugin over `image` inside the namespace; waits until it answers.
    fn start(&mut self, image: &Path) {
        assert!(self.server.is_none());
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "nbdkit",
                "-f",
                "-i",
                &self.address,
            ])
            .args(["-p", "10809", "file"])
            .arg(image)
            .stdin(Stdio::null())
            .spawn()
            .expect("nbdkit must be installed");
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new("nbdinfo")
            .args(["--size", &self.uri()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("nbdinfo must be installed")
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "nbdkit in {} never answered",
                self.ns
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server at once (SIGKILL), as a host that dies.
    fn kill(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// `tessera mount` of the VG's volumes; dropping it unmounts and stops it.
struct Mounted {
    child: Child,
    dir: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        common::unmount_fuse(&self.dir);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mount_volumes(devices: &str, state: &Path, dir: &Path) -> Mounted {
    std::fs::create_dir_all(dir).unwrap();
    let mut child = Command::new(common::tessera_path())
        .args(["--devices", devices, "--state-dir"])
        .arg(state)
        .arg("mount")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("mounted "), "{first}");
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Mounted {
        child,
        dir: dir.to_path_buf(),
    }
}

/// A loop device over a file, detached when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn file_contents(i: usize) -> Vec<u8> {
    (0..(i * 7919 + 30_000))
        .map(|k| (k.wrapping_mul(i + 11) >> 3) as u8)
        .collect()
}

#[test]
fn vg_over_a_local_and_a_remote_disk_keeps_its_files_through_a_server_restart() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let local = d.join("local.img");
    let remote_img = d.join("remote.img");
    for p in [&local, &remote_img] {
        std::fs::File::create(p)
            .unwrap()
            .set_len(128 << 20)
            .unwrap();
    }
    let mut host = RemoteHost::new();
    host.start(&remote_img);
    let uri = host.uri();
    let local_s = local.to_string_lossy().into_owned();
    let devices = format!("{local_s},{uri}");
    let t = |args: &[&str]| common::tessera(&devices, &state, args);

    t(&["vg", "create", "rv", &local_s, &uri]);
    // 200 MiB: more than the local PV holds, so the LV lives on both hosts.
    t(&["lv", "create", "rv/fs", "-L", "200M"]);
    let shown = t(&["show"]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with(&uri) && l.contains("LVM2 PV")),
        "show names the remote PV by its URI:\n{shown}"
    );
    let remote_bytes = std::fs::read(&remote_img).unwrap();
    assert!(
        remote_bytes.windows(8).any(|w| w == b"LABELONE"),
        "the remote disk got its PV label over NBD"
    );

    let files = d.join("files");
    let fsdir = d.join("fs");
    std::fs::create_dir_all(&fsdir).unwrap();
    let m = mount_volumes(&devices, &state, &files);
    let lo = Loop(
        run(Command::new("losetup")
            .args(["-f", "--show"])
            .arg(files.join("rv/fs")))
        .trim()
        .to_string(),
    );
    run(Command::new("mkfs.ext4").args(["-q", "-F", &lo.0]));
    run(Command::new("mount").arg(&lo.0).arg(&fsdir));
    let write_files = |range: std::ops::Range<usize>| {
        for i in range {
            std::fs::write(fsdir.join(format!("f{i}.bin")), file_contents(i)).unwrap();
        }
    };
    // Enough to reach the part of the LV on the remote disk.
    write_files(0..40);
    let big: Vec<u8> = (0..(120usize << 20)).map(|k| (k % 251) as u8).collect();
    std::fs::write(fsdir.join("big.bin"), &big).unwrap();
    run(&mut Command::new("sync"));

    // The remote host dies and comes back 1.5 s later; the next writes reach it through
    // new connections.
    host.kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    host.start(&remote_img);
    let restarted = killed.elapsed();
    write_files(40..60);
    let flipped: Vec<u8> = big.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(fsdir.join("big.bin"), &flipped).unwrap();
    run(&mut Command::new("sync"));
    println!(
        "remote down for {restarted:?}; writes and sync completed {:?} after the kill",
        killed.elapsed()
    );

    run(Command::new("umount").arg(&fsdir));
    run(Command::new("fsck.ext4").args(["-f", "-n", &lo.0]));
    run(Command::new("mount").arg(&lo.0).arg(&fsdir));
    for i in 0..60 {
        let back = std::fs::read(fsdir.join(format!("f{i}.bin"))).unwrap();
        assert!(back == file_contents(i), "f{i}.bin differs");
    }
    let back = std::fs::read(fsdir.join("big.bin")).unwrap();
    assert!(back == flipped, "big.bin differs");
    run(Command::new("umount").arg(&fsdir));
    drop(lo);
    drop(m);
}

/// Starts nbdkit's file plugin over `image` on a Unix socket; waits until it answers.
fn nbdkit_unix(image: &Path, sock: &Path) -> Child {
    let child = Command::new("nbdkit")
        .args(["-f", "-U"])
        .arg(sock)
        .arg("file")
        .arg(image)
        .stdin(Stdio::null())
        .spawn()
        .expect("nbdkit must be installed");
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Command::new("nbdinfo")
        .args(["--size", &uri])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("nbdinfo must be installed")
        .success()
    {
        assert!(Instant::now() < deadline, "nbdkit never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[test]
fn raid1_over_a_local_and_a_remote_disk_degrades_when_the_remote_dies_under_fio() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let local = d.join("local.img");
    let remote_img = d.join("remote.img");
    for p in [&local, &remote_img] {
        std::fs::File::create(p).unwrap().set_len(64 << 20).unwrap();
    }
    let sock = d.join("remote.sock");
    let mut server = nbdkit_unix(&remote_img, &sock);
    // A short timeout, so that the member fails 2 s after its server died.
    let uri = format!("nbd+unix:///?socket={}&timeout=2", sock.display());
    let local_s = local.to_string_lossy().into_owned();
    let devices = format!("{local_s},{uri}");
    common::tessera(
        &devices,
        &state,
        &["md", "create", "r1", "-l", "1", "--bitmap", &local_s, &uri],
    );
    let served = common::serve(&devices, &state, &[]);
    let fio = Command::new("fio")
        .args(["--name=r1", "--ioengine=nbd", "--rw=randwrite", "--bs=4k"])
        .args([
            "--iodepth=8",
            "--size=16M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ])
        .args(["--time_based", "--runtime=8", "--output-format=json"])
        .arg(format!("--uri={}/md/r1", served.addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio must be installed");
    std::thread::sleep(Duration::from_secs(3));
    // The remote host dies mid-write.
    let _ = server.kill();
    let _ = server.wait();
    let out = fio.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // fio may print notes before its JSON.
    let json = &stdout[stdout.find('{').expect("fio's JSON report")..];
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(report["jobs"][0]["error"], 0, "fio saw an error: {stdout}");
    let written = report["jobs"][0]["write"]["io_bytes"].as_u64().unwrap();
    assert!(written > 0);
    drop(served);

    // The local member's superblock records the array degraded, the remote one failed.
    let shown = common::tessera(&local_s, &state, &["show"]);
    assert!(
        shown.contains("md/r1") && shown.contains("degraded, 1 of 2 members"),
        "{shown}"
    );
    println!("fio wrote {written} bytes and verified them; after the remote died:\n{shown}");
}
