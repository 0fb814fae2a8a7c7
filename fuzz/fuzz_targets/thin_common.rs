//! The fuzz input format of the thin metadata targets: a small metadata device described
//! block by block, so inputs stay small and checksums can be made right.
//!
//! Byte 0: the device's size in blocks (16 to 79). Then chunks of
//! `[block number, kind, length lo, length hi, bytes...]`: the block's first `length` bytes
//! (the rest zero). Kind 1-4 reseals the block's checksum as a superblock, btree node, bitmap
//! or index block, so mutations reach past the checksums; other kinds keep the bytes as given.
#![allow(dead_code)]

use std::sync::Arc;

use tessera_block::MemoryDevice;

pub const BLOCK: usize = 4096;

pub fn device_from(data: &[u8]) -> Option<Arc<MemoryDevice>> {
    let (&size, mut rest) = data.split_first()?;
    let nr_blocks = 16 + usize::from(size % 64);
    let mut image = vec![0u8; nr_blocks * BLOCK];
    while rest.len() >= 4 {
        let block = usize::from(rest[0]) % nr_blocks;
        let kind = rest[1];
        let len = (usize::from(u16::from_le_bytes([rest[2], rest[3]]))).min(BLOCK).min(rest.len() - 4);
        let buf = &mut image[block * BLOCK..(block + 1) * BLOCK];
        buf[..len].copy_from_slice(&rest[4..4 + len]);
        let salt = match kind {
            1 => Some(160_774u32),
            2 => Some(121_107),
            3 => Some(240_779),
            4 => Some(160_478),
            _ => None,
        };
        if let Some(salt) = salt {
            let csum = crc32c::crc32c(&buf[4..]) ^ 0xffff_ffff ^ salt;
            buf[..4].copy_from_slice(&csum.to_le_bytes());
        }
        rest = &rest[4 + len..];
    }
    Some(Arc::new(MemoryDevice::with_contents("fuzz", &image)))
}
