//! The LVM2 on-disk format, interchangeable with lvm2: the label and PV header, metadata
//! areas with their circular text buffer, the text format, and the volume-group model.

pub mod config;
pub mod crc;
pub mod id;
pub mod label;
pub mod mda;
pub mod vg;
