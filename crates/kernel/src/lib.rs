//! The kernel's own drivers, driven as dmsetup and lvm2 drive them: device-mapper through
//! the ioctls on `/dev/mapper/control` (`dm`), MD arrays through sysfs (`md`). Nothing here knows about volume groups or
//! arrays; the engine decides what to load and this crate says it to the kernel.

pub mod dm;
pub mod md;
