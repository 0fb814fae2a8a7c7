//! MD arrays that tessera makes, served over NBD: fio writes and verifies through raid5,
//! raid6 and raid10 exports, whole and then degraded (members left out), with no error.

mod common;

use std::process::Command;

use common::serve;

use serde_json::Value;

/// fio random writes with crc32c verification on each export, 4k and 64k blocks at QD16.
fn fio_verify(addr: &str, exports: &[&str]) {
    let mut cmd = Command::new("fio");
    cmd.args(["--output-format=json", "--ioengine=nbd", "--rw=randwrite"])
        .args([
            "--iodepth=16",
            "--size=8M",
            "--verify=crc32c",
            "--verify_fatal=1",
        ])
        .args([
            "--verify_state_save=0",
            "--bsrange=4k-64k",
            "--bs_unaligned=0",
        ]);
    for e in exports {
        cmd.arg(format!("--name={e}"))
            .arg(format!("--uri={addr}/{e}"));
    }
    let out = cmd.output().expect("fio runs");
    assert!(
        out.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    let jobs = json["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), exports.len());
    for job in jobs {
        assert_eq!(job["error"], 0, "{job}");
        assert!(
            job["write"]["io_bytes"].as_u64().unwrap() >= 8 << 20,
            "{job}"
        );
        assert!(
            job["read"]["io_bytes"].as_u64().unwrap() >= 8 << 20,
            "verified: {job}"
        );
    }
}

#[test]
fn fio_verifies_through_raid5_raid6_and_raid10_whole_and_degraded() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let mut all = Vec::new();
    let mut without = Vec::new();
    for (name, level, layout, members, lose) in [
        ("r5", "5", "left-symmetric", 4, vec![1]),
        ("r6", "6", "left-symmetric", 5, vec![0, 3]),
        ("r10", "10", "n2", 4, vec![2]),
    ] {
        let paths: Vec<String> = (0..members)
            .map(|i| {
                let p = d.join(format!("{name}-{i}.img"));
                std::fs::File::create(&p)
                    .unwrap()
                    .set_len(16 << 20)
                    .unwrap();
                p.to_string_lossy().into_owned()
            })
            .collect();
        let mut args = vec!["md", "create", name, "--level", level, "--layout", layout];
        args.extend(["--chunk", "64k"]);
        args.extend(paths.iter().map(String::as_str));
        common::tessera(&paths.join(","), &state, &args);
        for (i, p) in paths.iter().enumerate() {
            all.push(p.clone());
            if !lose.contains(&i) {
                without.push(p.clone());
            }
        }
    }
    let exports = ["md/r5", "md/r6", "md/r10"];
    {
        let server = serve(&all.join(","), &state, &[]);
        let addr = server.addr.clone();
        fio_verify(&addr, &exports);
    }
    // Members left out: the arrays start only when asked, and still verify.
    let server = serve(&without.join(","), &state, &[]);
    let addr = server.addr.clone();
    let list = Command::new("nbdinfo")
        .args(["--list", "--json", &addr])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(
        json["exports"].as_array().is_none_or(|e| e.is_empty()),
        "degraded arrays started unasked: {json}"
    );
    // Started and stopped by hand through the daemon.
    let t = |args: &[&str]| common::tessera(&without.join(","), &state, args);
    let out = t(&["md", "assemble", "r5", "--degraded"]);
    assert!(
        out.contains("md/r5 started: raid5 over 3 of 4 members"),
        "{out}"
    );
    let names = || -> Vec<String> {
        let list = Command::new("nbdinfo")
            .args(["--list", "--json", &addr])
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&list.stdout).unwrap_or(Value::Null);
        json["exports"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|x| x["export-name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names(), ["md/r5"]);
    let out = t(&["md", "stop", "r5"]);
    assert!(out.contains("md/r5 stopped"), "{out}");
    assert!(names().is_empty());
    drop(server);
    let server = serve(&without.join(","), &state, &["--degraded"]);
    let addr = server.addr.clone();
    fio_verify(&addr, &exports);
    drop(server);
    // Running degraded recorded the missing members as gone (faulty in the role table,
    // events one up): back among the others, each is left out, its array stays degraded.
    let list = common::tessera(&all.join(","), &state, &["md", "list", "--json"]);
    let json: Value = serde_json::from_str(&list).unwrap();
    for (name, missing) in [("r5", vec![1]), ("r6", vec![0, 3]), ("r10", vec![2])] {
        let a = json["arrays"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap();
        assert_eq!(
            a["health"]["degraded"]["missing_slots"],
            serde_json::json!(missing),
            "{a}"
        );
        let out = a["left_out"].as_array().unwrap();
        assert_eq!(out.len(), missing.len(), "{a}");
        for o in out {
            let why = o["reason"].as_str().unwrap();
            assert!(
                why.starts_with("stale") || why == "marked faulty by the array",
                "{o}"
            );
        }
    }
}
