//! tessera's on-disk metadata formats. Each format module knows how to find, read and write
//! its own structures on a `BlockDevice`, and nothing about I/O scheduling or activation.

pub mod ataraid;
pub mod bbr;
pub mod bootsector;
pub mod ddf;
pub mod dmraid;
pub mod imsm;
pub mod luks;
pub mod lvm2;
pub mod md;
pub mod partition;
pub mod signature;
pub mod snapshot;
pub mod thin;
