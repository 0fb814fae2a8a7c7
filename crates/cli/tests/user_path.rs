//! `tessera serve` as a new user meets it: a VG over image files, an LV, the server; then
//! nbdfuse, losetup, mkfs.ext4, mount, a tree of files copied in, umount, fsck clean; the
//! server stopped and started again and every file intact. And FLUSH means durable: what
//! was acknowledged before a FLUSH reply survives `kill -9` of the server.

mod common;

use std::path::{Path, PathBuf};

use common::{run_ok as run, serve};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Undoes mounts, loop devices and the nbdfuse mount, in that order, even on failure.
#[derive(Default)]
struct Stack {
    mounted: Option<PathBuf>,
    loop_dev: Option<String>,
    fuse: Option<PathBuf>,
}

impl Stack {
    fn teardown(&mut self) {
        if let Some(m) = self.mounted.take() {
            let _ = Command::new("umount").arg(&m).status();
        }
        if let Some(l) = self.loop_dev.take() {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
        if let Some(f) = self.fuse.take() {
            let _ = Command::new("fusermount3").arg("-u").arg(&f).status();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// nbdfuse of `uri` at `dir` (the LV as `dir/nbd`), then a loop device over that file.
fn attach(stack: &mut Stack, dir: &Path, uri: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    // nbdfuse stays in the foreground until unmounted.
    Command::new("nbdfuse")
        .arg(dir)
        .arg(uri)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nbdfuse runs");
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

/// A tree of files with varied sizes and contents.
fn make_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for d in 0..12 {
        let dir = root.join(format!("dir{d}/sub{}", d % 3));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..25 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40_000) as usize + if f == 0 { 300_000 } else { 0 };
            let data: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8 ^ i as u8).collect();
            let rel = PathBuf::from(format!("dir{d}/sub{}/f{f}.bin", d % 3));
            std::fs::write(root.join(&rel), &data).unwrap();
            files.push((rel, data));
        }
    }
    files
}

#[test]
fn a_filesystem_on_a_served_lv_survives_a_server_restart() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let imgs: Vec<String> = (0..2)
        .map(|i| {
            let p = d.join(format!("disk{i}.img"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(160 << 20)
                .unwrap();
            p.to_string_lossy().into_owned()
        })
        .collect();
    let devices = imgs.join(",");
    common::tessera(
        &devices,
        &state,
        &["vg", "create", "home", &imgs[0], &imgs[1]],
    );
    // Spanning both images, so the filesystem crosses a segment boundary.
    common::tessera(
        &devices,
        &state,
        &["lv", "create", "home/files", "-L", "200M"],
    );
    let source = d.join("source");
    let files = make_tree(&source);

    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    {
        let server = serve(&devices, &state, &[]);
        let addr = server.addr.clone();
        let mut stack = Stack::default();
        let dev = attach(&mut stack, &d.join("fuse"), &format!("{addr}/home/files"));
        run(Command::new("mkfs.ext4").args(["-q", "-F", &dev]));
        run(Command::new("mount").arg(&dev).arg(&mnt));
        stack.mounted = Some(mnt.clone());
        run(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", source.display()))
            .arg(&mnt));
        run(&mut Command::new("sync"));
        stack.mounted = None;
        run(Command::new("umount").arg(&mnt));
        let out = Command::new("fsck.ext4")
            .args(["-fn", &dev])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "fsck: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        stack.teardown();
    }
    // A new server over the same images: every file as it was.
    let server = serve(&devices, &state, &[]);
    let addr = server.addr.clone();
    let mut stack = Stack::default();
    let dev = attach(&mut stack, &d.join("fuse"), &format!("{addr}/home/files"));
    run(Command::new("mount").args(["-o", "ro"]).arg(&dev).arg(&mnt));
    stack.mounted = Some(mnt.clone());
    for (rel, data) in &files {
        let got = std::fs::read(mnt.join(rel)).unwrap();
        assert!(&got == data, "{} differs after the restart", rel.display());
    }
    assert_eq!(files.len(), 300);
}

#[test]
fn data_acknowledged_before_a_flush_survives_kill_9() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let img = d.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let devices = img.to_string_lossy().into_owned();
    common::tessera(&devices, &state, &["vg", "create", "fl", &devices]);
    common::tessera(&devices, &state, &["lv", "create", "fl/data", "-L", "16M"]);
    let table = common::tessera(&devices, &state, &["lv", "table", "fl/data"]);
    let offset: u64 = table.split_whitespace().nth(4).unwrap().parse().unwrap();

    let mut server = serve(&devices, &state, &[]);
    let addr = server.addr.clone();
    let uri = format!("{addr}/fl/data");
    run(Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        "write -P 0x5a 1M 4M",
        "-c",
        "flush",
    ]));
    // No clean shutdown: SIGKILL.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    // The bytes are in the image at the LV's PV offset...
    let image = std::fs::read(&img).unwrap();
    let at = (offset * 512) as usize + (1 << 20);
    assert!(image[at..at + (4 << 20)].iter().all(|&b| b == 0x5a));
    // ...and a new server serves them.
    let server = serve(&devices, &state, &[]);
    let addr = server.addr.clone();
    let copy = d.join("copy.bin");
    run(Command::new("nbdcopy")
        .arg(format!("{addr}/fl/data"))
        .arg(&copy));
    let data = std::fs::read(&copy).unwrap();
    assert_eq!(data.len(), 16 << 20);
    assert!(data[1 << 20..5 << 20].iter().all(|&b| b == 0x5a));
    assert!(data[..1 << 20].iter().all(|&b| b == 0));
}
