//! An IMSM container made by the real mdadm in the kernel lab (a raid5 and a raid10 volume
//! over four disks, plus a spare added with `mdadm --add`), run by tessera on the host as
//! mdmon runs it:
//! - `serve` writable takes the spare into the container; a member failed under writes
//!   (`md fail`) is recorded failed, and the spare takes its slot in both volumes, the
//!   rebuild recorded in the MPB (map 1 degraded, map 0 whole, MIGR_REBUILD) and
//!   checkpointed as it goes;
//! - `serve` killed (-9) mid-rebuild and started again without the failed member's image:
//!   the rebuild resumes from the checkpoint and ends in one normal map, the data whole;
//! - in the lab, `mdadm --examine` reads tessera's records (the spare in both volumes, map
//!   state normal), `mdadm --assemble` assembles the container clean with no recovery, and
//!   the data is byte-exact; and a copy of the images taken mid-rebuild, assembled by
//!   mdadm, has its rebuild resumed by mdmon and ends clean with the data whole.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{export_sum, lab_line, patch, random, read_export, serve, sha};
use serde_json::Value;

/// In the lab: imsm0 over loop0-3 (serials `/dev/loopN`, IMSM_DEVNAME_AS_SERIAL), raid5
/// vol5 and raid10 vol10 of 8 MiB per member each, filled with random data and summed;
/// loop4 added to the container as a spare.
const MAKE: &str = r#"
export IMSM_NO_PLATFORM=1 IMSM_DEVNAME_AS_SERIAL=1
mkdir -p /run/mdadm
command -v mdmon >/dev/null || { echo "no mdmon in the lab"; exit 1; }
for i in $(seq 0 4); do
  truncate -s 32M d$i.img
  [ -e /dev/loop$i ] || mknod /dev/loop$i b 7 $i
  losetup /dev/loop$i d$i.img || exit 1
done
L() { for i in "$@"; do echo /dev/loop$i; done; }
mdadm --create /dev/md/imsm0 -e imsm -n 4 --run $(L 0 1 2 3) || exit 1
mdadm --create /dev/md/vol5 -l 5 -n 4 --size=8M --chunk=64 --run /dev/md/imsm0 || exit 1
mdadm --create /dev/md/vol10 -l 10 -n 4 --size=8M --chunk=64 --run /dev/md/imsm0 || exit 1
for v in vol5 vol10; do mdadm --wait /dev/md/$v; done
mdadm --add /dev/md/imsm0 /dev/loop4 || exit 1
for v in vol5 vol10; do
  sz=$(blockdev --getsize64 /dev/md/$v)
  echo "size $v $sz"
  dd if=/dev/urandom of=/dev/md/$v bs=64k count=$((sz/65536)) oflag=direct status=none || exit 1
done
sync
cat /proc/mdstat
mdadm --stop /dev/md/vol5 /dev/md/vol10 || exit 1
mdadm --stop /dev/md/imsm0 || exit 1
echo "spare record:"; mdadm -E /dev/loop4 | head -20
for i in $(seq 0 4); do losetup -d /dev/loop$i; done
echo lab-done
"#;

/// Back in the lab: `after/` holds the images tessera finished the rebuild on (loop1, the
/// failed member, left out), `mid/` a copy taken while it was rebuilding. Each set is
/// examined, assembled and started by mdadm (mdmon running it); the mid-rebuild one is
/// waited for; then each volume's state and sum.
const CHECK: &str = r#"
export IMSM_NO_PLATFORM=1 IMSM_DEVNAME_AS_SERIAL=1
mkdir -p /run/mdadm
L() { for i in "$@"; do echo /dev/loop$i; done; }
for set in after mid; do
  echo "== $set"
  disks="0 2 3 4"
  [ -e $set/loop5.img ] && disks="0 2 3 4 5"
  for i in $disks; do
    [ -e /dev/loop$i ] || mknod /dev/loop$i b 7 $i
    losetup /dev/loop$i $set/loop$i.img || exit 1
  done
  mdadm -E /dev/loop4
  [ -e $set/loop5.img ] && mdadm -E /dev/loop5
  dmesg -C
  mdadm --assemble /dev/md/imsm0 $(L $disks) || { echo "$set: assemble failed"; exit 1; }
  echo "$set container disks: $(mdadm --detail /dev/md/imsm0 | grep -c '/dev/loop')"
  mdadm -I /dev/md/imsm0
  sleep 2
  cat /proc/mdstat
  # Running now, or started and already done on a fast machine (md logs each start).
  echo "$set recovery at start: $(( $(grep -cE 'recovery|resync' /proc/mdstat) + $(dmesg | grep -cE 'md: (recovery|resync) of RAID array') ))"
  for v in vol5 vol10; do
    dev=$(ls -d /dev/md/$v /dev/md/${v}_* 2>/dev/null | head -1)
    mdadm --wait $dev
    mdadm --detail $dev | grep -E "State :|Rebuild|Active Devices|Working Devices|Failed Devices"
    echo "$set state $v $(mdadm --detail $dev | awk -F' : ' '/^ *State :/ {print $2}')"
    echo "$set sum $v $(sha256sum < $dev | cut -d' ' -f1)"
  done
  cat /proc/mdstat
  # mdmon records the end of the rebuild before the volumes stop.
  sleep 2
  mdadm -E /dev/loop0 | grep -E "Map State|Migrate State|Dirty State|Failed disk|Disks"
  echo "$set migrating: $(mdadm -E /dev/loop0 | grep -c 'Migrate State : rebuild')"
  for v in vol5 vol10; do mdadm --stop $(ls -d /dev/md/$v /dev/md/${v}_* 2>/dev/null); done
  mdadm --stop /dev/md/imsm0
  # No udev here: the links mdadm made go with the arrays.
  rm -f /dev/md/vol5* /dev/md/vol10* /dev/md/imsm0
  for i in $disks; do losetup -d /dev/loop$i; done
done
echo lab-done
"#;

fn tessera(devices: &str, state: &Path, args: &[&str]) -> String {
    common::tessera(devices, state, args)
}

/// The IMSM container node of `show --json`.
fn container(devices: &str, state: &Path) -> Value {
    fn find(v: &Value, out: &mut Vec<Value>) {
        if v["kind"] == "md" && v["detail"]["container"] == "imsm" {
            out.push(v.clone());
        }
        for key in ["children", "devices"] {
            for c in v[key].as_array().into_iter().flatten() {
                find(c, out);
            }
        }
        for c in v.as_array().into_iter().flatten() {
            find(c, out);
        }
    }
    let json: Value = serde_json::from_str(&tessera(devices, state, &["show", "--json"])).unwrap();
    let mut out = Vec::new();
    find(&json, &mut out);
    assert_eq!(out.len(), 1, "one container: {out:#?}");
    out.remove(0)
}

fn volume(c: &Value, name: &str) -> Value {
    c["detail"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {c:#}"))
        .clone()
}

fn devices(dir: &Path, disks: &[usize]) -> String {
    disks
        .iter()
        .map(|i| dir.join(format!("loop{i}.img")).display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The raid set's report in the daemon.
fn report(devices: &str, state: &Path, volume: &str) -> String {
    tessera(
        devices,
        state,
        &["dm", "message", &format!("md-{volume}"), "0", "report"],
    )
}

/// `tessera serve` over `devices`, its log (info) written to `log`.
struct LoggedServe {
    child: std::process::Child,
    addr: String,
}

fn serve_logged(devices: &str, state: &Path, log: &Path) -> LoggedServe {
    use std::io::BufRead;
    let mut child = std::process::Command::new(common::tessera_path())
        .args(["--devices", devices, "--state-dir"])
        .arg(state)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("TESSERA_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("tessera serve starts");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut first = String::new();
    out.read_line(&mut first).expect("serve prints its address");
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = first
        .split_whitespace()
        .find(|w| w.starts_with("nbd://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .trim_end_matches("/VG/LV")
        .to_string();
    LoggedServe { child, addr }
}

impl LoggedServe {
    /// SIGTERM, as a supervisor stops it; its claims go with it.
    fn stop(mut self) {
        // SAFETY: a signal to the child this handle owns.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("tessera serve exits");
        assert!(status.success(), "serve exited {status}");
    }
}

impl Drop for LoggedServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const VOLUMES: [&str; 2] = ["vol5", "vol10"];

#[test]
fn imsm_spare_takes_a_failed_members_place_and_the_rebuild_is_recorded_as_mdmon_records_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let started = Instant::now();
    let out = common::lab_script(d, MAKE, 580);
    assert!(out.contains("lab-done"), "the lab did not finish:\n{out}");
    eprintln!("lab: made in {:.0} s", started.elapsed().as_secs_f64());
    for i in 0..5 {
        std::fs::rename(d.join(format!("d{i}.img")), d.join(format!("loop{i}.img"))).unwrap();
    }
    let size = |v: &str| -> usize { lab_line(&out, &format!("size {v} ")).parse().unwrap() };
    let all = devices(d, &[0, 1, 2, 3, 4]);
    let state = d.join("state");

    // The spare joins the container.
    let c = container(&all, &state);
    assert!(
        c["summary"].as_str().unwrap().contains("1 spare(s)"),
        "{c:#}"
    );
    let disks = c["detail"]["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 5, "{c:#}");
    assert_eq!(disks[4]["status"], "spare", "{c:#}");
    for v in VOLUMES {
        let vol = volume(&c, &format!("md/{v}"));
        assert_eq!(vol["state"], "clean", "{vol}");
        assert_eq!(
            vol["spares"][0],
            d.join("loop4.img").display().to_string(),
            "{vol}"
        );
    }

    // Written by tessera, then a member fails under writes and the spare takes its place
    // in both volumes; killed mid-rebuild.
    let loop1 = d.join("loop1.img").display().to_string();
    let expected: Vec<String>;
    {
        let server = serve(&all, &state, &[]);
        let mut held = Vec::new();
        for (i, v) in VOLUMES.iter().enumerate() {
            let export = format!("md/{v}");
            patch(
                &server.addr,
                &export,
                d,
                4096 * 3,
                &random(200_000, i as u64 + 1),
            );
            // What the volume holds, kept here with the writes that follow.
            held.push(read_export(&server.addr, &export, d));
            // 200 KiB/s: each volume's 9 MiB per member take some fifty seconds.
            tessera(&all, &state, &["md", "speed", v, "200", "200"]);
        }
        for v in VOLUMES {
            tessera(&all, &state, &["md", "fail", v, &loop1]);
        }
        // Writes while it rebuilds.
        for (i, v) in VOLUMES.iter().enumerate() {
            let export = format!("md/{v}");
            let at = size(v) - 300_000;
            let data = random(250_000, i as u64 + 7);
            patch(&server.addr, &export, d, at, &data);
            held[i][at..at + data.len()].copy_from_slice(&data);
        }
        expected = held.iter().map(|b| sha(b)).collect();
        std::thread::sleep(Duration::from_millis(2500));
        for v in VOLUMES {
            let r = report(&all, &state, v);
            assert!(r.contains("action=recover"), "{v} is not rebuilding: {r}");
        }
        drop(server); // SIGKILL, mid-rebuild
    }
    // A copy of the images as tessera left them mid-rebuild, for mdadm to continue.
    let mid = d.join("mid");
    std::fs::create_dir(&mid).unwrap();
    for i in [0, 2, 3, 4] {
        std::fs::copy(
            d.join(format!("loop{i}.img")),
            mid.join(format!("loop{i}.img")),
        )
        .unwrap();
    }
    // The failed member's image is taken away.
    let after = d.join("after");
    std::fs::create_dir(&after).unwrap();
    for i in [0, 1, 2, 3, 4] {
        std::fs::rename(
            d.join(format!("loop{i}.img")),
            after.join(format!("loop{i}.img")),
        )
        .unwrap();
    }
    std::fs::remove_file(after.join("loop1.img")).unwrap();
    let left = devices(&after, &[0, 2, 3, 4]);

    let c = container(&left, &state);
    assert_eq!(
        c["detail"]["disks"][3]["device"],
        after.join("loop4.img").display().to_string(),
        "the spare is disk 3 of the table now: {c:#}"
    );
    let mut checkpoints = Vec::new();
    for v in VOLUMES {
        let vol = volume(&c, &format!("md/{v}"));
        assert_eq!(vol["state"], "recovering", "{vol}");
        assert!(vol["rebuild"]["slot"].is_u64(), "{vol}");
        assert_eq!(
            vol["rebuild"]["device"],
            after.join("loop4.img").display().to_string(),
            "{vol}"
        );
        let done = vol["rebuild"]["done_sectors"].as_u64().unwrap();
        let total = vol["rebuild"]["total_sectors"].as_u64().unwrap();
        assert!(
            done > 0 && done < total,
            "{v}: checkpoint {done} of {total}"
        );
        checkpoints.push((done, total));
    }

    // Started again: the rebuild resumes from the checkpoint and ends. (The raid sets log
    // each recovery's length when it ends.)
    {
        let log = d.join("serve.log");
        let server = serve_logged(&left, &state, &log);
        let deadline = Instant::now() + Duration::from_secs(180);
        let recovered = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lengths: Vec<u64> = text
                .lines()
                .filter_map(|l| l.split("recover finished: ").nth(1))
                .filter_map(|l| l.split(' ').next()?.parse().ok())
                .collect();
            if lengths.len() == VOLUMES.len() {
                break lengths.iter().sum::<u64>();
            }
            assert!(
                Instant::now() < deadline,
                "the rebuilds never ended:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        // Each volume's members hold 8 MiB of data (raid5: a third of 24 MiB, raid10 a
        // half of 16 MiB).
        let member_sectors: Vec<u64> = VOLUMES
            .iter()
            .map(|v| size(v) as u64 / 512 / if *v == "vol5" { 3 } else { 2 })
            .collect();
        let left_to_do: u64 = member_sectors
            .iter()
            .zip(&checkpoints)
            .map(|(m, (done, _))| m - done)
            .sum();
        let whole: u64 = member_sectors.iter().sum();
        assert!(
            recovered >= left_to_do && recovered < whole,
            "resumed at {checkpoints:?}: rebuilt {recovered} sectors, {left_to_do} were left"
        );
        eprintln!(
            "killed at checkpoints {:?} (sectors per member, of {member_sectors:?}); the \
             restart rebuilt {recovered} sectors, {} more than the checkpoints left",
            checkpoints.iter().map(|c| c.0).collect::<Vec<_>>(),
            recovered - left_to_do
        );
        // Then idle (a resync follows for a volume left dirty).
        for v in VOLUMES {
            loop {
                let r = report(&left, &state, v);
                if r.contains("action=idle") {
                    break;
                }
                assert!(Instant::now() < deadline, "{v} never went idle: {r}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for (v, want) in VOLUMES.iter().zip(&expected) {
            assert_eq!(
                &export_sum(&server.addr, &format!("md/{v}"), d),
                want,
                "md/{v} after the rebuild"
            );
        }
        server.stop();
    }
    let c = container(&left, &state);
    assert_eq!(c["state"], "complete", "{c:#}");
    let disks = c["detail"]["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 4, "the failed disk left the table: {c:#}");
    assert!(disks.iter().all(|d| d["status"] == "configured"), "{c:#}");
    for v in VOLUMES {
        let vol = volume(&c, &format!("md/{v}"));
        assert_eq!(vol["state"], "clean", "{vol}");
        assert_eq!(vol["map_state"], "normal", "{vol}");
        assert_eq!(vol["migrating"], Value::Null, "{vol}");
        assert_eq!(vol["dirty"], false, "{vol}");
    }

    // A new spare added with tessera's verb, as mdadm --add adds one: its own record.
    let loop5 = after.join("loop5.img");
    std::fs::File::create(&loop5)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let with5 = devices(&after, &[0, 2, 3, 4, 5]);
    let said = tessera(
        &with5,
        &state,
        &["md", "add", "vol5", &loop5.display().to_string()],
    );
    assert!(said.contains("as a spare"), "{said}");
    let c = container(&with5, &state);
    assert!(
        c["summary"].as_str().unwrap().contains("1 spare(s)"),
        "{c:#}"
    );

    // In the lab: mdadm reads both sets.
    let started = Instant::now();
    let out = common::lab_script(d, CHECK, 580);
    eprintln!("lab: checked in {:.0} s", started.elapsed().as_secs_f64());
    assert!(out.contains("lab-done"), "the lab did not finish:\n{out}");
    let set_after = &out[out.find("== after").unwrap()..out.find("== mid").unwrap()];
    assert!(set_after.contains("Map State : normal"), "{set_after}");
    assert!(!set_after.contains("Map State : degraded"), "{set_after}");
    assert!(!out.contains("incorrect"), "{out}");
    assert_eq!(lab_line(&out, "after migrating: "), "0", "{out}");
    // mdadm takes tessera's spare record into the container.
    assert_eq!(lab_line(&out, "after container disks: "), "5", "{out}");
    assert_eq!(lab_line(&out, "mid container disks: "), "4", "{out}");
    let set_mid = &out[out.find("== mid").unwrap()..];
    assert!(
        set_mid.contains("Migrate State : rebuild"),
        "mdadm reads tessera's rebuild: {set_mid}"
    );
    assert_eq!(lab_line(&out, "mid migrating: "), "0", "{out}");
    // mdadm finds nothing to recover on tessera's finished rebuild, and continues the one
    // tessera left.
    assert_eq!(lab_line(&out, "after recovery at start: "), "0", "{out}");
    assert_ne!(lab_line(&out, "mid recovery at start: "), "0", "{out}");
    for (v, want) in VOLUMES.iter().zip(&expected) {
        for set in ["after", "mid"] {
            let st = lab_line(&out, &format!("{set} state {v} "));
            assert!(
                st == "clean" || st == "active",
                "{set} {v}: state {st}:\n{out}"
            );
            assert_eq!(
                lab_line(&out, &format!("{set} sum {v} ")),
                want,
                "{set} md/{v} in mdadm:\n{out}"
            );
        }
    }
}
