//! Filesystems and swap by their signatures, as blkid finds them; the last module tried.

use tessera_block::SharedDevice;
use tessera_formats::signature;

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
            // Other formats found with it are named by discovery (see `crate::conflict`).
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
