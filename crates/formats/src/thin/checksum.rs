//! Block checksums: `crc32c(block[4..]) ^ 0xffffffff ^ salt`, stored little endian in the
//! block's first four bytes. The salt tells the block types apart, so a bitmap read where a
//! btree node is expected fails its checksum.

use super::METADATA_BLOCK_BYTES;

/// What a metadata block holds; each kind has its own checksum salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockKind {
    Superblock,
    Node,
    Bitmap,
    Index,
}

impl BlockKind {
    pub fn salt(self) -> u32 {
        match self {
            BlockKind::Superblock => 160_774,
            BlockKind::Node => 121_107,
            BlockKind::Bitmap => 240_779,
            BlockKind::Index => 160_478,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Superblock => "superblock",
            BlockKind::Node => "btree node",
            BlockKind::Bitmap => "space map bitmap",
            BlockKind::Index => "space map index",
        }
    }
}

/// The checksum `block` should carry as a block of `kind`.
pub fn expected(block: &[u8], kind: BlockKind) -> u32 {
    crc32c::crc32c(&block[4..METADATA_BLOCK_BYTES]) ^ 0xffff_ffff ^ kind.salt()
}

/// The checksum stored in `block`.
pub fn stored(block: &[u8]) -> u32 {
    u32::from_le_bytes([block[0], block[1], block[2], block[3]])
}

/// Stores the right checksum for `kind` into `block`.
pub fn seal(block: &mut [u8], kind: BlockKind) {
    let csum = expected(block, kind);
    block[..4].copy_from_slice(&csum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_verify_and_salts_differ() {
        let mut block = vec![7u8; METADATA_BLOCK_BYTES];
        seal(&mut block, BlockKind::Node);
        assert_eq!(stored(&block), expected(&block, BlockKind::Node));
        assert_ne!(stored(&block), expected(&block, BlockKind::Bitmap));
    }
}
