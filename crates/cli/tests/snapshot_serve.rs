//! Snapshots served in user space: an origin with two snapshots of different chunk sizes,
//! taken at different times, exported by `tessera serve` as lvm2 stacks them; writes to the
//! origin copy out to every snapshot first, a write to a snapshot stays there, and all three
//! read back as a model of what each should hold, also after the daemon restarts. `lv list`
//! shows each snapshot's Data%.

mod common;

use std::process::Command;

use common::{patch, random, read_export as read, run_ok as run, serve, tessera};

#[test]
fn an_origin_and_two_snapshots_are_served_as_their_model_says() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let img = common::image_files(d, "disk", 1, 128 << 20).remove(0);
    tessera(&img, &state, &["vg", "create", "vg", &img]);
    tessera(&img, &state, &["lv", "create", "vg/origin", "-L", "16M"]);
    let size = 16 << 20;

    let first = random(size, 1);
    {
        let server = serve(&img, &state, &[]);
        patch(&server.addr, "vg/origin", d, 0, &first);
    }
    let made = tessera(
        &img,
        &state,
        &[
            "lv",
            "create",
            "--snapshot",
            "vg/origin",
            "-n",
            "early",
            "-L",
            "8M",
            "-c",
            "4k",
        ],
    );
    assert!(made.contains("early"), "{made}");
    let mut origin = first.clone();
    let early = first.clone();
    let mut late;
    {
        let server = serve(&img, &state, &[]);
        let list = run(Command::new("nbdinfo").args(["--list", &server.addr]));
        assert!(
            list.contains("vg/origin") && list.contains("vg/early"),
            "{list}"
        );
        // Touch the origin in a few places: the snapshot keeps the old chunks.
        for (i, offset) in [0usize, 4096 * 3, 1 << 20, (9 << 20) + 512]
            .iter()
            .enumerate()
        {
            let data = random(8192, 10 + i as u64);
            patch(&server.addr, "vg/origin", d, *offset, &data);
            origin[*offset..*offset + data.len()].copy_from_slice(&data);
        }
        assert!(
            read(&server.addr, "vg/origin", d) == origin,
            "origin after writes"
        );
        assert!(
            read(&server.addr, "vg/early", d) == early,
            "early snapshot keeps the old data"
        );
        late = origin.clone();
    }
    tessera(
        &img,
        &state,
        &[
            "lv",
            "create",
            "-s",
            "vg/origin",
            "-n",
            "late",
            "-L",
            "8M",
            "-c",
            "64k",
        ],
    );
    {
        let server = serve(&img, &state, &[]);
        // A write to the origin reaches neither snapshot; a write to the late snapshot stays there.
        let data = random(100_000, 20);
        patch(&server.addr, "vg/origin", d, 2 << 20, &data);
        origin[2 << 20..(2 << 20) + data.len()].copy_from_slice(&data);
        let mine = random(5000, 21);
        patch(&server.addr, "vg/late", d, 3 << 20, &mine);
        late[3 << 20..(3 << 20) + mine.len()].copy_from_slice(&mine);
        assert!(read(&server.addr, "vg/origin", d) == origin, "origin");
        assert!(read(&server.addr, "vg/early", d) == early, "early snapshot");
        assert!(read(&server.addr, "vg/late", d) == late, "late snapshot");
    }
    // Restarted: the stores are read back from the COW LVs.
    let server = serve(&img, &state, &[]);
    assert!(
        read(&server.addr, "vg/origin", d) == origin,
        "origin after a restart"
    );
    assert!(
        read(&server.addr, "vg/early", d) == early,
        "early after a restart"
    );
    assert!(
        read(&server.addr, "vg/late", d) == late,
        "late after a restart"
    );
    drop(server);

    let list = tessera(
        &img,
        &state,
        &["lv", "list", "-o", "lv_name,origin,data_percent", "--json"],
    );
    let rows = common::report_rows(&list);
    for name in ["early", "late"] {
        let row = rows.iter().find(|r| r["lv_name"] == name).unwrap();
        assert_eq!(row["origin"], "origin", "{list}");
        let used: f64 = row["data_percent"].as_str().unwrap().parse().unwrap();
        assert!(used > 0.0 && used < 100.0, "{name}: Data% {used}");
    }

    // The whole origin rewritten: more than the early snapshot's 8 MiB store holds. It is
    // invalidated (reads fail, Data% 100), and the origin keeps working.
    let server = serve(&img, &state, &[]);
    let again = random(size, 30);
    patch(&server.addr, "vg/origin", d, 0, &again);
    assert!(
        read(&server.addr, "vg/origin", d) == again,
        "origin after filling a snapshot"
    );
    let out = Command::new("nbdcopy")
        .arg(format!("{}/vg/early", server.addr))
        .arg(d.join("early.bin"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "reading an invalidated snapshot fails"
    );
    drop(server);
    let list = tessera(
        &img,
        &state,
        &["lv", "list", "-o", "lv_name,data_percent", "--json"],
    );
    let rows = common::report_rows(&list);
    let early = rows.iter().find(|r| r["lv_name"] == "early").unwrap();
    assert_eq!(early["data_percent"], "100.00", "{list}");
}

/// `lv merge` marks the snapshot merging; the next `serve` runs the merge in the origin's
/// device (reads see the snapshot's bytes at once), and the start after it is done takes the
/// snapshot out of the metadata, the origin then plain with the snapshot's bytes.
#[test]
fn a_merge_runs_in_serve_and_the_next_start_finishes_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let img = common::image_files(d, "disk", 1, 96 << 20).remove(0);
    tessera(&img, &state, &["vg", "create", "vg", &img]);
    tessera(&img, &state, &["lv", "create", "vg/origin", "-L", "16M"]);
    let size = 16 << 20;
    let first = random(size, 41);
    {
        let server = serve(&img, &state, &[]);
        patch(&server.addr, "vg/origin", d, 0, &first);
    }
    tessera(
        &img,
        &state,
        &["lv", "create", "-s", "vg/origin", "-n", "keep", "-L", "20M"],
    );
    {
        let server = serve(&img, &state, &[]);
        let later = random(3 << 20, 42);
        patch(&server.addr, "vg/origin", d, 5 << 20, &later);
        assert!(
            read(&server.addr, "vg/keep", d) == first,
            "the snapshot holds the old bytes"
        );
    }
    let merged = tessera(&img, &state, &["lv", "merge", "vg/keep"]);
    assert!(merged.contains("Merging"), "{merged}");
    {
        let server = serve(&img, &state, &[]);
        // The origin reads as the snapshot at once, while the merge copies in the background.
        assert!(
            read(&server.addr, "vg/origin", d) == first,
            "the merging origin reads the snapshot's bytes"
        );
        let start = std::time::Instant::now();
        loop {
            let out = Command::new(common::tessera_path())
                .args(["--state-dir"])
                .arg(&state)
                .args(["dm", "message", "vg-origin", "0", "progress"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if text.contains("done") {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "the merge did not finish: {text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(
            read(&server.addr, "vg/origin", d) == first,
            "the origin after the merge"
        );
    }
    // The next start finds the merge done and drops the snapshot from the metadata.
    let server = serve(&img, &state, &[]);
    let list = run(Command::new("nbdinfo").args(["--list", &server.addr]));
    assert!(
        list.contains("vg/origin") && !list.contains("vg/keep"),
        "{list}"
    );
    assert!(
        read(&server.addr, "vg/origin", d) == first,
        "the plain origin"
    );
    let table = run(Command::new(common::tessera_path())
        .args(["--state-dir"])
        .arg(&state)
        .args(["dm", "table", "vg-origin"]));
    assert!(table.contains(" linear "), "{table}");
    drop(server);
    let lvs = tessera(
        &img,
        &state,
        &["lv", "list", "-a", "-o", "lv_name", "--json"],
    );
    assert!(!lvs.contains("keep") && !lvs.contains("snapshot"), "{lvs}");
}

/// While `serve` runs: a snapshot made through the daemon joins the served origin's stack
/// online (a client connected to the origin keeps working), writes copy out to it, and `lv
/// merge` runs the merge at once, waits for it and removes the snapshot; the origin then
/// holds the snapshot's bytes under a plain table.
#[test]
fn snapshots_are_made_and_merged_while_served() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let img = common::image_files(d, "disk", 1, 96 << 20).remove(0);
    tessera(&img, &state, &["vg", "create", "vg", &img]);
    tessera(&img, &state, &["lv", "create", "vg/origin", "-L", "16M"]);
    let size = 16 << 20;
    let server = serve(&img, &state, &[]);
    let first = random(size, 51);
    patch(&server.addr, "vg/origin", d, 0, &first);

    let made = tessera(
        &img,
        &state,
        &[
            "lv",
            "create",
            "-s",
            "vg/origin",
            "-n",
            "online",
            "-L",
            "20M",
            "-c",
            "8k",
        ],
    );
    assert!(made.contains("online"), "{made}");
    let list = run(Command::new("nbdinfo").args(["--list", &server.addr]));
    assert!(list.contains("vg/online"), "{list}");
    let table = tessera(&img, &state, &["dm", "table", "vg-origin"]);
    assert!(table.contains("snapshot-origin vg-origin-real"), "{table}");
    let mut origin = first.clone();
    let data = random(2 << 20, 52);
    patch(&server.addr, "vg/origin", d, 1 << 20, &data);
    origin[1 << 20..3 << 20].copy_from_slice(&data);
    assert!(
        read(&server.addr, "vg/origin", d) == origin,
        "origin after the online snapshot"
    );
    assert!(
        read(&server.addr, "vg/online", d) == first,
        "the online snapshot holds the old bytes"
    );

    let merged = tessera(&img, &state, &["lv", "merge", "vg/online"]);
    assert!(
        merged.contains("Merged vg/online into vg/origin"),
        "{merged}"
    );
    assert!(
        read(&server.addr, "vg/origin", d) == first,
        "the origin after the merge"
    );
    let list = run(Command::new("nbdinfo").args(["--list", &server.addr]));
    assert!(!list.contains("vg/online"), "{list}");
    let table = tessera(&img, &state, &["dm", "table", "vg-origin"]);
    assert!(table.contains(" linear "), "{table}");
    drop(server);
    let lvs = tessera(
        &img,
        &state,
        &["lv", "list", "-a", "-o", "lv_name", "--json"],
    );
    assert!(
        !lvs.contains("online") && !lvs.contains("snapshot"),
        "{lvs}"
    );
}

/// A merge killed with SIGKILL part-way resumes from the store at the next start: the origin
/// reads as the snapshot throughout, and the merge ends with the snapshot's bytes.
#[test]
fn a_merge_killed_part_way_resumes_from_the_store() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let img = common::image_files(d, "disk", 1, 192 << 20).remove(0);
    tessera(&img, &state, &["vg", "create", "vg", &img]);
    tessera(&img, &state, &["lv", "create", "vg/origin", "-L", "64M"]);
    let size = 64 << 20;
    let first = random(size, 61);
    {
        let server = serve(&img, &state, &[]);
        patch(&server.addr, "vg/origin", d, 0, &first);
    }
    tessera(
        &img,
        &state,
        &[
            "lv",
            "create",
            "-s",
            "vg/origin",
            "-n",
            "back",
            "-L",
            "72M",
            "-c",
            "4k",
        ],
    );
    {
        // Every other 4 KiB chunk rewritten: thousands of exceptions in runs of one, so the
        // merge takes long enough to be cut.
        let server = serve(&img, &state, &[]);
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "raw"]);
        for chunk in (0..size / 4096).step_by(2) {
            cmd.args(["-c", &format!("write -q -P 0xa5 {} 4096", chunk * 4096)]);
        }
        cmd.arg(format!("{}/vg/origin", server.addr));
        run(&mut cmd);
    }
    tessera(&img, &state, &["lv", "merge", "vg/back"]);
    let progress = |state: &std::path::Path| -> String {
        let out = Command::new(common::tessera_path())
            .arg("--state-dir")
            .arg(state)
            .args(["dm", "message", "vg-origin", "0", "progress"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let left_at_kill;
    {
        let mut server = serve(&img, &state, &[]);
        assert!(
            read(&server.addr, "vg/origin", d) == first,
            "the merging origin reads the snapshot"
        );
        let text = progress(&state);
        left_at_kill = text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(
            left_at_kill > 0 && text.contains("running"),
            "the merge should be under way when killed: {text}"
        );
        server.child.kill().unwrap();
        server.child.wait().unwrap();
    }
    let server = serve(&img, &state, &[]);
    assert!(
        read(&server.addr, "vg/origin", d) == first,
        "after the kill, the origin reads the snapshot"
    );
    let start = std::time::Instant::now();
    loop {
        let text = progress(&state);
        if text.contains("done") {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "the resumed merge did not finish: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(server);
    let server = serve(&img, &state, &[]);
    let list = run(Command::new("nbdinfo").args(["--list", &server.addr]));
    assert!(!list.contains("vg/back"), "{list}");
    assert!(
        read(&server.addr, "vg/origin", d) == first,
        "the origin after the resumed merge"
    );
    eprintln!("merge killed with {left_at_kill} exceptions left; resumed and finished");
}
