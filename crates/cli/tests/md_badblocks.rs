//! md's bad-block log, end to end. Arrays that `tessera md create` makes (raid5 and raid1,
//! whose members get mdadm's 512-entry log) run in tessera's raid set over members behind
//! the fault-injecting device, exported over NBD. While fio writes and verifies through the
//! export, one member starts returning write errors on two ranges: fio sees no error and no
//! verify failure, the member stays in the array, and its log records exactly those ranges.
//! The host's real `mdadm --examine-badblocks` then lists the same ranges as
//! `tessera md examine --badblocks`; the data reads back whole from redundancy; a `repair`
//! rewrites the ranges and clears the log, which mdadm then reports empty.
//! Fails, never skips, without fio or mdadm.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_block::{BlockDevice, ErrorOn, FaultDevice, FileDevice, OpenOptions, PowerDomain};
use tessera_engine::md::{self, MdMember};
use tessera_engine::md_records::MdRecords;
use tessera_export::{Export, ExportSet, Server};
use tessera_formats::md::probe;
use tessera_mapper::{MappedDevice, TargetRegistry};

use common::run_ok;

const MEMBER_MIB: u64 = 40;
/// Ranges of member 1 that fail writes, in member sectors from the data offset.
const BAD: [(u64, u64); 2] = [(4096, 24), (12003, 5)];

struct Running {
    device: Arc<MappedDevice>,
    faults: Vec<Arc<FaultDevice>>,
    _server: Server,
    addr: String,
}

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
    let records = Arc::new(MdRecords::new(&arrays[0]).unwrap());
    let mut registry = TargetRegistry::new();
    tessera_raid::register(&mut registry);
    let device = Arc::new(
        arrays[0]
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
        _server: server,
        addr,
    }
}

fn report_value(dev: &MappedDevice, key: &str) -> Vec<String> {
    let report = dev.message(0, &["report"]).unwrap();
    report
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

fn health(dev: &MappedDevice) -> String {
    dev.status().split_whitespace().nth(5).unwrap().to_string()
}

fn fio_while_failing(addr: &str, fault: &FaultDevice, data_offset: u64, size: u64, on: ErrorOn) {
    let child = std::process::Command::new("fio")
        .args(["--output-format=json", "--ioengine=nbd", "--rw=randwrite"])
        .args(["--iodepth=16", "--verify=crc32c", "--verify_fatal=1"])
        .args([
            "--verify_state_save=0",
            "--bsrange=4k-64k",
            "--bs_unaligned=0",
        ])
        .args(["--fsync=64", "--name=md", "--time_based", "--runtime=3"])
        .args(["--verify_backlog=256"])
        .arg(format!("--size={size}"))
        .arg(format!("--uri={addr}/md"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fio runs");
    std::thread::sleep(Duration::from_millis(1000));
    for (s, n) in BAD {
        fault.add_error_range((data_offset + s) * 512, n * 512, on);
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    let job = &json["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap() > 0,
        "verified: {job}"
    );
    eprintln!(
        "fio wrote {} MiB and verified {} MiB with 0 errors",
        job["write"]["io_bytes"].as_u64().unwrap() >> 20,
        job["read"]["io_bytes"].as_u64().unwrap() >> 20
    );
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    common::random(len, seed)
}

fn examine_badblocks(path: &str) -> (String, String) {
    let mdadm = run_ok(std::process::Command::new("mdadm").args(["--examine-badblocks", path]));
    let tessera = run_ok(
        std::process::Command::new(common::tessera_path())
            .args(["md", "examine", "--badblocks", path])
            .env("TESSERA_DEVICES", path),
    );
    (mdadm, tessera)
}

fn wait_idle(dev: &MappedDevice, action: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let report = dev.message(0, &["report"]).unwrap();
        if report.contains(&format!("last_action={action}\n"))
            && report.contains("last_complete=true")
            && report.contains("action=idle\n")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{action} never finished: {report}"
        );
    }
}

#[test]
fn write_errors_land_in_the_bad_block_log_which_mdadm_reads_and_repair_clears() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    // Write errors only, and bad sectors as disks have them (reads fail too: a raid5 write
    // that must read old data there rebuilds it from the others instead of failing the
    // member, as md does).
    for (name, level, n, on) in [
        ("bb-r5", "5", 3usize, ErrorOn::Write),
        ("bb-r1", "1", 2, ErrorOn::Write),
        ("bb-r5rw", "5", 3, ErrorOn::Both),
    ] {
        let paths = common::image_files(d, name, n, MEMBER_MIB << 20);
        let mut args = vec!["md", "create", name, "-l", level, "-c", "64k"];
        args.extend(paths.iter().map(String::as_str));
        run_ok(
            std::process::Command::new(common::tessera_path())
                .args(&args)
                .env("TESSERA_STATE_DIR", d.join("state"))
                .env("TESSERA_DEVICES", d.join(format!("{name}-*.img"))),
        );
        let victim = &paths[1];
        let examined = run_ok(std::process::Command::new("mdadm").args(["--examine", victim]));
        assert!(
            examined.contains("Bad Block Log : 512 entries available at offset 16 sectors"),
            "{name}: {examined}"
        );
        let data_offset = probe(&FileDevice::open(victim, OpenOptions::default()).unwrap())
            .unwrap()
            .unwrap()
            .1
            .data_offset_sectors();

        // Writes fail on member 1's ranges while fio writes and verifies.
        let r = run_array(&paths);
        let array_bytes = r.device.size_sectors() * 512;
        let span = 24u64 << 20;
        fio_while_failing(
            &r.addr,
            &r.faults[1],
            data_offset,
            span.min(array_bytes / 2),
            on,
        );
        // Then a known pattern over the whole span through the mapper, so that every
        // sector of the bad ranges is written at least once since they went bad.
        let want = pattern(span as usize, 7);
        for (i, piece) in want.chunks(1 << 20).enumerate() {
            r.device.write_at(piece, (i as u64) << 20).unwrap();
        }
        r.device.flush().unwrap();
        let mut got = vec![0u8; span as usize];
        r.device.read_at(&mut got, 0).unwrap();
        assert!(got == want, "{name}: data read back differs");
        assert_eq!(report_value(&r.device, "member_failures"), ["0"], "{name}");
        assert!(
            !health(&r.device).contains(['D', 'a']),
            "{name}: {}",
            r.device.status()
        );
        let entries = report_value(&r.device, "bad_blocks");
        assert!(
            entries.contains(&format!("{victim} {}", BAD.len())),
            "{name}: {entries:?}"
        );
        drop(r);

        // The log as the real mdadm reads it: exactly the failing ranges.
        let mut expected = format!("Bad-blocks on {victim}:\n");
        for (s, n) in BAD {
            expected.push_str(&format!("{:>20} for {n} sectors\n", data_offset + s));
        }
        let (mdadm, tessera) = examine_badblocks(victim);
        assert_eq!(mdadm, expected, "{name}: mdadm --examine-badblocks");
        assert_eq!(tessera, expected, "{name}: tessera md examine --badblocks");
        eprintln!("{name}: mdadm --examine-badblocks:\n{mdadm}");

        // A fresh run, the faults gone: reads of the recorded ranges come from the others,
        // and repair rewrites them and clears the log.
        let r = run_array(&paths);
        let mut got = vec![0u8; span as usize];
        r.device.read_at(&mut got, 0).unwrap();
        assert!(got == want, "{name}: data read back after restart differs");
        r.device
            .message(0, &["speed", "500000", "2000000"])
            .unwrap();
        r.device.message(0, &["repair"]).unwrap();
        wait_idle(&r.device, "repair");
        let entries = report_value(&r.device, "bad_blocks");
        assert!(
            entries.contains(&format!("{victim} 0")),
            "{name}: {entries:?}"
        );
        r.device.message(0, &["check"]).unwrap();
        wait_idle(&r.device, "check");
        assert_eq!(report_value(&r.device, "last_mismatches"), ["0"], "{name}");
        drop(r);
        let (mdadm, tessera) = examine_badblocks(victim);
        let empty = format!("Bad-blocks list is empty in {victim}\n");
        assert_eq!(mdadm, empty, "{name}");
        assert_eq!(tessera, empty, "{name}");
    }
}
