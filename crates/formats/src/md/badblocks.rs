//! The bad-block log of a 1.x member (linux md.c super_1_load/super_1_sync, mdadm super1.c):
//! `bblog_size` sectors at `bblog_offset` sectors from the superblock (signed), holding
//! little-endian 64-bit entries `block << 10 | count` (blocks of `1 << bblog_shift`
//! sectors, device sectors from the start of the member, count 1..1023), ended by an
//! all-ones entry. The superblock's [`FEATURE_BAD_BLOCKS`] says the log is not empty; a
//! zero offset or size means the member keeps no log. md loads at most one 4 KiB page.

use tessera_block::badblocks::{BadBlocks, BadRange};
use tessera_block::BlockDevice;

use super::super1::{Superblock1, FEATURE_BAD_BLOCKS};
use super::MdError;

/// Sectors of log md reads at most (one page), and what mdadm reserves.
pub const LOG_SECTORS: u16 = 8;
/// The largest block shift tessera accepts; md and mdadm use 0.
pub const MAX_SHIFT: u8 = 16;
const END: u64 = u64::MAX;

/// Where a member's log lives, if it keeps one: (byte offset, bytes).
pub fn log_area(sb: &Superblock1) -> Option<(u64, u64)> {
    if sb.bblog_offset == 0 || sb.bblog_size == 0 {
        return None;
    }
    let at = sb.super_offset as i64 + i64::from(sb.bblog_offset);
    (at >= 0).then(|| (at as u64 * 512, u64::from(sb.bblog_size) * 512))
}

/// Entries a member's log has room for (mdadm's "N entries available"), at most md's page.
pub fn capacity(sb: &Superblock1) -> usize {
    log_area(sb).map_or(0, |(_, bytes)| {
        ((bytes / 8) as usize).min(tessera_block::badblocks::MAX_ENTRIES)
    })
}

/// Decodes log bytes as md's loader does: entries up to the first all-ones one; zero
/// entries (a cleared slot) are skipped. Entries may be in any order and overlap; the
/// table sorts and merges them, all acknowledged.
pub fn decode(b: &[u8], shift: u8, device: &str, at: u64) -> Result<BadBlocks, MdError> {
    let bad = |why: String| MdError::BadBlocks {
        device: device.to_string(),
        offset: at,
        why,
    };
    if shift > MAX_SHIFT {
        return Err(bad(format!("block shift {shift} is more than {MAX_SHIFT}")));
    }
    let mut table = BadBlocks::new(u32::from(shift), tessera_block::badblocks::MAX_ENTRIES);
    for (i, w) in b.chunks_exact(8).enumerate() {
        let e = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        if e == END {
            break;
        }
        if e == 0 {
            continue;
        }
        let count = e & 0x3ff;
        let block = e >> 10;
        if count == 0 {
            return Err(bad(format!("entry {i} ({e:#018x}) covers no sectors")));
        }
        let (start, len) = (block << shift, count << shift);
        if start >> shift != block {
            return Err(bad(format!(
                "entry {i} starts past the last sector md can name"
            )));
        }
        if !table.set(start, len, true) {
            return Err(bad(format!(
                "entry {i} (sector {start}, {len} sectors) does not fit the {} entries md keeps",
                tessera_block::badblocks::MAX_ENTRIES
            )));
        }
    }
    Ok(table)
}

/// The log's bytes for `entries`: the entries in order, then all ones to `sectors`.
/// None if they do not fit (entries longer than 1023 blocks are split as they go).
pub fn encode(entries: &[BadRange], shift: u8, sectors: u16) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(usize::from(sectors) * 512);
    for e in entries {
        let (mut block, end) = (e.start >> shift, (e.start + e.len).div_ceil(1 << shift));
        while block < end {
            let n = (end - block).min(0x3ff);
            out.extend_from_slice(&((block << 10) | n).to_le_bytes());
            block += n;
        }
    }
    let bytes = usize::from(sectors) * 512;
    if out.len() > bytes {
        return None;
    }
    out.resize(bytes, 0xff);
    Some(out)
}

/// Reads the log of a member whose superblock is `sb`: `None` if it keeps none, an empty
/// table if its superblock says the log is empty.
pub fn read(dev: &dyn BlockDevice, sb: &Superblock1) -> Result<Option<BadBlocks>, MdError> {
    let Some((at, bytes)) = log_area(sb) else {
        return Ok(None);
    };
    let capacity = capacity(sb);
    if sb.feature_map & FEATURE_BAD_BLOCKS == 0 {
        return Ok(Some(BadBlocks::new(u32::from(sb.bblog_shift), capacity)));
    }
    let bytes = bytes.min(u64::from(LOG_SECTORS) * 512);
    if at
        .checked_add(bytes)
        .is_none_or(|end| end > dev.size_bytes())
    {
        return Err(MdError::BadBlocks {
            device: dev.name().into(),
            offset: at,
            why: "the log runs past the end of the device".into(),
        });
    }
    let mut b = vec![0u8; bytes as usize];
    dev.read_at(&mut b, at)?;
    let table = decode(&b, sb.bblog_shift, dev.name(), at)?;
    if table.count() > capacity {
        return Err(MdError::BadBlocks {
            device: dev.name().into(),
            offset: at,
            why: format!(
                "{} entries, more than the {capacity} the log holds",
                table.count()
            ),
        });
    }
    // The table keeps what the log holds room for.
    let mut sized = BadBlocks::new(u32::from(sb.bblog_shift), capacity);
    for e in table.entries() {
        sized.set(e.start, e.len, true);
    }
    Ok(Some(sized))
}

/// Writes `table` as the log of the member whose superblock is `sb`, and sets or clears
/// the superblock's feature bit to match (the caller writes the superblock after).
pub fn write(
    dev: &dyn BlockDevice,
    sb: &mut Superblock1,
    table: &BadBlocks,
) -> Result<(), MdError> {
    let fail = |why: String| MdError::BadBlocks {
        device: dev.name().into(),
        offset: log_area(sb).map_or(0, |a| a.0),
        why,
    };
    let Some((at, _)) = log_area(sb) else {
        return Err(fail("the member keeps no bad-block log".into()));
    };
    if table.shift() != u32::from(sb.bblog_shift) {
        return Err(fail(format!(
            "a table of {}-sector blocks in a log of {}-sector blocks",
            1u64 << table.shift(),
            1u64 << sb.bblog_shift
        )));
    }
    let sectors = sb.bblog_size.min(LOG_SECTORS);
    let bytes = encode(&table.entries(), sb.bblog_shift, sectors).ok_or_else(|| {
        fail(format!(
            "{} entries do not fit {sectors} sectors",
            table.count()
        ))
    })?;
    dev.write_at(&bytes, at)?;
    if table.is_empty() {
        sb.feature_map &= !FEATURE_BAD_BLOCKS;
    } else {
        sb.feature_map |= FEATURE_BAD_BLOCKS;
    }
    Ok(())
}

/// `mdadm --examine-badblocks`'s text for a member.
pub fn examine_text(device: &str, sb: &Superblock1, table: Option<&BadBlocks>) -> String {
    if sb.bblog_size == 0 || sb.bblog_size > 100 || sb.bblog_offset == 0 {
        return format!("No bad-blocks list configured on {device}\n");
    }
    match table {
        Some(t) if sb.feature_map & FEATURE_BAD_BLOCKS != 0 => {
            let mut out = format!("Bad-blocks on {device}:\n");
            // mdadm prints each on-disk entry (at most 1023 blocks).
            let Some(bytes) = encode(&t.entries(), sb.bblog_shift, LOG_SECTORS) else {
                return out;
            };
            for w in bytes.chunks_exact(8) {
                let e = u64::from_le_bytes(w.try_into().expect("8 bytes"));
                if e == END {
                    break;
                }
                out.push_str(&format!(
                    "{:>20} for {} sectors\n",
                    (e >> 10) << sb.bblog_shift,
                    (e & 0x3ff) << sb.bblog_shift
                ));
            }
            out
        }
        _ => format!("Bad-blocks list is empty in {device}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_then_decode_gives_the_table_back(
            shift in 0u8..3,
            ranges in proptest::collection::vec((0u64..1 << 40, 1u64..3000), 0..40),
        ) {
            let mut t = BadBlocks::new(u32::from(shift), 512);
            for (s, n) in ranges {
                t.set(s, n, true);
            }
            let bytes = encode(&t.entries(), shift, LOG_SECTORS).unwrap();
            prop_assert_eq!(bytes.len(), 4096);
            let back = decode(&bytes, shift, "m", 0).unwrap();
            prop_assert_eq!(back, t);
        }

        #[test]
        fn decoding_any_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..4096), shift in 0u8..40) {
            let _ = decode(&b, shift, "m", 0);
        }
    }

    #[test]
    fn a_new_1_0_member_keeps_its_log_just_before_the_superblock_as_mdadm_lays_it() {
        use crate::md::create::{data_area, member_superblock, used_sectors, NewArray};
        use crate::md::{probe, write as write_sb, MdSuperblock, MdVersion};
        use tessera_block::MemoryDevice;
        // mdadm 4.2 on a 16 MiB member: superblock at 32752, data_size 32736, the log
        // 8 sectors at offset -8.
        let bytes = 16u64 << 20;
        assert_eq!(data_area(MdVersion::V1_0, bytes), Some((0, 32736)));
        let array = NewArray {
            version: MdVersion::V1_0,
            name: "h:bb10".into(),
            uuid: [7; 16],
            level: 5,
            layout: 2,
            chunk_bytes: 64 << 10,
            raid_disks: 3,
            now: 1_700_000_000,
        };
        let used = used_sectors(32736, 64 << 10);
        let Some(MdSuperblock::V1(mut sb)) = member_superblock(&array, 1, [1; 16], bytes, used)
        else {
            panic!("a 1.x superblock")
        };
        assert_eq!((sb.super_offset, sb.data_size), (32752, 32736));
        assert_eq!((sb.bblog_offset, sb.bblog_size), (-8, 8));
        assert_eq!(log_area(&sb), Some((32744 * 512, 4096)));
        assert_eq!(capacity(&sb), 512);
        // The log lies between the data and the superblock.
        assert!(sb.data_offset + sb.data_size <= 32744);

        // Written and read back through the superblock, as a member records errors (the
        // table keeps entries of at most 512 sectors, as the kernel's does).
        let dev = MemoryDevice::new("m10", bytes);
        let mut table = BadBlocks::new(0, capacity(&sb));
        assert!(table.set(100, 8, true) && table.set(30000, 1500, true));
        write(&dev, &mut sb, &table).unwrap();
        write_sb(&dev, MdVersion::V1_0, &MdSuperblock::V1(sb.clone())).unwrap();
        let Some((MdVersion::V1_0, MdSuperblock::V1(back))) = probe(&dev).unwrap() else {
            panic!("the 1.0 superblock back")
        };
        assert_ne!(back.feature_map & FEATURE_BAD_BLOCKS, 0);
        assert_eq!(
            read(&dev, &back).unwrap().unwrap().entries(),
            table.entries()
        );
        let text = examine_text("m10", &back, Some(&table));
        assert_eq!(
            text,
            format!(
                "Bad-blocks on m10:\n{:>20} for 8 sectors\n{:>20} for 512 sectors\n{:>20} for 512 sectors\n{:>20} for 476 sectors\n",
                100, 30000, 30512, 31024
            )
        );

        // The whole data area used: the log keeps its place, as the area leaves it room.
        let full = member_superblock(&array, 1, [1; 16], bytes, 32736).unwrap();
        let MdSuperblock::V1(full) = full else {
            panic!("a 1.x superblock")
        };
        assert_eq!(
            (full.bblog_offset, full.bblog_size, full.data_size),
            (-8, 8, 32736)
        );
        assert!(member_superblock(&array, 1, [1; 16], bytes, 32737).is_none());
    }

    #[test]
    fn entries_are_block_shifted_count_and_end_with_all_ones() {
        let mut t = BadBlocks::new(0, 512);
        assert!(t.set(4000, 700, true));
        let b = encode(&t.entries(), 0, 1).unwrap();
        let e0 = u64::from_le_bytes(b[0..8].try_into().unwrap());
        let e1 = u64::from_le_bytes(b[8..16].try_into().unwrap());
        assert_eq!((e0 >> 10, e0 & 0x3ff), (4000, 512));
        assert_eq!((e1 >> 10, e1 & 0x3ff), (4512, 188));
        assert!(b[16..].iter().all(|&x| x == 0xff));
        // A zero entry is skipped, a zero-count one refused.
        let mut z = vec![0u8; 8];
        z.extend_from_slice(&b[..8]);
        assert_eq!(decode(&z, 0, "m", 0).unwrap().count(), 1);
        let e = decode(&(5u64 << 10).to_le_bytes(), 0, "m", 0).unwrap_err();
        assert!(e.to_string().contains("covers no sectors"), "{e}");
    }
}
