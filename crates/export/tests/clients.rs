//! tessera's NBD server against the real clients: nbdinfo and nbdcopy (libnbd-bin), qemu-io
//! and qemu-img (qemu-utils), and fio's nbd engine (fio). A missing tool fails the test.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tessera_block::{FaultDevice, PowerDomain};
use tessera_export::proto::{CMD_FLAG_FUA, EPERM};
use tessera_export::{Export, ExportSet, ListenAddr, Server};

const MIB: usize = 1 << 20;

fn nbdinfo_json(uri: &str, list: bool) -> Value {
    let mut cmd = tool("nbdinfo");
    cmd.arg("--json");
    if list {
        cmd.arg("--list");
    }
    let out = run(cmd.arg(uri));
    serde_json::from_slice(&out.stdout).expect("nbdinfo prints JSON")
}

/// (name, size, description) of every export nbdinfo lists, sorted by name.
fn listed(json: &Value) -> Vec<(String, u64, String)> {
    let mut v: Vec<_> = json["exports"]
        .as_array()
        .expect("exports array")
        .iter()
        .map(|e| {
            (
                e["export-name"].as_str().unwrap().to_string(),
                e["export-size"].as_u64().unwrap(),
                e["description"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn nbdinfo_lists_every_export_over_tcp_and_unix() {
    let dir = tmpdir();
    let exports = ExportSet::new();
    let a = backing_file(dir.path(), "a.img", &vec![0; MIB]);
    let b = backing_file(dir.path(), "b.img", &vec![0; 3 * MIB + 512]);
    exports
        .insert("alpha", file_export(&a, false).description("first disk"))
        .unwrap();
    exports.insert("beta", file_export(&b, true)).unwrap();
    let (_tcp, addr) = tcp_server(&exports);
    let sock = dir.path().join("nbd.sock");
    let _unix = Server::bind_unix(exports.clone(), &sock).unwrap();

    let want = vec![
        ("alpha".to_string(), MIB as u64, "first disk".to_string()),
        ("beta".to_string(), 3 * MIB as u64 + 512, String::new()),
    ];
    let json = nbdinfo_json(&format!("nbd://{addr}"), true);
    assert_eq!(json["protocol"], "newstyle-fixed");
    assert_eq!(listed(&json), want);
    let unix_uri = format!("nbd+unix://?socket={}", sock.display());
    assert_eq!(listed(&nbdinfo_json(&unix_uri, true)), want);

    // The human-readable listing shows the same.
    let out = run(tool("nbdinfo").args(["--list", &format!("nbd://{addr}")]));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "export=\"alpha\"",
        "export=\"beta\"",
        "1048576",
        "3146240",
        "first disk",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn nbdinfo_json_shows_the_flags() {
    let dir = tmpdir();
    let exports = ExportSet::new();
    let f = backing_file(dir.path(), "d.img", &vec![0; MIB]);
    exports.insert("rw", file_export(&f, false)).unwrap();
    exports.insert("ro", file_export(&f, true)).unwrap();
    let (_server, addr) = tcp_server(&exports);

    let rw = nbdinfo_json(&uri(addr, "rw"), false);
    assert_eq!(rw["structured"], true);
    let e = &rw["exports"][0];
    assert_eq!(e["export-size"], MIB as u64);
    for (flag, want) in [
        ("is_read_only", false),
        ("can_flush", true),
        ("can_fua", true),
        ("can_trim", true),
        ("can_zero", true),
        ("can_fast_zero", true),
        ("can_multi_conn", true),
        ("can_df", true),
    ] {
        assert_eq!(e[flag], want, "{flag} in {e}");
    }
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_maximum"], 32 * MIB as u64);

    let ro = nbdinfo_json(&uri(addr, "ro"), false);
    let e = &ro["exports"][0];
    for (flag, want) in [
        ("is_read_only", true),
        ("can_trim", false),
        ("can_zero", false),
        ("can_multi_conn", true),
    ] {
        assert_eq!(e[flag], want, "{flag} in {e}");
    }
}

#[test]
fn export_changes_are_seen_by_new_connections() {
    let dir = tmpdir();
    let exports = ExportSet::new();
    let small = backing_file(dir.path(), "small.img", &vec![0; MIB]);
    exports.insert("vol", file_export(&small, false)).unwrap();
    let (_server, addr) = tcp_server(&exports);
    let size = |json: Value| json["exports"][0]["export-size"].as_u64().unwrap();
    assert_eq!(size(nbdinfo_json(&uri(addr, "vol"), false)), MIB as u64);
    // One export: the empty name is the default.
    assert_eq!(
        size(nbdinfo_json(&format!("nbd://{addr}"), false)),
        MIB as u64
    );

    // "Resize": the volume is now backed by a bigger device.
    let big = backing_file(dir.path(), "big.img", &vec![0; 4 * MIB]);
    exports.insert("vol", file_export(&big, false)).unwrap();
    assert_eq!(size(nbdinfo_json(&uri(addr, "vol"), false)), 4 * MIB as u64);

    exports.insert("other", file_export(&small, false)).unwrap();
    let status = tool("nbdinfo")
        .arg(format!("nbd://{addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "two exports and no default: the empty name selects nothing"
    );
    exports.set_default(Some("other".into()));
    assert_eq!(
        size(nbdinfo_json(&format!("nbd://{addr}"), false)),
        MIB as u64
    );

    exports.remove("vol");
    let names: Vec<_> = listed(&nbdinfo_json(&format!("nbd://{addr}"), true))
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(names, ["other"]);
}

#[test]
fn nbdcopy_reads_byte_identical_and_writes() {
    let dir = tmpdir();
    let exports = ExportSet::new();
    let data = pattern(8 * MIB + 4096, 1);
    let src = backing_file(dir.path(), "src.img", &data);
    let dst = backing_file(dir.path(), "dst.img", &vec![0; data.len()]);
    exports.insert("src", file_export(&src, true)).unwrap();
    exports.insert("dst", file_export(&dst, false)).unwrap();
    let (_server, addr) = tcp_server(&exports);

    let out = dir.path().join("out.img");
    run(tool("nbdcopy").arg(uri(addr, "src")).arg(&out));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "nbdcopy read differs from the backing file"
    );

    // Write through the server; a second copy goes over a Unix socket with several
    // connections (multi-conn).
    run(tool("nbdcopy").arg(&out).arg(uri(addr, "dst")));
    assert!(
        std::fs::read(&dst).unwrap() == data,
        "nbdcopy write differs"
    );

    std::fs::write(&dst, vec![0; data.len()]).unwrap();
    let sock = dir.path().join("s.sock");
    let _unix = Server::bind_unix(exports.clone(), &sock).unwrap();
    let unix_dst = format!("nbd+unix:///dst?socket={}", sock.display());
    run(tool("nbdcopy")
        .args(["--connections=4", "--requests=16"])
        .arg(&src)
        .arg(unix_dst));
    assert!(
        std::fs::read(&dst).unwrap() == data,
        "multi-connection nbdcopy write differs"
    );
}

#[test]
fn qemu_io_writes_and_verifies_patterns() {
    let dir = tmpdir();
    let exports = ExportSet::new();
    let f = backing_file(dir.path(), "q.img", &pattern(8 * MIB, 3));
    exports.insert("q", file_export(&f, false)).unwrap();
    let (_server, addr) = tcp_server(&exports);

    let out = run(tool("qemu-io").args(["-f", "raw", &uri(addr, "q")]).args([
        "-c",
        "write -P 0xab 0 1M",
        "-c",
        "read -P 0xab 0 1M",
        "-c",
        "write -z 1M 1M",
        "-c",
        "read -P 0 1M 1M",
        "-c",
        "write -P 0xcd -f 3M 64k",
        "-c",
        "flush",
        "-c",
        "read -P 0xcd 3M 64k",
    ]));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("failed") && !text.contains("error"),
        "{text}"
    );
    let got = std::fs::read(&f).unwrap();
    assert!(got[..MIB].iter().all(|&b| b == 0xab));
    assert!(got[MIB..2 * MIB].iter().all(|&b| b == 0));
    assert!(got[3 * MIB..3 * MIB + 65536].iter().all(|&b| b == 0xcd));
    assert_eq!(got[2 * MIB..3 * MIB], pattern(8 * MIB, 3)[2 * MIB..3 * MIB]);

    // qemu-img agrees with the file over the whole export.
    run(tool("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", &uri(addr, "q")])
        .arg(&f));
}

#[test]
fn read_only_export_refuses_writes() {
    let dir = tmpdir();
    let exports = ExportSet::new();
    let data = pattern(MIB, 4);
    let f = backing_file(dir.path(), "ro.img", &data);
    exports.insert("ro", file_export(&f, true)).unwrap();
    let (_server, addr) = tcp_server(&exports);

    // qemu sees NBD_FLAG_READ_ONLY and refuses before sending anything.
    let out = tool("qemu-io")
        .args(["-f", "raw", &uri(addr, "ro"), "-c", "write -P 0x11 0 4k"])
        .output()
        .unwrap();
    let msg =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() || msg.contains("ermission") || msg.contains("read-only"),
        "qemu-io wrote to a read-only export: {msg}"
    );
    assert!(
        msg.contains("Permission denied") || msg.contains("read-only"),
        "{msg}"
    );
    // Reading works, and a write sent anyway is refused by the server with EPERM.
    run(tool("qemu-io").args(["-r", "-f", "raw", &uri(addr, "ro"), "-c", "read 0 4k"]));
    let mut c = Raw::open(addr, "ro", false);
    assert_eq!(c.write(1, 0, &[0x11; 4096], 0), EPERM);
    assert!(std::fs::read(&f).unwrap() == data);
}

#[test]
fn fio_randwrite_verify_at_qd16() {
    let dir = tmpdir();
    let exports = ExportSet::new();
    let f = backing_file(dir.path(), "fio.img", &vec![0; 64 * MIB]);
    exports.insert("fio", file_export(&f, false)).unwrap();
    let (_server, addr) = tcp_server(&exports);

    let report = dir.path().join("fio.json");
    run(tool("fio").args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", uri(addr, "fio")),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--size=64M",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=json",
        &format!("--output={}", report.display()),
    ]));
    let json: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).expect("fio JSON");
    let job = &json["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert_eq!(job["write"]["io_bytes"], 64 * MIB as u64, "{job}");
    assert_eq!(
        job["read"]["io_bytes"],
        64 * MIB as u64,
        "verify pass reads everything back"
    );
}

/// FLUSH and FUA make writes durable: with a volatile write cache under the export, data
/// survives a power cut only if flushed.
#[test]
fn flushed_writes_survive_a_power_cut() {
    let dir = tmpdir();
    let f = backing_file(dir.path(), "p.img", &vec![0; MIB]);
    let domain = PowerDomain::new();
    let cached = Arc::new(FaultDevice::new(file_device(&f, false), domain.clone()));
    let exports = ExportSet::new();
    exports.insert("p", Export::new(cached)).unwrap();
    let (_server, addr) = tcp_server(&exports);

    let mut c = Raw::open(addr, "p", false);
    assert_eq!(c.write(1, 0, &[0x5a; 4096], 0), 0);
    c.request(3, 0, 2, 0, 0, &[]); // FLUSH
    assert_eq!(c.reply_error(2), 0);
    assert_eq!(c.write(3, 8192, &[0x6b; 4096], CMD_FLAG_FUA), 0);
    assert_eq!(c.write(4, 16384, &[0x7c; 4096], 0), 0); // never flushed
    domain.cut_now().unwrap();

    let got = std::fs::read(&f).unwrap();
    assert!(got[..4096].iter().all(|&b| b == 0x5a), "flushed write lost");
    assert!(
        got[8192..12288].iter().all(|&b| b == 0x6b),
        "FUA write lost"
    );
    assert!(
        got[16384..20480].iter().all(|&b| b == 0),
        "the cut must lose unflushed writes"
    );
}

/// The server in a child process: this test binary run again with the environment below.
#[test]
fn child_server_process() {
    let (Ok(file), Ok(port_file)) = (
        std::env::var("TESSERA_EXPORT_CHILD_FILE"),
        std::env::var("TESSERA_EXPORT_CHILD_PORT_FILE"),
    ) else {
        return; // an ordinary test run: nothing to do
    };
    let exports = ExportSet::new();
    exports
        .insert("k", file_export(Path::new(&file), false))
        .unwrap();
    let (server, addr) = tcp_server(&exports);
    std::fs::write(port_file, addr.to_string()).unwrap();
    server.wait(); // until killed
}

#[test]
fn flushed_writes_are_in_the_file_after_the_server_is_killed() {
    let dir = tmpdir();
    let f = backing_file(dir.path(), "k.img", &vec![0; 4 * MIB]);
    let port_file = dir.path().join("port");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_server_process", "--exact", "--nocapture"])
        .env("TESSERA_EXPORT_CHILD_FILE", &f)
        .env("TESSERA_EXPORT_CHILD_PORT_FILE", &port_file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr: SocketAddr = loop {
        if let Some(a) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            break a;
        }
        assert!(Instant::now() < deadline, "child server did not start");
        thread::sleep(Duration::from_millis(20));
    };

    run(tool("qemu-io").args(["-f", "raw", &uri(addr, "k")]).args([
        "-c",
        "write -P 0x3c 1M 1M",
        "-c",
        "flush",
    ]));
    let mut c = Raw::open(addr, "k", false);
    assert_eq!(c.write(1, 0, &[0x4d; 4096], CMD_FLAG_FUA), 0);
    child.kill().unwrap(); // SIGKILL: no clean shutdown
    child.wait().unwrap();

    let got = std::fs::read(&f).unwrap();
    assert!(got[MIB..2 * MIB].iter().all(|&b| b == 0x3c));
    assert!(got[..4096].iter().all(|&b| b == 0x4d));
}

#[test]
fn server_shutdown_hangs_up_on_clients() {
    let dir = tmpdir();
    let exports = ExportSet::new();
    let f = backing_file(dir.path(), "s.img", &vec![0; MIB]);
    exports.insert("s", file_export(&f, false)).unwrap();
    let (server, addr) = tcp_server(&exports);
    let mut c = Raw::open(addr, "s", false);
    assert!(c.read(1, 0, 512).is_ok());
    let t = Instant::now();
    server.shutdown();
    assert!(t.elapsed() < Duration::from_secs(5));
    c.expect_closed();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );

    let sock = dir.path().join("x.sock");
    let unix = Server::bind_unix(exports, &sock).unwrap();
    assert_eq!(unix.local_addr(), &ListenAddr::Unix(sock.clone()));
    drop(unix);
    assert!(!sock.exists(), "socket file removed at shutdown");
}
