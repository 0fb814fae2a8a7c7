//! sanlock's lease records as the daemon writes them (sanlock `leader.h`,
//! `paxos_dblock.h`, `mode_block.h`), read only: tessera asks the daemon to write them and
//! reads them back to tell who holds what.
//!
//! A lockspace is one sector per host id, each a leader record with the delta-lease magic:
//! its owner is the host id, its resource name the name of the host that last joined with
//! it, its timestamp the last renewal (0 once the host left). A resource is a disk-paxos
//! lease: a leader record (owner host id and timestamp, 0 once released), a request record,
//! then one sector per host id whose second half is the mode block that marks shared holders.
//! Every field is little endian; the checksum is crc32c seeded with ~1, not inverted, over
//! the record before its checksum field.

use serde::Serialize;

pub const PAXOS_DISK_MAGIC: u32 = 0x0615_2010;
/// What `sanlock client init -r ... -Z`/resource deletion leaves: a cleared paxos lease.
pub const PAXOS_DISK_CLEAR: u32 = 0x1128_2016;
pub const DELTA_DISK_MAGIC: u32 = 0x1221_2010;
/// Bytes of a leader record that the checksum covers.
const LEADER_CHECKSUM_LEN: usize = 168;
/// Bytes of a leader record as stored (the rest of its sector is zero or a host bitmap).
pub const LEADER_RECORD_BYTES: usize = 200;
/// The shared-mode block's place in a host's paxos sector.
const MBLOCK_OFFSET: usize = 128;
const MBLOCK_SHARED: u32 = 0x1;
const NAME_ID_SIZE: usize = 48;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OndiskError {
    #[error("{what}: {len} bytes, a sanlock record needs {need}")]
    Short {
        what: String,
        len: usize,
        need: usize,
    },
    #[error("{what}: magic {magic:#010x} is not a sanlock {expected}")]
    Magic {
        what: String,
        magic: u32,
        expected: &'static str,
    },
    #[error("{what}: checksum {stored:#010x} does not match the record's {computed:#010x}")]
    Checksum {
        what: String,
        stored: u32,
        computed: u32,
    },
    #[error("{what}: sector size {size} is not 512 or 4096")]
    SectorSize { what: String, size: u32 },
}

/// The record at the start of every delta and paxos lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderRecord {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub sector_size: u32,
    pub num_hosts: u64,
    pub max_hosts: u64,
    pub owner_id: u64,
    pub owner_generation: u64,
    pub lver: u64,
    pub space_name: String,
    pub resource_name: String,
    pub timestamp: u64,
    pub checksum: u32,
    pub io_timeout: u16,
    pub write_id: u64,
    pub write_generation: u64,
    pub write_timestamp: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
/// A NUL-padded name field (no terminator when it fills the field).
fn name_at(b: &[u8], at: usize) -> String {
    let field = &b[at..at + NAME_ID_SIZE];
    let end = field.iter().position(|&c| c == 0).unwrap_or(NAME_ID_SIZE);
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// sanlock's checksum: crc32c seeded with ~1 and not inverted at the end.
pub fn sanlock_crc(bytes: &[u8]) -> u32 {
    // crc32c_append inverts on the way in and out; undo both.
    !crc32c::crc32c_append(!0xffff_fffeu32, bytes)
}

impl LeaderRecord {
    /// Reads the record at the start of `bytes` (`what` names it in errors), checking its
    /// magic is one of sanlock's and its checksum.
    pub fn parse(what: &str, bytes: &[u8]) -> Result<LeaderRecord, OndiskError> {
        if bytes.len() < LEADER_RECORD_BYTES {
            return Err(OndiskError::Short {
                what: what.into(),
                len: bytes.len(),
                need: LEADER_RECORD_BYTES,
            });
        }
        let b = bytes;
        let magic = u32_at(b, 0);
        if ![PAXOS_DISK_MAGIC, PAXOS_DISK_CLEAR, DELTA_DISK_MAGIC].contains(&magic) {
            return Err(OndiskError::Magic {
                what: what.into(),
                magic,
                expected: "lease",
            });
        }
        let checksum = u32_at(b, 168);
        let computed = sanlock_crc(&b[..LEADER_CHECKSUM_LEN]);
        if checksum != computed {
            return Err(OndiskError::Checksum {
                what: what.into(),
                stored: checksum,
                computed,
            });
        }
        let sector_size = u32_at(b, 12);
        if sector_size != 512 && sector_size != 4096 {
            return Err(OndiskError::SectorSize {
                what: what.into(),
                size: sector_size,
            });
        }
        Ok(LeaderRecord {
            magic,
            version: u32_at(b, 4),
            flags: u32_at(b, 8),
            sector_size,
            num_hosts: u64_at(b, 16),
            max_hosts: u64_at(b, 24),
            owner_id: u64_at(b, 32),
            owner_generation: u64_at(b, 40),
            lver: u64_at(b, 48),
            space_name: name_at(b, 56),
            resource_name: name_at(b, 104),
            timestamp: u64_at(b, 152),
            checksum,
            io_timeout: u16_at(b, 174),
            write_id: u64_at(b, 176),
            write_generation: u64_at(b, 184),
            write_timestamp: u64_at(b, 192),
        })
    }

    pub fn is_delta(&self) -> bool {
        self.magic == DELTA_DISK_MAGIC
    }
    pub fn is_paxos(&self) -> bool {
        self.magic == PAXOS_DISK_MAGIC
    }
}

/// One host id's slot of a lockspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeltaLease {
    pub host_id: u64,
    pub generation: u64,
    /// The name of the host that last held this host id (sanlock's host name).
    pub host_name: String,
    /// The last renewal (seconds of the holder's monotonic clock); 0 once it left.
    pub timestamp: u64,
    pub io_timeout: u16,
}

impl DeltaLease {
    /// True while a host holds this host id (it renews the timestamp; leaving clears it).
    pub fn is_held(&self) -> bool {
        self.timestamp != 0
    }
}

/// The host ids of the lockspace in `bytes` (its delta-lease area from the start) that a
/// host ever joined with; slots never used (timestamp and name empty) are left out.
/// `lockspace` is the name expected in every record.
pub fn parse_lockspace(
    what: &str,
    lockspace: &str,
    bytes: &[u8],
) -> Result<Vec<DeltaLease>, OndiskError> {
    let first = LeaderRecord::parse(what, bytes)?;
    if !first.is_delta() || first.space_name != lockspace {
        return Err(OndiskError::Magic {
            what: format!("{what} (lockspace '{}')", first.space_name),
            magic: first.magic,
            expected: "delta lease of the lockspace",
        });
    }
    let sector = first.sector_size as usize;
    let mut leases = Vec::new();
    for (index, chunk) in bytes.chunks(sector).enumerate() {
        if chunk.len() < LEADER_RECORD_BYTES || u32_at(chunk, 0) != DELTA_DISK_MAGIC {
            continue;
        }
        let Ok(record) = LeaderRecord::parse(what, chunk) else {
            continue;
        };
        if record.space_name != lockspace || record.owner_id != index as u64 + 1 {
            continue;
        }
        if record.timestamp == 0 && record.resource_name.is_empty() {
            continue;
        }
        leases.push(DeltaLease {
            host_id: record.owner_id,
            generation: record.owner_generation,
            host_name: record.resource_name,
            timestamp: record.timestamp,
            io_timeout: record.io_timeout,
        });
    }
    Ok(leases)
}

/// Who holds a paxos lease, as its sectors say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct LeaseOwners {
    /// The exclusive holder: host id and its generation.
    pub exclusive: Option<(u64, u64)>,
    /// The holders in shared mode: host ids and generations.
    pub shared: Vec<(u64, u64)>,
}

/// The resource lease in `bytes` (its area from the start): its leader and its holders.
pub fn parse_resource(
    what: &str,
    bytes: &[u8],
) -> Result<(LeaderRecord, LeaseOwners), OndiskError> {
    let leader = LeaderRecord::parse(what, bytes)?;
    if leader.is_delta() {
        return Err(OndiskError::Magic {
            what: what.into(),
            magic: leader.magic,
            expected: "paxos lease",
        });
    }
    let mut owners = LeaseOwners::default();
    if !leader.is_paxos() {
        return Ok((leader, owners));
    }
    // A shared acquisition holds the leader only for a moment (the short-hold flag).
    if leader.timestamp != 0 && leader.owner_id != 0 && leader.flags & 0x1 == 0 {
        owners.exclusive = Some((leader.owner_id, leader.owner_generation));
    }
    let sector = leader.sector_size as usize;
    let hosts = leader.num_hosts.min(leader.max_hosts.max(leader.num_hosts));
    for host in 1..=hosts {
        let at = (host as usize + 1).saturating_mul(sector);
        let Some(block) = bytes.get(at + MBLOCK_OFFSET..at + MBLOCK_OFFSET + 16) else {
            break;
        };
        if u32_at(block, 0) & MBLOCK_SHARED != 0 {
            owners.shared.push((host, u64_at(block, 8)));
        }
    }
    Ok((leader, owners))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(magic: u32, space: &str, resource: &str, owner: u64, timestamp: u64) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..4].copy_from_slice(&magic.to_le_bytes());
        b[12..16].copy_from_slice(&512u32.to_le_bytes());
        b[16..24].copy_from_slice(&2000u64.to_le_bytes());
        b[24..32].copy_from_slice(&2000u64.to_le_bytes());
        b[32..40].copy_from_slice(&owner.to_le_bytes());
        b[40..48].copy_from_slice(&1u64.to_le_bytes());
        b[56..56 + space.len()].copy_from_slice(space.as_bytes());
        b[104..104 + resource.len()].copy_from_slice(resource.as_bytes());
        b[152..160].copy_from_slice(&timestamp.to_le_bytes());
        let crc = sanlock_crc(&b[..LEADER_CHECKSUM_LEN]);
        b[168..172].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn checksum_matches_a_record_sanlock_wrote() {
        // The VGLK leader `sanlock client init -r LS:VGLK:FILE:OFFSET` wrote (sanlock 3.8.5).
        let mut b = vec![0u8; 512];
        b[0..4].copy_from_slice(&PAXOS_DISK_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&0x0006_0004u32.to_le_bytes());
        b[8..12].copy_from_slice(&0x10u32.to_le_bytes());
        b[12..16].copy_from_slice(&512u32.to_le_bytes());
        b[16..24].copy_from_slice(&2000u64.to_le_bytes());
        b[24..32].copy_from_slice(&2000u64.to_le_bytes());
        b[56..58].copy_from_slice(b"LS");
        b[104..108].copy_from_slice(b"VGLK");
        b[168..172].copy_from_slice(&0x7da3_3474u32.to_le_bytes());
        let r = LeaderRecord::parse("VGLK", &b).unwrap();
        assert_eq!(r.resource_name, "VGLK");
        assert_eq!(r.space_name, "LS");
        b[104] = b'X';
        assert!(matches!(
            LeaderRecord::parse("VGLK", &b),
            Err(OndiskError::Checksum { .. })
        ));
    }

    #[test]
    fn owners_of_a_lease() {
        let mut area = record(PAXOS_DISK_MAGIC, "lvm_vg", "VGLK", 3, 77);
        area.resize(512 * 10, 0);
        let (leader, owners) = parse_resource("VGLK", &area[..512 * 10]).unwrap();
        assert_eq!(leader.owner_id, 3);
        assert_eq!(owners.exclusive, Some((3, 1)));
        // Host 2 shared: its sector is the 4th (leader, request, host 1, host 2).
        let mut area = record(PAXOS_DISK_MAGIC, "lvm_vg", "VGLK", 3, 0);
        area.resize(512 * 10, 0);
        area[512 * 3 + MBLOCK_OFFSET] = 1;
        area[512 * 3 + MBLOCK_OFFSET + 8] = 5;
        let (_, owners) = parse_resource("VGLK", &area).unwrap();
        assert_eq!(owners.exclusive, None);
        assert_eq!(owners.shared, vec![(2, 5)]);
    }

    #[test]
    fn lockspace_hosts() {
        let mut area = Vec::new();
        area.extend(record(DELTA_DISK_MAGIC, "lvm_vg", "", 1, 0));
        area.extend(record(DELTA_DISK_MAGIC, "lvm_vg", "host2", 2, 1234));
        area.extend(record(DELTA_DISK_MAGIC, "lvm_vg", "host3", 3, 0));
        let hosts = parse_lockspace("ls", "lvm_vg", &area).unwrap();
        assert_eq!(hosts.len(), 2);
        assert!(hosts[0].is_held() && hosts[0].host_name == "host2");
        assert!(!hosts[1].is_held());
        assert!(parse_lockspace("ls", "lvm_other", &area).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(LeaderRecord::parse("x", &[0u8; 100]).is_err());
        assert!(LeaderRecord::parse("x", &[0xffu8; 512]).is_err());
        assert!(parse_resource("x", &[]).is_err());
    }
}
