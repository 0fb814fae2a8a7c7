//! `tessera mount DIR`: every volume as a file DIR/VG/LV. Bytes written to the file land at
//! the LV's PV offsets, punch-hole discards, zero-range zeroes, a resize shows at once, new
//! and removed LVs come and go; losetup, mkfs.ext4, mount and fsck work on it, and the files
//! written are there after the daemon restarts. A read-only mount refuses writes.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::run_ok as run;

/// A `tessera mount` child; dropping it unmounts and stops it.
struct Mounted {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        common::unmount_fuse(&self.dir);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mount(devices: &str, state: &Path, dir: &Path, extra: &[&str]) -> Mounted {
    std::fs::create_dir_all(dir).unwrap();
    let mut child = Command::new(common::tessera_path())
        .args(["--devices", devices, "--state-dir"])
        .arg(state)
        .arg("mount")
        .arg(dir)
        .args(extra)
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

#[test]
fn volumes_as_files_take_losetup_mkfs_and_survive_a_restart() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let imgs: Vec<String> = (0..2)
        .map(|i| {
            let p = d.join(format!("m{i}.img"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(128 << 20)
                .unwrap();
            p.to_string_lossy().into_owned()
        })
        .collect();
    let devices = imgs.join(",");
    let t = |args: &[&str]| common::tessera(&devices, &state, args);
    t(&["vg", "create", "fv", &imgs[0], &imgs[1]]);
    t(&["lv", "create", "fv/raw", "-L", "8M"]);
    t(&["lv", "create", "fv/fs", "-L", "160M"]);
    let raw_offset: u64 = t(&["lv", "table", "fv/raw"])
        .split_whitespace()
        .nth(4)
        .unwrap()
        .parse()
        .unwrap();
    let mnt = d.join("files");
    let fsdir = d.join("fsmnt");
    std::fs::create_dir_all(&fsdir).unwrap();
    let tree: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| {
            let data: Vec<u8> = (0..(i * 997 + 5000)).map(|k| (k * i + 3) as u8).collect();
            (format!("file{i}.bin"), data)
        })
        .collect();
    {
        let m = mount(&devices, &state, &mnt, &[]);
        let raw = mnt.join("fv/raw");
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), 8 << 20);
        assert_eq!(
            std::fs::metadata(mnt.join("fv/fs")).unwrap().len(),
            160 << 20
        );
        // Bytes written to the file land at the LV's place on the PV.
        let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7 + 1) as u8).collect();
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
            f.write_all_at(&data, 1 << 20).unwrap();
            f.sync_all().unwrap();
        }
        let image = std::fs::read(&imgs[0]).unwrap();
        let at = (raw_offset * 512) as usize + (1 << 20);
        assert!(
            image[at..at + (1 << 20)] == data[..],
            "written where the table maps it"
        );
        // Punch-hole and zero-range reach the device.
        run(Command::new("fallocate")
            .args(["-p", "-o", "1M", "-l", "256K"])
            .arg(&raw));
        run(Command::new("fallocate")
            .args(["-z", "-o", "1536K", "-l", "256K"])
            .arg(&raw));
        let back = std::fs::read(&raw).unwrap();
        assert!(back[1 << 20..(1 << 20) + (256 << 10)]
            .iter()
            .all(|&b| b == 0));
        assert!(back[1536 << 10..1792 << 10].iter().all(|&b| b == 0));
        assert!(back[1280 << 10..1536 << 10] == data[256 << 10..512 << 10]);
        // Truncating a volume is refused; writing past its end too.
        assert!(std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&raw)
            .is_err());
        // LV changes show at once.
        t(&["lv", "extend", "fv/raw", "-L", "+4M"]);
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), 12 << 20);
        t(&["lv", "create", "fv/new", "-L", "4M"]);
        assert!(mnt.join("fv/new").exists());
        t(&["lv", "remove", "fv/new"]);
        assert!(!mnt.join("fv/new").exists());
        // A filesystem through losetup.
        let dev = run(Command::new("losetup")
            .args(["-f", "--show"])
            .arg(mnt.join("fv/fs")))
        .trim()
        .to_string();
        let result = std::panic::catch_unwind(|| {
            run(Command::new("mkfs.ext4").args(["-q", "-F", &dev]));
            run(Command::new("mount").arg(&dev).arg(&fsdir));
            for (name, data) in &tree {
                std::fs::write(fsdir.join(name), data).unwrap();
            }
            run(Command::new("umount").arg(&fsdir));
            let fsck = Command::new("fsck.ext4")
                .args(["-fn", &dev])
                .output()
                .unwrap();
            assert_eq!(
                fsck.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&fsck.stdout)
            );
        });
        let _ = Command::new("umount").arg(&fsdir).output();
        run(Command::new("losetup").args(["-d", &dev]));
        result.unwrap();
        drop(m);
    }
    // Mounted again, read-only: the files are there, and writes are refused.
    let _m = mount(&devices, &state, &mnt, &["--read-only"]);
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("fv/raw"))
        .is_err());
    let dev = run(Command::new("losetup")
        .args(["-r", "-f", "--show"])
        .arg(mnt.join("fv/fs")))
    .trim()
    .to_string();
    let result = std::panic::catch_unwind(|| {
        run(Command::new("mount")
            .args(["-o", "ro"])
            .arg(&dev)
            .arg(&fsdir));
        for (name, data) in &tree {
            assert!(&std::fs::read(fsdir.join(name)).unwrap() == data, "{name}");
        }
    });
    let _ = Command::new("umount").arg(&fsdir).output();
    run(Command::new("losetup").args(["-d", &dev]));
    result.unwrap();
}
