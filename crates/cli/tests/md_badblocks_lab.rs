//! md's bad-block log with the real kernel, in one kernel-lab boot.
//!
//! The kernel writes logs: raid5 (1.0 superblocks, the log before the superblock at the
//! end) and raid1 (1.2) made by mdadm, one member behind a device-mapper table that turns
//! write errors on for two ranges while data is written through md, so that md records
//! real write errors. On the host tessera's `md examine --badblocks` prints what the real
//! `mdadm --examine-badblocks` prints; the listed ranges of the member image are then
//! overwritten with garbage and `tessera serve` gives exactly the bytes the kernel's array
//! gave: the listed ranges are read from redundancy.
//!
//! Fails, never skips, without the lab, mdadm or dmsetup.

mod common;

use std::process::Command;

use common::{lab_line, lab_script, run_ok};

/// Member sectors (of member 1) that fail writes in the lab: (start, sectors).
const FAULTS: [(u64, u64); 2] = [(4096, 24), (12003, 5)];

/// A dmsetup table over `dev` of `$sz` sectors: linear, with error rows on `faults`.
fn faulty_table(dev: &str, faults: &[(u64, u64)]) -> String {
    let mut rows = Vec::new();
    let mut at = 0u64;
    for (s, n) in faults {
        rows.push(format!("{at} {} linear {dev} {at}", s - at));
        rows.push(format!("{s} {n} error"));
        at = s + n;
    }
    rows.push(format!("{at} $(( sz - {at} )) linear {dev} {at}"));
    rows.join("\\n")
}

fn examine_badblocks(path: &str) -> (String, String) {
    let mdadm = run_ok(Command::new("mdadm").args(["--examine-badblocks", path]));
    let tessera = run_ok(Command::new(common::tessera_path()).args([
        "--devices",
        path,
        "md",
        "examine",
        "--badblocks",
        path,
    ]));
    (mdadm, tessera)
}

/// The (start, sectors) entries of `mdadm --examine-badblocks` output.
fn entries(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let (s, rest) = l.trim().split_once(" for ")?;
            Some((
                s.parse().ok()?,
                rest.strip_suffix(" sectors")?.parse().ok()?,
            ))
        })
        .collect()
}

/// The lab's lines that start with `prefix`, the prefix taken off.
fn lab_lines(out: &str, prefix: &str) -> String {
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn the_kernels_logs_read_as_mdadm_reads_them_and_their_ranges_come_from_redundancy() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();

    let kernel_fault = faulty_table("$dev", &FAULTS);
    let script = format!(
        r#"set -e
cd {dir}
ip link set lo up
# The kernel records write errors: member 1 behind a table that fails writes on two ranges.
for n in k5 k1; do
  case $n in k5) e=1.0; l="5 -c 64"; c=3;; k1) e=1.2; l=1; c=2;; esac
  L=()
  for ((i = 0; i < c; i++)); do truncate -s 8M $n-$i.img; L[$i]=$(losetup -f --show $n-$i.img); done
  dev=${{L[1]}}; sz=$(blockdev --getsz $dev)
  dmsetup create --noudevsync ${{n}}bad --table "0 $sz linear $dev 0"
  dmsetup mknodes
  devs=(${{L[0]}} /dev/mapper/${{n}}bad ${{L[@]:2}})
  mdadm --create /dev/md/$n -e $e -l $l -n $c --run --assume-clean --homehost=lab --name=$n "${{devs[@]}}" >/dev/null 2>&1
  size=$(blockdev --getsize64 /dev/md/$n)
  head -c $size /dev/urandom | dd of=/dev/md/$n bs=64k oflag=direct status=none
  printf "{kernel_fault}\n" | dmsetup reload --noudevsync ${{n}}bad
  dmsetup suspend --noudevsync ${{n}}bad; dmsetup resume --noudevsync ${{n}}bad
  head -c $size /dev/urandom | dd of=/dev/md/$n bs=64k oflag=direct status=none
  sync
  md=$(basename $(readlink -f /dev/md/$n))
  echo "KSTATE $n $(cat /sys/block/$md/md/dev-dm-*/state) $(cat /sys/block/$md/md/degraded)"
  echo "KSUM $n $(sha256sum < /dev/md/$n | cut -d' ' -f1) $(blockdev --getsize64 /dev/md/$n)"
  mdadm --stop /dev/md/$n >/dev/null
  dmsetup remove --noudevsync ${{n}}bad
  for ((i = 0; i < c; i++)); do losetup -d ${{L[$i]}}; done
  mdadm --examine-badblocks $n-1.img | sed "s/^/KBB $n /"
done
echo LAB-DONE
"#,
        dir = d.display(),
    );
    let started = std::time::Instant::now();
    let out = lab_script(d, &script, 900);
    eprintln!("lab: {:.0} s\n{out}", started.elapsed().as_secs_f64());
    assert!(
        out.contains("LAB-DONE"),
        "the lab did not finish:\n{out}\n{}",
        std::fs::read_to_string(d.join("serve.err")).unwrap_or_default()
    );

    // The kernel's logs: the same text from mdadm in the lab, on the host, and tessera;
    // the member kept; the listed ranges read from redundancy.
    for n in ["k5", "k1"] {
        let member = d.join(format!("{n}-1.img")).display().to_string();
        let state = lab_line(&out, &format!("KSTATE {n} "));
        assert!(
            !state.contains("faulty"),
            "{n}: the kernel failed the member: {state}"
        );
        let (mdadm, tessera_text) = examine_badblocks(&member);
        let in_lab = lab_lines(&out, &format!("KBB {n} "));
        assert_eq!(
            mdadm.replace(&member, &format!("{n}-1.img")),
            in_lab,
            "{n}: mdadm on the host and in the lab"
        );
        assert_eq!(tessera_text, mdadm, "{n}: tessera md examine --badblocks");
        let listed = entries(&mdadm);
        // md records each failed write in units it chooses (a stripe page for raid5, the
        // failed sectors for raid1): every fault range is covered, nothing else.
        for (s, len) in FAULTS {
            assert!(
                (s..s + len).all(|x| listed.iter().any(|(a, l)| (*a..a + l).contains(&x))),
                "{n}: sectors {s}+{len} not listed: {mdadm}"
            );
        }
        for (a, l) in &listed {
            assert!(
                FAULTS
                    .iter()
                    .any(|(s, len)| *a < s + len + 8 && a + l + 8 > *s),
                "{n}: {a}+{l} listed but never failed: {mdadm}"
            );
        }
        eprintln!("{n}: mdadm --examine-badblocks:\n{mdadm}");

        // Garbage over the listed ranges of the member: tessera must not read them.
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&member)
                .unwrap();
            for (a, l) in &listed {
                f.write_all_at(&vec![0xa5; (*l as usize) * 512], a * 512)
                    .unwrap();
            }
        }
        let (sum, size) = lab_line(&out, &format!("KSUM {n} "))
            .split_once(' ')
            .unwrap();
        let images: Vec<String> = (0..if n == "k5" { 3 } else { 2 })
            .map(|i| d.join(format!("{n}-{i}.img")).display().to_string())
            .collect();
        let state = d.join(format!("state-{n}"));
        let server = common::serve(&images.join(","), &state, &["--read-only"]);
        let bytes = common::read_export(&server.addr, &format!("md/{n}"), d);
        server.stop();
        assert_eq!(bytes.len().to_string(), size, "{n}: export size");
        assert_eq!(
            common::sha(&bytes),
            sum,
            "{n}: the array's bytes as the kernel gave them"
        );
    }
}
