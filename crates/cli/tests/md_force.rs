//! Forced assembly of MD arrays, as `mdadm --assemble --force`: the NAS whose raid5 lost
//! one disk long ago and a second at the crash (behind in events, recorded faulty by the
//! others). The real mdadm makes the arrays in the kernel lab and forces copies of them
//! there; tessera refuses the plain assembly naming each member left out and why, serves
//! the bytes mdadm's forced array gives with `serve --force --read-only` without changing
//! one byte of the images, and with `serve --force` records the forcing so that a plain
//! `mdadm --assemble` starts the array afterwards with the same bytes and superblocks that
//! agree with mdadm's own forced assembly.

mod common;

use std::path::Path;
use std::process::Command;

use common::{lab_line, lab_script, sha};

/// (name, metadata, how the second member drops out)
const ARRAYS: &[(&str, &str, &str)] = &[
    // Failed, then the failed members removed: the others' events move on without it.
    ("n12", "1.2", "mdadm /dev/md/$n --remove failed >/dev/null 2>&1 || true"),
    // Failed at the crash: one event behind, recorded faulty by the others.
    ("n09", "0.90", "true"),
];

/// The lines of `mdadm --examine` that say where a member stands.
const EXAMINE: &str = r#"examine() { mdadm --examine "$1" | grep -E '^ *(Events|Device Role|Array State|State|Active Devices|Working Devices|Failed Devices) :' | sed 's/^ *//' | tr '\n' '|'; }"#;

fn file_sum(p: &Path) -> String {
    sha(&std::fs::read(p).unwrap())
}

fn images(d: &Path, prefix: &str) -> Vec<String> {
    (0..4)
        .map(|i| d.join(format!("{prefix}-{i}.img")).display().to_string())
        .collect()
}

#[test]
fn force_chooses_as_mdadm_and_writes_what_mdadm_writes() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    // The arrays, made and broken by the real mdadm; forced by mdadm on copies.
    let mut script = format!("set -e\ncd {}\n{EXAMINE}\n", d.display());
    for (n, e, drop_out) in ARRAYS {
        script.push_str(&format!(
            r#"n={n}; L=()
for i in 0 1 2 3; do truncate -s 12M $n-$i.img; L[$i]=$(losetup -f --show $n-$i.img); done
mdadm --create /dev/md/$n -e {e} -l 5 -n 4 -c 64 --run --assume-clean --homehost=lab --name=$n ${{L[@]}} >/dev/null 2>&1
head -c 6M /dev/urandom | dd of=/dev/md/$n bs=1M oflag=direct status=none
mdadm /dev/md/$n --fail ${{L[0]}} >/dev/null 2>&1
head -c 4M /dev/urandom | dd of=/dev/md/$n bs=1M seek=8 oflag=direct status=none
sleep 1
mdadm /dev/md/$n --fail ${{L[1]}} >/dev/null 2>&1 || true
{drop_out}
mdadm --stop /dev/md/$n >/dev/null
for i in 0 1 2 3; do losetup -d ${{L[$i]}}; echo "BROKEN $n $i $(examine $n-$i.img)"; cp --sparse=always $n-$i.img ref$n-$i.img; done
for i in 0 1 2 3; do L[$i]=$(losetup -f --show ref$n-$i.img); done
mdadm --assemble --force /dev/md/ref$n ${{L[@]}} 2>&1 | sed 's/^/MDADM /'
echo "REF $n $(sha256sum < /dev/md/ref$n | cut -d' ' -f1)"
mdadm --stop /dev/md/ref$n >/dev/null
for i in 0 1 2 3; do losetup -d ${{L[$i]}}; echo "FORCED $n $i $(examine ref$n-$i.img)"; rm ref$n-$i.img; done
"#
        ));
    }
    script.push_str("echo LAB-DONE\n");
    let out = lab_script(d, &script, 900);
    assert!(out.contains("LAB-DONE"), "the lab did not finish:\n{out}");
    eprintln!("{out}");
    for (prefix, _, _) in ARRAYS {
        let imgs = images(d, prefix);
        let devices = imgs.join(",");
        let reference = lab_line(&out, &format!("REF {prefix} ")).to_string();
        // 0.90 arrays have no name: tessera calls them by UUID.
        let list = common::tessera(&devices, &state, &["md", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        let name = list["arrays"][0]["name"].as_str().unwrap().to_string();
        let n = &name;
        // Plain assembly: refused, naming each member left out and why, and --force.
        {
            let server = common::serve(&devices, &state, &[]);
            let o = common::tessera_output(&devices, &state, &["md", "assemble", n]);
            let err = String::from_utf8_lossy(&o.stderr).to_string();
            assert!(!o.status.success(), "{n}: plain assembly started");
            // The long-dead member is stale; the crash's is stale and recorded faulty, or
            // only one event behind and recorded faulty.
            assert!(err.contains(&format!("{prefix}-0.img left out: stale")), "{n}: {err}");
            let second = format!("{prefix}-1.img left out: ");
            let why = &err[err.find(&second).unwrap_or_else(|| panic!("{n}: {err}"))..];
            assert!(
                why.contains("recorded faulty by the others")
                    || why.contains("marked faulty")
                    || why.contains("record it removed"),
                "{n}: {err}"
            );
            assert!(err.contains("--force"), "{n}: {err}");
            drop(server);
        }
        // Forced, read-only: mdadm's bytes, and not one byte of the images changed.
        let before: Vec<String> = imgs.iter().map(|p| file_sum(Path::new(p))).collect();
        {
            let server = common::serve(&devices, &state, &["--read-only", "--force"]);
            let got = common::export_sum(&server.addr, &format!("md/{n}"), d);
            assert_eq!(got, reference, "{n}: forced read-only bytes differ from mdadm's");
            server.stop();
        }
        let after: Vec<String> = imgs.iter().map(|p| file_sum(Path::new(p))).collect();
        assert_eq!(before, after, "{n}: read-only forcing changed the images");
        // Forced, writable: the same bytes; the superblocks recorded.
        {
            let server = common::serve(&devices, &state, &["--force"]);
            let got = common::export_sum(&server.addr, &format!("md/{n}"), d);
            assert_eq!(got, reference, "{n}: forced bytes differ from mdadm's");
            assert!(server.stop().success());
        }
    }
    // The real mdadm reads what tessera wrote: plain assembly, the same bytes.
    let mut script = format!("set -e\ncd {}\n{EXAMINE}\n", d.display());
    for (n, _, _) in ARRAYS {
        script.push_str(&format!(
            r#"n={n}; L=()
for i in 0 1 2 3; do echo "TESSERA $n $i $(examine $n-$i.img)"; L[$i]=$(losetup -f --show $n-$i.img); done
mdadm --assemble /dev/md/$n ${{L[@]}} 2>&1 | sed 's/^/MDADM /'
echo "PLAIN $n $(sha256sum < /dev/md/$n | cut -d' ' -f1)"
mdadm --stop /dev/md/$n >/dev/null
for i in 0 1 2 3; do losetup -d ${{L[$i]}}; echo "AFTER $n $i $(examine $n-$i.img)"; done
"#
        ));
    }
    script.push_str("echo LAB-DONE\n");
    let out2 = lab_script(d, &script, 600);
    assert!(out2.contains("LAB-DONE"), "the lab did not finish:\n{out2}");
    eprintln!("{out2}");
    for (n, _, _) in ARRAYS {
        assert_eq!(
            lab_line(&out2, &format!("PLAIN {n} ")),
            lab_line(&out, &format!("REF {n} ")),
            "{n}: mdadm's plain assembly after tessera's forcing gives other bytes"
        );
        // What mdadm's forced assembly wrote: the long-dead member untouched, the crash's
        // member back in its slot, the array clean; tessera writes the forced view to every
        // member present. mdadm itself rewrites only the forced member (1); the kernel
        // rewrites the others only if its md thread updates the superblocks before the stop,
        // which it may not do on a fast machine, so the forced view is member 1's.
        let field = |line: &str, name: &str| -> String {
            line.split('|')
                .find(|f| f.starts_with(name))
                .map(str::to_string)
                .unwrap_or_default()
        };
        let ours0 = lab_line(&out2, &format!("TESSERA {n} 0 "));
        assert_eq!(ours0, lab_line(&out, &format!("FORCED {n} 0 ")), "{n}: member 0 was written");
        let chosen = lab_line(&out, &format!("FORCED {n} 2 "));
        let forced_view = field(lab_line(&out, &format!("FORCED {n} 1 ")), "Array State");
        for i in 1..4 {
            let ours = lab_line(&out2, &format!("TESSERA {n} {i} "));
            let mdadm = lab_line(&out, &format!("FORCED {n} {i} "));
            for name in ["Device Role", "State :"] {
                assert_eq!(field(ours, name), field(mdadm, name), "{n} member {i}: {name}");
            }
            assert_eq!(field(ours, "Array State"), forced_view, "{n} member {i}");
            let events = |l: &str| -> u64 {
                field(l, "Events").rsplit(' ').next().unwrap().rsplit('.').next().unwrap().parse().unwrap()
            };
            assert!(events(ours) >= events(chosen), "{n} member {i}: events {ours} / {chosen}");
        }
    }
    let _ = Command::new("true").status();
}
