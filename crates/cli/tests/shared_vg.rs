//! Shared VGs locked through sanlock as lvmlockd locks them, with two real sanlock daemons
//! as two hosts (each its own run directory, host name and host id) over the same image
//! files: `vg create --shared` lays out the lockspace and leases where lvmlockd puts them
//! (checked with `sanlock direct dump`), host 1 serving an LV keeps host 2 from serving it
//! or changing it (the error names host 1), host 2 succeeds once host 1 stops, and `lock
//! status` tells each host what it and the other hold. A VG of lock type dlm is read but
//! never changed.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A sanlock daemon standing for one host; stopped when dropped.
struct Host {
    run_dir: PathBuf,
    state: PathBuf,
    id: u64,
    daemon: Child,
}

impl Host {
    fn start(dir: &Path, id: u64) -> Host {
        let run_dir = dir.join(format!("sanlock{id}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        // -w 0: no watchdog; -o 1: one-second io timeout, so renewals (and the checks of
        // another host's liveness) take seconds, not tens of seconds.
        let daemon = Command::new("sanlock")
            .args([
                "daemon", "-D", "-w", "0", "-l", "0", "-U", "root", "-G", "root", "-o", "1",
            ])
            .args(["-e", &format!("host{id}")])
            .env("SANLOCK_RUN_DIR", &run_dir)
            .env("SANLOCK_PRIVILEGED", "0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("sanlock{id}.log"))).unwrap())
            .spawn()
            .expect("sanlock is installed (apt-get install sanlock)");
        let sock = run_dir.join("sanlock.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "sanlock daemon {id} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Host {
            state: dir.join(format!("state{id}")),
            run_dir,
            id,
            daemon,
        }
    }

    fn command(&self, devices: &str) -> Command {
        let mut cmd = Command::new(common::tessera_path());
        cmd.args(["--devices", devices, "--state-dir"])
            .arg(&self.state)
            .args(["--host-id", &self.id.to_string()])
            .env("SANLOCK_RUN_DIR", &self.run_dir);
        cmd
    }

    fn output(&self, devices: &str, args: &[&str]) -> Output {
        self.command(devices).args(args).output().unwrap()
    }

    fn ok(&self, devices: &str, args: &[&str]) -> String {
        let out = self.output(devices, args);
        assert!(
            out.status.success(),
            "host {}: tessera {} failed: {}{}",
            self.id,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn refused(&self, devices: &str, args: &[&str]) -> String {
        let out = self.output(devices, args);
        assert!(
            !out.status.success(),
            "host {}: tessera {} should be refused: {}",
            self.id,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn status(&self, devices: &str) -> Value {
        serde_json::from_str(&self.ok(devices, &["lock", "status", "--json"])).unwrap()
    }

    /// `tessera serve`, once it says it serves.
    fn serve(&self, devices: &str) -> Served {
        let mut child = self
            .command(devices)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert!(
            first.contains("serving"),
            "host {}: serve printed {first:?}",
            self.id
        );
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut notes = String::new();
        // The lease lines come before the daemon starts.
        let _ = err.read_line(&mut notes);
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Served { child, notes }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

struct Served {
    child: Child,
    notes: String,
}

impl Served {
    fn stop(mut self) {
        // SAFETY: a signal to the child this handle owns.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sanlock direct dump PATH:OFFSET` rows: (offset, lockspace, resource, owner).
fn dump(path: &str, offset: u64, len: u64) -> Vec<(u64, String, String, u64)> {
    let out = common::run_ok(Command::new("sanlock").args([
        "direct",
        "dump",
        &format!("{path}:{offset}:{len}"),
    ]));
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // offset lockspace [resource] timestamp own gen [lver]; a delta lease that no
            // host joined yet has no resource (host) name.
            match f.len() {
                5 => Some((
                    f[0].parse().unwrap(),
                    f[1].to_string(),
                    String::new(),
                    f[3].parse().unwrap(),
                )),
                n if n >= 6 => Some((
                    f[0].parse().unwrap(),
                    f[1].to_string(),
                    f[2].to_string(),
                    f[4].parse().unwrap(),
                )),
                _ => None,
            }
        })
        .collect()
}

fn lease<'a>(status: &'a Value, vg: &str, lock: &str) -> &'a Value {
    let vg = status["shared_vgs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vg"] == vg)
        .unwrap_or_else(|| panic!("no VG {vg} in {status}"));
    vg["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lock"] == lock)
        .unwrap_or_else(|| panic!("no lease {lock} in {vg}"))
}

#[test]
fn two_hosts_share_a_vg_through_sanlock() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let imgs = common::image_files(d, "pv", 2, 320 << 20);
    let devices = imgs.join(",");
    let a = std::fs::canonicalize(&imgs[0])
        .unwrap()
        .display()
        .to_string();
    let host1 = Host::start(d, 1);
    let host2 = Host::start(d, 2);

    let t0 = Instant::now();
    host1.ok(
        &devices,
        &[
            "vg",
            "create",
            "--shared",
            "--io-timeout",
            "1",
            "vg0",
            &imgs[0],
            &imgs[1],
        ],
    );
    eprintln!("vg create --shared: {:?}", t0.elapsed());
    // The metadata records what lvmlockd records.
    let text = String::from_utf8_lossy(&std::fs::read(&imgs[0]).unwrap()[..1 << 20]).into_owned();
    assert!(text.contains("lock_type = \"sanlock\""), "{text}");
    assert!(text.contains("lock_args = \"1.0.0:lvmlock\""));
    // The lock LV starts at the first extent of the first PV (pe_start 1 MiB): the
    // lockspace there, GLLK at 65 MiB, VGLK at 66 MiB, free LV leases from 67 MiB.
    let base = 1u64 << 20;
    let leases = dump(&a, base + (65 << 20), 191 << 20);
    assert_eq!(
        leases[0],
        (base + (65 << 20), "lvm_vg0".into(), "GLLK".into(), 0)
    );
    assert_eq!(
        leases[1],
        (base + (66 << 20), "lvm_vg0".into(), "VGLK".into(), 0)
    );
    assert_eq!(leases.len(), 191, "GLLK, VGLK and 189 LV slots in 256 MiB");
    assert!(leases[2..].iter().all(|r| r.2 == "#unused"));

    // An LV gets the first free slot, named by its uuid, recorded in its lock_args.
    host1.ok(&devices, &["lv", "create", "vg0/lv1", "-L", "8M"]);
    let lv1 = dump(&a, base + (67 << 20), 1 << 20);
    assert_eq!(lv1[0].2.len(), 38, "an lvm2 uuid: {lv1:?}");
    let text = String::from_utf8_lossy(&std::fs::read(&imgs[0]).unwrap()[..1 << 20]).into_owned();
    assert!(text.contains(&format!("lock_args = \"1.0.0:{}\"", 67u64 << 20)));

    // The lock LV is lvmlockd's: no verb but vg remove changes it.
    let err = host1.refused(&devices, &["lv", "remove", "vg0/lvmlock"]);
    assert!(err.contains("LV 'lvmlock' holds its locks"), "{err}");

    // Host 1 serves: it holds lv1's lease exclusively.
    let t0 = Instant::now();
    let served = host1.serve(&devices);
    eprintln!("host 1 serve (joining the lockspace): {:?}", t0.elapsed());
    assert!(
        served.notes.contains("exclusive lease of vg0/lv1"),
        "{}",
        served.notes
    );
    // Host 1 joined the lockspace with its id and name.
    let ls = dump(&a, base, 1 << 20);
    assert_eq!(ls[0], (base, "lvm_vg0".into(), "host1".into(), 1), "{ls:?}");
    let s1 = host1.status(&devices);
    let l = lease(&s1, "vg0", "lv1");
    assert_eq!(l["mode"], "ex");
    assert_eq!(l["holders"], serde_json::json!([1]));
    assert_eq!(l["held_by_this_host"], true);
    assert_eq!(lease(&s1, "vg0", "VGLK")["mode"], "un");
    let text = host1.ok(&devices, &["lock", "status"]);
    assert!(text.contains("ex by host 1 (host1) [this host]"), "{text}");

    // Host 2 can neither serve lv1 nor change it; the error names host 1.
    let t0 = Instant::now();
    let err = host2.refused(&devices, &["serve", "--listen", "127.0.0.1:0"]);
    eprintln!("host 2 serve refused: {:?}", t0.elapsed());
    assert!(
        err.contains("LV 'vg0/lv1' is held by host 1 ('host1') exclusively"),
        "{err}"
    );
    let t0 = Instant::now();
    let err = host2.refused(&devices, &["lv", "extend", "vg0/lv1", "-L", "+4M"]);
    eprintln!("host 2 lv extend refused: {:?}", t0.elapsed());
    assert!(err.contains("held by host 1 ('host1')"), "{err}");
    // Its status: both hosts joined, lv1 held by the other.
    let s2 = host2.status(&devices);
    let l = lease(&s2, "vg0", "lv1");
    assert_eq!(l["holders"], serde_json::json!([1]));
    assert_eq!(l["held_by_this_host"], false);
    let vg = &s2["shared_vgs"][0];
    assert_eq!(vg["local_host_id"], 2);
    let joined: Vec<(u64, String)> = vg["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["joined"] == true)
        .map(|h| {
            (
                h["host_id"].as_u64().unwrap(),
                h["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(joined, vec![(1, "host1".into()), (2, "host2".into())]);
    // The refused change left the VG as it was.
    let sizes = host1.ok(
        &devices,
        &[
            "lv",
            "list",
            "--units",
            "b",
            "--nosuffix",
            "--noheadings",
            "-o",
            "lv_name,lv_size",
        ],
    );
    assert!(sizes.contains("8388608"), "{sizes}");

    // Host 1 stops: host 2 changes and serves lv1.
    served.stop();
    let t0 = Instant::now();
    host2.ok(&devices, &["lv", "extend", "vg0/lv1", "-L", "+4M"]);
    eprintln!("host 2 lv extend: {:?}", t0.elapsed());
    let served2 = host2.serve(&devices);
    assert!(
        served2.notes.contains("exclusive lease of vg0/lv1"),
        "{}",
        served2.notes
    );
    let s1 = host1.status(&devices);
    let l = lease(&s1, "vg0", "lv1");
    assert_eq!(l["holders"], serde_json::json!([2]));
    assert_eq!(l["held_by_this_host"], false);
    let err = host1.refused(&devices, &["lv", "remove", "vg0/lv1"]);
    assert!(err.contains("held by host 2 ('host2')"), "{err}");
    served2.stop();
    let s2 = host2.status(&devices);
    assert_eq!(lease(&s2, "vg0", "lv1")["mode"], "un");

    // A removed LV's slot is free again.
    host1.ok(&devices, &["lv", "remove", "vg0/lv1"]);
    assert_eq!(dump(&a, base + (67 << 20), 1 << 20)[0].2, "#unused");
    host1.ok(&devices, &["lock", "stop", "vg0"]);
    host2.ok(&devices, &["lock", "stop", "vg0"]);
    let s1 = host1.status(&devices);
    assert!(s1["shared_vgs"][0]["local_host_id"].is_null());

    // Removing the VG takes its locks and leaves its lockspace behind it.
    host1.ok(&devices, &["vg", "remove", "vg0"]);
    let s1 = host1.status(&devices);
    assert_eq!(s1["shared_vgs"], serde_json::json!([]));
    let daemon = common::run_ok(
        Command::new("sanlock")
            .args(["client", "status"])
            .env("SANLOCK_RUN_DIR", &host1.run_dir),
    );
    assert!(!daemon.contains("lvm_vg0"), "{daemon}");
}

#[test]
fn a_vg_of_another_lock_type_is_read_never_changed() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let imgs = common::image_files(d, "pv", 1, 32 << 20);
    let devices = imgs.join(",");
    let state = d.join("state");
    let t = |args: &[&str]| common::tessera(&devices, &state, args);
    t(&["vg", "create", "dvg", &imgs[0]]);
    t(&["lv", "create", "dvg/data", "-L", "4M"]);
    // A dlm VG, as lvm2 with lvmlockd and dlm writes it.
    let backup = d.join("dvg.vg");
    t(&["vg", "backup", "dvg", "--file", backup.to_str().unwrap()]);
    let text = std::fs::read_to_string(&backup).unwrap();
    let text = text.replacen(
        "extent_size = ",
        "lock_type = \"dlm\"\nlock_args = \"1.0.0:dvgcluster\"\nextent_size = ",
        1,
    );
    std::fs::write(&backup, text).unwrap();
    t(&["vg", "restore", "dvg", "--file", backup.to_str().unwrap()]);
    let before = std::fs::read(&imgs[0]).unwrap();
    let out = common::tessera_output(&devices, &state, &["lv", "create", "dvg/more", "-L", "4M"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lock_type 'dlm', which tessera does not handle"),
        "{err}"
    );
    let out = common::tessera_output(&devices, &state, &["lv", "remove", "dvg/data"]);
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read(&imgs[0]).unwrap(),
        before,
        "a refused change wrote nothing"
    );
    // Read-only display still works.
    let list = t(&["lv", "list", "--noheadings", "-o", "lv_name"]);
    assert!(list.contains("data"), "{list}");
    let status = t(&["lock", "status"]);
    assert!(
        status.contains("lock_type 'dlm' is not handled by tessera"),
        "{status}"
    );
}
