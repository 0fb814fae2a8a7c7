//! The layers, checked: every tessera crate sits on a layer, and a crate depends only on
//! crates of lower layers (normal, build and dev dependencies alike), as read from
//! `cargo metadata`. A new crate fails this test until it is given its layer here.

use std::collections::BTreeMap;
use std::process::Command;

/// From the bottom: the block layer, the kernel's drivers, the ciphers and the lock manager's
/// client (sanlock) know nothing of tessera;
/// the mapper, the formats and the NBD server build on block devices; the raid
/// personalities and the crypt target are targets of the mapper, FUSE serves the NBD exports' devices; the
/// engine joins formats, mapper, raid and kernel; the daemon drives the engine; the CLI is
/// the top.
const LAYERS: [(&str, u32); 16] = [
    ("tessera-block", 0),
    ("tessera-kernel", 0),
    ("tessera-cipher", 0),
    ("tessera-lock", 0),
    ("tessera-mapper", 1),
    ("tessera-formats", 1),
    ("tessera-export", 1),
    ("tessera-raid", 2),
    ("tessera-crypt", 2),
    ("tessera-snapshot", 2),
    ("tessera-thin", 2),
    ("tessera-bbr", 2),
    ("tessera-fuse", 2),
    ("tessera-engine", 3),
    ("tessera-daemon", 4),
    ("tessera-cli", 5),
];

fn workspace_deps() -> Deps {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["name"].as_str().unwrap().starts_with("tessera-"))
                .map(|d| {
                    (
                        d["name"].as_str().unwrap().to_string(),
                        d["kind"].as_str().unwrap_or("normal").to_string(),
                    )
                })
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

fn layer(name: &str) -> Option<u32> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

type Deps = BTreeMap<String, Vec<(String, String)>>;

/// Every dependency that breaks the layering, and every crate without a layer.
fn violations(deps: &Deps) -> Vec<String> {
    let mut wrong = Vec::new();
    for (krate, uses) in deps {
        let Some(own) = layer(krate) else {
            wrong.push(format!("{krate} has no layer: add it to LAYERS"));
            continue;
        };
        for (dep, kind) in uses {
            match layer(dep) {
                Some(l) if l < own => {}
                Some(l) => wrong.push(format!(
                    "{krate} (layer {own}) has a {kind} dependency on {dep} (layer {l})"
                )),
                None => wrong.push(format!("{krate} depends on {dep}, which has no layer")),
            }
        }
    }
    wrong
}

#[test]
fn every_crate_depends_only_on_lower_layers() {
    let deps = workspace_deps();
    let wrong = violations(&deps);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The table names only crates that exist, so it cannot pass by naming nothing.
    for (name, _) in LAYERS {
        assert!(deps.contains_key(name), "{name} is not in the workspace");
    }
    assert!(deps["tessera-engine"]
        .iter()
        .any(|(d, _)| d == "tessera-formats"));
}

#[test]
fn a_dependency_that_points_up_or_sideways_is_caught() {
    let mut deps = workspace_deps();
    deps.get_mut("tessera-formats")
        .unwrap()
        .push(("tessera-engine".into(), "dev".into()));
    deps.get_mut("tessera-mapper")
        .unwrap()
        .push(("tessera-export".into(), "normal".into()));
    deps.insert("tessera-new".into(), Vec::new());
    let wrong = violations(&deps);
    assert_eq!(wrong.len(), 3, "{wrong:#?}");
    assert!(wrong.iter().any(|w| w
        .contains("tessera-formats (layer 1) has a dev dependency on tessera-engine (layer 3)")));
    assert!(wrong.iter().any(|w| w
        .contains("tessera-mapper (layer 1) has a normal dependency on tessera-export (layer 1)")));
    assert!(wrong.iter().any(|w| w.contains("tessera-new has no layer")));
}
