//! Leftover metadata: two formats on one device. Discovery asks before the modules probe,
//! claims the device with the module whose format blkid and mdadm would take, and names
//! the others on that finding. Part of the core, not of a module: it weighs every format
//! against the others, so it may favour none of them.

use tessera_block::{BlockDevice, SharedDevice};
use tessera_formats::partition;
use tessera_formats::signature::{self, Conflict};

use crate::format::Finding;

/// The formats on `device` when it holds more than one (leftover metadata), decided as
/// blkid and mdadm decide: see [`signature::decide`]. An MD superblock at the end that
/// lies inside a partition of the device's table belongs to that partition.
pub fn conflict_on(name: &str, device: &SharedDevice) -> Option<Conflict> {
    let partitions = partition_spans(name, device.as_ref());
    let covered = |offset: u64| partitions.iter().any(|&(a, b)| a <= offset && offset < b);
    signature::conflict(device.as_ref(), &covered)
        .ok()
        .flatten()
}

/// The conflict in JSON, for a finding's detail: every format with its signatures, the
/// one taken (null when none is), why, and how to clear the others.
fn conflict_json(name: &str, c: &Conflict) -> serde_json::Value {
    let group = |g: &Vec<signature::Signature>| {
        serde_json::json!({
            "format": g[0].kind,
            "what": signature::format_name(&g[0]),
            "offsets": g.iter().map(|s| s.offset).collect::<Vec<_>>(),
            "uuid": g[0].uuid,
            "label": g[0].label,
        })
    };
    let mut formats: Vec<serde_json::Value> = Vec::new();
    if !c.taken.is_empty() {
        formats.push(group(&c.taken));
    }
    formats.extend(c.others.iter().map(group));
    serde_json::json!({
        "formats": formats,
        "taken": c.taken_kind(),
        "why": c.why,
        "array_content": c.in_data_area(),
        "clear": c.clear_commands(name),
    })
}

/// One sentence naming every format on the device and the one taken.
fn conflict_sentence(name: &str, c: &Conflict) -> String {
    let all: Vec<String> = c
        .taken
        .first()
        .into_iter()
        .chain(c.others.iter().map(|g| &g[0]))
        .map(|s| format!("{} at byte {}", signature::format_name(s), s.offset))
        .collect();
    let (taken, clear) = match c.taken.first() {
        Some(s) => (format!("tessera takes {}", s.kind), "to clear the other"),
        None => ("tessera takes none".to_string(), "to clear the stale one"),
    };
    format!(
        "{name}: holds {} formats: {}; {taken}: {}; {clear}: {}",
        all.len(),
        all.join(", "),
        c.why,
        c.clear_commands(name).join(" or ")
    )
}

/// Records `c` on the finding of the module that claimed the device: in its detail
/// (`conflict`), and as a problem, unless the others lie in the data area of a RAID
/// member, where they are the array's own content (then the detail says so and `show`
/// prints it as a note).
pub fn note_conflict(name: &str, c: &Conflict, finding: &mut Finding) {
    let json = conflict_json(name, c);
    match &mut finding.detail {
        serde_json::Value::Object(map) => {
            map.insert("conflict".into(), json);
        }
        serde_json::Value::Null => finding.detail = serde_json::json!({ "conflict": json }),
        other => {
            let old = other.take();
            finding.detail = serde_json::json!({ "value": old, "conflict": json });
        }
    }
    if !c.in_data_area() {
        finding.problems.push(conflict_sentence(name, c));
    }
}

/// The finding for a device on which blkid names no format because several filesystems
/// claim it: none is taken, each is named.
pub fn ambivalent(name: &str, c: &Conflict) -> Finding {
    let kinds: Vec<&str> = c.others.iter().map(|g| g[0].kind).collect();
    let mut f = Finding::new(
        "ambivalent",
        format!("{} at once: no format taken", kinds.join(" and ")),
    );
    f.state = Some("ambivalent".into());
    note_conflict(name, c, &mut f);
    f
}

/// The device's partition table, read with the formats layer's reader (the partition
/// module's own probe is not consulted: discovery stays apart from the modules).
fn partition_spans(name: &str, device: &dyn BlockDevice) -> Vec<(u64, u64)> {
    let sectors = device.size_bytes() / 512;
    let reader = |lba: u64, count: u64| -> Option<Vec<u8>> {
        let len = count.checked_mul(512)?;
        let offset = lba.checked_mul(512)?;
        if offset.checked_add(len)? > device.size_bytes() || len > (64 << 20) {
            return None;
        }
        let mut buf = vec![0u8; len as usize];
        device.read_at(&mut buf, offset).ok()?;
        Some(buf)
    };
    match partition::read_table(name, sectors, &reader) {
        Ok(Some(t)) => t
            .partitions
            .iter()
            .map(|p| (p.start_sector * 512, (p.start_sector + p.sectors) * 512))
            .collect(),
        _ => Vec::new(),
    }
}
