//! The write-intent bitmap's superblock (`bitmap_super_t`, mdadm bitmap.h; 256 bytes,
//! little-endian), read and written. The bits follow it, one per `chunksize` bytes of the
//! array.

use super::{le_u32, le_u64, MdError};

pub const MAGIC: u32 = 0x6d74_6962; // "bitm"
pub const BYTES: usize = 256;
/// Versions mdadm and the kernel know: 3 (host-endian), 4, 5 (clustered).
pub const VERSIONS: std::ops::RangeInclusive<u32> = 3..=5;
pub const STATE_STALE: u32 = 1;
pub const STATE_WRITE_ERROR: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapSuper {
    /// Byte offset on the member where it was found.
    pub offset: u64,
    pub version: u32,
    pub uuid: [u8; 16],
    pub events: u64,
    pub events_cleared: u64,
    /// Sectors of each member the bitmap covers.
    pub sync_size: u64,
    pub state: u32,
    /// Bytes of array data per bit.
    pub chunksize: u32,
    /// Seconds.
    pub daemon_sleep: u32,
    pub write_behind: u32,
    pub sectors_reserved: u32,
    pub nodes: u32,
    pub cluster_name: [u8; 64],
}

impl BitmapSuper {
    pub fn decode(b: &[u8], device: &str, offset: u64) -> Result<BitmapSuper, MdError> {
        let bad = |why: String| MdError::Bitmap {
            device: device.to_string(),
            offset,
            why,
        };
        if b.len() < BYTES {
            return Err(bad("the device ends inside it".into()));
        }
        let magic = le_u32(b, 0);
        if magic != MAGIC {
            return Err(bad(format!("magic is {magic:#010x}, not \"bitm\"")));
        }
        let version = le_u32(b, 4);
        if !VERSIONS.contains(&version) {
            return Err(bad(format!("unknown version {version}")));
        }
        let chunksize = le_u32(b, 52);
        // The kernel wants a power of two of at least 512 bytes.
        if chunksize < 512 || !chunksize.is_power_of_two() {
            return Err(bad(format!(
                "chunk size {chunksize} is not a power of two >= 512"
            )));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[8..24]);
        let mut cluster_name = [0u8; 64];
        cluster_name.copy_from_slice(&b[72..136]);
        Ok(BitmapSuper {
            offset,
            version,
            uuid,
            events: le_u64(b, 24),
            events_cleared: le_u64(b, 32),
            sync_size: le_u64(b, 40),
            state: le_u32(b, 48),
            chunksize,
            daemon_sleep: le_u32(b, 56),
            write_behind: le_u32(b, 60),
            sectors_reserved: le_u32(b, 64),
            nodes: le_u32(b, 68),
            cluster_name,
        })
    }

    /// The 256 bytes on disk; the reserved tail is zero, as mdadm writes it.
    pub fn encode(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(0, &MAGIC.to_le_bytes());
        put(4, &self.version.to_le_bytes());
        put(8, &self.uuid);
        put(24, &self.events.to_le_bytes());
        put(32, &self.events_cleared.to_le_bytes());
        put(40, &self.sync_size.to_le_bytes());
        put(48, &self.state.to_le_bytes());
        put(52, &self.chunksize.to_le_bytes());
        put(56, &self.daemon_sleep.to_le_bytes());
        put(60, &self.write_behind.to_le_bytes());
        put(64, &self.sectors_reserved.to_le_bytes());
        put(68, &self.nodes.to_le_bytes());
        put(72, &self.cluster_name);
        b
    }

    /// Whether its bits can be trusted for an array at `events`: as mdadm, the bitmap
    /// may be one event behind the superblock (or ahead, right after a crash).
    pub fn is_current(&self, events: u64) -> bool {
        self.state & STATE_STALE == 0 && self.events.abs_diff(events) <= 1
    }

    /// Number of bits: one per chunk of the synced size.
    pub fn bits(&self) -> u64 {
        self.sync_size
            .saturating_mul(512)
            .div_ceil(u64::from(self.chunksize))
    }
}
