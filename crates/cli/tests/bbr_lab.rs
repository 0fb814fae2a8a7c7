//! BBR LVs end to end, in one kernel-lab boot.
//!
//! tessera makes a VG with a BBR LV (`lv create --bbr`) and a plain one on an image file.
//! In the lab, lvm2 2.03 reads that VG: `vgck` passes, `lvs` lists the BBR LV as a linear LV
//! with its tag, a `vgcfgbackup`/`vgcfgrestore`/`vgcfgbackup` round trip keeps the tag, and
//! `vgchange -ay` activates the plain LV but skips the BBR one. Then the image goes behind a
//! device-mapper table with `error` rows on two ranges inside the BBR LV's data, and
//! `tessera serve` serves it: nbdcopy writes the whole export and reads it back whole, fio
//! (nbd engine, crc32c verify) writes and verifies it, `lv list` counts the relocated
//! sectors, and after a restart of `tessera serve` the export reads the same. Afterwards
//! the failing ranges of the image still hold their old bytes (the writes really went to
//! the pool), and lvm2's `vgck` and `vgcfgbackup` still pass with the tag.
//! Fails, never skips, without the lab, lvm2, nbdcopy, fio or dmsetup.

mod common;

use common::{lab_line, lab_script, random, tessera};

/// Sectors of the BBR LV's data that fail writes in the lab: (start, sectors).
const FAULTS: [(u64, u64); 2] = [(2048, 16), (20001, 3)];

#[test]
fn a_bbr_lv_relocates_under_nbd_clients_and_lvm2_carries_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let pv = common::image_files(d, "pv", 1, 64 << 20).remove(0);
    tessera(&pv, &state, &["vg", "create", "vgb", &pv]);
    let made = tessera(
        &pv,
        &state,
        &["lv", "create", "--bbr", "-L", "16M", "vgb/safe"],
    );
    assert!(made.contains("248 replacement sectors"), "{made}");
    tessera(&pv, &state, &["lv", "create", "-L", "8M", "vgb/plain"]);

    // `lv table`: the raw extents, then the bbr row over them.
    let table = tessera(&pv, &state, &["lv", "table", "vgb/safe"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(
        (rows[0][0], rows[0][3]),
        ("vgb-safe-bbr:", "linear"),
        "{table}"
    );
    assert_eq!(
        (rows[1][0], rows[1][3], rows[1][4]),
        ("vgb-safe:", "bbr", "vgb-safe-bbr"),
        "{table}"
    );
    let pv_offset: u64 = rows[0][5].parse().unwrap();
    let data_sectors: u64 = rows[1][2].parse().unwrap();
    assert_eq!(data_sectors, 32504, "{table}");
    let before = tessera(
        &pv,
        &state,
        &[
            "lv",
            "list",
            "-o",
            "lv_name,bbr_relocated,bbr_pool,bbr_state",
            "--noheadings",
            "vgb",
        ],
    );
    let before = before.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(before.contains("safe 0 0/248 ok"), "{before}");

    let data = random((data_sectors * 512) as usize, 7);
    std::fs::write(d.join("data.bin"), &data).unwrap();
    let mut fault_rows = Vec::new();
    let mut at = 0u64;
    for (s, n) in FAULTS {
        let s = pv_offset + s;
        fault_rows.push(format!("{at} {} linear $L {at}", s - at));
        fault_rows.push(format!("{s} {n} error"));
        at = s + n;
    }
    fault_rows.push(format!("{at} $(( sz - {at} )) linear $L {at}"));
    let faulty = fault_rows.join("\\n");
    // A copy of the binary: builds on the host must not change it under the running lab.
    let tessera_bin = d.join("tessera");
    std::fs::copy(common::tessera_path(), &tessera_bin).unwrap();
    let tessera_bin = tessera_bin.display().to_string();
    let script = format!(
        r#"set -u
cd {dir}
mkdir -p /tmp/lvmconf
cat > /tmp/lvmconf/lvm.conf <<'C'
devices {{ obtain_device_list_from_udev = 0 external_device_info_source = "none" }}
activation {{ udev_sync = 0 udev_rules = 0 monitoring = 0 }}
global {{ use_lvmpolld = 0 }}
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
L=$(losetup -f --show pv-0.img)
vgck vgb && echo "VGCK1 ok"
echo "LVS1 $(lvs --noheadings -o lv_name,segtype,lv_attr,lv_tags vgb | tr -s ' ' | tr '\n' ';')"
vgcfgbackup -f /tmp/b1.vg vgb >/dev/null && vgcfgrestore -f /tmp/b1.vg vgb >/dev/null && echo "RESTORE ok"
vgcfgbackup -f back1.vg vgb >/dev/null && echo "BACKUP1 ok"
vgchange -ay vgb >/dev/null 2>&1; echo "ACTIVE $(dmsetup ls | cut -f1 | sort | tr '\n' ' ')"
vgchange -an vgb >/dev/null 2>&1
losetup -d $L

# tessera serves the BBR LV over a disk whose writes fail on two ranges.
ip link set lo up
L=$(losetup -f --show pv-0.img); sz=$(blockdev --getsz $L)
printf "{faulty}\n" | dmsetup create pvbad
dmsetup mknodes
serve() {{
  {tessera_bin} --devices /dev/mapper/pvbad --state-dir /tmp/state-lab serve --listen 127.0.0.1:10809 >serve$1.out 2>serve$1.err &
  pid=$!
  for t in $(seq 600); do grep -q nbd:// serve$1.out && break; sleep 0.2; done
}}
uri=nbd://127.0.0.1:10809/vgb/safe
serve 1
timeout 300 nbdcopy data.bin $uri; echo "COPYIN $?"
timeout 300 nbdcopy $uri out1.bin; echo "COPYOUT $?"
list=$({tessera_bin} --devices /dev/mapper/pvbad --state-dir /tmp/state-lab lv list -o lv_name,bbr_relocated,bbr_pool,bbr_state --noheadings vgb 2>&1); rc=$?
echo "LIST1 rc=$rc $(echo "$list" | tr -s ' ' | tr '\n' ';')"
timeout 400 fio --output-format=terse --ioengine=nbd --uri=$uri --name=bbr --rw=randwrite --bsrange=4k-64k \
  --iodepth=8 --size=$(( {data_sectors} * 512 / 65536 * 65536 )) --verify=crc32c --verify_fatal=1 \
  --verify_state_save=0 >fio.out 2>&1
echo "FIO $?"
echo "FIOERR $(grep '^3;' fio.out | cut -d';' -f5 | head -1)"
timeout 300 nbdcopy $uri out2.bin; echo "COPYOUT2 $?"
kill -TERM $pid; wait $pid; echo "SERVE1 $?"
serve 2
timeout 300 nbdcopy $uri out3.bin; echo "COPYOUT3 $?"
kill -TERM $pid; wait $pid; echo "SERVE2 $?"
echo "LIST2 $({tessera_bin} --devices /dev/mapper/pvbad --state-dir /tmp/state-lab lv list -o lv_name,bbr_relocated,bbr_pool,bbr_state --noheadings vgb 2>&1 | tr -s ' ' | tr '\n' ';')"
dmsetup remove pvbad
losetup -d $L

L=$(losetup -f --show pv-0.img)
vgck vgb && echo "VGCK2 ok"
vgcfgbackup -f back2.vg vgb >/dev/null && echo "BACKUP2 ok"
losetup -d $L
echo LAB-DONE
"#,
        dir = d.display(),
    );
    let started = std::time::Instant::now();
    let out = lab_script(d, &script, 900);
    eprintln!("lab: {:.0} s\n{out}", started.elapsed().as_secs_f64());
    assert!(out.contains("LAB-DONE"), "the lab did not finish:\n{out}");
    let err = |n: u32| std::fs::read_to_string(d.join(format!("serve{n}.err"))).unwrap_or_default();

    // lvm2 reads tessera's VG and keeps the BBR LV as it is.
    assert_eq!(lab_line(&out, "VGCK1"), "ok", "{out}");
    let lvs = lab_line(&out, "LVS1 ");
    let tag = "tessera_bbr:v1:data=32504:table=8:pool=248";
    assert!(
        lvs.contains(&format!(" safe linear -wi------k {tag};")),
        "{lvs}"
    );
    assert!(lvs.contains("plain linear -wi------- ;"), "{lvs}");
    assert_eq!(lab_line(&out, "RESTORE"), "ok", "{out}");
    for backup in ["back1.vg", "back2.vg"] {
        let text = std::fs::read_to_string(d.join(backup)).unwrap();
        assert!(
            text.contains(&format!("tags = [\"{tag}\"]")),
            "{backup}: {text}"
        );
        assert!(text.contains("\"ACTIVATION_SKIP\""), "{backup}: {text}");
    }
    let active = lab_line(&out, "ACTIVE");
    assert!(
        active.contains("vgb-plain") && !active.contains("vgb-safe"),
        "vgchange -ay: {active}"
    );

    // Through tessera serve: whole data in, whole data out, over failing ranges.
    for step in [
        "COPYIN", "COPYOUT", "FIO", "COPYOUT2", "SERVE1", "COPYOUT3", "SERVE2",
    ] {
        assert_eq!(
            lab_line(&out, &format!("{step} ")),
            "0",
            "{step}\n{out}\n{}\n{}",
            err(1),
            err(2)
        );
    }
    assert_eq!(lab_line(&out, "FIOERR"), "0", "fio's error count");
    let out1 = std::fs::read(d.join("out1.bin")).unwrap();
    assert!(out1 == data, "nbdcopy read back other bytes than it wrote");
    // Writes reach the disk through the kernel's page cache, whose writeback fails a whole
    // 4 KiB block of the PV where any of its sectors is bad: every sector of such a block
    // is relocated.
    let relocated: u64 = FAULTS
        .iter()
        .map(|(s, n)| {
            let (first, end) = (pv_offset + s, pv_offset + s + n);
            (end.div_ceil(8) - first / 8) * 8
        })
        .sum();
    assert_eq!(relocated, 24);
    let list1 = lab_line(&out, "LIST1");
    assert!(
        list1.contains(&format!("safe {relocated} {relocated}/248 ok;")),
        "{list1}"
    );
    let list2 = lab_line(&out, "LIST2");
    assert!(
        list2.contains(&format!("safe {relocated} {relocated}/248 ok;")),
        "{list2}"
    );
    let out2 = std::fs::read(d.join("out2.bin")).unwrap();
    let out3 = std::fs::read(d.join("out3.bin")).unwrap();
    assert_eq!(out2.len(), data.len());
    assert!(out2 == out3, "the export read other bytes after a restart");
    assert!(out2 != data, "fio wrote nothing");

    // The failing sectors of the image never took a write: still zero, as made.
    use std::os::unix::fs::FileExt;
    let img = std::fs::File::open(&pv).unwrap();
    for (s, n) in FAULTS {
        let mut buf = vec![0xFFu8; (n * 512) as usize];
        img.read_exact_at(&mut buf, (pv_offset + s) * 512).unwrap();
        assert!(
            buf.iter().all(|&b| b == 0),
            "sectors {s}+{n} were written in place"
        );
        let want = &out3[(s * 512) as usize..((s + n) * 512) as usize];
        assert!(want.iter().any(|&b| b != 0), "no data to tell apart at {s}");
    }
    assert_eq!(lab_line(&out, "VGCK2"), "ok", "{out}");
    assert_eq!(lab_line(&out, "BACKUP2"), "ok", "{out}");
    // And on the host without faults, tessera still reads the table.
    let after = tessera(
        &pv,
        &state,
        &[
            "lv",
            "list",
            "-o",
            "lv_name,bbr_relocated",
            "--noheadings",
            "vgb",
        ],
    );
    let words: Vec<&str> = after.split_whitespace().collect();
    assert!(
        words
            .windows(2)
            .any(|w| w == ["safe", &relocated.to_string()]),
        "{after}"
    );
}
