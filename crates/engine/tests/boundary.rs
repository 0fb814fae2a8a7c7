//! The plug-in boundary inside the engine, checked on its sources: the core (the engine,
//! discovery, the format trait, devices, claims, locks) names no format module but the
//! registry's list, and the format modules do not reach into one another. Adding a format
//! must stay one module and one line in `modules::registry`.

use std::path::Path;

const CORE: [&str; 10] = [
    "engine.rs",
    "conflict.rs",
    "discover.rs",
    "format.rs",
    "devices.rs",
    "claim.rs",
    "lock.rs",
    "units.rs",
    "raid_row.rs",
    "subarrays.rs",
];
const MODULES: [&str; 8] = [
    "lvm2",
    "md",
    "partition",
    "luks",
    "signature",
    "ddf",
    "imsm",
    "ataraid",
];

fn source(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The code of a source file without its comments and its unit tests (tests may use a
/// module to build their cases).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where `code` names one of the format modules other than `own`.
fn names_a_module(code: &str, own: Option<&str>) -> Vec<String> {
    MODULES
        .iter()
        .filter(|m| Some(**m) != own)
        .filter(|m| {
            code.contains(&format!("modules::{m}"))
                || (own.is_some() && code.contains(&format!("super::{m}")))
        })
        .map(|m| m.to_string())
        .collect()
}

#[test]
fn the_core_names_no_format_module() {
    let mut wrong = Vec::new();
    for file in CORE {
        for m in names_a_module(&code(&source(file)), None) {
            wrong.push(format!("{file} names modules::{m}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The registry is the one place that lists them all.
    let registry = code(&source("modules/mod.rs"));
    for m in MODULES {
        assert!(
            registry.contains(&format!("{m}::")),
            "the registry lists {m}"
        );
    }
}

#[test]
fn format_modules_do_not_reach_into_one_another() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/modules");
    let mut wrong = Vec::new();
    for module in MODULES {
        let mut files = Vec::new();
        let sub = dir.join(module);
        if sub.is_dir() {
            for e in std::fs::read_dir(&sub).unwrap() {
                files.push(format!(
                    "modules/{module}/{}",
                    e.unwrap().file_name().to_string_lossy()
                ));
            }
        } else {
            files.push(format!("modules/{module}.rs"));
        }
        for file in files {
            for m in names_a_module(&code(&source(&file)), Some(module)) {
                wrong.push(format!("{file} names the {m} module"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_check_finds_a_module_named_in_code() {
    assert_eq!(
        names_a_module("use crate::modules::md::array;", None),
        ["md"]
    );
    assert_eq!(
        names_a_module("use crate::modules::md::array;", Some("md")),
        Vec::<String>::new()
    );
    assert_eq!(
        names_a_module("use super::lvm2::scan;", Some("md")),
        ["lvm2"]
    );
    assert!(names_a_module("// modules::lvm2 in a comment\n", None).len() == 1);
    assert!(names_a_module(&code("// modules::lvm2 in a comment\n"), None).is_empty());
}
