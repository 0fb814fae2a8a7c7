//! Two formats on one device, made by the real tools on image files: a DOS table written
//! by sfdisk over an ext4 made by mkfs.ext4, a FAT32 boot sector from mkfs.vfat over an
//! ext4, a LUKS1 header from cryptsetup over an ext4. For each, `blkid -p` gives its
//! answer (or its ambivalent result), and `tessera show` (text and --json) names both
//! formats, takes the one blkid takes (none when blkid refuses to choose), says why and
//! how to clear the other; `pv create` refuses without --force naming both.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{tessera, tessera_output};
use serde_json::Value;

fn run(tool: &str, args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({e}): is its package installed?"));
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `blkid -p -o export IMAGE`: its exit code, its fields, what it printed on stderr.
fn blkid(path: &Path) -> (i32, Vec<(String, String)>, String) {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(path)
        .output()
        .expect("cannot run blkid: is util-linux installed?");
    let fields = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        fields,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn image(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    File::create(&path)
        .and_then(|f| f.set_len(64 << 20))
        .expect("image");
    path.display().to_string()
}

/// The disk node of `show --json` for the one image.
fn shown(image: &str, state: &Path) -> Value {
    let json = tessera(image, state, &["show", "--json"]);
    let report: Value = serde_json::from_str(&json).expect("show --json");
    report["devices"][0].clone()
}

fn formats(conflict: &Value) -> Vec<String> {
    conflict["formats"]
        .as_array()
        .expect("formats")
        .iter()
        .map(|f| f["format"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn leftover_metadata_is_named_and_decided_as_blkid_decides() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = dir.path().join("state");

    // 1. An ext4 on the whole disk, then a DOS table written without wiping it.
    let table_fs = image(dir.path(), "table-fs.img");
    run("mkfs.ext4", &["-q", "-F", &table_fs], None);
    run(
        "sfdisk",
        &["-q", "--wipe", "never", &table_fs],
        Some("label: dos\n2048,,83\n"),
    );
    let (code, b, _) = blkid(Path::new(&table_fs));
    assert_eq!(code, 0);
    // blkid -p reports both.
    assert_eq!(
        (field(&b, "TYPE"), field(&b, "PTTYPE")),
        (Some("ext4"), Some("dos"))
    );
    let node = shown(&table_fs, &state);
    let c = &node["detail"]["conflict"];
    assert_eq!(node["format"], "dos");
    assert_eq!(c["taken"], "dos");
    assert_eq!(formats(c), ["dos", "ext4"]);
    assert_eq!(c["formats"][1]["uuid"].as_str(), field(&b, "UUID"));
    assert_eq!(
        c["clear"],
        serde_json::json!([format!("wipefs --offset 0x438 {table_fs}")])
    );
    let problem = node["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("holds 2 formats")
            && problem.contains("tessera takes dos")
            && problem.contains("ext4"),
        "{problem}"
    );
    // Its partition is still read.
    assert_eq!(node["children"].as_array().unwrap().len(), 1);
    // The text names both as well.
    let text =
        String::from_utf8_lossy(&tessera_output(&table_fs, &state, &["show"]).stdout).into_owned();
    assert!(
        text.contains("dos (1 partition(s)) at byte 510") && text.contains("ext4 (uuid"),
        "{text}"
    );
    // Writing a PV there is refused, naming both formats.
    let out = tessera_output(&table_fs, &state, &["pv", "create", &table_fs]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ext4") && err.contains("dos") && err.contains("--force"),
        "{err}"
    );

    // 2. A FAT32 boot sector over an ext4: blkid refuses to choose, and so does tessera.
    let vfat_src = image(dir.path(), "vfat-src.img");
    run("mkfs.vfat", &["-F", "32", &vfat_src], None);
    let two_fs = image(dir.path(), "two-fs.img");
    run("mkfs.ext4", &["-q", "-F", &two_fs], None);
    let mut sector = [0u8; 512];
    File::open(&vfat_src)
        .unwrap()
        .read_exact_at(&mut sector, 0)
        .unwrap();
    File::options()
        .write(true)
        .open(&two_fs)
        .unwrap()
        .write_all_at(&sector, 0)
        .unwrap();
    let (code, b, err) = blkid(Path::new(&two_fs));
    assert_eq!(code, 8, "blkid's exit code for an ambivalent result: {b:?}");
    assert!(err.contains("ambivalent result"), "{err}");
    let node = shown(&two_fs, &state);
    let c = &node["detail"]["conflict"];
    assert_eq!(node["format"], "ambivalent");
    assert_eq!(c["taken"], Value::Null);
    assert_eq!(formats(c), ["vfat", "ext4"]);
    assert!(c["why"].as_str().unwrap().contains("ambivalent"), "{c}");
    assert_eq!(c["clear"].as_array().unwrap().len(), 2);
    let out = tessera_output(&two_fs, &state, &["pv", "create", &two_fs]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("vfat") && err.contains("ext4"),
        "{err}"
    );

    // 3. A LUKS1 header (cryptsetup's, 592 bytes) over an ext4: blkid stops at LUKS.
    let luks_src = image(dir.path(), "luks-src.img");
    run(
        "cryptsetup",
        &[
            "luksFormat",
            "-q",
            "--type",
            "luks1",
            "--pbkdf-force-iterations",
            "1000",
            &luks_src,
            "-",
        ],
        Some("pw"),
    );
    let luks_fs = image(dir.path(), "luks-fs.img");
    run("mkfs.ext4", &["-q", "-F", &luks_fs], None);
    let mut header = [0u8; 592];
    File::open(&luks_src)
        .unwrap()
        .read_exact_at(&mut header, 0)
        .unwrap();
    File::options()
        .write(true)
        .open(&luks_fs)
        .unwrap()
        .write_all_at(&header, 0)
        .unwrap();
    let (code, b, _) = blkid(Path::new(&luks_fs));
    assert_eq!((code, field(&b, "TYPE")), (0, Some("crypto_LUKS")));
    let node = shown(&luks_fs, &state);
    let c = &node["detail"]["conflict"];
    assert_eq!(node["format"], "crypto_LUKS");
    assert_eq!(c["taken"], "crypto_LUKS");
    assert_eq!(formats(c), ["crypto_LUKS", "ext4"]);
    assert_eq!(c["formats"][0]["uuid"].as_str(), field(&b, "UUID"));

    // A clean device shows no conflict: wipefs as told clears the ext4 under the table.
    run("wipefs", &["--offset", "0x438", "--quiet", &table_fs], None);
    let (_, b, _) = blkid(Path::new(&table_fs));
    assert_eq!(
        (field(&b, "TYPE"), field(&b, "PTTYPE")),
        (None, Some("dos"))
    );
    let node = shown(&table_fs, &state);
    assert_eq!(node["detail"]["conflict"], Value::Null);
    assert!(node["problems"].as_array().unwrap().is_empty(), "{node}");
}
