//! `pv create` and `pv remove`: a device laid out as lvm2's pvcreate lays it out, and
//! its label wiped again.

use tessera_block::SharedDevice;
use tessera_formats::lvm2::id::Id;
use tessera_formats::lvm2::label::{wipe_label, write_label, PvLabel};
use tessera_formats::lvm2::mda::{write_mda_header, MdaHeader};

use super::commit;
use super::options::PvCreateOptions;
use super::scan::Scan;
use super::DEFAULT_PE_START_BYTES;
use crate::engine::{same_path, Engine, Source};
use crate::error::{EngineError, Result};

/// lvm2 refuses PVs smaller than 2 MiB.
pub const MIN_PV_BYTES: u64 = 2 << 20;

impl Engine {
    /// Finds the device `path` among the scanned ones or opens it.
    pub(crate) fn device_for(&self, scan: &Scan, path: &str) -> Result<(String, SharedDevice)> {
        if let Source::Given(devs) = &self.source {
            return devs
                .iter()
                .find(|(p, _)| p == path)
                .cloned()
                .ok_or_else(|| EngineError::DeviceUnusable {
                    device: path.into(),
                    why: "not among the given devices".into(),
                });
        }
        if let Some(i) = scan.pvs.iter().position(|p| same_path(&p.path, path)) {
            return Ok((scan.pvs[i].path.clone(), scan.pvs[i].device.clone()));
        }
        Ok((path.to_string(), self.open_named(path, true)?))
    }

    pub(crate) fn pv_index(scan: &Scan, path: &str) -> Option<usize> {
        scan.pvs.iter().position(|p| same_path(&p.path, path))
    }

    // ---- PVs ----

    /// Makes each device an (orphan) PV, laid out as lvm2's pvcreate does by default.
    pub fn pv_create(&self, paths: &[String], opts: &PvCreateOptions) -> Result<()> {
        let _lock = self.lock_orphans()?;
        let scan = self.scan_with(true)?;
        for path in paths {
            self.create_one_pv(&scan, path, opts)?;
        }
        Ok(())
    }

    pub(crate) fn create_one_pv(
        &self,
        scan: &Scan,
        path: &str,
        opts: &PvCreateOptions,
    ) -> Result<()> {
        let (name, dev) = self.device_for(scan, path)?;
        if let Some(i) = Self::pv_index(scan, path) {
            if let Some(vg) = &scan.pvs[i].vg_name {
                return Err(EngineError::PvInUse {
                    device: name,
                    vg: vg.clone(),
                });
            }
        }
        let found = self.refuse_occupied(&name, &dev, opts.force)?;
        let size = dev.size_bytes();
        let pe_start = opts.pe_start_bytes.unwrap_or(DEFAULT_PE_START_BYTES);
        if pe_start < 8192 || pe_start % 4096 != 0 {
            return Err(EngineError::BadArgument(format!(
                "--pe-start {pe_start}: must be a multiple of 4 KiB and at least 8 KiB"
            )));
        }
        if size < MIN_PV_BYTES.max(pe_start + 512 * 8) {
            return Err(EngineError::DeviceUnusable {
                device: name,
                why: format!(
                    "is {size} bytes; a PV needs at least {} bytes",
                    MIN_PV_BYTES.max(pe_start + 4096)
                ),
            });
        }
        // Wipe what was found so no other tool still claims the device.
        for sig in &found {
            let at = sig.offset & !511;
            if at + 512 <= size {
                dev.write_at(&[0u8; 512], at)?;
            }
        }
        let label = PvLabel::new_pv(Id::random(), size, pe_start);
        for area in &label.metadata_areas {
            write_mda_header(
                dev.as_ref(),
                &MdaHeader {
                    start: area.offset,
                    size: area.size,
                    raw_locns: Vec::new(),
                },
            )?;
        }
        write_label(dev.as_ref(), &label)?;
        dev.flush()?;
        Ok(())
    }

    /// Removes the LVM2 label of orphan PVs.
    pub fn pv_remove(&self, paths: &[String]) -> Result<()> {
        let _lock = self.lock_orphans()?;
        let scan = self.scan_with(true)?;
        for path in paths {
            let i = Self::pv_index(&scan, path).ok_or_else(|| EngineError::NotPv {
                device: path.clone(),
            })?;
            let pv = &scan.pvs[i];
            if let Some(vg) = &pv.vg_name {
                return Err(EngineError::PvInUse {
                    device: pv.path.clone(),
                    vg: vg.clone(),
                });
            }
            commit::release_pvs(&[pv])?;
            wipe_label(pv.device.as_ref())?;
            pv.device.flush()?;
        }
        Ok(())
    }
}
