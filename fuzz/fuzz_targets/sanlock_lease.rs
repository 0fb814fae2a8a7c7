//! sanlock's lease records (leader, delta-lease lockspace, paxos lease with its shared-mode
//! blocks) and the daemon's socket replies over arbitrary bytes: never panic, errors name
//! what was read, and what is accepted agrees with the bytes (checksum, holders within the
//! lease's hosts and inside the bytes given). A record made valid (magic, sector size,
//! checksum fixed) is always accepted with the fields it holds.
//! Input: a selector byte, then the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_lock::ondisk::{self, sanlock_crc, LeaderRecord};
use tessera_lock::sanlock;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            match LeaderRecord::parse("fuzz", bytes) {
                Ok(r) => {
                    assert_eq!(r.checksum, sanlock_crc(&bytes[..168]));
                    assert!(r.sector_size == 512 || r.sector_size == 4096);
                }
                Err(e) => assert!(e.to_string().contains("fuzz"), "{e}"),
            }
            // The same bytes made valid are accepted with their fields.
            if bytes.len() >= 200 {
                let mut b = bytes[..200].to_vec();
                b[0..4].copy_from_slice(&ondisk::PAXOS_DISK_MAGIC.to_le_bytes());
                b[12..16].copy_from_slice(&512u32.to_le_bytes());
                let crc = sanlock_crc(&b[..168]);
                b[168..172].copy_from_slice(&crc.to_le_bytes());
                let r = LeaderRecord::parse("fuzz", &b).expect("a valid record");
                assert_eq!(
                    r.owner_id,
                    u64::from_le_bytes(b[32..40].try_into().unwrap())
                );
                assert_eq!(
                    r.timestamp,
                    u64::from_le_bytes(b[152..160].try_into().unwrap())
                );
                assert!(r.space_name.len() <= 48 * 3 && r.resource_name.len() <= 48 * 3);
            }
        }
        1 => match ondisk::parse_resource("fuzz", bytes) {
            Ok((leader, owners)) => {
                assert!(!leader.is_delta());
                for (host, _) in &owners.shared {
                    assert!(*host >= 1 && *host <= leader.num_hosts);
                    let end = (*host as usize + 1) * leader.sector_size as usize + 128 + 16;
                    assert!(end <= bytes.len());
                }
                if let Some((id, _)) = owners.exclusive {
                    assert_eq!(id, leader.owner_id);
                    assert!(leader.timestamp != 0);
                }
            }
            Err(e) => assert!(e.to_string().contains("fuzz"), "{e}"),
        },
        2 => match ondisk::parse_lockspace("fuzz", "lvm_vg0", bytes) {
            Ok(hosts) => {
                let mut last = 0;
                for h in &hosts {
                    assert!(h.host_id > last, "host ids in order");
                    last = h.host_id;
                }
            }
            Err(e) => assert!(e.to_string().contains("fuzz"), "{e}"),
        },
        _ => {
            if let Ok(h) = sanlock::parse_reply_header(bytes) {
                assert!(bytes.len() >= 32);
                assert_eq!(
                    h.result as u32,
                    u32::from_ne_bytes(bytes[24..28].try_into().unwrap())
                );
            }
            if let Ok(ls) = sanlock::parse_lockspace(bytes) {
                assert!(bytes.len() >= 1104);
                assert!(ls.name.len() <= 48 * 3);
            }
        }
    }
});
