//! Changes to IMSM containers made outside a running volume: a spare added, as
//! `mdadm --add CONTAINER DEVICE` adds one (its own spare record, which a container's
//! volumes take when a member is lost).

use tessera_formats::imsm::{self, Mpb};

use super::{containers, device_serial};
use crate::{EngineError, Result};

impl crate::Engine {
    /// Adds `device` to the IMSM container called `name` (its label `imsm-FAMILY`, or the
    /// name of one of its volumes, with or without `md/`) as a spare. `None` when no IMSM
    /// container on the devices goes by that name; otherwise the container's label.
    pub fn imsm_add_spare(&self, name: &str, device: &str, force: bool) -> Result<Option<String>> {
        let (devs, _) = self.devices(false)?;
        let read: Vec<_> = devs
            .iter()
            .filter_map(|(n, d)| Some((n.clone(), d.clone(), imsm::read(d.as_ref()).ok()??)))
            .collect();
        let wanted = name.strip_prefix("md/").unwrap_or(name);
        let Some(c) = containers(read).into_iter().find(|c| {
            !c.mpb.is_spare_record()
                && (c.label() == wanted || c.mpb.devs.iter().any(|d| d.name() == wanted))
        }) else {
            return Ok(None);
        };
        let label = c.label();
        let _lock = self.lock(&format!("M_{label}"))?;
        let bad = |why: String| EngineError::BadArgument(format!("md add {name}: {why}"));
        let same = |p: &str| {
            std::fs::canonicalize(p).ok() == std::fs::canonicalize(device).ok() || p == device
        };
        if c.members.iter().any(|f| same(&f.path)) || c.spares.iter().any(|s| same(&s.path)) {
            return Err(bad(format!(
                "{device} is already part of IMSM container {label}"
            )));
        }
        let dev = self.open_new_member(device, force)?;
        // The device must hold every volume's area, and the metadata after it.
        let needed = c
            .mpb
            .devs
            .iter()
            .map(|d| d.maps[0].pba_of_lba0 + d.maps[0].blocks_per_member)
            .max()
            .unwrap_or(0)
            + imsm::MPB_SECTOR_CNT
            + imsm::IMSM_RESERVED_SECTORS;
        let sectors = dev.size_bytes() / 512;
        if sectors < needed {
            return Err(EngineError::DeviceUnusable {
                device: device.into(),
                why: format!(
                    "holds {sectors} sectors; a spare of IMSM container {label} needs {needed}"
                ),
            });
        }
        // mdadm records the device's serial, or (with no serial, as for loop devices under
        // IMSM_DEVNAME_AS_SERIAL) its /dev name: an image file goes by its name's stem.
        let serial = device_serial(device).unwrap_or_else(|| {
            let stem = std::path::Path::new(device)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("/dev/{stem}")
        });
        if c.mpb.disk_by_serial(&serial).is_some() {
            return Err(bad(format!(
                "serial {serial:?} of {device} is already a disk of IMSM container {label}"
            )));
        }
        let record = Mpb::spare_record(&serial, sectors);
        imsm::write(dev.as_ref(), &record).map_err(|e| EngineError::DeviceUnusable {
            device: device.into(),
            why: format!("writing its IMSM spare record: {e}"),
        })?;
        tracing::info!("{device} added to IMSM container {label} as spare {serial}");
        Ok(Some(label))
    }
}
