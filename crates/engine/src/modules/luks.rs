//! LUKS1 and LUKS2: the format module that recognises and describes their headers.

use tessera_block::SharedDevice;
use tessera_formats::luks;

use crate::format::{Finding, FormatModule, Inner};

/// LUKS1 and LUKS2 headers: recognised and described; opening them comes later.
pub struct LuksHeaders;

impl FormatModule for LuksHeaders {
    fn name(&self) -> &'static str {
        "luks"
    }
    fn probe(&self, _name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        match luks::read_header(device.as_ref()) {
            Ok(None) => None,
            Ok(Some(h)) => {
                let mut summary = format!(
                    "LUKS{}, {} {}-bit, {} key slot(s)",
                    h.version,
                    h.cipher,
                    h.key_bytes * 8,
                    h.active_keyslots.len()
                );
                if !h.label.is_empty() {
                    summary.push_str(&format!(", label '{}'", h.label));
                }
                summary.push_str(", locked");
                let mut f = Finding::new("crypto_LUKS", summary);
                f.detail = serde_json::json!({
                    "version": h.version, "uuid": h.uuid, "label": h.label,
                    "cipher": h.cipher, "key_bits": h.key_bytes * 8,
                    "data_offset_bytes": h.data_offset_bytes,
                    "active_keyslots": h.active_keyslots,
                });
                f.problems.extend(h.warning.clone());
                Some((f, Vec::new()))
            }
            Err(e) => Finding::damaged(
                "crypto_LUKS",
                "a LUKS header that cannot be read",
                e.to_string(),
            ),
        }
    }
}
