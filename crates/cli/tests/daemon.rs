//! `tessera serve` as a daemon: LV changes made with the `lv` commands while it serves go
//! through its control socket and the served LVs follow them online (suspend, load,
//! resume) while fio writes and verifies through NBD; dmsetup's verbs through `tessera dm`;
//! suspend waits for I/O in flight and holds new I/O until resume; the control protocol's
//! version handshake.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `tessera serve` child, killed when dropped.
struct Daemon {
    child: Child,
    addr: String,
    control: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(devices: &str, state: &Path, extra: &[&str]) -> Daemon {
    let mut child = Command::new(common::tessera_path())
        .args(["--devices", devices, "--state-dir"])
        .arg(state)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("tessera serve starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addr = None;
    let mut control = None;
    // The address line comes first, the control socket line after the listeners.
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if let Some(w) = line.split_whitespace().find(|w| w.starts_with("nbd://")) {
            addr = Some(w.trim_end_matches("/VG/LV").to_string());
        }
        if let Some(path) = line.strip_prefix("control socket ") {
            control = Some(PathBuf::from(path.trim()));
            break;
        }
    }
    // Keep reading the rest so the daemon never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Daemon {
        child,
        addr: addr.expect("serve prints its address"),
        control: control.expect("serve prints its control socket"),
    }
}

fn tessera(devices: &str, state: &Path, args: &[&str]) -> Output {
    Command::new(common::tessera_path())
        .args(["--devices", devices, "--state-dir"])
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn export_size(uri: &str) -> u64 {
    let out = Command::new("nbdinfo")
        .args(["--size", uri])
        .output()
        .expect("nbdinfo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn images(dir: &Path, count: usize, mib: u64) -> Vec<String> {
    (0..count)
        .map(|i| {
            let path = dir.join(format!("d{i}.img"));
            std::fs::File::create(&path)
                .unwrap()
                .set_len(mib << 20)
                .unwrap();
            path.to_string_lossy().into_owned()
        })
        .collect()
}

#[test]
fn lv_changes_reach_served_lvs_online_while_fio_writes_and_verifies() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = dir.path().join("state");
    let imgs = images(dir.path(), 2, 160);
    let devices = imgs.join(",");
    let t = |args: &[&str]| tessera(&devices, &state, args);
    ok(t(&["vg", "create", "on", &imgs[0], &imgs[1]]));
    ok(t(&["lv", "create", "on/lin", "-L", "32M"]));
    ok(t(&[
        "lv", "create", "on/st", "-L", "32M", "-i", "2", "-I", "64k",
    ]));
    let daemon = serve(&devices, &state, &[]);

    // Random writes with verification, one job per LV, running while the LVs change.
    let mut fio = Command::new("fio")
        .args(["--output-format=json", "--time_based", "--runtime=6"])
        .args(["--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=32M"])
        .args([
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_backlog=512",
            "--verify_state_save=0",
        ])
        .args(["--ioengine=nbd", "--name=lin"])
        .arg(format!("--uri={}/on/lin", daemon.addr))
        .args(["--name=st"])
        .arg(format!("--uri={}/on/st", daemon.addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio runs");
    std::thread::sleep(Duration::from_millis(800));
    let mut online = 0;
    for step in 0..3 {
        for lv in ["on/lin", "on/st"] {
            let out = ok(t(&["lv", "extend", lv, "-L", "+8M"]));
            assert!(out.contains("successfully resized"), "{out}");
            online += out.matches("reloaded online").count();
        }
        assert!(
            fio.try_wait().unwrap().is_none(),
            "fio still runs at step {step}"
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    // Shrinking past fio's range (its first 32 MiB) is safe while it runs too.
    let out = ok(t(&["lv", "reduce", "--force", "on/lin", "-L", "48M"]));
    online += out.matches("reloaded online").count();
    assert_eq!(online, 7, "every change reloaded its served LV");
    assert!(
        fio.try_wait().unwrap().is_none(),
        "the changes overlapped fio"
    );

    let out = fio.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    for job in json["jobs"].as_array().unwrap() {
        assert_eq!(job["error"], 0, "{}: {job}", job["jobname"]);
        assert!(job["write"]["io_bytes"].as_u64().unwrap() > 8 << 20);
        // Verification reads back what was written.
        assert!(job["read"]["io_bytes"].as_u64().unwrap() > 8 << 20);
    }

    // New connections see the new sizes; the metadata says the same.
    assert_eq!(export_size(&format!("{}/on/lin", daemon.addr)), 48 << 20);
    assert_eq!(export_size(&format!("{}/on/st", daemon.addr)), 56 << 20);
    let list = ok(t(&[
        "lv",
        "list",
        "on",
        "-o",
        "lv_name,lv_size",
        "--units",
        "m",
        "--noheadings",
    ]));
    assert!(list.contains("48.00m") && list.contains("56.00m"), "{list}");

    // Create, rename and remove follow too: exports appear, move and go.
    let out = ok(t(&["lv", "create", "on/new", "-L", "8M"]));
    assert!(out.contains("on/new: now served"), "{out}");
    assert_eq!(export_size(&format!("{}/on/new", daemon.addr)), 8 << 20);
    let out = ok(t(&["lv", "rename", "on/new", "newer"]));
    assert!(out.contains("now served as on/newer"), "{out}");
    assert_eq!(export_size(&format!("{}/on/newer", daemon.addr)), 8 << 20);
    let out = ok(t(&["lv", "remove", "on/newer"]));
    assert!(out.contains("removed from service"), "{out}");
    let list = Command::new("nbdinfo")
        .args(["--list", "--json", &daemon.addr])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&list.stdout).unwrap();
    let mut names: Vec<&str> = json["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["on/lin", "on/st"]);

    // A change the engine refuses leaves the served LV live and unchanged.
    let err = failed(t(&["lv", "extend", "on/lin", "-L", "+10G"]));
    assert!(err.contains("on") && err.contains("extents"), "{err}");
    assert_eq!(export_size(&format!("{}/on/lin", daemon.addr)), 48 << 20);
    let ls = ok(t(&[
        "--control",
        daemon.control.to_str().unwrap(),
        "dm",
        "ls",
    ]));
    assert!(ls.contains("on-lin\t(98304 sectors, live"), "{ls}");
    // VG changes that would move extents under served LVs are refused while it serves.
    for args in [
        &["vg", "rename", "on", "off"][..],
        &["vg", "remove", "--force", "on"],
        &["vg", "restore", "on"],
    ] {
        let err = failed(t(args));
        assert!(
            err.contains("served by the tessera daemon"),
            "{args:?}: {err}"
        );
    }
    drop(daemon);

    // A read-only daemon makes no changes.
    let daemon = serve(&devices, &state, &["--read-only"]);
    let err = failed(t(&["lv", "extend", "on/lin", "-L", "+4M"]));
    assert!(err.contains("read-only"), "{err}");
    drop(daemon);
    // Without a daemon (its socket left behind by the killed one) the change runs here.
    assert!(
        state.join("control.sock").exists(),
        "a killed daemon leaves its socket"
    );
    let out = ok(t(&["lv", "extend", "on/lin", "-L", "+4M"]));
    assert!(!out.contains("online"), "{out}");
    assert!(out.contains("successfully resized to 13 extents"), "{out}");
}

/// Writes one request line to the control socket and reads the reply.
fn raw_request(socket: &Path, line: &str) -> Value {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(line.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

fn qemu_io(uri: &str, command: &str) -> Child {
    Command::new("qemu-io")
        .args(["-f", "raw", uri, "-c", command])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-io runs")
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < within, "still running after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dm_verbs_suspend_semantics_and_the_version_handshake() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = dir.path().join("state");
    let imgs = images(dir.path(), 2, 64);
    let devices = imgs.join(",");
    let t = |args: &[&str]| tessera(&devices, &state, args);

    // No daemon: dm commands say so, naming the socket.
    let err = failed(t(&["dm", "ls"]));
    assert!(
        err.contains("no tessera daemon") && err.contains("control.sock"),
        "{err}"
    );

    // A daemon with no VG at all still serves what `dm create` makes.
    let daemon = serve(&devices, &state, &[]);
    let out = ok(t(&["dm", "create", "zeros", "--table", "0 2048 zero"]));
    assert!(out.contains("exported as zeros"), "{out}");
    let table = format!("0 4096 linear {} 2048\n4096 2048 zero", imgs[0]);
    ok(t(&["dm", "create", "part", "--table", &table]));
    assert_eq!(ok(t(&["dm", "table", "part"])).trim(), table);
    let status = ok(t(&["dm", "status", "part"]));
    let rows: Vec<&str> = status.lines().map(str::trim_end).collect();
    assert_eq!(rows, ["0 4096 linear", "4096 2048 zero"], "{status}");
    assert_eq!(export_size(&format!("{}/part", daemon.addr)), 6144 * 512);
    // Data written through the export lands at the table's offset in the file.
    let mut w = qemu_io(&format!("{}/part", daemon.addr), "write -P 0x3c 4096 8192");
    assert!(wait_exit(&mut w, Duration::from_secs(20)).success());
    let image = std::fs::read(&imgs[0]).unwrap();
    assert!(image[2048 * 512 + 4096..2048 * 512 + 4096 + 8192]
        .iter()
        .all(|&b| b == 0x3c));
    assert!(image[2048 * 512..2048 * 512 + 4096].iter().all(|&b| b == 0));

    // A stacked device names another by its name.
    ok(t(&[
        "dm",
        "create",
        "upper",
        "--table",
        "0 1024 linear part 8",
    ]));
    let err = failed(t(&["dm", "remove", "part"]));
    assert!(err.contains("in use by the table of upper"), "{err}");
    let json: Value = serde_json::from_str(&ok(t(&["dm", "ls", "--json"]))).unwrap();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["part", "upper", "zeros"]);

    // Load goes to the inactive slot; resume swaps it in and the export grows.
    ok(t(&["dm", "load", "zeros", "--table", "0 8192 zero"]));
    assert_eq!(ok(t(&["dm", "table", "zeros"])).trim(), "0 2048 zero");
    assert_eq!(
        ok(t(&["dm", "table", "zeros", "--inactive"])).trim(),
        "0 8192 zero"
    );
    ok(t(&["dm", "resume", "zeros"]));
    assert_eq!(export_size(&format!("{}/zeros", daemon.addr)), 8192 * 512);

    // Suspend waits for I/O in flight: a write held 1.5 s by the delay target is done
    // when suspend returns.
    let slow = format!("0 2048 delay {} 0 1500", imgs[1]);
    ok(t(&["dm", "create", "slow", "--table", &slow]));
    let uri = format!("{}/slow", daemon.addr);
    let mut writer = qemu_io(&uri, "write -P 0x77 0 65536");
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        writer.try_wait().unwrap().is_none(),
        "the write is still held"
    );
    ok(t(&["dm", "suspend", "slow"]));
    let image = std::fs::read(&imgs[1]).unwrap();
    assert!(
        image[..65536].iter().all(|&b| b == 0x77),
        "suspend returned before the write in flight was done"
    );
    let ls = ok(t(&["dm", "ls"]));
    assert!(ls.contains("slow\t(2048 sectors, suspended"), "{ls}");
    // While suspended, new I/O waits; resume lets it through.
    let mut reader = qemu_io(&uri, "read -P 0x77 0 65536");
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        reader.try_wait().unwrap().is_none(),
        "I/O ran on a suspended device"
    );
    ok(t(&["dm", "resume", "slow"]));
    // (The writer's closing flush was held by the suspension too.)
    assert!(wait_exit(&mut writer, Duration::from_secs(20)).success());
    let status = wait_exit(&mut reader, Duration::from_secs(20));
    let out = reader.wait_with_output().unwrap();
    assert!(
        status.success()
            && !String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Messages reach the target, which says it takes none; past the end is refused.
    let err = failed(t(&["dm", "message", "slow", "0", "explode"]));
    assert!(err.contains("slow") && err.contains("message"), "{err}");
    let err = failed(t(&["dm", "message", "slow", "4096", "explode"]));
    assert!(err.contains("4096"), "{err}");

    // Bad requests are refused clearly.
    let err = failed(t(&["dm", "create", "a/b", "--table", "0 8 zero"]));
    assert!(err.contains("'a/b'") && err.contains("'/'"), "{err}");
    let err = failed(t(&["dm", "create", "zeros", "--table", "0 8 zero"]));
    assert!(err.contains("exists already"), "{err}");
    let err = failed(t(&["dm", "create", "bad", "--table", "0 8 nosuchtarget"]));
    assert!(err.contains("nosuchtarget"), "{err}");
    let err = failed(t(&["dm", "create", "self", "--table", "0 8 linear self 0"]));
    assert!(err.contains("onto itself"), "{err}");
    let err = failed(t(&["dm", "suspend", "ghost"]));
    assert!(err.contains("no mapped device 'ghost'"), "{err}");

    // The version handshake: same major and an older or equal minor are served; anything
    // else is refused with both versions named.
    let served = raw_request(
        &daemon.control,
        r#"{"version":[1,0,9],"command":"version"}"#,
    );
    assert_eq!(served["ok"], true, "{served}");
    assert_eq!(served["data"]["protocol"], serde_json::json!([1, 4, 0]));
    for v in ["[2,0,0]", "[1,5,0]", "[0,1,0]"] {
        let reply = raw_request(
            &daemon.control,
            &format!(r#"{{"version":{v},"command":"dm_ls"}}"#),
        );
        assert_eq!(reply["ok"], false);
        let err = reply["error"].as_str().unwrap();
        let asked = v.trim_matches(['[', ']']).replace(',', ".");
        assert!(err.contains(&asked) && err.contains("1.4.0"), "{err}");
    }
    let reply = raw_request(&daemon.control, r#"{"command":"dm_ls"}"#);
    assert!(reply["error"].as_str().unwrap().contains("version"));
    let reply = raw_request(&daemon.control, "not json");
    assert!(reply["error"].as_str().unwrap().contains("not valid JSON"));

    // Remove: the export goes.
    ok(t(&["dm", "remove", "upper"]));
    ok(t(&["dm", "remove", "part"]));
    let out = Command::new("nbdinfo")
        .args(["--size", &format!("{}/part", daemon.addr)])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// The README's first command: `tessera demo` makes the VG, serves it, and the commands it
/// prints to reach the LVs work as printed.
#[test]
fn the_demo_serves_its_vg_and_its_hints_work() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut child = Command::new(common::tessera_path())
        .args(["demo", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut hints = Vec::new();
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("demo stopped before its hints:\n{seen}");
        }
        seen.push_str(&line);
        if line.starts_with("  ") && line.contains("  # ") {
            hints.push(line.split("  # ").next().unwrap().trim().to_string());
            if line.contains("dm ls") {
                break;
            }
        }
    }
    let guard = Daemon {
        child,
        addr: String::new(),
        control: PathBuf::new(),
    };
    let run = |hint: &str| {
        let out = Command::new("sh")
            .args(["-c", hint])
            .current_dir(dir.path())
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    Path::new(common::tessera_path())
                        .parent()
                        .unwrap()
                        .display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{hint}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = run(hints.iter().find(|h| h.starts_with("nbdinfo")).unwrap());
    assert!(
        list.contains("demo/linear") && list.contains("demo/striped"),
        "{list}"
    );
    let copy = hints.iter().find(|h| h.starts_with("nbdcopy")).unwrap();
    run(copy);
    assert_eq!(
        std::fs::metadata(dir.path().join("copy.img"))
            .unwrap()
            .len(),
        64 << 20
    );
    let extend = run(hints.iter().find(|h| h.contains("lv extend")).unwrap());
    assert!(extend.contains("reloaded online"), "{extend}");
    let ls = run(hints.iter().find(|h| h.contains("dm ls")).unwrap());
    assert!(ls.contains("demo-linear\t(163840 sectors, live"), "{ls}");
    drop(guard);
}

/// `serve --read-only`: every image opened read-only, writes refused with the protocol's
/// error, nothing on the images changes.
#[test]
fn read_only_serving_opens_images_read_only_and_changes_nothing() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = dir.path().join("state");
    let imgs = images(dir.path(), 2, 64);
    let devices = imgs.join(",");
    let t = |args: &[&str]| tessera(&devices, &state, args);
    ok(t(&["vg", "create", "ro", &imgs[0], &imgs[1]]));
    ok(t(&["lv", "create", "ro/a", "-L", "16M", "-i", "2"]));
    let before: Vec<Vec<u8>> = imgs.iter().map(|p| std::fs::read(p).unwrap()).collect();

    let daemon = serve(&devices, &state, &["--read-only"]);
    let uri = format!("{}/ro/a", daemon.addr);
    let info = Command::new("nbdinfo")
        .args(["--json", &uri])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(json["exports"][0]["is_read_only"], true, "{json}");
    let mut write = qemu_io(&uri, "write -P 0x11 0 4096");
    let status = wait_exit(&mut write, Duration::from_secs(20));
    let out = write.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !status.success() || said.contains("failed"),
        "a write to a read-only export was taken: {said}"
    );
    // Every descriptor the daemon holds on an image is O_RDONLY.
    let pid = daemon.child.id();
    let mut image_fds = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd = fd.unwrap();
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if imgs.iter().any(|i| Path::new(i) == target) {
            image_fds += 1;
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .unwrap()
                .trim();
            let flags = u32::from_str_radix(flags, 8).unwrap();
            assert_eq!(
                flags & 3,
                0,
                "{} opened with flags {flags:o}",
                target.display()
            );
        }
    }
    assert!(image_fds >= 2, "the daemon holds the images open");
    drop(daemon);
    for (path, old) in imgs.iter().zip(&before) {
        assert!(&std::fs::read(path).unwrap() == old, "{path} changed");
    }
}
