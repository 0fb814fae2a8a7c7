//! Thin pools served in user space and changed online: while `tessera serve` runs, a pool,
//! a thin LV and thin snapshots are made through it (its live thin-pool target takes the
//! kernel's messages), each is served at once, writes to an origin and its snapshot stay
//! apart, the pool grows and a snapshot goes without a restart, and everything reads back
//! as a model of it, also after the daemon restarts; the pool's metadata then passes the
//! real `thin_check` and tessera's check. A pool that runs out of data space holds a write
//! (lvm2's default, queue_if_no_space) until `lv extend` grows the pool online, and nothing
//! written before is lost; told to fail when full (`lv change --errorwhenfull y`), it fails
//! the write at once instead.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{check_and_dump, patch, random, read_export, serve, tessera, tessera_output};

/// The exports a daemon at `addr` lists.
fn exports(addr: &str) -> Vec<String> {
    let out = common::run_ok(Command::new("nbdinfo").args(["--list", "--json", addr]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut names: Vec<String> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn thin_lvs_and_snapshots_are_made_served_and_changed_online() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let devs = common::image_files(d, "pv", 1, 256 << 20).join(",");
    let state = d.join("state");
    let t = |args: &[&str]| tessera(&devs, &state, args);
    t(&["vg", "create", "vg", &devs]);
    t(&["lv", "create", "vg/plain", "-L", "8M"]);
    let server = serve(&devs, &state, &[]);
    assert_eq!(exports(&server.addr), ["vg/plain"]);

    // Made through the daemon, served at once.
    t(&[
        "lv",
        "create",
        "--type",
        "thin-pool",
        "-L",
        "32M",
        "vg/pool",
    ]);
    let out = t(&["lv", "create", "--thin", "-V", "64M", "-n", "t", "vg/pool"]);
    assert!(out.contains("vg/t: now served"), "{out}");
    assert_eq!(exports(&server.addr), ["vg/plain", "vg/t"]);
    let mut model_t = vec![0u8; 64 << 20];
    for (i, (offset, len)) in [(0, 1 << 20), (10 << 20, 300_000), ((63 << 20) + 512, 4096)]
        .into_iter()
        .enumerate()
    {
        let data = random(len, 1 + i as u64);
        patch(&server.addr, "vg/t", d, offset, &data);
        model_t[offset..offset + len].copy_from_slice(&data);
    }
    let out = t(&["lv", "create", "--snapshot", "vg/t", "-n", "s"]);
    assert!(out.contains("vg/s: now served"), "{out}");
    let mut model_s = model_t.clone();
    let data = random(200_000, 10);
    patch(&server.addr, "vg/t", d, 100_000, &data);
    model_t[100_000..300_000].copy_from_slice(&data);
    let data = random(70_000, 11);
    patch(&server.addr, "vg/s", d, 10 << 20, &data);
    model_s[10 << 20..(10 << 20) + 70_000].copy_from_slice(&data);
    t(&["lv", "create", "--snapshot", "vg/s", "-n", "s2"]);
    let model_s2 = model_s.clone();
    assert_eq!(exports(&server.addr), ["vg/plain", "vg/s", "vg/s2", "vg/t"]);
    assert!(read_export(&server.addr, "vg/t", d) == model_t, "vg/t");
    assert!(read_export(&server.addr, "vg/s", d) == model_s, "vg/s");
    assert!(read_export(&server.addr, "vg/s2", d) == model_s2, "vg/s2");

    // The pool grows online; the snapshot of a snapshot goes; its origin stays.
    let out = t(&["lv", "extend", "-L", "+16M", "vg/pool"]);
    assert!(out.contains("reloaded online"), "{out}");
    let status = t(&["dm", "status", "vg-pool-tpool"]);
    assert!(
        status.contains("/768 "),
        "48 MiB of 64 KiB blocks: {status}"
    );
    t(&["lv", "remove", "vg/s2"]);
    assert_eq!(exports(&server.addr), ["vg/plain", "vg/s", "vg/t"]);
    assert!(
        read_export(&server.addr, "vg/s", d) == model_s,
        "vg/s after s2 went"
    );
    server.stop();

    let xml = check_and_dump(&devs, &state, d, "vg/pool");
    assert_eq!(
        xml.matches("<device dev_id").count(),
        2,
        "t and s are left in the pool:\n{xml}"
    );
    let check = t(&["thin", "check", "vg/pool"]);
    assert!(check.contains("no faults found"), "{check}");

    // A restarted daemon serves the same bytes.
    let server = serve(&devs, &state, &[]);
    assert!(
        read_export(&server.addr, "vg/t", d) == model_t,
        "vg/t after a restart"
    );
    assert!(
        read_export(&server.addr, "vg/s", d) == model_s,
        "vg/s after a restart"
    );
    server.stop();
}

#[test]
fn a_full_pool_holds_writes_until_it_grows_online() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let devs = common::image_files(d, "pv", 1, 128 << 20).join(",");
    let state = d.join("state");
    let t = |args: &[&str]| tessera(&devs, &state, args);
    t(&["vg", "create", "vg", &devs]);
    // 8 MiB of data: 128 blocks of 64 KiB; the thin LV is 32 MiB.
    t(&["lv", "create", "--type", "thin-pool", "-L", "8M", "vg/pool"]);
    t(&["lv", "create", "--thin", "-V", "32M", "-n", "t", "vg/pool"]);
    let server = serve(&devs, &state, &[]);
    let first = random(6 << 20, 1);
    patch(&server.addr, "vg/t", d, 0, &first);

    // 4 MiB more than the pool holds: the writer waits (the pool queues, as lvm2's default).
    let second = random(6 << 20, 2);
    let file = d.join("second.bin");
    std::fs::write(&file, &second).unwrap();
    let mut writer = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            &format!("write -s {} {} {}", file.display(), 8 << 20, second.len()),
            &format!("{}/vg/t", server.addr),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let waited = Instant::now();
    let mut full = String::new();
    while waited.elapsed() < Duration::from_secs(20) {
        full = t(&["dm", "status", "vg-pool-tpool"]);
        if full.contains("out_of_data_space") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(full.contains("out_of_data_space"), "the pool fills: {full}");
    assert!(full.contains("queue_if_no_space"), "{full}");
    assert!(
        writer.try_wait().unwrap().is_none(),
        "the write waits for space instead of failing"
    );
    let out = tessera_output(&devs, &state, &["lv", "extend", "-L", "+8M", "vg/pool"]);
    assert!(out.status.success(), "{out:?}");
    let done = writer.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "the held write finishes once the pool grew: {}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    let status = t(&["dm", "status", "vg-pool-tpool"]);
    assert!(!status.contains("out_of_data_space"), "{status}");
    let bytes = read_export(&server.addr, "vg/t", d);
    assert!(
        bytes[..6 << 20] == first[..],
        "what was written before the pool filled"
    );
    assert!(bytes[8 << 20..14 << 20] == second[..], "the held write");
    assert!(bytes[6 << 20..8 << 20].iter().all(|&b| b == 0));

    // Told to fail when full (lvm2's errorwhenfull), the served pool fails the write that
    // finds no space at once, and keeps what it holds.
    let out = t(&["lv", "change", "--errorwhenfull", "y", "vg/pool"]);
    assert!(out.contains("reloaded online"), "{out}");
    let status = t(&["dm", "status", "vg-pool-tpool"]);
    assert!(status.contains("error_if_no_space"), "{status}");
    let table = t(&["lv", "table", "vg/pool"]);
    let list = t(&["lv", "list", "-o", "lv_name,lv_when_full", "--json"]);
    assert!(list.contains("\"error\""), "{list}\n{table}");
    let third = random(8 << 20, 3);
    let file = d.join("third.bin");
    std::fs::write(&file, &third).unwrap();
    let began = Instant::now();
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            &format!("write -s {} {} {}", file.display(), 16 << 20, third.len()),
            &format!("{}/vg/t", server.addr),
        ])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("Input/output error") || !out.status.success(),
        "a write past a full pool fails: {said}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "and does not wait"
    );
    let again = read_export(&server.addr, "vg/t", d);
    assert!(again[..6 << 20] == first[..] && again[8 << 20..14 << 20] == second[..]);
    server.stop();
    check_and_dump(&devs, &state, d, "vg/pool");
}
