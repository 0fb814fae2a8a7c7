//! What the LVM2 verbs take: the options of `pv create` and `lv create`.

use crate::units::SizeArg;

/// Options of `pv create`.
#[derive(Debug, Clone, Default)]
pub struct PvCreateOptions {
    /// Overwrite other formats' signatures.
    pub force: bool,
    /// First extent's offset; 1 MiB when None.
    pub pe_start_bytes: Option<u64>,
}

/// What to make in `lv create`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LvCreateOptions {
    pub size: SizeArg,
    pub stripes: Option<u32>,
    pub stripe_size_bytes: Option<u64>,
    /// PV paths to allocate from; all of the VG's when empty.
    pub pvs: Vec<String>,
    /// lvm2's segment type for a raid LV (`raid1`, `raid4`, `raid5[_la|_ra|_ls|_rs|_n]`,
    /// `raid6[_zr|_nr|_nc]`, `raid10`); linear or striped when `None`.
    #[serde(default)]
    pub segtype: Option<String>,
    /// Extra copies (lvm2's `-m`): raid1 images beyond the first, raid10 copies beyond one.
    #[serde(default)]
    pub mirrors: Option<u32>,
    /// The raid write-intent region (lvm2's `-R`; 2 MiB when `None`).
    #[serde(default)]
    pub region_size_bytes: Option<u64>,
}
