//! The format modules, one per on-disk format, each behind [`crate::format::FormatModule`]
//! and registered in [`registry`].

pub mod ataraid;
pub mod ddf;
pub mod ddf_kernel;
pub mod imsm;
pub mod luks;
pub mod lvm2;
pub mod md;
pub mod partition;
pub mod signature;

use std::sync::Arc;

use crate::format::FormatModule;

/// Every format tessera knows, in the order they are tried: the first that recognises a
/// device claims it. Partition tables come first (a partitioned disk is not itself a
/// member), MD before LVM2 (an MD 1.0 member shows the PV inside at its start), and the
/// filesystem signatures last.
pub fn registry() -> Vec<Arc<dyn FormatModule>> {
    vec![
        // Before partition tables: a volume's first chunk, at sector 0 of a member, may
        // hold one; the MPB at the disk's end says what the disk is.
        Arc::new(imsm::ImsmMembers),
        Arc::new(ddf::DdfMembers),
        // Firmware RAID metadata also sits at the disk's end, below a set's partition table.
        Arc::new(ataraid::AtaraidMembers),
        Arc::new(partition::PartitionTables),
        Arc::new(md::MdMembers),
        Arc::new(lvm2::LvmLabels),
        Arc::new(luks::LuksHeaders),
        Arc::new(signature::Signatures),
    ]
}
