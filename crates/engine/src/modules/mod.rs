//! The format modules, one per on-disk format, each behind [`crate::format::FormatModule`]
//! and registered in [`crate::format::modules`].

pub mod luks;
pub mod lvm2;
pub mod md;
pub mod partition;
pub mod signature;
