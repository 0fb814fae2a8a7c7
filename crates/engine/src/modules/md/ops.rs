//! The MD verbs that write: `md create`, `md add`, `md remove`, and the scan that finds
//! the arrays; each holds the array's lock (`M_NAME`) from its scan to its last write.

use tessera_block::SharedDevice;
use tessera_formats::md as md_format;

use super::array as md;
use crate::engine::{hostname, now, random_bytes, same_path, Engine};
use crate::error::{EngineError, Result};

/// The MD arrays on the scanned devices.
#[derive(Debug, Clone)]
pub struct MdScan {
    pub arrays: Vec<md::MdArray>,
    pub problems: Vec<String>,
}

impl MdScan {
    /// The array called `name` (without its homehost prefix) or with UUID `name`.
    pub fn array(&self, name: &str) -> Option<&md::MdArray> {
        self.arrays
            .iter()
            .find(|a| a.name == name || a.uuid == name)
    }
}

/// What to make in `md create`.
#[derive(Debug, Clone)]
pub struct MdCreateOptions {
    pub name: String,
    /// md's level number: 0, 1, 4, 5, 6 or 10.
    pub level: i32,
    /// md's layout number; the level's default (left-symmetric, near=2) when `None`.
    pub layout: Option<u32>,
    /// 512 KiB when `None`; raid1 has none.
    pub chunk_bytes: Option<u64>,
    pub version: md_format::MdVersion,
    /// Overwrite other formats' signatures.
    pub force: bool,
    /// The homehost in the array's name (1.x); this machine's hostname when `None`.
    pub homehost: Option<String>,
    /// Devices that join as spares (1.x superblocks).
    pub spares: Vec<String>,
    /// An internal write-intent bitmap with regions of this many bytes (1.1 and 1.2).
    pub bitmap_chunk_bytes: Option<u64>,
}

/// mdadm's rules for array names: 1 to 32 bytes, printable, no '/' or ':' or blanks.
fn check_md_name(name: &str) -> Result<()> {
    let bad = |why: &str| EngineError::BadArgument(format!("array name '{name}': {why}"));
    if name.is_empty() || name.len() > 32 {
        return Err(bad("must be 1 to 32 bytes long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | ':') || c.is_whitespace() || c.is_control())
    {
        return Err(bad(&format!(
            "holds {c:?}; names are printable, without '/', ':' or blanks"
        )));
    }
    Ok(())
}

impl Engine {
    /// Finds the MD members on the devices and groups them into arrays; `write` opens the
    /// members for writing (to run the arrays read-write). Devices whose MD superblock
    /// cannot be read are problems, named with what is wrong.
    pub fn md_scan(&self, write: bool) -> Result<MdScan> {
        let (devs, mut problems) = self.devices(write)?;
        let (members, unreadable) = md::probe_members(devs.iter().map(|(p, d)| (p, d)));
        problems.extend(unreadable);
        Ok(MdScan {
            arrays: md::assemble(members),
            problems,
        })
    }

    /// Makes a new MD array over `members` (in slot order), as `mdadm --create` does: each
    /// member's data area is zeroed (so parity is consistent from the start and the array
    /// needs no initial resync), then its superblock written, then all are flushed.
    pub fn md_create(&self, opts: &MdCreateOptions, members: &[String]) -> Result<()> {
        check_md_name(&opts.name)?;
        let _lock = self.lock(&format!("M_{}", opts.name))?;
        let n = members.len() as u32;
        let bad = |why: String| EngineError::BadArgument(format!("md create {}: {why}", opts.name));
        let least = match opts.level {
            0 | 1 => 2,
            4 | 5 => 3,
            6 => 4,
            10 => 2,
            l => {
                return Err(bad(format!(
                    "level {l}: tessera makes raid0, 1, 4, 5, 6 and 10"
                )))
            }
        };
        if n < least {
            return Err(bad(format!(
                "raid{} needs at least {least} members, {n} given",
                opts.level
            )));
        }
        if opts.version == md_format::MdVersion::V0_90 && n > 27 {
            return Err(bad("0.90 superblocks hold at most 27 members".into()));
        }
        if !opts.spares.is_empty() && opts.version == md_format::MdVersion::V0_90 {
            return Err(bad(
                "tessera adds spares to arrays with 1.x superblocks".into()
            ));
        }
        if opts.bitmap_chunk_bytes.is_some()
            && !matches!(
                opts.version,
                md_format::MdVersion::V1_1 | md_format::MdVersion::V1_2
            )
        {
            return Err(bad(
                "an internal bitmap needs a 1.1 or 1.2 superblock (--metadata)".into(),
            ));
        }
        if let Some(b) = opts.bitmap_chunk_bytes {
            if b < 4096 || !b.is_power_of_two() || b > 1 << 31 {
                return Err(bad(format!(
                    "bitmap chunk {b} bytes: a power of two from 4 KiB to 2 GiB"
                )));
            }
        }
        if opts.level == 0 && (!opts.spares.is_empty() || opts.bitmap_chunk_bytes.is_some()) {
            return Err(bad("raid0 has no redundancy: no spares, no bitmap".into()));
        }
        let members: Vec<String> = members.iter().chain(&opts.spares).cloned().collect();
        let members = &members[..];
        for (i, m) in members.iter().enumerate() {
            if members[..i].iter().any(|o| same_path(o, m)) {
                return Err(bad(format!("{m} is given twice")));
            }
        }
        let layout = opts.layout.unwrap_or(match opts.level {
            5 | 6 => 2,
            10 => 0x102,
            _ => 0,
        });
        let chunk_bytes = if opts.level == 1 {
            0
        } else {
            opts.chunk_bytes.unwrap_or(512 << 10)
        };
        if opts.level != 1 && (chunk_bytes < 4096 || !chunk_bytes.is_power_of_two()) {
            return Err(bad(format!(
                "chunk {chunk_bytes} bytes: a power of two, at least 4 KiB"
            )));
        }
        if let Some(a) = self.md_scan(false)?.array(&opts.name) {
            return Err(bad(format!(
                "an array named '{}' exists already ({})",
                opts.name, a.uuid
            )));
        }
        let mut devices = Vec::new();
        for path in members {
            let dev = self.open_new_member(path, opts.force)?;
            let area =
                md_format::create::data_area(opts.version, dev.size_bytes()).ok_or_else(|| {
                    EngineError::DeviceUnusable {
                        device: path.clone(),
                        why: format!("is too small for an MD {} member", opts.version),
                    }
                })?;
            devices.push((path, dev, area));
        }
        let smallest = devices.iter().map(|d| d.2 .1).min().unwrap_or(0);
        let used = md_format::create::used_sectors(smallest, chunk_bytes);
        if used == 0 {
            return Err(bad("the members are too small to hold a chunk".into()));
        }
        let host = opts.homehost.clone().unwrap_or_else(hostname);
        let full_name = if opts.version == md_format::MdVersion::V0_90 {
            String::new()
        } else {
            format!("{host}:{}", opts.name)
        };
        if full_name.len() > 32 {
            return Err(bad(format!(
                "'{full_name}' (homehost:name) is longer than the 32 bytes a superblock holds"
            )));
        }
        let array = md_format::create::NewArray {
            version: opts.version,
            name: full_name,
            uuid: random_bytes()?,
            level: opts.level,
            layout,
            chunk_bytes,
            raid_disks: n,
            now: now() as u64,
        };
        let sync_sectors = if opts.level == 10 {
            let near = (layout & 0xff).max(1) as u64;
            let far = ((layout >> 8) & 0xff).max(1) as u64;
            let chunk = chunk_bytes / 512;
            (used / chunk / far) * u64::from(n) / near * chunk
        } else {
            used
        };
        for (slot, (path, dev, (offset, size))) in devices.iter().enumerate() {
            let mut sb = md_format::create::member_superblock(
                &array,
                slot as u32,
                random_bytes()?,
                dev.size_bytes(),
                used,
            )
            .ok_or_else(|| EngineError::DeviceUnusable {
                device: path.to_string(),
                why: "cannot hold the array's superblock".into(),
            })?;
            dev.write_zeroes(offset * 512, size * 512)?;
            if let Some(chunk) = opts.bitmap_chunk_bytes {
                let header = md_format::create::add_bitmap(&mut sb, sync_sectors, chunk as u32)
                    .ok_or_else(|| bad("no room for a bitmap before the data".into()))?;
                let bits = sync_sectors.div_ceil(chunk / 512).div_ceil(8);
                let mut area = header.encode().to_vec();
                area.resize((256 + bits as usize).next_multiple_of(512), 0);
                dev.write_at(&area, header.offset)?;
            }
            md_format::write(dev.as_ref(), opts.version, &sb)?;
        }
        for (_, dev, _) in &devices {
            dev.flush()?;
        }
        Ok(())
    }

    /// Adds `device` to array `name` as a spare (mdadm --add): a superblock of the array
    /// with a new device number and the spare role, and the bitmap copied from a member.
    /// A running array takes it when the daemon reloads the array.
    pub fn md_add(&self, name: &str, device: &str, force: bool) -> Result<()> {
        let _lock = self.lock(&format!("M_{name}"))?;
        let bad = |why: String| EngineError::BadArgument(format!("md add {name}: {why}"));
        let scan = self.md_scan(false)?;
        let array = scan
            .array(name)
            .ok_or_else(|| bad("no such array on the devices scanned".into()))?;
        let known = array
            .slots
            .iter()
            .flatten()
            .chain(&array.spares)
            .chain(array.left_out.iter().map(|(m, _)| m));
        if known.clone().any(|m| same_path(&m.path, device)) {
            return Err(bad(format!("{device} is already part of the array")));
        }
        let template = array
            .slots
            .iter()
            .flatten()
            .next()
            .ok_or_else(|| bad("no member is present".into()))?;
        let md_format::MdSuperblock::V1(base) = &template.sb else {
            return Err(bad(
                "tessera adds spares to arrays with 1.x superblocks".into()
            ));
        };
        let dev = self.open_new_member(device, force)?;
        let (data_offset, data_size) =
            md_format::create::data_area(template.version, dev.size_bytes()).ok_or_else(|| {
                EngineError::DeviceUnusable {
                    device: device.into(),
                    why: format!("is too small for an MD {} member", template.version),
                }
            })?;
        if data_offset != base.data_offset || data_size < base.size {
            return Err(EngineError::DeviceUnusable {
                device: device.into(),
                why: format!(
                    "its data area ({data_size} sectors at {data_offset}) cannot hold a member                      of {name} ({} sectors at {})",
                    base.size, base.data_offset
                ),
            });
        }
        let next = known
            .filter_map(|m| match &m.sb {
                md_format::MdSuperblock::V1(s) => Some(s.dev_number),
                _ => None,
            })
            .max()
            .map_or(0, |n| n + 1);
        let mut sb = base.clone();
        sb.dev_number = next;
        sb.device_uuid = random_bytes()?;
        sb.data_size = data_size;
        sb.super_offset = template.version.offset_bytes(dev.size_bytes()).unwrap_or(0) / 512;
        sb.events = array.events;
        sb.feature_map &= !md_format::super1::FEATURE_RECOVERY_OFFSET;
        sb.recovery_offset = 0;
        if sb.dev_roles.len() <= next as usize {
            sb.dev_roles
                .resize(next as usize + 1, md_format::super1::ROLE_SPARE);
        }
        sb.dev_roles[next as usize] = md_format::super1::ROLE_SPARE;
        let sb = md_format::MdSuperblock::V1(sb);
        if let Some(at) = template
            .version
            .offset_bytes(template.device.size_bytes())
            .and_then(|super_at| template.sb.bitmap_offset_bytes(super_at))
        {
            // Header and bits: at most what lies between them and the data.
            let len = (data_offset * 512).saturating_sub(at).min(1 << 20);
            let mut area = vec![0u8; len as usize];
            template.device.read_at(&mut area, at)?;
            dev.write_at(&area, at)?;
        }
        md_format::write(dev.as_ref(), template.version, &sb)?;
        dev.flush()?;
        Ok(())
    }

    /// Opens a device that is to become an array member, refusing one that holds another
    /// format's signature unless `force`.
    pub(crate) fn open_new_member(&self, path: &str, force: bool) -> Result<SharedDevice> {
        let dev = self.open_named(path, true)?;
        self.refuse_occupied(path, &dev, force)?;
        Ok(dev)
    }

    /// Takes a spare or a failed member out of array `name` (mdadm --remove): its
    /// superblock is wiped, so that no later assembly finds it. Active members must be
    /// failed first.
    pub fn md_remove(&self, name: &str, device: &str) -> Result<()> {
        let _lock = self.lock(&format!("M_{name}"))?;
        let bad = |why: String| EngineError::BadArgument(format!("md remove {name}: {why}"));
        let scan = self.md_scan(false)?;
        let array = scan
            .array(name)
            .ok_or_else(|| bad("no such array on the devices scanned".into()))?;
        if array
            .slots
            .iter()
            .flatten()
            .any(|m| same_path(&m.path, device))
        {
            return Err(bad(format!(
                "{device} is an active member: fail it first (tessera md fail {name} {device})"
            )));
        }
        let member = array
            .spares
            .iter()
            .chain(array.left_out.iter().map(|(m, _)| m))
            .find(|m| same_path(&m.path, device))
            .ok_or_else(|| bad(format!("{device} is not a spare or failed member of it")))?;
        let at = member
            .version
            .offset_bytes(member.device.size_bytes())
            .ok_or_else(|| bad(format!("{device}: no superblock place")))?;
        member
            .device
            .write_zeroes(at, 4096.min(member.device.size_bytes() - at))?;
        member.device.flush()?;
        Ok(())
    }
}
