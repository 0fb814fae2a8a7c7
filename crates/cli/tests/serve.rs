//! `tessera serve` over image files, read by real NBD clients: nbdinfo lists every LV with
//! its size, and the bytes nbdcopy reads from a multi-segment linear LV and a striped LV are
//! the bytes at the PV offsets of their tables.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn nbd_clients_read_lvs_at_their_pv_offsets() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let imgs: Vec<String> = (0..3)
        .map(|i| d.join(format!("s{i}.img")).to_string_lossy().into_owned())
        .collect();
    // Images full of known bytes, so every extent holds recognisable data.
    for (n, img) in imgs.iter().enumerate() {
        let data: Vec<u8> = (0..32usize << 20)
            .map(|i| (i as u8) ^ ((i >> 9) as u8).wrapping_mul(7) ^ (n as u8 * 85))
            .collect();
        std::fs::write(img, data).unwrap();
    }
    let devices = imgs.join(",");
    let t = |args: &[&str]| common::tessera(&devices, &state, args);
    t(&["pv", "create", &imgs[0], &imgs[1], &imgs[2]]);
    t(&["vg", "create", "sv", &imgs[0], &imgs[1], &imgs[2]]);
    t(&["lv", "create", "sv/lin", "-L", "8M"]);
    t(&["lv", "create", "sv/st", "-L", "24M", "-i", "3", "-I", "64k"]);
    t(&["lv", "extend", "sv/lin", "-L", "+36M"]);
    let tables: Vec<(String, String)> = ["lin", "st"]
        .iter()
        .map(|lv| (lv.to_string(), t(&["lv", "table", &format!("sv/{lv}")])))
        .collect();
    assert!(
        tables[0].1.lines().count() >= 2,
        "lin spans PVs: {}",
        tables[0].1
    );

    let child = Command::new(common::tessera_path())
        .args(["--devices", &devices, "--state-dir"])
        .arg(&state)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Child(child);
    let mut first = String::new();
    // Kept open for the server's whole life: it writes more lines after the first.
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    let uri = first
        .split_whitespace()
        .find(|w| w.starts_with("nbd://"))
        .expect("address line")
        .replace("/VG/LV", "");

    let info = Command::new("nbdinfo")
        .args(["--list", "--json", &uri])
        .output()
        .expect("nbdinfo runs");
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let json: Value = serde_json::from_slice(&info.stdout).unwrap();
    let mut sizes: Vec<(String, u64)> = json["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["export-name"].as_str().unwrap().to_string(),
                e["export-size"].as_u64().unwrap(),
            )
        })
        .collect();
    sizes.sort();
    assert_eq!(
        sizes,
        vec![
            ("sv/lin".to_string(), 44 << 20),
            ("sv/st".to_string(), 24 << 20)
        ]
    );

    let images: Vec<Vec<u8>> = imgs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let image = |path: &str| {
        &images[imgs
            .iter()
            .position(|p| p == path)
            .expect("table names a PV")]
    };
    for (lv, table) in &tables {
        // The expected bytes, from the table rows and the images.
        let mut expected = Vec::new();
        for row in table.lines() {
            let f: Vec<&str> = row.split_whitespace().collect();
            let len = f[1].parse::<usize>().unwrap() * 512;
            match f[2] {
                "linear" => {
                    let off = f[4].parse::<usize>().unwrap() * 512;
                    expected.extend_from_slice(&image(f[3])[off..off + len]);
                }
                "striped" => {
                    let n: usize = f[3].parse().unwrap();
                    let chunk = f[4].parse::<usize>().unwrap() * 512;
                    let stripes: Vec<(&str, usize)> = (0..n)
                        .map(|i| (f[5 + 2 * i], f[6 + 2 * i].parse::<usize>().unwrap() * 512))
                        .collect();
                    for c in 0..len / chunk {
                        let (dev, base) = stripes[c % n];
                        let at = base + (c / n) * chunk;
                        expected.extend_from_slice(&image(dev)[at..at + chunk]);
                    }
                }
                other => panic!("unexpected target {other}"),
            }
        }
        let out = d.join(format!("{lv}.out"));
        let copy = Command::new("nbdcopy")
            .arg(format!("{uri}/sv/{lv}"))
            .arg(&out)
            .output()
            .expect("nbdcopy runs");
        assert!(
            copy.status.success(),
            "nbdcopy: {}",
            String::from_utf8_lossy(&copy.stderr)
        );
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), expected.len(), "sv/{lv} size");
        assert!(
            got == expected,
            "sv/{lv}: the bytes read over NBD are not those at the table's PV offsets"
        );
    }
}

/// The members a daemon serves are claimed: a second `tessera serve` over the same image
/// files (another state directory, another port) is refused, naming the image and the
/// process that holds it; once the first stops, it starts.
#[test]
fn a_second_daemon_over_the_same_members_is_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let imgs = common::image_files(d, "c", 2, 16 << 20);
    let devices = imgs.join(",");
    let state = d.join("state");
    common::tessera(
        &devices,
        &state,
        &["vg", "create", "cl", &imgs[0], &imgs[1]],
    );
    common::tessera(&devices, &state, &["lv", "create", "cl/a", "-L", "8M"]);
    let first = common::serve(&devices, &state, &[]);
    let pid = first.child.id().to_string();
    let second = Command::new(common::tessera_path())
        .args(["--devices", &devices, "--state-dir"])
        .arg(d.join("state2"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second daemon started: {err}");
    assert!(
        err.contains("c-0.img") && err.contains(&format!("process {pid}")),
        "{err}"
    );
    assert!(err.contains("serve"), "names what holds it: {err}");
    drop(first);
    let again = common::serve(&devices, &d.join("state2"), &[]);
    drop(again);
}
