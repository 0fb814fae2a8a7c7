//! `tessera pv move` while `tessera serve` serves the LVs, beside the real lvm2 on loop
//! devices. lvm2 makes a VG of four PVs with a linear LV of two segments around another LV
//! and a striped LV with a stripe on the first PV; tessera adds a raid1 LV with an image
//! there. The daemon serves them; fio writes and verifies (crc32c) through NBD on every LV
//! while `tessera pv move` empties the first PV into the fourth through the daemon: fio ends
//! with exit 0 and no verify error, the move reports it ran online, and once the daemon has
//! stopped lvm2's vgck passes, pvs shows the first PV empty and no pvmove0 is left, and the
//! bytes at the places lvm2's report names are those read through the daemon at the end.

mod common;

use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const LVM_CREATE: &[&str] = &["--driverloaded", "n", "-an", "-Zn", "-Wn", "-q"];
const EXTENT_SECTORS: u64 = 2048;
const PE_START_SECTORS: u64 = 2048;

/// The bytes of LV `lv` (linear or striped) at the extents lvm2's report names.
fn lvm2_lv_bytes(loops: &Loops, lv: &str) -> Vec<u8> {
    let json = lvm(
        &loops.list(),
        &[
            "lvs",
            "-a",
            "--segments",
            "--reportformat",
            "json",
            "--units",
            "s",
            "--nosuffix",
            "-o",
            "lv_name,seg_size,segtype,stripes,stripe_size,seg_pe_ranges",
            "vg",
        ],
    );
    let v: Value = serde_json::from_str(&json).unwrap();
    let files: Vec<std::fs::File> = loops
        .images
        .iter()
        .map(|p| std::fs::File::open(p).unwrap())
        .collect();
    let mut out = Vec::new();
    // Hidden LVs are listed in brackets.
    let segs = v["report"][0]["seg"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["lv_name"].as_str().unwrap().trim_matches(['[', ']']) == lv);
    for seg in segs {
        let num = |k: &str| seg[k].as_str().unwrap().parse::<u64>().unwrap();
        let (size, stripes, chunk) = (num("seg_size"), num("stripes"), num("stripe_size"));
        let segtype = seg["segtype"].as_str().unwrap();
        assert!(matches!(segtype, "linear" | "striped"), "{lv}: {segtype}");
        let areas: Vec<(usize, u64)> = seg["seg_pe_ranges"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .map(|r| {
                let (dev, range) = r.rsplit_once(':').unwrap();
                let first: u64 = range.split('-').next().unwrap().parse().unwrap();
                let i = loops
                    .devices
                    .iter()
                    .position(|d| d == dev)
                    .unwrap_or_else(|| panic!("{lv} lies on {dev}, not one of the loop devices"));
                (i, PE_START_SECTORS + first * EXTENT_SECTORS)
            })
            .collect();
        let unit = if stripes > 1 { chunk } else { size };
        let mut s = 0;
        while s < size {
            let idx = s / unit;
            let (pv, base) = areas[(idx % stripes) as usize];
            let at = base + (idx / stripes) * unit;
            let mut buf = vec![0u8; (unit * 512) as usize];
            files[pv].read_exact_at(&mut buf, at * 512).unwrap();
            out.extend(buf);
            s += unit;
        }
    }
    out
}

fn pv_used(loops: &Loops) -> Vec<u64> {
    let json = lvm(
        &loops.list(),
        &[
            "pvs",
            "--reportformat",
            "json",
            "-o",
            "pv_name,pv_pe_alloc_count",
        ],
    );
    let v: Value = serde_json::from_str(&json).unwrap();
    let rows = v["report"][0]["pv"].as_array().unwrap();
    loops
        .devices
        .iter()
        .map(|d| {
            let row = rows.iter().find(|r| r["pv_name"] == d.as_str()).unwrap();
            row["pv_pe_alloc_count"].as_str().unwrap().parse().unwrap()
        })
        .collect()
}

fn lvcreate(loops: &Loops, args: &[&str]) {
    let mut a = vec!["lvcreate"];
    a.extend(LVM_CREATE);
    a.extend(args);
    lvm(&loops.list(), &a);
}

/// The served LVs fio writes: (export, size in MiB).
const SERVED: [(&str, u64); 4] = [("lin", 7), ("gap", 2), ("str", 6), ("r1", 4)];

#[test]
fn a_served_vg_is_moved_online_while_fio_writes_and_verifies() {
    let loops = Loops::new(4, 32);
    let list = loops.list();
    let state = loops.state_dir();
    let d = &loops.devices;
    lvm(&list, &["pvcreate", "-q", &d[0], &d[1], &d[2], &d[3]]);
    lvm(
        &list,
        &[
            "vgcreate", "-q", "-s", "1M", "vg", &d[0], &d[1], &d[2], &d[3],
        ],
    );
    lvcreate(&loops, &["-L", "3M", "-n", "lin", "vg", &d[0]]);
    lvcreate(&loops, &["-L", "2M", "-n", "gap", "vg", &d[0]]);
    lvm(
        &list,
        &[
            "lvextend",
            "--driverloaded",
            "n",
            "-q",
            "-L",
            "+4M",
            "vg/lin",
            &d[0],
        ],
    );
    lvcreate(
        &loops,
        &[
            "-i", "2", "-I", "64k", "-L", "6M", "-n", "str", "vg", &d[0], &d[1],
        ],
    );
    let created = tessera_output(
        &list,
        &state,
        &[
            "lv", "create", "vg/r1", "--type", "raid1", "-m", "1", "-L", "4M", "--pv", &d[0],
            "--pv", &d[2],
        ],
    );
    assert!(created.status.success(), "{created:?}");
    lvm(&list, &["vgck", "vg"]);
    // lin 7, gap 2, str 3, r1's image and metadata 5.
    assert_eq!(pv_used(&loops), vec![17, 3, 5, 0]);

    let served = serve(&list, &state, &[]);
    let dir = loops.dir.path();
    // fio writes and verifies every LV for the whole move (a few seconds at 4 MiB/s, md's
    // minimum while clients write).
    let mut fio = Command::new("fio");
    // Paced, so the machine is not flooded: the move's pace is md's, not the disks'.
    fio.args(["--output-format=json", "--time_based", "--runtime=30"])
        .args([
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--rate_iops=400",
        ])
        .args([
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_backlog=256",
            "--verify_state_save=0",
        ])
        .arg("--ioengine=nbd");
    for (lv, mib) in SERVED {
        fio.arg(format!("--name={lv}"))
            .arg(format!("--uri={}/vg/{lv}", served.addr))
            .arg(format!("--size={mib}M"));
    }
    let fio = fio
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio runs");
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let moved = tessera_output(
        &list,
        &state,
        &[
            "pv",
            "move",
            &d[0],
            &d[3],
            "--min-rate",
            "4096",
            "--max-rate",
            "8192",
        ],
    );
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&moved.stdout).to_string()
        + &String::from_utf8_lossy(&moved.stderr);
    println!("pv move ({:.1} s): {text}", took.as_secs_f64());
    assert!(moved.status.success(), "{text}");
    assert!(
        text.contains("online"),
        "the daemon did not move it: {text}"
    );
    assert!(text.contains("moved 17 extents"), "{text}");
    let out = fio.wait_with_output().unwrap();
    let fio_text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {fio_text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // fio may print notes before its JSON.
    let json_at = fio_text.find('{').expect("fio's JSON");
    let report: Value = serde_json::from_str(&fio_text[json_at..]).expect("fio's JSON");
    for job in report["jobs"].as_array().unwrap() {
        let name = job["jobname"].as_str().unwrap();
        assert_eq!(job["error"], 0, "fio job {name}: {job}");
        let writes = job["write"]["io_bytes"].as_u64().unwrap();
        assert!(writes > 0, "fio job {name} wrote nothing");
        println!(
            "fio {name}: {} KiB written, write clat p99 {} us, max {} us",
            writes / 1024,
            job["write"]["clat_ns"]["percentile"]["99.000000"]
                .as_u64()
                .unwrap_or(0)
                / 1000,
            job["write"]["clat_ns"]["max"].as_u64().unwrap_or(0) / 1000
        );
    }
    assert!(
        took < Duration::from_secs(28),
        "the move outlasted fio's writes"
    );
    // What clients read at the end, through the daemon.
    let mut through = Vec::new();
    for (lv, _) in SERVED {
        let file = dir.join(format!("{lv}.back"));
        run_ok(
            Command::new("nbdcopy")
                .arg(format!("{}/vg/{lv}", served.addr))
                .arg(&file),
        );
        through.push(std::fs::read(&file).unwrap());
    }
    served.stop();

    lvm(&list, &["vgck", "vg"]);
    assert_eq!(pv_used(&loops), vec![0, 3, 5, 17]);
    let names = lvm(&list, &["lvs", "-a", "--noheadings", "-o", "lv_name", "vg"]);
    assert!(!names.contains("pvmove"), "{names}");
    for (i, lv) in ["lin", "gap", "str"].iter().enumerate() {
        assert!(
            lvm2_lv_bytes(&loops, lv) == through[i],
            "{lv}: the bytes where lvm2 places it differ from those served"
        );
    }
    // raid1 keeps its data from sector 0 of each image.
    let images: Vec<Vec<u8>> = ["r1_rimage_0", "r1_rimage_1"]
        .iter()
        .map(|image| lvm2_lv_bytes(&loops, image))
        .collect();
    let first_diff = |a: &[u8], b: &[u8]| a.iter().zip(b).position(|(x, y)| x != y);
    assert!(
        images[0] == through[3] && images[1] == through[3],
        "r1: the images where lvm2 places them differ from the bytes served: image 0 at {:?}, \
         image 1 at {:?}, between them at {:?}; lengths {} {} {}",
        first_diff(&images[0], &through[3]),
        first_diff(&images[1], &through[3]),
        first_diff(&images[0], &images[1]),
        images[0].len(),
        images[1].len(),
        through[3].len()
    );
    assert!(!through[3].is_empty());
}

/// A served VG with a snapshot is not moved online (the snapshot's layer would not see the
/// move and its writes would stay on the source): the refusal says so and the VG is as it was.
#[test]
fn a_served_vg_with_snapshots_is_refused_an_online_move() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let imgs = image_files(dir.path(), "pv", 2, 64 << 20);
    let devices = imgs.join(",");
    let state = dir.path().join("state");
    let t = |args: &[&str]| tessera(&devices, &state, args);
    t(&["pv", "create", &imgs[0], &imgs[1]]);
    t(&["vg", "create", "vg", &imgs[0], &imgs[1], "-s", "1m"]);
    t(&["lv", "create", "vg/origin", "-L", "8m", "--pv", &imgs[0]]);
    t(&["lv", "create", "-s", "vg/origin", "-n", "snap", "-L", "4m"]);
    // Serving writes the snapshot's store header, so only where the extents lie is compared.
    let layout = || t(&["pv", "list"]);
    let before = layout();
    let served = serve(&devices, &state, &[]);
    let out = tessera_output(&devices, &state, &["pv", "move", &imgs[0]]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the move ran: {err}");
    assert!(err.contains("holds snapshots or thin volumes"), "{err}");
    assert!(err.contains("origin") && err.contains("offline"), "{err}");
    drop(served);
    assert_eq!(before, layout(), "a refused move changed the VG");
}

/// A move cut short by SIGKILL leaves the LV on the pvmove LV. A read-only `serve` serves
/// the VG's other LVs and skips that one with a warning that says how to finish the move; a
/// writable `serve` serves it over the mirrored source and finishes the move in the
/// background, as lvm2's lvmpolld does on activation, without losing a write made meanwhile.
#[test]
fn a_move_cut_short_is_resumed_by_serve() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let imgs = image_files(d, "pv", 2, 96 << 20);
    let devices = imgs.join(",");
    let state = d.join("state");
    let t = |args: &[&str]| tessera(&devices, &state, args);
    t(&["pv", "create", &imgs[0], &imgs[1]]);
    t(&["vg", "create", "vg", &imgs[0], &imgs[1], "-s", "4m"]);
    t(&["lv", "create", "vg/a", "-L", "64m", "--pv", &imgs[0]]);
    t(&["lv", "create", "vg/b", "-L", "8m", "--pv", &imgs[1]]);
    let pattern = |seed: u32| -> Vec<u8> {
        (0..64u32 << 20)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
            .collect()
    };
    let write = |addr: &str, data: &[u8]| {
        let file = d.join("a.data");
        std::fs::write(&file, data).unwrap();
        let out = Command::new("nbdcopy")
            .arg(&file)
            .arg(format!("{addr}/vg/a"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    {
        let served = serve(&devices, &state, &[]);
        write(&served.addr, &pattern(1));
        assert!(served.stop().success());
    }
    // 64 MiB at 2 MiB/s: the move is far from its end when the plan is seen committed.
    let mut mover = Command::new(tessera_path())
        .args(["--devices", &devices, "--state-dir"])
        .arg(&state)
        .args(["pv", "move", &imgs[0], "--max-rate", "2048"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !t(&["lv", "list", "-a"]).contains("[pvmove0]") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no pvmove0 appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    mover.kill().unwrap();
    mover.wait().unwrap();
    assert!(
        t(&["lv", "list", "-a"]).contains("[pvmove0]"),
        "the move ended before the kill"
    );

    // Read-only: nothing is resumed, the moved LV waits.
    let mut server = Command::new(tessera_path())
        .args(["--devices", &devices, "--state-dir"])
        .arg(&state)
        .args(["serve", "--listen", "127.0.0.1:0", "--read-only"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = first
        .split_whitespace()
        .find(|w| w.starts_with("nbd://"))
        .unwrap()
        .trim_end_matches("/VG/LV")
        .to_string();
    let list = Command::new("nbdinfo")
        .args(["--list", &addr])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let out = server.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(list.contains("vg/b") && !list.contains("vg/a"), "{list}");
    assert!(
        err.contains("skipping vg/a") && err.contains("in the middle of a pv move"),
        "{err}"
    );
    assert!(
        t(&["lv", "list", "-a"]).contains("[pvmove0]"),
        "read-only moved"
    );

    // Writable: the LV is served at once and the move finishes behind it.
    let second = pattern(2);
    {
        let served = serve(&devices, &state, &[]);
        write(&served.addr, &second);
        assert_eq!(export_sum(&served.addr, "vg/a", d), sha(&second));
        let started = Instant::now();
        while t(&["lv", "list", "-a"]).contains("[pvmove0]") {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the move did not end"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(export_sum(&served.addr, "vg/a", d), sha(&second));
        assert!(served.stop().success());
    }
    let pvs = t(&["pv", "list"]);
    let source = pvs.lines().find(|l| l.contains("pv-0.img")).unwrap();
    assert!(source.trim_end().ends_with("92.00m 92.00m"), "{pvs}");
    let served = serve(&devices, &state, &[]);
    assert_eq!(export_sum(&served.addr, "vg/a", d), sha(&second));
}
