//! `linear <device> <offset>`: the row's sectors, in order, from `offset` on one device.

use tessera_block::{Result, SharedDevice};

use super::byte_offset;
use crate::table::escape_arg;
use crate::target::{StatusType, Target, TargetArgs, TargetError};

struct Linear {
    name: String,
    dev: SharedDevice,
    start: u64,
}

pub(super) fn construct(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    let mut r = args.reader();
    let name = r.next("device")?;
    let start = r.number("offset")?;
    r.finish()?;
    let dev = args.open(name, start, args.length_sectors)?;
    Ok(Box::new(Linear {
        name: name.to_string(),
        dev,
        start,
    }))
}

impl Target for Linear {
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<()> {
        self.dev.read_at(buf, byte_offset(self.start, sector))
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<()> {
        self.dev.write_at(buf, byte_offset(self.start, sector))
    }

    fn flush(&self) -> Result<()> {
        self.dev.flush()
    }

    fn discard(&self, sector: u64, len_sectors: u64) -> Result<()> {
        let len = byte_offset(0, len_sectors);
        self.dev.discard(byte_offset(self.start, sector), len)
    }

    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> Result<()> {
        let len = byte_offset(0, len_sectors);
        self.dev.write_zeroes(byte_offset(self.start, sector), len)
    }

    fn status(&self, kind: StatusType) -> String {
        match kind {
            StatusType::Info => String::new(),
            StatusType::Table => format!("{} {}", escape_arg(&self.name), self.start),
        }
    }

    fn devices(&self) -> Vec<SharedDevice> {
        vec![self.dev.clone()]
    }
}
