//! The superblock (block 0) and its copies held as metadata snapshots.

use super::btree::{le32, le64};
use super::space_map::{SmRoot, SM_ROOT_BYTES};
use super::{METADATA_BLOCK_BYTES, SUPERBLOCK_MAGIC};

pub const NEEDS_CHECK: u32 = 1;
/// Where the superblock lives.
pub const SUPERBLOCK_LOCATION: u64 = 0;
/// Metadata block size in sectors.
pub const METADATA_BLOCK_SECTORS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Superblock {
    pub flags: u32,
    pub uuid: [u8; 16],
    pub magic: u64,
    pub version: u32,
    pub time: u32,
    pub transaction_id: u64,
    pub metadata_snap: u64,
    pub data_sm: SmRoot,
    pub metadata_sm: SmRoot,
    pub data_mapping_root: u64,
    pub device_details_root: u64,
    pub data_block_size: u32,
    pub metadata_block_size: u32,
    pub metadata_nr_blocks: u64,
    pub compat_flags: u32,
    pub compat_ro_flags: u32,
    pub incompat_flags: u32,
}

impl Superblock {
    pub fn parse(b: &[u8]) -> Superblock {
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        Superblock {
            flags: le32(b, 4),
            uuid,
            magic: le64(b, 32),
            version: le32(b, 40),
            time: le32(b, 44),
            transaction_id: le64(b, 48),
            metadata_snap: le64(b, 56),
            data_sm: SmRoot::parse(&b[64..64 + SM_ROOT_BYTES]),
            metadata_sm: SmRoot::parse(&b[192..192 + SM_ROOT_BYTES]),
            data_mapping_root: le64(b, 320),
            device_details_root: le64(b, 328),
            data_block_size: le32(b, 336),
            metadata_block_size: le32(b, 340),
            metadata_nr_blocks: le64(b, 344),
            compat_flags: le32(b, 352),
            compat_ro_flags: le32(b, 356),
            incompat_flags: le32(b, 360),
        }
    }

    /// What is wrong with the fields tessera needs, if anything (the checksum, location and
    /// magic are checked apart).
    pub fn field_problem(&self) -> Option<String> {
        if !(1..=super::METADATA_VERSION).contains(&self.version) {
            return Some(format!(
                "superblock has metadata version {}, tessera reads 1 and 2",
                self.version
            ));
        }
        if self.metadata_block_size != METADATA_BLOCK_SECTORS {
            return Some(format!(
                "superblock has {}-sector metadata blocks, expected {METADATA_BLOCK_SECTORS}",
                self.metadata_block_size
            ));
        }
        if self.data_block_size == 0 {
            return Some("superblock has a data block size of 0".into());
        }
        if self.incompat_flags != 0 {
            return Some(format!(
                "superblock has unknown incompatible features {:#x}",
                self.incompat_flags
            ));
        }
        None
    }

    /// The superblock as a block at `location` (checksum left for the caller).
    pub fn to_block(self, location: u64) -> Vec<u8> {
        let mut b = vec![0u8; METADATA_BLOCK_BYTES];
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&location.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        b[32..40].copy_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
        b[40..44].copy_from_slice(&self.version.to_le_bytes());
        b[44..48].copy_from_slice(&self.time.to_le_bytes());
        b[48..56].copy_from_slice(&self.transaction_id.to_le_bytes());
        b[56..64].copy_from_slice(&self.metadata_snap.to_le_bytes());
        self.data_sm.write(&mut b[64..64 + SM_ROOT_BYTES]);
        self.metadata_sm.write(&mut b[192..192 + SM_ROOT_BYTES]);
        b[320..328].copy_from_slice(&self.data_mapping_root.to_le_bytes());
        b[328..336].copy_from_slice(&self.device_details_root.to_le_bytes());
        b[336..340].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[340..344].copy_from_slice(&self.metadata_block_size.to_le_bytes());
        b[344..352].copy_from_slice(&self.metadata_nr_blocks.to_le_bytes());
        b[352..356].copy_from_slice(&self.compat_flags.to_le_bytes());
        b[356..360].copy_from_slice(&self.compat_ro_flags.to_le_bytes());
        b[360..364].copy_from_slice(&self.incompat_flags.to_le_bytes());
        b
    }
}
