//! Behaviour, status and constructor errors of the built-in targets.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pattern, read, Devices};
use tessera_block::{BlockDevice, BlockError, ErrorOn, FaultDevice, PowerDomain, SharedDevice};
use tessera_mapper::{MappedDevice, MapperError, Table, TargetError, TargetRegistry};

/// Loads `table` into a fresh device and returns the constructor's error.
fn load_err(devs: &Devices, table: &str) -> MapperError {
    let dev = MappedDevice::new("vg-lv", Arc::new(TargetRegistry::new()));
    dev.load(&Table::parse(table).unwrap(), &|n| devs.resolve(n))
        .unwrap_err()
}

fn target_err(devs: &Devices, table: &str) -> TargetError {
    match load_err(devs, table) {
        MapperError::Target { source, .. } => *source,
        e => panic!("{table}: expected a target error, got {e}"),
    }
}

fn table_text(dev: &MappedDevice) -> String {
    dev.table().unwrap().to_string()
}

#[test]
fn linear_maps_rows_onto_offsets_and_splits_at_row_boundaries() {
    let devs = Devices::with(&[("a", 200), ("b", 100)]);
    let text = "0 100 linear a 10\n100 50 linear b 0\n";
    let dev = devs.activate("vg-lv", text);
    assert_eq!(dev.size_bytes(), 150 * 512);
    assert_eq!(table_text(&dev), text);
    assert_eq!(dev.status(), "0 100 linear\n100 50 linear\n");

    // An unaligned write across the row boundary.
    let data = pattern(1, 20 * 512);
    let at = 90 * 512 + 100;
    dev.write_at(&data, at).unwrap();
    assert_eq!(read(&dev, at, data.len()), data);
    let split = (100 * 512 - at) as usize;
    let a = devs.get("a").contents();
    let b = devs.get("b").contents();
    assert_eq!(&a[(100 * 512 + 100) as usize..][..split], &data[..split]);
    assert_eq!(&b[..data.len() - split], &data[split..]);
    assert!(a[..(100 * 512 + 100) as usize].iter().all(|&x| x == 0));

    dev.write_zeroes(99 * 512, 2 * 512).unwrap();
    assert_eq!(read(&dev, 99 * 512, 1024), vec![0; 1024]);
    assert!(devs.get("b").contents()[..512].iter().all(|&x| x == 0));
    dev.flush().unwrap();
}

#[test]
fn device_names_with_spaces_print_escaped() {
    let devs = Devices::with(&[("my disk", 16), (r"back\slash", 16)]);
    let text = "0 8 linear my\\ disk 0\n8 8 striped 1 8 back\\\\slash 0\n";
    let dev = devs.activate("m", text);
    assert_eq!(table_text(&dev), text);
    assert_eq!(
        dev.status(),
        "0 8 linear\n8 8 striped 1 back\\\\slash 1 A\n"
    );
}

#[test]
fn linear_refuses_bad_lines() {
    let devs = Devices::with(&[("a", 100)]);
    assert!(matches!(
        target_err(&devs, "0 10 linear a"),
        TargetError::Missing("offset")
    ));
    assert!(matches!(
        target_err(&devs, "0 10 linear a x"),
        TargetError::BadNumber { what: "offset", .. }
    ));
    assert!(matches!(
        target_err(&devs, "0 10 linear a 0 1"),
        TargetError::Extra(_)
    ));
    assert!(matches!(
        target_err(&devs, "0 10 linear nosuch 0"),
        TargetError::Open { .. }
    ));
    assert!(matches!(
        target_err(&devs, "0 10 linear a 91"),
        TargetError::TooSmall {
            start: 91,
            length: 10,
            size: 100,
            ..
        }
    ));
    assert!(matches!(
        target_err(&devs, "0 10 linear a 18446744073709551615"),
        TargetError::TooSmall { .. }
    ));
    let msg = load_err(&devs, "0 10 linear a 0\n10 10 linear a 95").to_string();
    assert!(
        msg.starts_with("vg-lv: table row 2 (linear at sector 10): device \"a\" is too small"),
        "{msg}"
    );
}

#[test]
fn zero_reads_zeroes_and_swallows_writes() {
    let devs = Devices::default();
    let dev = devs.activate("z", "0 64 zero");
    dev.write_at(&[7; 4096], 0).unwrap();
    assert_eq!(read(&dev, 0, 4096), vec![0; 4096]);
    dev.discard(0, 512).unwrap();
    dev.write_zeroes(100, 1000).unwrap();
    dev.flush().unwrap();
    assert_eq!(table_text(&dev), "0 64 zero\n");
    assert!(matches!(
        target_err(&devs, "0 64 zero 1"),
        TargetError::Extra(_)
    ));
}

#[test]
fn error_fails_io_naming_the_device_and_offset() {
    let devs = Devices::with(&[("a", 8)]);
    let dev = devs.activate("vg-lv", "0 8 linear a 0\n8 8 error ignored args");
    assert_eq!(table_text(&dev), "0 8 linear a 0\n8 8 error\n");
    read(&dev, 0, 4096);
    let mut buf = vec![0u8; 1024];
    let err = dev.read_at(&mut buf, 4096 - 512).unwrap_err();
    assert!(
        matches!(err, BlockError::Io { ref device, offset: 4096, len: 512, .. } if device == "vg-lv"),
        "{err}"
    );
    assert!(err.to_string().contains("error target"), "{err}");
    assert!(dev.write_at(&buf, 5000).is_err());
    assert!(dev.discard(4096, 4096).is_err());
    assert!(dev.write_zeroes(4096, 1).is_err());
    dev.flush().unwrap();
}

#[test]
fn striped_status_and_errors() {
    let devs = Devices::with(&[("a", 1000), ("b", 1000), ("c", 1000)]);
    let dev = devs.activate("s", "0 384 striped 3 64 a 0 b 8 c 16");
    assert_eq!(table_text(&dev), "0 384 striped 3 64 a 0 b 8 c 16\n");
    assert_eq!(dev.status(), "0 384 striped 3 a b c 1 AAA\n");

    let invalid = |t: &str| match target_err(&devs, t) {
        TargetError::Invalid(m) => m,
        e => panic!("{t}: {e}"),
    };
    assert!(invalid("0 384 striped 0 64").contains("stripe count"));
    assert!(invalid("0 384 striped 3 0 a 0 b 0 c 0").contains("chunk size"));
    assert!(invalid("0 384 striped 3 64 a 0 b 0").contains("need 6"));
    assert!(invalid("0 385 striped 3 64 a 0 b 0 c 0").contains("divide"));
    assert!(invalid("0 300 striped 3 64 a 0 b 0 c 0").contains("whole number"));
    assert!(invalid("0 6 striped 4294967295 1").contains("need 8589934590"));
    assert!(matches!(
        target_err(&devs, "0 384 striped 3 64 a 0 b 0 c 900"),
        TargetError::TooSmall { .. }
    ));
    assert!(matches!(
        target_err(&devs, "0 384 striped 4294967296 64"),
        TargetError::BadNumber {
            what: "#stripes",
            ..
        }
    ));
    // Any chunk size works, as in today's kernel.
    let odd = devs.activate("odd", "0 42 striped 2 7 a 0 b 0");
    let data = pattern(3, 42 * 512);
    odd.write_at(&data, 0).unwrap();
    assert_eq!(read(&odd, 0, data.len()), data);
    // Chunk 2 (sectors 7..14) is the second chunk on a.
    assert_eq!(
        &devs.get("a").contents()[7 * 512..14 * 512],
        &data[14 * 512..21 * 512]
    );
}

#[test]
fn striped_marks_a_failing_stripe_dead() {
    let devs = Devices::with(&[("a", 256), ("b", 256)]);
    let fault = Arc::new(FaultDevice::new(devs.get("b").clone(), PowerDomain::new()));
    fault.add_error_range(0, 512, ErrorOn::Read);
    let resolve = |n: &str| -> tessera_block::Result<SharedDevice> {
        match n {
            "b" => Ok(fault.clone()),
            _ => devs.resolve(n),
        }
    };
    let dev = MappedDevice::new("s", Arc::new(TargetRegistry::new()));
    dev.load(
        &Table::parse("0 256 striped 2 8 a 0 b 0").unwrap(),
        &resolve,
    )
    .unwrap();
    dev.resume().unwrap();
    read(&dev, 0, 4096); // chunk 0, on a
    let mut buf = vec![0u8; 512];
    assert!(dev.read_at(&mut buf, 4096).is_err()); // chunk 1, sector 0 of b
    assert_eq!(dev.status(), "0 256 striped 2 a b 1 AD\n");
}

#[test]
fn striped_discard_and_zeroes_reach_each_stripe_once() {
    let devs = Devices::with(&[("a", 64), ("b", 64)]);
    for name in ["a", "b"] {
        devs.get(name).write_at(&[0xEE; 64 * 512], 0).unwrap();
    }
    let dev = devs.activate("s", "0 128 striped 2 8 a 0 b 0");
    // Sectors 4..40: a gets 4..8, 16..24, 32..40 -> its sectors 4..16 and 16..24 (4..24);
    // b gets 8..16, 24..32 -> its sectors 0..16.
    dev.write_zeroes(4 * 512, 36 * 512).unwrap();
    let zeroed = |name: &str| -> Vec<bool> {
        devs.get(name)
            .contents()
            .chunks(512)
            .map(|s| s[0] == 0)
            .collect()
    };
    let a = zeroed("a");
    let b = zeroed("b");
    assert!(a[4..24].iter().all(|&z| z) && !a[3] && !a[24], "{a:?}");
    assert!(b[0..16].iter().all(|&z| z) && !b[16], "{b:?}");
    assert_eq!(read(&dev, 4 * 512, 36 * 512), vec![0; 36 * 512]);
    dev.discard(0, 128 * 512).unwrap();
    assert_eq!(read(&dev, 0, 128 * 512), vec![0; 128 * 512]);
}

#[test]
fn flakey_up_passes_everything() {
    let devs = Devices::with(&[("a", 64)]);
    let dev = devs.activate("f", "0 32 flakey a 8 1 0");
    assert_eq!(
        table_text(&dev),
        "0 32 flakey a 8 1 0 2 error_reads error_writes\n"
    );
    assert_eq!(dev.status(), "0 32 flakey\n");
    let data = pattern(5, 4096);
    dev.write_at(&data, 0).unwrap();
    assert_eq!(read(&dev, 0, 4096), data);
    assert_eq!(&devs.get("a").contents()[4096..8192], &data[..]);
    dev.flush().unwrap();
}

#[test]
fn flakey_down_without_features_fails_reads_and_writes() {
    let devs = Devices::with(&[("a", 64)]);
    let dev = devs.activate("f", "0 32 flakey a 0 0 1");
    let mut buf = vec![0u8; 512];
    let err = dev.read_at(&mut buf, 1024).unwrap_err();
    assert!(
        matches!(err, BlockError::Injected { ref device, offset: 1024 } if device == "f"),
        "{err}"
    );
    assert!(dev.write_at(&buf, 0).is_err());
    assert!(dev.discard(0, 512).is_err());
    assert!(dev.flush().is_err());
}

#[test]
fn flakey_drop_writes_loses_writes_quietly() {
    let devs = Devices::with(&[("a", 64)]);
    devs.get("a").write_at(&[9; 512], 0).unwrap();
    let dev = devs.activate("f", "0 32 flakey a 0 0 1 1 drop_writes");
    assert_eq!(table_text(&dev), "0 32 flakey a 0 0 1 1 drop_writes\n");
    dev.write_at(&[1; 1024], 0).unwrap();
    dev.write_zeroes(0, 512).unwrap();
    dev.flush().unwrap();
    assert_eq!(read(&dev, 0, 512), vec![9; 512], "reads still work");
    assert!(devs.get("a").contents()[512..].iter().all(|&x| x == 0));
}

#[test]
fn flakey_error_writes_and_error_reads_are_separate() {
    let devs = Devices::with(&[("a", 64)]);
    let dev = devs.activate("f", "0 32 flakey a 0 0 1 1 error_writes");
    assert!(matches!(
        dev.write_at(&[1; 512], 0),
        Err(BlockError::Injected { .. })
    ));
    read(&dev, 0, 512);

    let dev = devs.activate("f", "0 32 flakey a 0 0 1 1 ERROR_READS");
    assert_eq!(table_text(&dev), "0 32 flakey a 0 0 1 1 error_reads\n");
    dev.write_at(&[2; 512], 0).unwrap();
    assert_eq!(&devs.get("a").contents()[..512], &[2; 512]);
    let mut buf = [0u8; 512];
    assert!(dev.read_at(&mut buf, 0).is_err());
}

#[test]
fn flakey_corrupts_the_nth_byte_while_down() {
    let devs = Devices::with(&[("a", 64)]);
    devs.get("a").write_at(&[5; 1024], 0).unwrap();
    let dev = devs.activate("f", "0 32 flakey a 0 0 1 5 corrupt_bio_byte 3 r 255 0");
    assert_eq!(
        table_text(&dev),
        "0 32 flakey a 0 0 1 5 corrupt_bio_byte 3 r 255 0\n"
    );
    let got = read(&dev, 0, 1024);
    assert_eq!(got[2], 255);
    assert!(got.iter().enumerate().all(|(i, &b)| i == 2 || b == 5));
    assert_eq!(devs.get("a").contents()[2], 5, "the device is untouched");

    let dev = devs.activate(
        "f",
        "0 32 flakey a 0 0 1 6 error_reads corrupt_bio_byte 1 w 0 0",
    );
    dev.write_at(&[7; 512], 512).unwrap();
    let disk = devs.get("a").contents();
    assert_eq!(disk[512], 0);
    assert!(disk[513..1024].iter().all(|&b| b == 7));
}

#[test]
fn flakey_refuses_bad_features() {
    let devs = Devices::with(&[("a", 64)]);
    let cases = [
        ("0 32 flakey a 0 0 0", "both 0"),
        ("0 32 flakey a 0 4294967295 1", "overflows"),
        ("0 32 flakey a 0 1 1 12", "at most 11"),
        (
            "0 32 flakey a 0 1 1 2 drop_writes",
            "2 feature arguments announced, 1",
        ),
        ("0 32 flakey a 0 1 1 2 drop_writes drop_writes", "twice"),
        (
            "0 32 flakey a 0 1 1 2 drop_writes error_writes",
            "conflicts",
        ),
        (
            "0 32 flakey a 0 1 1 2 error_writes drop_writes",
            "conflicts",
        ),
        ("0 32 flakey a 0 1 1 1 sometimes", "unknown flakey feature"),
        (
            "0 32 flakey a 0 1 1 4 corrupt_bio_byte 1 r 0",
            "needs 4 parameters",
        ),
        ("0 32 flakey a 0 1 1 5 corrupt_bio_byte 0 r 0 0", "from 1"),
        (
            "0 32 flakey a 0 1 1 5 corrupt_bio_byte 1 x 0 0",
            "not r or w",
        ),
        (
            "0 32 flakey a 0 1 1 6 drop_writes corrupt_bio_byte 1 w 0 0",
            "exclude",
        ),
        (
            "0 32 flakey a 0 1 1 6 error_reads corrupt_bio_byte 1 r 0 0",
            "excludes",
        ),
    ];
    for (table, want) in cases {
        let msg = target_err(&devs, table).to_string();
        assert!(msg.contains(want), "{table}: {msg}");
    }
    assert!(matches!(
        target_err(&devs, "0 32 flakey a 0 1 1 5 corrupt_bio_byte 1 r 256 0"),
        TargetError::BadNumber { what: "value", .. }
    ));
    assert!(matches!(
        target_err(&devs, "0 32 flakey a 0 1 1 2 random_read_corrupt 5"),
        TargetError::Unsupported(_)
    ));
    assert!(matches!(
        target_err(&devs, "0 32 flakey a 0 1 1 1 drop_writes extra"),
        TargetError::Extra(_)
    ));
    assert!(matches!(
        target_err(&devs, "0 32 flakey a 0 1"),
        TargetError::Missing("down_interval")
    ));
}

#[test]
fn delay_routes_classes_and_prints_them() {
    let devs = Devices::with(&[("r", 64), ("w", 64), ("fl", 64)]);
    let three = devs.activate("d", "0 16 delay r 0 0");
    assert_eq!(table_text(&three), "0 16 delay r 0 0\n");
    assert_eq!(three.status(), "0 16 delay 0 0 0\n");
    let six = devs.activate("d", "0 16 delay r 0 0 w 8 0");
    assert_eq!(table_text(&six), "0 16 delay r 0 0 w 8 0\n");
    let nine = devs.activate("d", "0 16 delay r 0 0 w 8 0 fl 16 0");
    assert_eq!(table_text(&nine), "0 16 delay r 0 0 w 8 0 fl 16 0\n");

    devs.get("r").write_at(&[3; 512], 0).unwrap();
    nine.write_at(&[4; 512], 0).unwrap();
    nine.flush().unwrap();
    assert_eq!(read(&nine, 0, 512), vec![3; 512], "reads come from r");
    assert_eq!(&devs.get("w").contents()[8 * 512..9 * 512], &[4; 512]);
    nine.write_zeroes(0, 512).unwrap();
    assert!(devs.get("w").contents().iter().all(|&b| b == 0));

    for bad in [
        "0 16 delay r 0",
        "0 16 delay r 0 0 w",
        "0 16 delay r 0 0 w 0 0 fl 0 0 x",
    ] {
        assert!(
            target_err(&devs, bad).to_string().contains("3, 6 or 9"),
            "{bad}"
        );
    }
    assert!(matches!(
        target_err(&devs, "0 16 delay r 0 -1"),
        TargetError::BadNumber {
            what: "delay_ms",
            ..
        }
    ));
    assert!(matches!(
        target_err(&devs, "0 16 delay r 0 0 w 60 0"),
        TargetError::TooSmall { .. }
    ));
}

#[test]
fn delay_holds_requests_for_their_class_delay() {
    let devs = Devices::with(&[("a", 64)]);
    let dev = Arc::new(devs.activate("d", "0 16 delay a 0 150 a 0 0"));
    dev.write_at(&[1; 512], 0).unwrap(); // write delay 0
    let t = Instant::now();
    let reader = {
        let dev = dev.clone();
        std::thread::spawn(move || read(&*dev, 0, 512))
    };
    // While the read is held, status counts it.
    let mut seen = false;
    while !reader.is_finished() {
        seen |= dev.status() == "0 16 delay 1 0 0\n";
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(reader.join().unwrap(), vec![1; 512]);
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert!(seen, "status showed the held read");
    assert_eq!(dev.status(), "0 16 delay 0 0 0\n");
}
