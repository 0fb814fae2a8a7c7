//! A listing of the metadata in `cryptsetup luksDump`'s layout. Salts and digests are
//! printed as luksDump prints them; key material never is.

use std::fmt::Write;

use super::metadata::{Luks1Metadata, Luks2Kdf, Luks2Metadata, LuksMetadata};

/// The metadata as `cryptsetup luksDump` lays it out.
pub fn dump(meta: &LuksMetadata) -> String {
    match meta {
        LuksMetadata::Luks1(m) => luks1(m),
        LuksMetadata::Luks2(m) => luks2(m),
    }
}

/// Hex bytes, 16 to a line; lines after the first start with `indent`.
fn hex(bytes: &[u8], indent: &str) -> String {
    let lines: Vec<String> = bytes
        .chunks(16)
        .map(|c| c.iter().map(|b| format!("{b:02x} ")).collect())
        .collect();
    if lines.is_empty() {
        return "(none)".into();
    }
    lines.join(&format!("\n{indent}"))
}

fn luks1(m: &Luks1Metadata) -> String {
    let mut s = String::from("LUKS header information\n\n");
    let _ = writeln!(s, "Version:       \t1");
    let _ = writeln!(s, "Cipher name:   \t{}", m.cipher_name);
    let _ = writeln!(s, "Cipher mode:   \t{}", m.cipher_mode);
    let _ = writeln!(s, "Hash spec:     \t{}", m.hash_spec);
    let _ = writeln!(s, "Payload offset:\t{}", m.payload_offset_sectors);
    let _ = writeln!(s, "MK bits:       \t{}", u64::from(m.key_bytes) * 8);
    let _ = writeln!(
        s,
        "MK digest:     \t{}",
        hex(&m.mk_digest, "               \t")
    );
    let _ = writeln!(
        s,
        "MK salt:       \t{}",
        hex(&m.mk_digest_salt, "               \t")
    );
    let _ = writeln!(s, "MK iterations: \t{}", m.mk_digest_iterations);
    let _ = writeln!(s, "UUID:          \t{}\n", m.uuid);
    for (i, k) in m.keyslots.iter().enumerate() {
        if k.is_active() {
            let _ = writeln!(s, "Key Slot {i}: ENABLED");
            let _ = writeln!(s, "\tIterations:         \t{}", k.iterations);
            let _ = writeln!(
                s,
                "\tSalt:               \t{}",
                hex(&k.salt, "\t                      \t")
            );
            let _ = writeln!(
                s,
                "\tKey material offset:\t{}",
                k.key_material_offset_sectors
            );
            let _ = writeln!(s, "\tAF stripes:            \t{}", k.stripes);
        } else if k.state == super::LUKS1_SLOT_DISABLED {
            let _ = writeln!(s, "Key Slot {i}: DISABLED");
        } else {
            let _ = writeln!(s, "Key Slot {i}: DAMAGED (state {:#010x})", k.state);
        }
    }
    s
}

fn none_or(text: &str, none: &str) -> String {
    if text.is_empty() {
        none.to_string()
    } else {
        text.to_string()
    }
}

fn luks2(m: &Luks2Metadata) -> String {
    let mut s = String::from("LUKS header information\n");
    let _ = writeln!(s, "Version:       \t2");
    let _ = writeln!(s, "Epoch:         \t{}", m.seqid);
    let _ = writeln!(s, "Metadata area: \t{} [bytes]", m.hdr_size);
    let _ = writeln!(s, "Keyslots area: \t{} [bytes]", m.config.keyslots_size);
    let _ = writeln!(s, "UUID:          \t{}", m.uuid);
    let _ = writeln!(s, "Label:         \t{}", none_or(&m.label, "(no label)"));
    let _ = writeln!(
        s,
        "Subsystem:     \t{}",
        none_or(&m.subsystem, "(no subsystem)")
    );
    let _ = writeln!(
        s,
        "Flags:       \t{}",
        none_or(&m.config.flags.join(" "), "(no flags)")
    );
    if !m.config.requirements.is_empty() {
        let _ = writeln!(s, "Requirements:\t{}", m.config.requirements.join(" "));
    }
    let _ = writeln!(s, "\nData segments:");
    for (id, seg) in &m.segments {
        let _ = writeln!(s, "  {id}: {}", seg.kind);
        let _ = writeln!(s, "\toffset: {} [bytes]", seg.offset);
        match seg.size {
            None => {
                let _ = writeln!(s, "\tlength: (whole device)");
            }
            Some(n) => {
                let _ = writeln!(s, "\tlength: {n} [bytes]");
            }
        }
        if seg.kind == "crypt" {
            let _ = writeln!(s, "\tcipher: {}", seg.encryption);
            let _ = writeln!(s, "\tsector: {} [bytes]", seg.sector_size);
            if seg.iv_tweak != 0 {
                let _ = writeln!(s, "\tIV tweak: {}", seg.iv_tweak);
            }
        }
    }
    let _ = writeln!(s, "\nKeyslots:");
    let indent = "\t            ";
    for (id, slot) in &m.keyslots {
        let k = match slot {
            Ok(k) => k,
            Err(reason) => {
                let _ = writeln!(s, "  {id}: (unusable: {reason})");
                continue;
            }
        };
        let _ = writeln!(s, "  {id}: {}", k.kind);
        let _ = writeln!(s, "\tKey:        {} bits", u64::from(k.key_size) * 8);
        let priority = match k.priority {
            Some(0) => "ignored",
            Some(2) => "preferred",
            _ => "normal",
        };
        let _ = writeln!(s, "\tPriority:   {priority}");
        let _ = writeln!(s, "\tCipher:     {}", k.area.encryption);
        let _ = writeln!(s, "\tCipher key: {} bits", u64::from(k.area.key_size) * 8);
        match &k.kdf {
            Luks2Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            } => {
                let _ = writeln!(s, "\tPBKDF:      pbkdf2");
                let _ = writeln!(s, "\tHash:       {hash}");
                let _ = writeln!(s, "\tIterations: {iterations}");
                let _ = writeln!(s, "\tSalt:       {}", hex(salt, indent));
            }
            Luks2Kdf::Argon2 {
                kind,
                time,
                memory_kib,
                cpus,
                salt,
            } => {
                let _ = writeln!(s, "\tPBKDF:      {kind}");
                let _ = writeln!(s, "\tTime cost:  {time}");
                let _ = writeln!(s, "\tMemory:     {memory_kib}");
                let _ = writeln!(s, "\tThreads:    {cpus}");
                let _ = writeln!(s, "\tSalt:       {}", hex(salt, indent));
            }
        }
        let _ = writeln!(s, "\tAF stripes: {}", k.af.stripes);
        let _ = writeln!(s, "\tAF hash:    {}", k.af.hash);
        let _ = writeln!(s, "\tArea offset:{} [bytes]", k.area.offset);
        let _ = writeln!(s, "\tArea length:{} [bytes]", k.area.size);
        let digest = m.digests.iter().find_map(|(did, d)| match d {
            Ok(d) if d.keyslots.contains(id) => Some(*did),
            _ => None,
        });
        if let Some(did) = digest {
            let _ = writeln!(s, "\tDigest ID:  {did}");
        }
    }
    let _ = writeln!(s, "Tokens:");
    for (id, token) in &m.tokens {
        let kind = token.get("type").and_then(|t| t.as_str()).unwrap_or("?");
        let _ = writeln!(s, "  {id}: {kind}");
    }
    let _ = writeln!(s, "Digests:");
    for (id, d) in &m.digests {
        let d = match d {
            Ok(d) => d,
            Err(reason) => {
                let _ = writeln!(s, "  {id}: (unusable: {reason})");
                continue;
            }
        };
        let _ = writeln!(s, "  {id}: {}", d.kind);
        let _ = writeln!(s, "\tHash:       {}", d.hash);
        let _ = writeln!(s, "\tIterations: {}", d.iterations);
        let _ = writeln!(s, "\tSalt:       {}", hex(&d.salt, indent));
        let _ = writeln!(s, "\tDigest:     {}", hex(&d.digest, indent));
    }
    s
}
