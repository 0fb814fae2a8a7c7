//! Superblocks for a new array, laid out as mdadm lays them out: 1.2 at 4 KiB with the data
//! from 1 MiB, 1.1 at the start with the data from 1 MiB, 1.0 and 0.90 near the end with the
//! data from the start. Every member is in sync and the array clean: the creator makes the
//! data area consistent first (zeroed members have consistent parity).

use super::super0::{self, Disk0, Superblock0};
use super::super1::{self, Superblock1};
use super::{MdSuperblock, MdVersion};

/// Sectors before the data on 1.1 and 1.2 members.
pub const DATA_OFFSET_1X: u64 = 2048;

/// Role-table entries in a new 1.x superblock: room for later members.
const MAX_DEV_NEW: usize = 384;

/// What every member of a new array shares.
#[derive(Debug, Clone)]
pub struct NewArray {
    pub version: MdVersion,
    /// "homehost:name" for 1.x (at most 32 bytes); 0.90 has no name.
    pub name: String,
    pub uuid: [u8; 16],
    pub level: i32,
    pub layout: u32,
    /// 0 for raid1.
    pub chunk_bytes: u64,
    pub raid_disks: u32,
    /// Seconds since the epoch.
    pub now: u64,
}

/// Where a member's data lies: (data offset, sectors available for data).
pub fn data_area(version: MdVersion, device_bytes: u64) -> Option<(u64, u64)> {
    let at = version.offset_bytes(device_bytes)? / 512;
    let sectors = device_bytes / 512;
    match version {
        MdVersion::V1_1 | MdVersion::V1_2 => {
            Some((DATA_OFFSET_1X, sectors.checked_sub(DATA_OFFSET_1X)?))
        }
        // Data from the start up to the superblock; 1.0 leaves room before it for a
        // bitmap and the bad-block log, as mdadm's avail_size1 does.
        MdVersion::V1_0 => Some((
            0,
            at.checked_sub(bitmap_room(sectors) + u64::from(super::badblocks::LOG_SECTORS))?,
        )),
        MdVersion::V0_90 => Some((0, at)),
    }
}

/// Sectors mdadm keeps free for a bitmap next to a 1.0 superblock (its choose_bm_space):
/// 4 KiB, 64 KiB past 8 GiB, 128 KiB past 200 GiB.
pub fn bitmap_room(sectors: u64) -> u64 {
    match sectors {
        s if s < 128 => 0,
        s if s - 128 >= 200 << 21 => 256,
        s if s - 8 > 8 << 21 => 128,
        _ => 8,
    }
}

/// A 1.0 member's (data_size, bblog_offset, bblog_size) as mdadm writes them: the bitmap
/// room and 8 sectors of log before the superblock, less when the data reaches further,
/// and the log just before the superblock when 8 sectors are left for it.
fn layout_1_0(super_offset: u64, used_sectors: u64) -> (u64, i32, u16) {
    let log = super::badblocks::LOG_SECTORS;
    let room =
        (bitmap_room(used_sectors) + u64::from(log)).min(super_offset.saturating_sub(used_sectors));
    if room >= u64::from(log) {
        (super_offset - room, -i32::from(log), log)
    } else {
        (super_offset - room, 0, 0)
    }
}

/// The sectors of each member a new array uses: the smallest data area, rounded down to
/// whole chunks (64 KiB for raid1), as md sizes arrays.
pub fn used_sectors(smallest_area: u64, chunk_bytes: u64) -> u64 {
    let unit = (chunk_bytes / 512).max(128);
    smallest_area / unit * unit
}

/// The superblock of member `slot` (its device number too), on a device of `device_bytes`.
pub fn member_superblock(
    array: &NewArray,
    slot: u32,
    device_uuid: [u8; 16],
    device_bytes: u64,
    used_sectors: u64,
) -> Option<MdSuperblock> {
    let (data_offset, data_size) = data_area(array.version, device_bytes)?;
    if used_sectors > data_size {
        return None;
    }
    // raid0 records no used size; the kernel takes each member's whole data area.
    let size = if array.level == 0 { 0 } else { used_sectors };
    Some(match array.version {
        MdVersion::V0_90 => {
            let active = super0::DISK_ACTIVE | super0::DISK_SYNC;
            let mut disks = [Disk0::default(); super0::DISKS];
            for (i, d) in disks.iter_mut().enumerate().take(array.raid_disks as usize) {
                *d = Disk0 {
                    number: i as u32,
                    major: 0,
                    minor: 0,
                    raid_disk: i as u32,
                    state: active,
                };
            }
            let words = |i: usize| {
                u32::from_be_bytes([
                    array.uuid[4 * i],
                    array.uuid[4 * i + 1],
                    array.uuid[4 * i + 2],
                    array.uuid[4 * i + 3],
                ])
            };
            let n = array.raid_disks;
            MdSuperblock::V0(Superblock0 {
                minor_version: 90,
                patch_version: 0,
                gvalid_words: 0,
                set_uuid: [words(0), words(1), words(2), words(3)],
                ctime: array.now as u32,
                level: array.level,
                size: u32::try_from(size / 2).ok()?,
                nr_disks: n,
                raid_disks: n,
                md_minor: 0,
                not_persistent: 0,
                utime: array.now as u32,
                state: super0::STATE_CLEAN,
                active_disks: n,
                working_disks: n,
                failed_disks: 0,
                spare_disks: 0,
                events: 1,
                cp_events: 1,
                recovery_cp: u32::MAX,
                reshape_position: 0,
                new_level: array.level,
                delta_disks: 0,
                new_layout: array.layout,
                new_chunk: array.chunk_bytes as u32,
                layout: array.layout,
                chunk_size: u32::try_from(array.chunk_bytes).ok()?,
                root_pv: 0,
                root_block: 0,
                disks,
                this_disk: *disks.get(slot as usize)?,
            })
        }
        version => {
            let mut set_name = [0u8; 32];
            let name = array.name.as_bytes();
            if name.len() > 32 {
                return None;
            }
            set_name[..name.len()].copy_from_slice(name);
            let mut dev_roles =
                vec![super1::ROLE_SPARE; MAX_DEV_NEW.max(array.raid_disks as usize)];
            for (i, r) in dev_roles
                .iter_mut()
                .enumerate()
                .take(array.raid_disks as usize)
            {
                *r = i as u16;
            }
            let super_offset = version.offset_bytes(device_bytes)? / 512;
            // mdadm gives 1.1/1.2 members a bad-block log of 512 entries, 16 sectors after
            // the superblock (past room for a small bitmap); [`add_bitmap`] moves it past
            // a larger one. 1.0 members keep theirs just before the superblock.
            let (data_size, bblog_offset, bblog_size) = match version {
                MdVersion::V1_1 | MdVersion::V1_2
                    if super_offset + BBLOG_OFFSET_1X as u64 + 8 <= data_offset =>
                {
                    (data_size, BBLOG_OFFSET_1X, super::badblocks::LOG_SECTORS)
                }
                // raid0 records no used size: its data area is what the kernel uses.
                MdVersion::V1_0 if array.level == 0 => {
                    let log = super::badblocks::LOG_SECTORS;
                    (data_size, -i32::from(log), log)
                }
                MdVersion::V1_0 => layout_1_0(super_offset, used_sectors),
                _ => (data_size, 0, 0),
            };
            MdSuperblock::V1(Superblock1 {
                feature_map: 0,
                set_uuid: array.uuid,
                set_name,
                ctime: array.now & ((1 << 40) - 1),
                level: array.level,
                layout: array.layout,
                size,
                chunksize: u32::try_from(array.chunk_bytes / 512).ok()?,
                raid_disks: array.raid_disks,
                bitmap_offset: 0,
                new_level: 0,
                reshape_position: 0,
                delta_disks: 0,
                new_layout: 0,
                new_chunk: 0,
                new_offset: 0,
                data_offset,
                data_size,
                super_offset,
                recovery_offset: 0,
                dev_number: slot,
                cnt_corrected_read: 0,
                device_uuid,
                devflags: 0,
                bblog_shift: 0,
                bblog_size,
                bblog_offset,
                utime: array.now & ((1 << 40) - 1),
                events: 1,
                resync_offset: super1::RESYNC_DONE,
                dev_roles,
            })
        }
    })
}

/// Sectors from a 1.1/1.2 superblock to its bad-block log, where mdadm puts it.
pub const BBLOG_OFFSET_1X: i32 = 16;

/// Sectors from a 1.1/1.2 superblock to its internal bitmap, where mdadm puts it.
pub const BITMAP_OFFSET_1X: i32 = 8;

/// Gives a new 1.1/1.2 member superblock an internal write-intent bitmap (mdadm's
/// `--bitmap=internal`) and returns the bitmap's header, to be written at its `offset` with
/// the bits after it (all clear: a new array is in sync). `sync_sectors` is what md's
/// bitmap covers: the used size per member, or the array's size for raid10.
pub fn add_bitmap(
    sb: &mut MdSuperblock,
    sync_sectors: u64,
    chunk_bytes: u32,
) -> Option<super::BitmapSuper> {
    let MdSuperblock::V1(s) = sb else {
        return None;
    };
    if s.data_offset <= s.super_offset + 8 + 8 {
        // 1.0 keeps its bitmap before the superblock; tessera does not lay that out.
        return None;
    }
    s.feature_map |= super1::FEATURE_BITMAP;
    s.bitmap_offset = BITMAP_OFFSET_1X;
    if s.bblog_offset != 0 {
        // The log goes after the bitmap's header and bits, in 4 KiB steps, as mdadm does.
        let bits = sync_sectors.div_ceil(u64::from(chunk_bytes / 512).max(1));
        let bitmap_sectors = (super::bitmap::BYTES as u64 + bits.div_ceil(8)).div_ceil(4096) * 8;
        let at = (BITMAP_OFFSET_1X as u64 + bitmap_sectors).max(BBLOG_OFFSET_1X as u64);
        if s.super_offset + at + u64::from(s.bblog_size) <= s.data_offset {
            s.bblog_offset = at as i32;
        } else {
            s.bblog_offset = 0;
            s.bblog_size = 0;
        }
    }
    Some(super::BitmapSuper {
        offset: (s.super_offset + BITMAP_OFFSET_1X as u64) * 512,
        version: 4,
        uuid: s.set_uuid,
        events: s.events,
        events_cleared: s.events,
        sync_size: sync_sectors,
        state: 0,
        chunksize: chunk_bytes,
        daemon_sleep: 5,
        write_behind: 0,
        sectors_reserved: 0,
        nodes: 0,
        cluster_name: [0; 64],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::md::{read, write, ArrayState, Role};
    use tessera_block::MemoryDevice;

    #[test]
    fn new_members_read_back_in_sync_and_clean_in_every_version() {
        for version in MdVersion::PROBE_ORDER {
            let bytes = 16u64 << 20;
            let array = NewArray {
                version,
                name: "host:data".into(),
                uuid: *b"0123456789abcdef",
                level: 5,
                layout: 2,
                chunk_bytes: 64 << 10,
                raid_disks: 3,
                now: 1_795_000_000,
            };
            let (_, area) = data_area(version, bytes).unwrap();
            let used = used_sectors(area, array.chunk_bytes);
            assert_eq!(used % 128, 0);
            for slot in 0..3 {
                let dev = MemoryDevice::new("m", bytes);
                let sb = member_superblock(&array, slot, [slot as u8; 16], bytes, used).unwrap();
                write(&dev, version, &sb).unwrap();
                let back = read(&dev, version).unwrap();
                assert_eq!(back, sb, "{version}");
                assert_eq!(back.role(), Role::Active(slot), "{version}");
                assert_eq!(back.state(), ArrayState::Clean, "{version}");
                assert_eq!(back.events(), 1);
                assert_eq!(back.used_size_sectors(), used, "{version}");
                assert_eq!(back.member_data_sectors(bytes), used, "{version}");
                assert_eq!(back.level(), 5);
                assert_eq!(back.chunk_bytes(), 64 << 10);
                if version != MdVersion::V0_90 {
                    assert_eq!(back.name(), "host:data");
                    assert_eq!(&back.array_uuid(), b"0123456789abcdef");
                }
            }
        }
    }

    #[test]
    fn a_name_too_long_or_a_device_too_small_is_refused() {
        let array = NewArray {
            version: MdVersion::V1_2,
            name: "h".repeat(33),
            uuid: [1; 16],
            level: 1,
            layout: 0,
            chunk_bytes: 0,
            raid_disks: 2,
            now: 0,
        };
        assert!(member_superblock(&array, 0, [0; 16], 16 << 20, 128).is_none());
        assert!(data_area(MdVersion::V1_2, 512 << 10).is_none());
    }
}
