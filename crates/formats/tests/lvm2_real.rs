//! The binary LVM2 readers and writers against images made by the real lvm2 (2.03): each
//! test attaches an image file to a loop device, runs lvm2 on it, and reads the IMAGE FILE
//! with tessera's readers. lvm2 must be installed: these tests fail, not skip, without it.
//!
//! Loop-device tests of the whole workspace take turns through an flock on
//! /tmp/tessera-loop.lock.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use tessera_block::{BlockDevice, FileDevice, OpenOptions};
use tessera_formats::lvm2::crc::checksum;
use tessera_formats::lvm2::label::{read_label, PvLabel, DEFAULT_PE_START, LABEL_ID, PV_EXT_USED};
use tessera_formats::lvm2::mda::{
    next_text_offset, read_mda_header, read_text, write_mda_header, write_text, MdaHeader,
};
use tessera_formats::signature::probe;

/// Holds the workspace-wide loop-device lock until dropped (closing the file releases it).
struct LoopLock(#[allow(dead_code)] File);

impl LoopLock {
    fn take() -> LoopLock {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/tessera-loop.lock")
            .expect("open /tmp/tessera-loop.lock");
        // SAFETY: flock on a file descriptor we own; it has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            rc,
            0,
            "flock /tmp/tessera-loop.lock: {}",
            std::io::Error::last_os_error()
        );
        LoopLock(file)
    }
}

/// An image file, attached to a loop device while lvm2 works on it. Dropping it removes
/// the VG (if attached), detaches the loop device and deletes the image.
struct Image {
    path: PathBuf,
    loop_dev: Option<String>,
    vg: String,
    _dir: tempfile::TempDir,
    _lock: LoopLock,
}

impl Image {
    fn new(mib: u64, vg: &str) -> Image {
        let lock = LoopLock::take();
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary folder");
        let path = dir.path().join("pv.img");
        File::create(&path)
            .and_then(|f| f.set_len(mib << 20))
            .expect("create image");
        let mut image = Image {
            path,
            loop_dev: None,
            vg: vg.into(),
            _dir: dir,
            _lock: lock,
        };
        image.attach();
        image
    }

    fn attach(&mut self) {
        assert!(self.loop_dev.is_none());
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&self.path)
            .output()
            .expect("cannot run losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.loop_dev = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }

    fn detach(&mut self) {
        if let Some(dev) = self.loop_dev.take() {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
    }

    fn loop_dev(&self) -> &str {
        self.loop_dev.as_deref().expect("image is attached")
    }

    /// Runs `lvm <cmd> --devices <loop> <args>`; panics with its output on failure.
    fn lvm(&self, cmd: &str, args: &[&str]) -> String {
        let out = Command::new("lvm")
            .arg(cmd)
            .args(["--devices", self.loop_dev()])
            .args(args)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .unwrap_or_else(|e| panic!("cannot run lvm2's `lvm` (is lvm2 installed?): {e}"));
        assert!(
            out.status.success(),
            "lvm {cmd} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn lvcreate(&self, name: &str, size: &str) {
        let vg = self.vg.clone();
        self.lvm(
            "lvcreate",
            &[
                "--driverloaded",
                "n",
                "-an",
                "-Zn",
                "-Wn",
                "-q",
                "-L",
                size,
                "-n",
                name,
                &vg,
            ],
        );
    }

    fn pv_uuid(&self) -> String {
        let dev = self.loop_dev().to_string();
        self.lvm("pvs", &["--noheadings", "-o", "pv_uuid", &dev])
            .trim()
            .to_string()
    }

    /// The image file (not the loop device).
    fn file(&self) -> FileDevice {
        FileDevice::open(&self.path, OpenOptions::default()).expect("open image")
    }

    fn header(&self) -> MdaHeader {
        read_mda_header(&self.file(), 4096).expect("lvm2's metadata area header reads")
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Some(dev) = self.loop_dev.clone() {
            let _ = Command::new("lvm")
                .args(["vgremove", "-f", "--devices", &dev, &self.vg])
                .env("LVM_SUPPRESS_FD_WARNINGS", "1")
                .output();
        }
        self.detach();
    }
}

fn bytes(dev: &FileDevice, offset: u64, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    dev.read_at(&mut b, offset).unwrap();
    b
}

#[test]
fn pvcreate_writes_the_label_new_pv_describes() {
    let mut image = Image::new(64, "tsr_none");
    let dev = image.loop_dev().to_string();
    image.lvm("pvcreate", &["-y", "-q", &dev]);
    let uuid = image.pv_uuid();
    image.detach();

    let file = image.file();
    let label = read_label(&file).unwrap().expect("lvm2's label is found");
    assert_eq!(label.pv_id.to_string(), uuid);
    // pvcreate 2.03's default layout, byte for byte.
    let expected = PvLabel::new_pv(label.pv_id, 64 << 20, DEFAULT_PE_START);
    assert_eq!(label, expected);
    let sectors = bytes(&file, 0, 2048);
    assert_eq!(&sectors[512..1024], &expected.encode()[..]);
    for s in [0, 2, 3] {
        assert_ne!(
            &sectors[s * 512..s * 512 + 8],
            LABEL_ID,
            "LABELONE in sector {s}"
        );
    }
    assert_eq!(
        image.header(),
        MdaHeader {
            start: 4096,
            size: (1 << 20) - 4096,
            raw_locns: vec![]
        }
    );
    let found = probe(&file).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].kind, found[0].offset), ("LVM2_member", 512));
}

#[test]
fn vg_metadata_reads_back_and_what_tessera_writes_lvm2_reads() {
    let mut image = Image::new(64, "tsr_vgx");
    let dev = image.loop_dev().to_string();
    image.lvm("pvcreate", &["-y", "-q", &dev]);
    image.lvm("vgcreate", &["-q", "tsr_vgx", &dev]);
    image.lvcreate("lv1", "8M");
    let uuid = image.pv_uuid();
    image.detach();

    let file = image.file();
    let label = read_label(&file).unwrap().unwrap();
    assert_eq!(label.pv_id.to_string(), uuid);
    assert_eq!(label.ext_flags & PV_EXT_USED, PV_EXT_USED);
    let mut header = image.header();
    assert_eq!((header.start, header.size), (4096, (1 << 20) - 4096));
    assert_eq!(header.raw_locns.len(), 1, "{header:?}");
    let locn = header.raw_locns[0];
    let text = read_text(&file, &header, &locn).expect("text reads with a valid checksum");
    let text = String::from_utf8(text).unwrap();
    assert!(text.starts_with("tsr_vgx {\n"), "{text}");
    assert!(
        text.contains("\nseqno = 2\n") && text.contains("\nlv1 {\n"),
        "{text}"
    );

    // What lvm2 stores: `size` counts a trailing NUL, the checksum covers it, and the
    // rest of the last sector is zeroed.
    let raw = bytes(&file, 4096 + locn.offset, locn.size);
    assert_eq!(raw.last(), Some(&0));
    assert_eq!(locn.size, text.len() as u64 + 1);
    assert_eq!(checksum(&raw), locn.checksum);
    let end = 4096 + locn.offset + locn.size;
    assert!(bytes(&file, end, end.next_multiple_of(512) - end)
        .iter()
        .all(|&b| b == 0));

    // tessera commits seqno 3 the way lvm2 would; lvm2 reads it and commits seqno 4 where
    // next_text_offset says.
    let new = text.replace("\nseqno = 2\n", "\nseqno = 3\n");
    let offset = next_text_offset("image", &header, new.len() as u64 + 1).unwrap();
    header.raw_locns = vec![write_text(&file, &header, offset, new.as_bytes()).unwrap()];
    write_mda_header(&file, &header).unwrap();
    file.flush().unwrap();
    drop(file);
    image.attach();
    let seen = image.lvm(
        "vgs",
        &["--noheadings", "-o", "vg_seqno,lv_count", "tsr_vgx"],
    );
    assert_eq!(seen.split_whitespace().collect::<Vec<_>>(), ["3", "1"]);
    image.lvm("vgck", &["tsr_vgx"]);
    image.lvcreate("lv2", "8M");
    image.detach();
    let after = image.header();
    let locn4 = after.raw_locns[0];
    assert_eq!(
        locn4.offset,
        next_text_offset("image", &header, locn4.size).unwrap()
    );
    let text4 = read_text(&image.file(), &after, &locn4).unwrap();
    assert!(String::from_utf8_lossy(&text4).contains("\nseqno = 4\n"));
}

#[test]
fn lvm2_places_copies_where_next_text_offset_says_and_wraps_them() {
    // A 60 KiB metadata area, so copies wrap after a few dozen commits.
    let image = Image::new(32, "tsr_wrap");
    let dev = image.loop_dev().to_string();
    image.lvm(
        "pvcreate",
        &[
            "-y",
            "-q",
            "--metadatasize",
            "8k",
            "--dataalignment",
            "64k",
            &dev,
        ],
    );
    image.lvm("vgcreate", &["-q", "tsr_wrap", &dev]);
    assert_eq!(image.header().size, 61_440);
    let (mut wraps, mut commits) = (0, 0);
    // Runs one lvm2 command and checks where its copy landed and that it reads back.
    let commit = |run: &dyn Fn()| -> bool {
        let before = image.header();
        run();
        let after = image.header();
        let locn = after.raw_locns[0];
        let expected = next_text_offset("image", &before, locn.size).unwrap();
        assert_eq!(
            locn.offset, expected,
            "before: {before:?}\nafter: {after:?}"
        );
        read_text(&image.file(), &after, &locn).expect("lvm2's copy reads back");
        locn.offset + locn.size > after.size
    };
    for i in 0..200 {
        // Names of varying length make texts of varying size.
        let name = format!("l{i}{}", "x".repeat(i % 29 * 4));
        let lv = format!("tsr_wrap/{name}");
        wraps += commit(&|| image.lvcreate(&name, "4M")) as u32;
        wraps += commit(&|| {
            image.lvm("lvremove", &["-f", "-q", &lv]);
        }) as u32;
        commits += 2;
        if wraps >= 3 {
            break;
        }
    }
    assert!(
        wraps >= 3,
        "only {wraps} wrapped copies in {commits} commits"
    );
}
