//! `tessera md detail --json` of an IMSM or DDF subarray compared with what `mdadm --detail`
//! printed for it in the lab, field for field.

use serde_json::Value;

/// The lines the lab printed for `name`, each prefixed `detail NAME `.
pub fn mdadm_lines<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("detail {name} ");
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

fn field<'a>(lines: &[&'a str], key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| {
        let (k, v) = l.split_once(" : ")?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// Asserts that `ours` (md detail's JSON) says what mdadm's `lines` say: level, array size,
/// raid devices, state, chunk, layout, UUID, member number in the container, and each
/// slot's device and state. `device_of` names tessera's member path as the lab named the
/// device (`/dev/loopN`).
pub fn compare(lines: &[&str], ours: &Value, device_of: &dyn Fn(&str) -> String) {
    let all = lines.join("\n");
    let want =
        |key: &str| field(lines, key).unwrap_or_else(|| panic!("mdadm shows no {key}:\n{all}"));
    let say = format!("mdadm:\n{all}\ntessera: {ours:#}");
    assert_eq!(ours["level"], want("Raid Level"), "{say}");
    let kib: u64 = want("Array Size")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("Array Size unreadable: {say}"));
    assert_eq!(ours["size_bytes"].as_u64(), Some(kib * 1024), "{say}");
    assert_eq!(
        ours["raid_disks"].to_string(),
        want("Raid Devices"),
        "{say}"
    );
    let state = want("State");
    let words: Vec<&str> = state.split(", ").map(str::trim).collect();
    let expected = if words.contains(&"recovering") {
        "recovering"
    } else if words.contains(&"degraded") {
        "degraded"
    } else {
        "clean"
    };
    assert_eq!(ours["state"], expected, "{say}");
    assert_eq!(words[0] == "clean", ours["dirty"] == false, "{say}");
    if let Some(chunk) = field(lines, "Chunk Size") {
        let ours_chunk = format!("{}K", ours["chunk_bytes"].as_u64().unwrap_or(0) / 1024);
        assert_eq!(ours_chunk, chunk, "{say}");
    }
    if let Some(layout) = field(lines, "Layout") {
        assert_eq!(ours["layout"], layout, "{say}");
    }
    // --detail shows an IMSM volume's UUID; a DDF subarray's only --detail --export does.
    let uuid = field(lines, "UUID")
        .or_else(|| lines.iter().find_map(|l| l.trim().strip_prefix("MD_UUID=")));
    assert_eq!(ours["uuid"].as_str(), uuid, "{say}");
    if let (Some(kib), Some(ours)) = (
        field(lines, "Used Dev Size"),
        ours["member_size_bytes"].as_u64(),
    ) {
        let kib: u64 = kib
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert_eq!(ours, kib * 1024, "Used Dev Size: {say}");
    }
    let member = want("Container")
        .rsplit_once("member ")
        .map(|(_, n)| n.trim().to_string())
        .unwrap_or_default();
    assert_eq!(ours["member"].to_string(), member, "{say}");
    // "Number Major Minor RaidDevice State... [device]", after the header line.
    let table: Vec<Vec<&str>> = lines
        .iter()
        .skip_while(|l| !l.trim_start().starts_with("Number"))
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.len() >= 5)
        .collect();
    let slots = ours["members"].as_array().expect("members");
    let mut seen = 0;
    for cols in &table {
        let Ok(slot) = cols[3].parse::<usize>() else {
            continue;
        };
        seen += 1;
        let (state, device) = match cols.last() {
            Some(d) if d.starts_with("/dev/") => (cols[4..cols.len() - 1].join(" "), Some(*d)),
            _ => (cols[4..].join(" "), None),
        };
        let m = &slots[slot];
        assert_eq!(m["state"], state, "slot {slot}: {say}");
        let ours_device = m["device"].as_str().map(device_of);
        assert_eq!(ours_device.as_deref(), device, "slot {slot}: {say}");
    }
    assert_eq!(seen, slots.len(), "every slot in mdadm's table: {say}");
}
