//! MD's RAID personalities in user space: where md puts each chunk of an array on its
//! members (`layout`), the parity arithmetic (`parity`), and the raid target that the
//! mapper runs arrays with.

pub mod layout;
pub mod parity;
