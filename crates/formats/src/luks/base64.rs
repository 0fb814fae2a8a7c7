//! Base64 (RFC 4648, standard alphabet, '=' padding) as LUKS2 JSON writes salts and digests,
//! through the `base64` crate.

use ::base64::engine::general_purpose::STANDARD;
use ::base64::Engine;

pub(crate) fn encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// None when `text` is not canonical padded base64.
pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}
