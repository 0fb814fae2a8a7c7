//! MD's RAID personalities in user space: where md puts each chunk of an array on its
//! members (`layout`), the parity arithmetic (`parity`), and the `raid` target that the
//! mapper runs arrays with (`target`), registered as dm-raid registers with dm.

pub mod layout;
pub mod metadata;
pub mod parity;
mod set;
pub mod sync;
pub mod target;

use tessera_mapper::TargetRegistry;

/// Adds the `raid` target type to `registry`.
pub fn register(registry: &mut TargetRegistry) {
    // A fresh name: it fails only if registered twice, which changes nothing.
    let _ = registry.register("raid", target::construct);
}
