//! The `raid` table row that runs an md-style set in user space, and running it: one
//! builder for MD arrays and for the subarrays of external-metadata containers (DDF and
//! IMSM), which md runs with the same personalities.

use std::sync::Arc;

use tessera_block::{BlockError, SharedDevice};
use tessera_mapper::{escape_arg, MappedDevice, Table, TargetRegistry};
use tessera_raid::metadata::SetMetadata;
use tessera_raid::target::type_name as raid_type_name;

/// One `raid` row over the set's slots.
pub struct RaidRow<'a> {
    /// md's level and layout word.
    pub level: i32,
    pub layout: u32,
    /// The row's length.
    pub sectors: u64,
    pub chunk_sectors: u64,
    /// Where each member's data starts on its device.
    pub data_offset_sectors: u64,
    /// Each slot's device as the resolver knows it, `None` for an empty slot.
    pub slots: &'a [Option<String>],
    /// Slots whose device is to be rebuilt.
    pub rebuild: &'a [usize],
    /// Devices waiting to take the place of a member that fails.
    pub spares: &'a [String],
}

/// dm-raid's copies and format for md's raid10 layout word.
pub fn raid10_params(layout: u32) -> Result<(u32, &'static str), String> {
    let near = layout & 0xff;
    let far = (layout >> 8) & 0xff;
    match (near, far, layout & (1 << 16) != 0) {
        (n, 1, _) => Ok((n, "near")),
        (1, f, true) => Ok((f, "offset")),
        (1, f, false) => Ok((f, "far")),
        _ => Err(format!(
            "raid10 layout {layout:#x} mixes near and far copies, which tessera cannot run yet"
        )),
    }
}

impl RaidRow<'_> {
    /// The row in dmsetup's syntax, ending in a newline.
    pub fn text(&self) -> Result<String, String> {
        let type_name = raid_type_name(self.level, self.layout).ok_or_else(|| {
            format!(
                "raid{} layout {} has no raid target type",
                self.level, self.layout
            )
        })?;
        let mut params = vec![self.chunk_sectors.to_string()];
        if self.data_offset_sectors > 0 {
            params.extend([
                "data_offset".to_string(),
                self.data_offset_sectors.to_string(),
            ]);
        }
        if self.level == 10 {
            let (copies, format) = raid10_params(self.layout)?;
            params.extend([
                "raid10_copies".to_string(),
                copies.to_string(),
                "raid10_format".to_string(),
                format.to_string(),
            ]);
        }
        for slot in self.rebuild {
            params.extend(["rebuild".to_string(), slot.to_string()]);
        }
        for spare in self.spares {
            params.extend(["spare".to_string(), escape_arg(spare)]);
        }
        let devs: Vec<String> = self
            .slots
            .iter()
            .map(|s| match s {
                Some(path) => format!("- {}", escape_arg(path)),
                None => "- -".to_string(),
            })
            .collect();
        Ok(format!(
            "0 {} raid {type_name} {} {} {} {}\n",
            self.sectors,
            params.len(),
            params.join(" "),
            devs.len(),
            devs.join(" ")
        ))
    }
}

/// `registry` with its `raid` type keeping `records` in the sets it builds (as it is
/// without records: sets that write nothing but data).
pub fn with_records(
    registry: Arc<TargetRegistry>,
    records: Option<Arc<dyn SetMetadata>>,
) -> Result<Arc<TargetRegistry>, String> {
    let Some(records) = records else {
        return Ok(registry);
    };
    let mut own = (*registry).clone();
    own.set("raid", move |args| {
        tessera_raid::target::construct_with(args, Some(records.clone()))
    })
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(own))
}

/// Runs `text` (a `raid` row) as a live mapped device `name` built with `registry`, the
/// row's devices found by `resolve`.
pub fn run_raid_table(
    name: &str,
    text: &str,
    registry: Arc<TargetRegistry>,
    resolve: &dyn Fn(&str) -> Result<SharedDevice, BlockError>,
) -> Result<MappedDevice, String> {
    let table = Table::parse(text).map_err(|e| e.to_string())?;
    let device = MappedDevice::new(name, registry);
    device.load(&table, resolve).map_err(|e| e.to_string())?;
    device.resume().map_err(|e| e.to_string())?;
    Ok(device)
}

/// A member's state as `mdadm --detail` words it: `words` ("active sync"), and for a
/// raid10 whose copies are all near ones and divide the members, the set its slot is in
/// (`set-A`, `set-B`...), as mdadm divides such arrays.
pub fn mdadm_member_state(
    level: i32,
    layout: u32,
    raid_disks: usize,
    slot: usize,
    words: &str,
) -> String {
    let near = (layout & 0xff) as usize;
    let far = ((layout >> 8) & 0xff) as usize;
    let sets = level == 10 && layout & !0x1ffff == 0 && far == 1 && near > 0 && near <= 26;
    if sets && raid_disks % near == 0 {
        let set = (b'A' + (slot % near) as u8) as char;
        format!("{words} set-{set}")
    } else {
        words.to_string()
    }
}

/// The error a resolver gives for a device the set does not hold.
pub fn not_a_member(path: &str, what: &str) -> BlockError {
    BlockError::Open {
        device: path.to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("not a member of {what}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_names_its_slots_rebuilds_and_spares() {
        let slots = [
            Some("/dev/a".to_string()),
            None,
            Some("/dev/c d".to_string()),
        ];
        let row = RaidRow {
            level: 10,
            layout: 0x102,
            sectors: 2048,
            chunk_sectors: 128,
            data_offset_sectors: 64,
            slots: &slots,
            rebuild: &[1],
            spares: &["/dev/s".to_string()],
        };
        assert_eq!(
            row.text().unwrap(),
            "0 2048 raid raid10 11 128 data_offset 64 raid10_copies 2 raid10_format near \
             rebuild 1 spare /dev/s 3 - /dev/a - - - /dev/c\\ d\n"
        );
        let mixed = RaidRow {
            layout: 0x202,
            ..row
        };
        assert!(mixed.text().unwrap_err().contains("mixes near and far"));
    }

    #[test]
    fn mdadm_names_the_sets_of_a_near_raid10() {
        assert_eq!(
            mdadm_member_state(10, 0x102, 4, 3, "active sync"),
            "active sync set-B"
        );
        assert_eq!(
            mdadm_member_state(10, 0x102, 4, 2, "active sync"),
            "active sync set-A"
        );
        assert_eq!(
            mdadm_member_state(10, 0x102, 3, 2, "active sync"),
            "active sync"
        );
        assert_eq!(
            mdadm_member_state(10, 0x201, 4, 1, "active sync"),
            "active sync"
        );
        assert_eq!(mdadm_member_state(5, 2, 4, 1, "active sync"), "active sync");
    }

    #[test]
    fn a_raid5_row_without_offset_has_only_its_chunk() {
        let slots = [Some("a".to_string()), Some("b".to_string()), None];
        let row = RaidRow {
            level: 5,
            layout: 0,
            sectors: 100,
            chunk_sectors: 8,
            data_offset_sectors: 0,
            slots: &slots,
            rebuild: &[],
            spares: &[],
        };
        assert_eq!(
            row.text().unwrap(),
            "0 100 raid raid5_la 1 8 3 - a - b - -\n"
        );
    }
}
