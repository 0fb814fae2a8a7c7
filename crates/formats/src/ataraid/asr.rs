//! Adaptec HostRAID (ASR) metadata, as dmraid's `asr` format reads it. Big endian. Two
//! parts near the end of the disk:
//!
//! The reserved block, in the last sector:
//!
//! | byte | field |
//! |---|---|
//! | 0x000 | b0idcode 0x37FC4D1E |
//! | 0x03F | resver: 8 |
//! | 0x040 | drivemagic: this disk's id, found again in the RAID table |
//! | 0x100 | smagic "DPTM" (0x4450544D), 0x104 raidtbl: the sector of the RAID table |
//!
//! The RAID table at raidtbl: a 64-byte header (ridcode 0x900765C4, rversion, maxelm,
//! elmcnt, elmsize 64, rchksum: the low 16 bits of the byte sum of the lines, checked when
//! rversion < 2), then `elmcnt` 64-byte configuration lines, seven in the first sector, the
//! rest in the sectors after it. A line: raidcnt (u16), raidseq (u16), raidmagic, raidlevel
//! (1 logical drive, 3 the top of a two-level one; 0 a physical disk), raidtype (0 raid0,
//! 1 raid1, 0xFE spare), raidstate, flags, refcnt, raidhba, raidchnl, raidlun, raidid (u32),
//! loffset, lcapcty (sectors of the disk used), strpsize (u16, sectors), ..., name[16] at 48.
//!
//! A disk's own line is the one whose raidmagic is its drivemagic; the logical drive it
//! belongs to is the nearest logical line before it, whose physical lines follow it.
//! Members are ordered by (raidhba, raidchnl, raidlun, raidid), as dmraid orders them.

use tessera_block::BlockDevice;

use super::{
    be16, be32, put_be16, put_be32, read_bytes, write_bytes, AtaraidError, Level, Member,
    MemberState, SetSpec, Vendor, SECTOR_BYTES,
};

pub const B0RESRVD: u32 = 0x37FC_4D1E;
pub const SVALID: u32 = 0x4450_544D;
pub const RVALID2: u32 = 0x9007_65C4;
pub const RBLOCK_VER: u8 = 8;
pub const LINE_BYTES: usize = 64;
/// Lines in the table's first sector, after its header.
pub const LINES_IN_FIRST_SECTOR: usize = 7;
/// The table's sectors, below the reserved block.
pub const TABLE_SECTORS: u64 = 16;

pub const LEVEL_PHYSICAL: u8 = 0;
pub const LEVEL_LOGICAL: u8 = 1;
pub const LEVEL_LOGICAL_TOP: u8 = 3;
pub const TYPE_RAID0: u8 = 0;
pub const TYPE_RAID1: u8 = 1;
pub const TYPE_SPARE: u8 = 0xFE;

pub const STATE_OPTIMAL: u8 = 0x00;
pub const STATE_DEGRADED: u8 = 0x01;
pub const STATE_UNCONFIGURED: u8 = 0x02;
pub const STATE_FAILED: u8 = 0x03;
pub const STATE_REPLACED: u8 = 0x04;
pub const STATE_UNINITIALIZED: u8 = 0x0A;
pub const SUBSTATE_BUILDING: u8 = 0x10;
pub const SUBSTATE_REBUILDING: u8 = 0x20;

const RB_RESVER: usize = 0x3F;
const RB_DRIVEMAGIC: usize = 0x40;
const RB_SMAGIC: usize = 0x100;
const RB_RAIDTBL: usize = 0x104;

const RT_RVERSION: usize = 4;
const RT_MAXELM: usize = 8;
const RT_ELMCNT: usize = 0x0A;
const RT_ELMSIZE: usize = 0x0C;
const RT_RCHKSUM: usize = 0x0E;
const RT_HEADER_BYTES: usize = 64;

/// One configuration line of the RAID table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigLine {
    pub raidcnt: u16,
    pub raidseq: u16,
    pub raidmagic: u32,
    pub raidlevel: u8,
    pub raidtype: u8,
    pub raidstate: u8,
    pub raidhba: u8,
    pub raidchnl: u8,
    pub raidlun: u8,
    pub raidid: u32,
    pub loffset: u32,
    pub lcapcty: u32,
    pub strpsize: u16,
    pub name: String,
}

impl ConfigLine {
    fn decode(b: &[u8]) -> ConfigLine {
        ConfigLine {
            raidcnt: be16(b, 0),
            raidseq: be16(b, 2),
            raidmagic: be32(b, 4),
            raidlevel: b[8],
            raidtype: b[9],
            raidstate: b[10],
            raidhba: b[13],
            raidchnl: b[14],
            raidlun: b[15],
            raidid: be32(b, 16),
            loffset: be32(b, 20),
            lcapcty: be32(b, 24),
            strpsize: be16(b, 28),
            name: super::text_field(&b[48..64]),
        }
    }

    fn encode(&self) -> [u8; LINE_BYTES] {
        let mut b = [0u8; LINE_BYTES];
        put_be16(&mut b, 0, self.raidcnt);
        put_be16(&mut b, 2, self.raidseq);
        put_be32(&mut b, 4, self.raidmagic);
        b[8] = self.raidlevel;
        b[9] = self.raidtype;
        b[10] = self.raidstate;
        b[13] = self.raidhba;
        b[14] = self.raidchnl;
        b[15] = self.raidlun;
        put_be32(&mut b, 16, self.raidid);
        put_be32(&mut b, 20, self.loffset);
        put_be32(&mut b, 24, self.lcapcty);
        put_be16(&mut b, 28, self.strpsize);
        let name = self.name.as_bytes();
        let n = name.len().min(16);
        b[48..48 + n].copy_from_slice(&name[..n]);
        b
    }

    /// The order dmraid puts members in.
    fn order_key(&self) -> u64 {
        (u64::from(self.raidhba) << 48)
            | (u64::from(self.raidchnl) << 40)
            | (u64::from(self.raidlun) << 32)
            | u64::from(self.raidid)
    }
}

fn table_checksum(lines: &[u8]) -> u16 {
    (lines
        .iter()
        .fold(0u32, |sum, &b| sum.wrapping_add(b.into()))
        & 0xFFFF) as u16
}

fn member_state(raidstate: u8) -> MemberState {
    match raidstate {
        STATE_OPTIMAL => MemberState::Ok,
        STATE_DEGRADED | STATE_FAILED => MemberState::Failed,
        SUBSTATE_BUILDING | SUBSTATE_REBUILDING | STATE_REPLACED => MemberState::Rebuilding,
        _ => MemberState::Unknown,
    }
}

/// Reads the reserved block and the RAID table: the disk's drivemagic and the lines.
pub fn read_table(
    device: &dyn BlockDevice,
) -> Result<Option<(u32, u64, Vec<ConfigLine>)>, AtaraidError> {
    let dev_sectors = device.size_bytes() / SECTOR_BYTES;
    let Some(rb_sector) = dev_sectors.checked_sub(1) else {
        return Ok(None);
    };
    let rb = read_bytes(device, Vendor::Asr, rb_sector * SECTOR_BYTES, 512)?;
    if be32(&rb, 0) != B0RESRVD || be32(&rb, RB_SMAGIC) != SVALID {
        return Ok(None);
    }
    let malformed = |why: String| AtaraidError::malformed(device, Vendor::Asr, why);
    if rb[RB_RESVER] != RBLOCK_VER {
        return Err(AtaraidError::unsupported(
            device,
            Vendor::Asr,
            format!("reserved block version {} (tessera reads 8)", rb[RB_RESVER]),
        ));
    }
    let drivemagic = be32(&rb, RB_DRIVEMAGIC);
    let table_sector = u64::from(be32(&rb, RB_RAIDTBL));
    if table_sector >= rb_sector {
        return Err(malformed(format!(
            "the RAID table's sector {table_sector} is not below the reserved block at {rb_sector}"
        )));
    }
    let first = read_bytes(device, Vendor::Asr, table_sector * SECTOR_BYTES, 512)?;
    let ridcode = be32(&first, 0);
    if ridcode != RVALID2 {
        return Err(malformed(format!(
            "RAID table magic {ridcode:#010x}, expected {RVALID2:#010x}"
        )));
    }
    let elmcnt = usize::from(be16(&first, RT_ELMCNT));
    let maxelm = usize::from(be16(&first, RT_MAXELM));
    if elmcnt == 0 || elmcnt >= maxelm {
        return Err(malformed(format!(
            "RAID table holds {elmcnt} lines of at most {maxelm}"
        )));
    }
    let elmsize = usize::from(be16(&first, RT_ELMSIZE));
    if elmsize != LINE_BYTES {
        return Err(malformed(format!(
            "RAID table lines of {elmsize} bytes, expected {LINE_BYTES}"
        )));
    }
    let mut lines = first[RT_HEADER_BYTES..].to_vec();
    lines.truncate(elmcnt.min(LINES_IN_FIRST_SECTOR) * LINE_BYTES);
    if elmcnt > LINES_IN_FIRST_SECTOR {
        let more = read_bytes(
            device,
            Vendor::Asr,
            (table_sector + 1) * SECTOR_BYTES,
            (elmcnt - LINES_IN_FIRST_SECTOR) * LINE_BYTES,
        )?;
        lines.extend_from_slice(&more);
    }
    if be32(&first, RT_RVERSION) < 2 {
        let stored = be16(&first, RT_RCHKSUM);
        let computed = table_checksum(&lines);
        if stored != computed {
            return Err(AtaraidError::checksum(
                device,
                Vendor::Asr,
                stored.into(),
                computed.into(),
            ));
        }
    }
    let mut decoded: Vec<ConfigLine> = lines.chunks(LINE_BYTES).map(ConfigLine::decode).collect();
    // Lines without a name carry the first line's, as dmraid fills them in.
    let first_name = decoded[0].name.clone();
    for line in &mut decoded {
        if line.name.is_empty() {
            line.name = first_name.clone();
        }
    }
    Ok(Some((drivemagic, table_sector, decoded)))
}

pub fn probe(device: &dyn BlockDevice) -> Result<Option<Member>, AtaraidError> {
    let Some((drivemagic, table_sector, lines)) = read_table(device)? else {
        return Ok(None);
    };
    let malformed = |why: String| AtaraidError::malformed(device, Vendor::Asr, why);
    let Some(own) = lines.iter().rposition(|l| l.raidmagic == drivemagic) else {
        return Err(malformed(format!(
            "no line of the RAID table is this disk's (drivemagic {drivemagic:#010x})"
        )));
    };
    let line = &lines[own];
    let state = member_state(line.raidstate);
    let dev_sectors = device.size_bytes() / SECTOR_BYTES;
    if line.raidtype == TYPE_SPARE {
        if line.lcapcty == 0 || u64::from(line.lcapcty) > table_sector {
            return Err(malformed(format!(
                "a spare of {} sectors, with the RAID table at sector {table_sector}",
                line.lcapcty
            )));
        }
        return Ok(Some(Member {
            vendor: Vendor::Asr,
            // dmraid pools every spare in one set of this name.
            set_name: ".asr_spares".into(),
            set_id: 0,
            level: Level::Spare,
            stripe_sectors: 0,
            index: 0,
            member_count: 1,
            data_offset: 0,
            data_sectors: u64::from(line.lcapcty),
            metadata_offset: table_sector,
            state: MemberState::Spare,
        }));
    }
    if lines.iter().any(|l| l.raidlevel == LEVEL_LOGICAL_TOP) {
        return Err(AtaraidError::unsupported(
            device,
            Vendor::Asr,
            "a two-level (RAID10) array",
        ));
    }
    let Some(logical) = lines[..own]
        .iter()
        .rposition(|l| l.raidlevel == LEVEL_LOGICAL)
    else {
        return Err(malformed(
            "no logical drive line precedes this disk's line".into(),
        ));
    };
    let array = &lines[logical];
    let level = match array.raidtype {
        TYPE_RAID0 => Level::Raid0,
        TYPE_RAID1 => Level::Raid1,
        other => {
            return Err(AtaraidError::unsupported(
                device,
                Vendor::Asr,
                format!("RAID type {other}"),
            ))
        }
    };
    let siblings: Vec<&ConfigLine> = lines[logical + 1..]
        .iter()
        .take_while(|l| l.raidlevel == LEVEL_PHYSICAL)
        .collect();
    let key = line.order_key();
    let index = siblings.iter().filter(|l| l.order_key() < key).count() as u32;
    let member_count = u32::from(array.raidcnt);
    if member_count == 0 || index >= member_count {
        return Err(malformed(format!(
            "member {index} of a logical drive of {member_count}"
        )));
    }
    let stripe = u32::from(line.strpsize);
    if level == Level::Raid0 && stripe == 0 {
        return Err(malformed("a raid0 drive with strpsize 0".into()));
    }
    let data_sectors = u64::from(line.lcapcty);
    if data_sectors == 0 || data_sectors > table_sector {
        return Err(malformed(format!(
            "the disk's capacity of {data_sectors} sectors runs into the RAID table at sector {table_sector} of {dev_sectors}"
        )));
    }
    Ok(Some(Member {
        vendor: Vendor::Asr,
        set_name: format!("asr_{}", line.name),
        set_id: array.raidmagic.into(),
        level,
        stripe_sectors: if level == Level::Raid0 { stripe } else { 0 },
        index,
        member_count,
        data_offset: 0,
        data_sectors,
        metadata_offset: table_sector,
        state,
    }))
}

/// The drivemagic tessera gives member `index` of a set with id `id`.
fn drive_magic(id: u32, index: u32) -> u32 {
    id.wrapping_add(0x100 + index)
}

/// Writes member `index` of `spec` (raid0 or raid1) onto `device`: the reserved block in the
/// last sector, the RAID table 17 sectors before the end.
pub fn write_member(
    device: &dyn BlockDevice,
    spec: &SetSpec,
    index: u32,
) -> Result<(), AtaraidError> {
    let raidtype = match spec.level {
        Level::Raid0 => TYPE_RAID0,
        Level::Raid1 => TYPE_RAID1,
        other => {
            return Err(AtaraidError::unsupported(
                device,
                Vendor::Asr,
                format!("level {}", other.dmraid_type()),
            ))
        }
    };
    if spec.member_count == 0 || spec.member_count as usize + 1 > LINES_IN_FIRST_SECTOR {
        return Err(AtaraidError::unsupported(
            device,
            Vendor::Asr,
            format!("{} members", spec.member_count),
        ));
    }
    let dev_sectors = device.size_bytes() / SECTOR_BYTES;
    let Some(table_sector) = dev_sectors.checked_sub(TABLE_SECTORS + 1) else {
        return Err(AtaraidError::Truncated {
            device: device.name().to_string(),
            vendor: Vendor::Asr,
            size_bytes: device.size_bytes(),
            needed_bytes: (TABLE_SECTORS + 1) * SECTOR_BYTES,
        });
    };
    let data_capacity = if spec.level == Level::Raid0 {
        spec.member_data_sectors * u64::from(spec.member_count)
    } else {
        spec.member_data_sectors
    };
    let mut lines = vec![ConfigLine {
        raidcnt: spec.member_count as u16,
        raidseq: 1,
        raidmagic: spec.id,
        raidlevel: LEVEL_LOGICAL,
        raidtype,
        raidstate: STATE_OPTIMAL,
        raidid: 0,
        lcapcty: data_capacity as u32,
        strpsize: spec.stripe_sectors as u16,
        name: spec.name.clone(),
        ..ConfigLine::default()
    }];
    for member in 0..spec.member_count {
        lines.push(ConfigLine {
            raidcnt: 1,
            raidseq: 1,
            raidmagic: drive_magic(spec.id, member),
            raidlevel: LEVEL_PHYSICAL,
            raidtype,
            raidstate: STATE_OPTIMAL,
            raidchnl: 0,
            raidid: member,
            lcapcty: spec.member_data_sectors as u32,
            strpsize: spec.stripe_sectors as u16,
            name: spec.name.clone(),
            ..ConfigLine::default()
        });
    }
    let mut table = vec![0u8; 512];
    let mut encoded = Vec::new();
    for line in &lines {
        encoded.extend_from_slice(&line.encode());
    }
    put_be32(&mut table, 0, RVALID2);
    put_be32(&mut table, RT_RVERSION, 1);
    put_be16(&mut table, RT_MAXELM, 127);
    put_be16(&mut table, RT_ELMCNT, lines.len() as u16);
    put_be16(&mut table, RT_ELMSIZE, LINE_BYTES as u16);
    put_be16(&mut table, RT_RCHKSUM, table_checksum(&encoded));
    table[RT_HEADER_BYTES..RT_HEADER_BYTES + encoded.len()].copy_from_slice(&encoded);
    let mut rb = vec![0u8; 512];
    put_be32(&mut rb, 0, B0RESRVD);
    rb[RB_RESVER] = RBLOCK_VER;
    put_be32(&mut rb, RB_DRIVEMAGIC, drive_magic(spec.id, index));
    put_be32(&mut rb, RB_SMAGIC, SVALID);
    put_be32(&mut rb, RB_RAIDTBL, table_sector as u32);
    write_bytes(device, Vendor::Asr, table_sector * SECTOR_BYTES, &table)?;
    write_bytes(device, Vendor::Asr, (dev_sectors - 1) * SECTOR_BYTES, &rb)
}
