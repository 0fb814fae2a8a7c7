//! IMSM containers activated in the kernel's md by tessera through md's external-metadata
//! interface, with tessera's monitor keeping the records as mdmon does; all in one kernel
//! lab boot, against the real mdadm:
//! - mdadm makes a container with a raid5 and a raid0 volume and fills them; stopped, then
//!   assembled by mdadm itself (its `--detail`, /proc/mdstat and md's sysfs attributes
//!   recorded) and stopped again;
//! - `tessera activate` of the same disks gives the same `--detail` fields, mdstat lines
//!   and attributes, and the same bytes;
//! - written through /dev/md/vol5 with tessera's monitor answering md: the writes finish,
//!   the volume goes clean once idle, and after `tessera deactivate` `mdadm --examine`
//!   shows it clean;
//! - `mdadm --fail` of a member while tessera runs it: the monitor records the failure,
//!   the volume keeps taking writes degraded; after stopping, `mdadm --examine` shows the
//!   disk failed and the volume degraded, and mdadm assembles the raid5 degraded with the
//!   bytes tessera's kernel array held;
//! - a DDF container (raid5 and raid1) made and assembled by mdadm, then activated by
//!   tessera: the same geometry and bytes, run writable (`external:/`) with tessera's
//!   monitor keeping DDF's records.

mod common;

use std::collections::BTreeMap;

/// The lab script. `T` is tessera. `show NAME` prints mdadm's `--detail` fields worth
/// comparing, the volume's /proc/mdstat line and md's attributes, each line prefixed
/// `WHO|NAME|KIND|`, the md device numbers (md126, md125...) written `mdN`: mdadm and
/// tessera number them each their own way.
const SCRIPT: &str = r#"
export IMSM_NO_PLATFORM=1 IMSM_DEVNAME_AS_SERIAL=1
T=__TESSERA__
mkdir -p /run/mdadm
for i in 0 1 2 3; do
  truncate -s 32M d$i.img
  [ -e /dev/loop$i ] || mknod /dev/loop$i b 7 $i
  losetup /dev/loop$i d$i.img || exit 1
done
DEVS=/dev/loop0,/dev/loop1,/dev/loop2,/dev/loop3
vol() { ls -d /dev/md/$1 /dev/md/$1_* 2>/dev/null | head -1; }
show() {
  local who=$1 v=$2 dev md
  dev=$(vol $v); md=$(basename $(readlink -f $dev))
  mdadm --detail $dev | grep -E "Container|Raid Level|Array Size|Used Dev Size|Raid Devices|Total Devices|State :|Active Devices|Failed Devices|Layout|Chunk Size|Consistency" | sed "s/^ */$who|$v|detail|/"
  mdadm --detail $dev | grep -E "active sync|removed|faulty" | awk -v p="$who|$v|member|" '{print p $2":"$3":"$4":"$5" "$6" "$7}'
  grep -A1 "^$md :" /proc/mdstat | sed -E "s/^$md : //; s/^ *//; s/md[0-9]+/mdN/g" | tr '\n' ' ' | sed "s/^/$who|$v|mdstat|/"; echo
  for a in metadata_version level raid_disks chunk_size layout component_size array_size resync_start safe_mode_delay; do
    echo "$who|$v|sysfs|$a=$(sed -E 's/md[0-9]+/mdN/g' /sys/block/$md/md/$a)"
  done
  for m in /sys/block/$md/md/dev-*; do
    echo "$who|$v|sysfs|$(basename $m) slot=$(cat $m/slot) offset=$(cat $m/offset) size=$(cat $m/size)"
  done
  echo "$who|$v|sum|$(sha256sum < $dev | cut -d' ' -f1)"
}
examine() { mdadm -E /dev/loop0 | grep -E "^\[|Dirty State|Map State|Slots|Failed disk|Serial|State :" | sed "s/^ */$1|examine|/"; }

mdadm --create /dev/md/imsm0 -e imsm -n 4 --run /dev/loop0 /dev/loop1 /dev/loop2 /dev/loop3 || exit 1
mdadm --create /dev/md/vol5 -l 5 -n 4 --size=8M --chunk=64 --run /dev/md/imsm0 || exit 1
mdadm --create /dev/md/vol0 -l 0 -n 4 --chunk=32 --run /dev/md/imsm0 || exit 1
mdadm --wait /dev/md/vol5
for v in vol5 vol0; do
  dd if=/dev/urandom of=/dev/md/$v bs=64k oflag=direct status=none
  echo "made|$v|sum|$(sha256sum < /dev/md/$v | cut -d' ' -f1)"
done
mdadm --stop /dev/md/vol5 /dev/md/vol0 && mdadm --stop /dev/md/imsm0 || exit 1
# No udev here: the links of stopped arrays stay behind.
rm -f /dev/md/*

echo "== mdadm assembles them"
mdadm --assemble /dev/md/imsm0 /dev/loop0 /dev/loop1 /dev/loop2 /dev/loop3 || exit 1
mdadm -I /dev/md/imsm0
sleep 1
cat /proc/mdstat
for v in vol5 vol0; do show mdadm $v; done
mdadm --stop $(vol vol5) $(vol vol0) && mdadm --stop /dev/md/imsm0 || exit 1
sleep 1
rm -f /dev/md/*

echo "== tessera activates them"
s=$(date +%s%N)
$T --devices $DEVS activate md/vol5 md/vol0 || exit 1
echo "timing|activate|$(( ($(date +%s%N) - s) / 1000000 )) ms"
cat /proc/mdstat
ls -l /dev/md
for v in vol5 vol0; do show tessera $v; done
$T --devices $DEVS md list

echo "== written through md with tessera's monitor"
dd if=/dev/urandom of=w1 bs=64k count=32 status=none
timeout 60 dd if=w1 of=/dev/md/vol5 bs=64k seek=8 oflag=direct status=none; echo "write|first|$?"
echo "write|state-after|$(cat /sys/block/$(basename $(readlink -f /dev/md/vol5))/md/array_state)"
examine written
for i in $(seq 1 40); do
  [ "$(cat /sys/block/$(basename $(readlink -f /dev/md/vol5))/md/array_state)" = clean ] && break
  sleep 0.5
done
echo "write|state-idle|$(cat /sys/block/$(basename $(readlink -f /dev/md/vol5))/md/array_state)"
examine idle
echo "write|readback|$(dd if=/dev/md/vol5 bs=64k skip=8 count=32 iflag=direct status=none | cmp - w1 && echo same)"
$T --devices $DEVS deactivate md/vol5 md/vol0 || exit 1
cat /proc/mdstat
examine stopped
cat /run/tessera/*.log | sed 's/^/monitor1|/' 
sleep 2
ps -e -o comm= | grep -c '^tessera' | sed 's/^/left|monitors|/'

echo "== a member fails while tessera runs them"
$T --devices $DEVS activate md/vol5 md/vol0 || exit 1
mdadm /dev/md/vol5 --fail /dev/loop2
sleep 3
cat /proc/mdstat
echo "fail|state|$(cat /sys/block/$(basename $(readlink -f /dev/md/vol5))/md/array_state)"
echo "fail|members|$(ls -d /sys/block/$(basename $(readlink -f /dev/md/vol5))/md/dev-* | xargs -n1 basename | tr '\n' ' ')"
timeout 60 dd if=w1 of=/dev/md/vol5 bs=64k seek=100 oflag=direct status=none; echo "fail|write|$?"
echo "fail|sum|$(sha256sum < /dev/md/vol5 | cut -d' ' -f1)"
examine failed-running
$T --devices $DEVS deactivate md/imsm0 || exit 1
cat /run/tessera/*.log | sed 's/^/monitor|/'
examine failed
mdadm --assemble /dev/md/imsm0 /dev/loop0 /dev/loop1 /dev/loop2 /dev/loop3
mdadm -I /dev/md/imsm0
sleep 1
cat /proc/mdstat
show degraded vol5
mdadm --stop $(vol vol5) $(vol vol0); mdadm --stop /dev/md/imsm0
sleep 1
rm -f /dev/md/*

echo "== DDF: mdadm makes a container, assembles it, then tessera does"
for i in 4 5 6 7; do
  truncate -s 48M d$i.img
  [ -e /dev/loop$i ] || mknod /dev/loop$i b 7 $i
  losetup /dev/loop$i d$i.img || echo "ddf|step-failed|$LINENO"
done
DDEVS=/dev/loop4,/dev/loop5,/dev/loop6,/dev/loop7
mdadm --create /dev/md/ddf0 -e ddf -n 4 --run /dev/loop4 /dev/loop5 /dev/loop6 /dev/loop7 || echo "ddf|step-failed|$LINENO"
mdadm --create /dev/md/dvol5 -l 5 -n 4 --size=4M --chunk=64 --assume-clean --run /dev/md/ddf0 || echo "ddf|step-failed|$LINENO"
mdadm --create /dev/md/dvol1 -l 1 -n 2 --size=3M --assume-clean --run /dev/md/ddf0 || echo "ddf|step-failed|$LINENO"
for v in dvol5 dvol1; do
  dd if=/dev/urandom of=/dev/md/$v bs=64k oflag=direct status=none
  echo "made|$v|sum|$(sha256sum < /dev/md/$v | cut -d' ' -f1)"
done
mdadm --stop /dev/md/dvol5 /dev/md/dvol1 && mdadm --stop /dev/md/ddf0 || echo "ddf|step-failed|$LINENO"
rm -f /dev/md/*
mdadm --assemble /dev/md/ddf0 /dev/loop4 /dev/loop5 /dev/loop6 /dev/loop7 || echo "ddf|step-failed|$LINENO"
mdadm -I /dev/md/ddf0
sleep 1
cat /proc/mdstat
for v in dvol5 dvol1; do show mdadm $v; done
mdadm --stop $(vol dvol5) $(vol dvol1) && mdadm --stop /dev/md/ddf0 || echo "ddf|step-failed|$LINENO"
sleep 1
rm -f /dev/md/*
$T --devices $DDEVS activate md/dvol5 md/dvol1 || echo "ddf|step-failed|$LINENO"
cat /proc/mdstat
for v in dvol5 dvol1; do show tessera $v; done
timeout 20 dd if=/dev/zero of=/dev/md/dvol5 bs=4k count=1 oflag=direct status=none; echo "ddf|write|$?"
$T --devices $DDEVS deactivate md/ddf0 || echo "ddf|step-failed|$LINENO"
cat /proc/mdstat
echo lab-done
"#;

/// An mdstat line with its members as a sorted list of names: md numbers members in the
/// order they were added (`loop2[0]`), which is no part of the array.
fn mdstat_normalized(line: &str) -> String {
    let mut members = Vec::new();
    let mut rest = Vec::new();
    for token in line.split_whitespace() {
        match token.split_once('[') {
            Some((name, n)) if name.starts_with("loop") && n.ends_with(']') => {
                members.push(name.to_string())
            }
            _ => rest.push(token.to_string()),
        }
    }
    members.sort();
    format!("{} members {}", rest.join(" "), members.join(","))
}

/// The `WHO|VOLUME|KIND|text` lines of the lab's output, by (who, volume, kind).
fn fields(out: &str) -> BTreeMap<(String, String, String), Vec<String>> {
    let mut map: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for l in out.lines() {
        let parts: Vec<&str> = l.splitn(4, '|').collect();
        if let [who, v, kind, text] = parts[..] {
            let text = if kind == "mdstat" {
                mdstat_normalized(text)
            } else {
                text.trim().to_string()
            };
            map.entry((who.into(), v.into(), kind.into()))
                .or_default()
                .push(text);
        }
    }
    map
}

fn get<'a>(
    f: &'a BTreeMap<(String, String, String), Vec<String>>,
    who: &str,
    v: &str,
    kind: &str,
    out: &str,
) -> &'a Vec<String> {
    f.get(&(who.into(), v.into(), kind.into()))
        .unwrap_or_else(|| panic!("no {who}|{v}|{kind} lines in the lab's output:\n{out}"))
}

#[test]
fn imsm_volumes_run_in_the_kernel_with_tessera_as_monitor() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    // A copy: the build may replace the binary while the lab runs it.
    let tessera = d.join("tessera");
    std::fs::copy(common::tessera_path(), &tessera).unwrap();
    let script = SCRIPT.replace("__TESSERA__", &tessera.display().to_string());
    let started = std::time::Instant::now();
    let out = common::lab_script(d, &script, 1500);
    eprintln!("the lab took {:?}:\n{out}", started.elapsed());
    assert!(out.contains("lab-done"), "the lab did not finish:\n{out}");
    let f = fields(&out);

    for v in ["vol5", "vol0"] {
        // tessera's assembly is mdadm's, field by field.
        for kind in ["detail", "member", "mdstat", "sysfs"] {
            let theirs = get(&f, "mdadm", v, kind, &out);
            let ours = get(&f, "tessera", v, kind, &out);
            let theirs: Vec<String> = theirs
                .iter()
                .filter(|l| !l.starts_with("dev-") || kind != "sysfs")
                .cloned()
                .collect();
            assert!(!theirs.is_empty(), "{v} {kind}: nothing from mdadm:\n{out}");
            assert_eq!(
                ours.iter()
                    .filter(|l| !l.starts_with("dev-") || kind != "sysfs")
                    .cloned()
                    .collect::<Vec<_>>(),
                theirs,
                "{v}: {kind} differs from mdadm's own assembly"
            );
        }
        // Members: the same slot, offset and size on each disk.
        let members = |who| {
            let mut m: Vec<String> = get(&f, who, v, "sysfs", &out)
                .iter()
                .filter(|l| l.starts_with("dev-"))
                .cloned()
                .collect();
            m.sort();
            m
        };
        assert_eq!(members("tessera"), members("mdadm"), "{v}: members differ");
        assert_eq!(members("tessera").len(), 4, "{v}");
        // The bytes mdadm wrote, through both assemblies.
        let made = &get(&f, "made", v, "sum", &out)[0];
        assert_eq!(&get(&f, "mdadm", v, "sum", &out)[0], made, "{v}");
        assert_eq!(&get(&f, "tessera", v, "sum", &out)[0], made, "{v}");
    }
    let detail = get(&f, "tessera", "vol5", "detail", &out);
    assert!(
        detail.iter().any(|l| l == "Raid Level : raid5"),
        "{detail:?}"
    );
    assert!(
        detail
            .iter()
            .any(|l| l == "Container : /dev/md/imsm0, member 0"),
        "{detail:?}"
    );

    // Writes go through: the monitor answered md's write-pending.
    assert_eq!(common::lab_line(&out, "write|first|"), "0", "{out}");
    assert_eq!(common::lab_line(&out, "write|readback|"), "same", "{out}");
    assert_eq!(
        common::lab_line(&out, "write|state-idle|"),
        "clean",
        "{out}"
    );
    let examined = |tag: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix(&format!("{tag}|examine|")))
            .map(|l| l.trim().to_string())
            .collect()
    };
    // While written, the volume was recorded dirty (seen by mdadm unless it went idle
    // before mdadm looked, on a slow machine: then the monitor's log tells); once idle
    // and after the stop, clean.
    let vol5_dev = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("md/vol5: IMSM raid5 active as /dev/"))
        .and_then(|l| l.split_whitespace().next())
        .expect("vol5 activated");
    let log: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("monitor1|"))
        .collect();
    let dirty_at = log
        .iter()
        .position(|l| *l == format!("{vol5_dev}: recorded dirty"))
        .unwrap_or_else(|| panic!("vol5 ({vol5_dev}) never recorded dirty: {log:?}"));
    assert!(
        log[dirty_at..]
            .iter()
            .any(|l| *l == format!("{vol5_dev}: recorded clean")),
        "{log:?}"
    );
    let written = examined("written");
    let vol5_dirty = |lines: &[String]| -> String {
        let at = lines
            .iter()
            .position(|l| l == "[vol5]:")
            .expect("vol5 examined");
        lines[at..]
            .iter()
            .find_map(|l| l.strip_prefix("Dirty State : "))
            .unwrap()
            .to_string()
    };
    eprintln!("vol5 while written: {}", vol5_dirty(&written));
    assert_eq!(vol5_dirty(&examined("idle")), "clean", "{out}");
    let stopped = examined("stopped");
    assert!(
        stopped
            .iter()
            .filter(|l| l.starts_with("Dirty State"))
            .all(|l| l == "Dirty State : clean"),
        "{stopped:?}"
    );
    assert_eq!(common::lab_line(&out, "left|monitors|"), "0", "{out}");

    // A member failed in md: recorded, unblocked, removed, and the volume writable.
    let members = common::lab_line(&out, "fail|members|");
    assert!(!members.contains("dev-loop2"), "{out}");
    assert_eq!(common::lab_line(&out, "fail|write|"), "0", "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("monitor|") && l.contains("dev-loop2 failed")),
        "{out}"
    );
    let failed = examined("failed");
    assert!(
        failed.iter().any(|l| l.ends_with("Serial : /dev/loop2:0")),
        "{failed:?}"
    );
    assert!(
        failed.contains(&"State : active failed".to_string()),
        "{failed:?}"
    );
    let at = failed.iter().position(|l| l == "[vol5]:").unwrap();
    assert!(
        failed[at..].contains(&"Map State : degraded".to_string()),
        "{failed:?}"
    );
    assert!(
        failed[at..].contains(&"Dirty State : clean".to_string()),
        "{failed:?}"
    );
    // mdadm assembles the rest: raid5 degraded, the bytes tessera's array held.
    let degraded = get(&f, "degraded", "vol5", "detail", &out);
    assert!(
        degraded.iter().any(|l| l == "State : clean, degraded"),
        "{degraded:?}"
    );
    assert!(
        degraded.iter().any(|l| l == "Active Devices : 3"),
        "{degraded:?}"
    );
    assert_eq!(
        get(&f, "degraded", "vol5", "sum", &out)[0],
        common::lab_line(&out, "fail|sum|"),
        "{out}"
    );
    // DDF, run writable with tessera's monitor: the same geometry as mdadm's own assembly,
    // the same bytes, and writes taken.
    for v in ["dvol5", "dvol1"] {
        let shared = |who: &str, kind: &str| -> Vec<String> {
            get(&f, who, v, kind, &out)
                .iter()
                .filter(|l| {
                    !l.starts_with("State :")
                        && !l.starts_with("metadata_version=")
                        && !l.starts_with("safe_mode_delay=")
                })
                .map(|l| {
                    // mdadm's runs read-auto, tessera's read-only: the rest must agree.
                    l.replace("(auto-read-only) ", "")
                        .replace("(read-only) ", "")
                        .replace("external:-mdN/", "external:/mdN/")
                })
                .collect()
        };
        for kind in ["detail", "member", "mdstat", "sysfs"] {
            assert!(!shared("mdadm", kind).is_empty(), "{v} {kind}:\n{out}");
            let mut ours = shared("tessera", kind);
            let mut theirs = shared("mdadm", kind);
            if kind == "sysfs" {
                ours.sort();
                theirs.sort();
            }
            assert_eq!(
                ours, theirs,
                "{v}: {kind} differs from mdadm's own assembly"
            );
        }
        let made = &get(&f, "made", v, "sum", &out)[0];
        assert_eq!(&get(&f, "mdadm", v, "sum", &out)[0], made, "{v}");
        assert_eq!(&get(&f, "tessera", v, "sum", &out)[0], made, "{v}");
        let version = get(&f, "tessera", v, "sysfs", &out)
            .iter()
            .find(|l| l.starts_with("metadata_version="))
            .unwrap()
            .clone();
        assert!(
            version.starts_with("metadata_version=external:/mdN/"),
            "{version}"
        );
    }
    assert_eq!(common::lab_line(&out, "ddf|write|"), "0", "{out}");
}
