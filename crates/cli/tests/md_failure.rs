//! RAID that keeps data safe. Arrays that `tessera md create` makes (raid1, raid5, raid6,
//! raid10, each with a hot spare) run in tessera's raid set over members wrapped in the
//! fault-injecting block device, exported over NBD. fio writes and verifies through each
//! while one member starts failing every I/O: fio sees no error and no verify failure, the
//! spare takes the slot, recovery completes, `check` finds no mismatch, and the superblocks
//! tell the story (the failed member faulty, the spare in its slot, events up). Then the
//! real mdadm and kernel in the lab assemble the members that are left as a clean array,
//! with the kernel's own check finding no mismatch.
//!
//! Also: a read error is answered from redundancy and the bad sectors rewritten (the member
//! stays); silent corruption written into one member is counted by `check`, fixed by
//! `repair`, and `check` finds nothing after.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_block::{BlockDevice, ErrorOn, FaultDevice, FileDevice, OpenOptions, PowerDomain};
use tessera_engine::md::{self, MdMember};
use tessera_engine::md_records::MdRecords;
use tessera_export::{Export, ExportSet, Server};
use tessera_formats::md::{probe, MdSuperblock, Role};
use tessera_mapper::{MappedDevice, TargetRegistry};

use common::run_ok;

/// (name, level, layout, members)
const ARRAYS: &[(&str, &str, &str, usize)] = &[
    ("f-r1", "1", "", 2),
    ("f-r5", "5", "left-symmetric", 3),
    ("f-r6", "6", "left-symmetric", 4),
    ("f-r10", "10", "n2", 4),
];

const MEMBER_MIB: u64 = 40;

struct Running {
    device: Arc<MappedDevice>,
    faults: Vec<Arc<FaultDevice>>,
    server: Server,
    addr: String,
}

/// Opens the members behind fault devices and runs the array as `md` over NBD.
fn run_array(paths: &[String]) -> Running {
    let mut members = Vec::new();
    let mut faults = Vec::new();
    for p in paths {
        let file: Arc<dyn BlockDevice> =
            Arc::new(FileDevice::open(p, OpenOptions::default()).unwrap());
        let fault = Arc::new(FaultDevice::new(file, PowerDomain::new()));
        let (version, sb) = probe(fault.as_ref()).unwrap().expect("a superblock");
        faults.push(fault.clone());
        members.push(MdMember {
            path: p.clone(),
            device: fault,
            version,
            sb,
        });
    }
    let arrays = md::assemble(members);
    assert_eq!(arrays.len(), 1);
    let array = &arrays[0];
    let records = Arc::new(MdRecords::new(array).unwrap());
    let mut registry = TargetRegistry::new();
    tessera_raid::register(&mut registry);
    let device = Arc::new(
        array
            .activate("md", Arc::new(registry), Some(records))
            .unwrap(),
    );
    let exports = ExportSet::new();
    exports.insert("md", Export::new(device.clone())).unwrap();
    let server = Server::bind_tcp(exports, "127.0.0.1:0").unwrap();
    let addr = format!("nbd://{}", server.local_addr());
    Running {
        device,
        faults,
        server,
        addr,
    }
}

/// `<type> <#devs> <health> <done>/<total> <action> <mismatches> ...` of the set.
fn status(dev: &MappedDevice) -> Vec<String> {
    dev.status()
        .split_whitespace()
        .skip(3)
        .map(str::to_string)
        .collect()
}

/// Waits until the set is idle with every member in sync; returns its status.
fn wait_whole_and_idle(dev: &MappedDevice, what: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = status(dev);
        if !st[2].contains(['a', 'D']) && st[4] == "idle" {
            return st;
        }
        assert!(Instant::now() < deadline, "{what}: still {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `check` (or `repair`) and returns the mismatched sectors it counted.
fn scrub(dev: &MappedDevice, action: &str) -> u64 {
    dev.message(0, &[action]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let report = dev.message(0, &["report"]).unwrap();
        if report.contains(&format!("last_action={action}\n"))
            && report.contains("last_complete=true")
            && status(dev)[4] == "idle"
        {
            let n = report
                .lines()
                .find_map(|l| l.strip_prefix("last_mismatches="))
                .unwrap();
            return n.parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{action} never finished: {report}"
        );
    }
}

fn fio_with_failure(addr: &str, fail: &FaultDevice, array_bytes: u64) -> serde_json::Value {
    let size = (array_bytes / 2).min(24 << 20);
    let mut cmd = std::process::Command::new("fio");
    cmd.args(["--output-format=json", "--ioengine=nbd", "--rw=randwrite"])
        .args(["--iodepth=16", "--verify=crc32c", "--verify_fatal=1"])
        .args([
            "--verify_state_save=0",
            "--bsrange=4k-64k",
            "--bs_unaligned=0",
        ])
        .args(["--fsync=64", "--name=md", "--time_based", "--runtime=3"])
        .args(["--verify_backlog=256"])
        .arg(format!("--size={size}"))
        .arg(format!("--uri={addr}/md"));
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fio runs");
    // The member starts failing while fio writes.
    std::thread::sleep(Duration::from_millis(1000));
    fail.add_error_range(0, u64::MAX, ErrorOn::Both);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    let job = json["jobs"][0].clone();
    assert_eq!(job["error"], 0, "{job}");
    assert!(
        job["write"]["io_bytes"].as_u64().unwrap() >= 8 << 20,
        "{job}"
    );
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap() >= 8 << 20,
        "verified: {job}"
    );
    job
}

fn superblock(path: &str) -> MdSuperblock {
    let dev = FileDevice::open(path, OpenOptions::default()).unwrap();
    probe(&dev).unwrap().expect("a superblock").1
}

const INSIDE: &str = r#"set -u
while read -r name files; do
  devs=()
  for f in $files; do devs+=("$(losetup -f --show "$f")"); done
  if ! mdadm --assemble /dev/md0 "${devs[@]}" >"$name.assemble" 2>&1; then
    echo "$name assemble-failed $(tr '\n' ' ' < "$name.assemble")"
  else
    state=$(mdadm --detail /dev/md0 | sed -n 's/^ *State : *//p' | tr -d ' ')
    active=$(mdadm --detail /dev/md0 | sed -n 's/^ *Active Devices : *//p')
    echo check > /sys/block/md0/md/sync_action
    sleep 0.2
    while [ "$(cat /sys/block/md0/md/sync_action)" != idle ]; do sleep 0.2; done
    mismatch=$(cat /sys/block/md0/md/mismatch_cnt)
    echo "$name ok $state $active $mismatch"
    mdadm --stop /dev/md0 >/dev/null 2>&1
  fi
  for d in "${devs[@]}"; do losetup -d "$d"; done
done < list
echo md-failure-done
"#;

#[test]
fn a_failing_member_is_replaced_by_the_spare_with_no_client_error_and_mdadm_agrees() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let mut list = String::new();
    for &(name, level, layout, n) in ARRAYS {
        let paths = common::image_files(d, name, n + 1, MEMBER_MIB << 20);
        let (members, spare) = paths.split_at(n);
        let mut args = vec![
            "md", "create", name, "-l", level, "-c", "64k", "-x", &spare[0],
        ];
        if !layout.is_empty() {
            args.extend(["-p", layout]);
        }
        args.extend(members.iter().map(String::as_str));
        run_ok(
            std::process::Command::new(common::tessera_path())
                .args(&args)
                .env("TESSERA_STATE_DIR", &state)
                .env("TESSERA_DEVICES", d.join(format!("{name}-*.img"))),
        );
        let before = superblock(&members[0]).events();
        let r = run_array(&paths);
        r.device
            .message(0, &["speed", "500000", "2000000"])
            .unwrap();
        let array_bytes = r.device.size_sectors() * 512;
        let job = fio_with_failure(&r.addr, &r.faults[1], array_bytes);
        let st = wait_whole_and_idle(&r.device, name);
        let report = r.device.message(0, &["report"]).unwrap();
        assert!(report.contains("member_failures=1\n"), "{name}: {report}");
        assert!(
            report.contains("last_action=recover\n") && report.contains("last_complete=true"),
            "{name}: {report}"
        );
        let recovered: u64 = report
            .lines()
            .find_map(|l| l.strip_prefix("last_sectors="))
            .unwrap()
            .parse()
            .unwrap();
        let millis: u64 = report
            .lines()
            .find_map(|l| l.strip_prefix("last_millis="))
            .unwrap()
            .parse()
            .unwrap();
        let mismatches = scrub(&r.device, "check");
        eprintln!(
            "{name}: fio wrote {} MiB and verified {} MiB with 0 errors while member 1 failed; \
             recovery rebuilt {} MiB in {millis} ms ({:.0} MiB/s); check: {mismatches} \
             mismatched sectors; status {st:?}",
            job["write"]["io_bytes"].as_u64().unwrap() >> 20,
            job["read"]["io_bytes"].as_u64().unwrap() >> 20,
            recovered / 2048,
            recovered as f64 / 2048.0 / (millis.max(1) as f64 / 1000.0),
        );
        assert_eq!(mismatches, 0, "{name}");

        // A read error on a member: answered from redundancy, the sectors rewritten, the
        // member kept.
        let mut before_data = vec![0u8; 1 << 20];
        r.device.read_at(&mut before_data, 0).unwrap();
        let data_offset = 2048 * 512;
        r.faults[0].add_error_range(data_offset, 256 << 10, ErrorOn::Read);
        let mut again = vec![0u8; 1 << 20];
        r.device.read_at(&mut again, 0).unwrap();
        assert!(
            again == before_data,
            "{name}: data read around a read error"
        );
        r.faults[0].clear_error_ranges();
        let report = r.device.message(0, &["report"]).unwrap();
        assert!(
            !report.contains("corrected_read_sectors=0\n"),
            "{name}: {report}"
        );
        assert_eq!(
            status(&r.device)[2].matches('A').count(),
            n,
            "{name}: member kept"
        );

        // Silent corruption in one member's data: check counts it, repair fixes it.
        let victim = r.faults[2].inner().clone();
        victim
            .write_at(&vec![0xa5u8; 64 << 10], data_offset + (128 << 10))
            .unwrap();
        let found = scrub(&r.device, "check");
        assert!(
            found > 0,
            "{name}: check found no mismatch in corrupted data"
        );
        let repaired = scrub(&r.device, "repair");
        assert_eq!(repaired, found, "{name}: repair fixes what check found");
        assert_eq!(scrub(&r.device, "check"), 0, "{name}: check after repair");
        eprintln!("{name}: silent corruption: check {found}, repair {repaired}, check after 0");
        let mut after = vec![0u8; 1 << 20];
        r.device.read_at(&mut after, 0).unwrap();

        r.server.shutdown();
        drop(r);

        // The records: the spare holds slot 1, the failed member is faulty, events went up.
        let failed = &members[1];
        let sb = superblock(&members[0]);
        assert!(
            sb.events() > before,
            "{name}: events {} -> {}",
            before,
            sb.events()
        );
        assert_eq!(sb.state(), tessera_formats::md::ArrayState::Clean, "{name}");
        assert_eq!(
            sb.role_of(&superblock(&spare[0])),
            Role::Active(1),
            "{name}"
        );
        assert_eq!(sb.role_of(&superblock(failed)), Role::Faulty, "{name}");
        let mut files = vec![members[0].clone(), spare[0].clone()];
        files.extend(members[2..].iter().cloned());
        list.push_str(&format!("{name} {}\n", files.join(" ")));
    }

    // The real mdadm and kernel assemble what is left (the failed member is not given).
    std::fs::write(d.join("list"), list).unwrap();
    let text = common::lab_script(d, INSIDE, 500);
    assert!(text.contains("md-failure-done"), "lab: {text}");
    for &(name, _, _, n) in ARRAYS {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name}: no result in {text}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[1], "ok", "{line}");
        assert_eq!(f[2], "clean", "{line}");
        assert_eq!(f[3], n.to_string(), "{line}: every slot active");
        assert_eq!(f[4], "0", "{line}: md's check mismatch_cnt");
        eprintln!("mdadm: {line}");
    }
}

const BITMAP_INSIDE: &str = r#"set -u
cd "$(dirname "$0")"
devs=()
for f in k-0.img k-1.img k-2.img; do devs+=("$(losetup -f --show "$f")"); done
echo "before $(mdadm -X "${devs[0]}" | grep 'Bitmap :')"
mdadm --assemble /dev/md0 "${devs[@]}" || echo assemble-failed
sleep 0.5
while [ "$(cat /sys/block/md0/md/sync_action)" != idle ]; do sleep 0.2; done
echo check > /sys/block/md0/md/sync_action
sleep 0.2
while [ "$(cat /sys/block/md0/md/sync_action)" != idle ]; do sleep 0.2; done
echo "mismatch $(cat /sys/block/md0/md/mismatch_cnt)"
echo "state $(mdadm --detail /dev/md0 | sed -n 's/^ *State : *//p' | tr -d ' ')"
mdadm --stop /dev/md0
echo "after $(mdadm -X "${devs[0]}" | grep 'Bitmap :')"
for d in "${devs[@]}"; do losetup -d "$d"; done
echo bitmap-done
"#;

/// `tessera serve` killed with SIGKILL while fio writes into a few MiB of a raid5 with a
/// write-intent bitmap: the superblocks say dirty, and the next `tessera serve` resyncs only
/// the bitmap's dirty regions, after which `md check` finds no mismatch.
#[test]
fn kill_during_writes_then_only_dirty_bitmap_regions_are_resynced() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let paths = common::image_files(d, "k", 3, MEMBER_MIB << 20);
    let devices = d.join("k-*.img").display().to_string();
    let tessera = |args: &[&str]| common::tessera(&devices, &state, args);
    let mut create = vec![
        "md",
        "create",
        "k5",
        "-l",
        "5",
        "-c",
        "64k",
        "--bitmap-chunk",
        "1M",
    ];
    create.extend(paths.iter().map(String::as_str));
    tessera(&create);

    let served = common::serve(&devices, &state, &[]);
    let fio = std::process::Command::new("fio")
        .args([
            "--ioengine=nbd",
            "--rw=randwrite",
            "--iodepth=16",
            "--bs=4k",
        ])
        .args([
            "--offset=8M",
            "--size=3M",
            "--time_based",
            "--runtime=30",
            "--name=k",
        ])
        .arg(format!("--uri={}/md/k5", served.addr))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(served); // SIGKILL, mid-write
    let mut fio = fio;
    let _ = fio.wait();
    let examine = tessera(&["md", "examine", &paths[0]]);
    assert!(
        examine.contains("active"),
        "dirty after the kill: {examine}"
    );

    // A copy of the members goes to the kernel lab: mdadm reads tessera's bitmap, the kernel
    // resyncs the regions it marks, and md's check finds nothing.
    let lab_dir = d.join("lab");
    std::fs::create_dir(&lab_dir).unwrap();
    for (i, p) in paths.iter().enumerate() {
        std::fs::copy(p, lab_dir.join(format!("k-{i}.img"))).unwrap();
    }
    let text = common::lab_script(&lab_dir, BITMAP_INSIDE, 300);
    assert!(text.contains("bitmap-done"), "lab:\n{text}");
    let dirty_bits = |tag: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(tag))
            .unwrap_or_else(|| panic!("no {tag} in {text}"));
        // "Bitmap : 40 bits (chunks), 2 dirty (5.0%)"
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == "dirty")
            .expect("dirty count");
        words[at - 1].parse().unwrap()
    };
    let before = dirty_bits("before");
    let after = dirty_bits("after");
    assert!(
        (1..=3).contains(&before),
        "mdadm -X before assembly: {text}"
    );
    assert_eq!(after, 0, "{text}");
    assert!(text.contains("mismatch 0"), "{text}");
    assert!(text.contains("state clean"), "{text}");
    eprintln!("k5 in the lab: mdadm -X saw {before} dirty bits of tessera's bitmap; the kernel resynced them; check mismatch 0; {after} dirty after");

    let served = common::serve(&devices, &state, &[]);
    let control = state.join("control.sock");
    let report = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = tessera(&[
                "--control",
                control.to_str().unwrap(),
                "dm",
                "message",
                "md-k5",
                "0",
                "report",
            ]);
            if r.contains(what) {
                return r;
            }
            assert!(Instant::now() < deadline, "no {what} in {r}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let r = report("last_action=resync");
    assert!(r.contains("last_complete=true"), "{r}");
    let resynced: u64 = r
        .lines()
        .find_map(|l| l.strip_prefix("last_sectors="))
        .unwrap()
        .parse()
        .unwrap();
    let total = superblock(&paths[0]).used_size_sectors();
    // 3 MiB of array at 8 MiB is 1.5 MiB per member from 4 MiB: 2 or 3 regions of 1 MiB.
    assert!(
        resynced > 0 && resynced <= 3 * 2048,
        "resynced {resynced} of {total} sectors"
    );
    let check = tessera(&["--control", control.to_str().unwrap(), "md", "check", "k5"]);
    assert!(check.contains("check done: 0 mismatched"), "{check}");
    eprintln!(
        "k5: killed mid-write; resync covered {} of {} sectors per member ({} bitmap regions of 1 MiB); {}",
        resynced,
        total,
        resynced.div_ceil(2048),
        check.trim()
    );
    drop(served);
}

/// `tessera serve` killed with SIGKILL while it rebuilds onto a spare: the spare's
/// superblock holds the last checkpoint, and the next start resumes recovery from there
/// instead of from the start; the data is whole and `md check` finds no mismatch.
#[test]
fn kill_during_recovery_then_it_resumes_from_the_checkpoint() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let paths = common::image_files(d, "q", 4, MEMBER_MIB << 20);
    let devices = d.join("q-*.img").display().to_string();
    let tessera = |args: &[&str]| common::tessera(&devices, &state, args);
    tessera(&[
        "md", "create", "q5", "-l", "5", "-c", "64k", "-x", &paths[3], &paths[0], &paths[1],
        &paths[2],
    ]);
    let data: Vec<u8> = (0..(MEMBER_MIB - 2) << 20)
        .map(|k| (k.wrapping_mul(0x9e37_79b9) >> 11) as u8)
        .collect();
    let file = d.join("data");
    std::fs::write(&file, &data).unwrap();

    let served = common::serve(&devices, &state, &[]);
    run_ok(
        std::process::Command::new("nbdcopy")
            .arg(&file)
            .arg(format!("{}/md/q5", served.addr)),
    );
    // About 4 MiB/s: the rebuild of 39 MiB takes ten seconds.
    tessera(&["md", "speed", "q5", "4000", "4000"]);
    tessera(&["md", "fail", "q5", &paths[1]]);
    std::thread::sleep(Duration::from_millis(3500));
    drop(served); // SIGKILL, mid-recovery
    let examine: serde_json::Value =
        serde_json::from_str(&tessera(&["md", "examine", &paths[3], "--json"])).unwrap();
    assert_eq!(examine["role"], "active 1", "{examine}");
    let checkpoint = examine["recovery_offset_sectors"]
        .as_u64()
        .unwrap_or_else(|| panic!("no recovery offset recorded: {examine}"));
    let total = examine["used_size_sectors"].as_u64().unwrap();
    assert!(
        checkpoint > 0 && checkpoint < total,
        "checkpoint {checkpoint} of {total}"
    );

    let served = common::serve(&devices, &state, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let r = tessera(&["dm", "message", "md-q5", "0", "report"]);
        if r.contains("last_action=recover\n") && r.contains("last_complete=true") {
            break r;
        }
        assert!(Instant::now() < deadline, "recovery never finished: {r}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let rebuilt: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("last_sectors="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        rebuilt <= total - checkpoint + 128,
        "resumed at {checkpoint}: rebuilt {rebuilt} of {total}"
    );
    let back = d.join("back");
    run_ok(
        std::process::Command::new("nbdcopy")
            .arg(format!("{}/md/q5", served.addr))
            .arg(&back),
    );
    assert!(
        std::fs::read(&back).unwrap()[..data.len()] == data[..],
        "data after resume"
    );
    let check = tessera(&["md", "check", "q5"]);
    assert!(check.contains("check done: 0 mismatched"), "{check}");
    let sb: serde_json::Value =
        serde_json::from_str(&tessera(&["md", "examine", &paths[3], "--json"])).unwrap();
    assert_eq!(
        sb["recovery_offset_sectors"],
        serde_json::Value::Null,
        "{sb}"
    );
    eprintln!(
        "q5: killed mid-recovery at checkpoint {checkpoint} of {total} sectors; the restart \
         rebuilt {rebuilt} sectors; data whole; {}",
        check.trim()
    );
    drop(served);
}
