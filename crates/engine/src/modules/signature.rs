//! Filesystems and swap by their signatures, as blkid finds them; the last module tried.

use tessera_block::SharedDevice;
use tessera_formats::signature::{self, Conflict};

use super::partition::read_partition_table;

use crate::format::{Finding, FormatModule, Inner};

/// Filesystems and swap, found by their signatures as blkid finds them; and data that no
/// module recognises.
pub struct Signatures;

/// Signatures that stand for a whole format on the device (the others are claimed by the
/// modules before this one).
const CONTENT: [&str; 11] = [
    "ext2",
    "ext3",
    "ext4",
    "jbd",
    "xfs",
    "btrfs",
    "swap",
    "vfat",
    "ntfs",
    "exfat",
    "crypto_LUKS",
];

impl FormatModule for Signatures {
    fn name(&self) -> &'static str {
        "signatures"
    }
    fn probe(&self, _name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        let found = match signature::probe(device.as_ref()) {
            Ok(found) => found,
            Err(e) => return Finding::damaged("unreadable", "cannot be read", e.to_string()),
        };
        let content: Vec<_> = found.iter().filter(|s| CONTENT.contains(&s.kind)).collect();
        if let Some(first) = content.first() {
            let mut f = Finding::new(first.kind, first.to_string());
            if !first.detail.is_empty() {
                f.summary = format!("{} ({})", first.kind, first.detail);
            }
            f.detail = serde_json::json!({ "offset": first.offset, "detail": first.detail });
            // Other formats found with it are named by discovery (see `conflict_on`).
            return Some((f, Vec::new()));
        }
        // Anything but zeroes in the first 64 KiB is data nobody claims.
        let len = device.size_bytes().min(64 << 10) as usize;
        let mut head = vec![0u8; len];
        if let Err(e) = device.read_at(&mut head, 0) {
            return Finding::damaged("unreadable", "cannot be read", e.to_string());
        }
        let first = head.iter().position(|&b| b != 0)?;
        // As blkid, this is no problem: raw data is a state of the device, not a fault.
        let mut f = Finding::new(
            "unknown",
            format!("data from byte {first}, in no format tessera knows"),
        );
        f.state = Some("data".into());
        f.detail = serde_json::json!({ "first_nonzero_byte": first });
        Some((f, Vec::new()))
    }
}

/// The formats on `device` when it holds more than one (leftover metadata), decided as
/// blkid and mdadm decide: see [`signature::decide`]. An MD superblock at the end that
/// lies inside a partition of the device's table belongs to that partition.
pub fn conflict_on(name: &str, device: &SharedDevice) -> Option<Conflict> {
    let partitions: Vec<(u64, u64)> = match read_partition_table(name, device.as_ref()) {
        Ok(Some(t)) => t
            .partitions
            .iter()
            .map(|p| (p.start_sector * 512, (p.start_sector + p.sectors) * 512))
            .collect(),
        _ => Vec::new(),
    };
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
