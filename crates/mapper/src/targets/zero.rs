//! `zero`: reads return zeroes, writes vanish. `error`: every read and write fails, as
//! lvm2 uses for the missing parts of a partial LV.

use tessera_block::Result;

use super::refused;
use crate::target::{StatusType, Target, TargetArgs, TargetError};

struct Zero;

pub(super) fn construct_zero(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    args.reader().finish()?;
    Ok(Box::new(Zero))
}

impl Target for Zero {
    fn read(&self, _sector: u64, buf: &mut [u8]) -> Result<()> {
        buf.fill(0);
        Ok(())
    }

    fn write(&self, _sector: u64, _buf: &[u8]) -> Result<()> {
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, _sector: u64, _len_sectors: u64) -> Result<()> {
        Ok(())
    }

    fn write_zeroes(&self, _sector: u64, _len_sectors: u64) -> Result<()> {
        Ok(())
    }

    fn status(&self, _kind: StatusType) -> String {
        String::new()
    }
}

struct Error {
    device: String,
    begin: u64,
}

const WHY: &str = "the table maps these sectors to the error target";

/// Like the kernel's, the error target ignores any arguments.
pub(super) fn construct_error(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    Ok(Box::new(Error {
        device: args.device.to_string(),
        begin: args.start_sectors,
    }))
}

impl Target for Error {
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<()> {
        Err(refused(
            &self.device,
            self.begin,
            sector,
            buf.len() as u64 / 512,
            WHY,
        ))
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<()> {
        Err(refused(
            &self.device,
            self.begin,
            sector,
            buf.len() as u64 / 512,
            WHY,
        ))
    }

    /// dm sends no flushes to the error target: there is nothing to make durable.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, sector: u64, len_sectors: u64) -> Result<()> {
        Err(refused(&self.device, self.begin, sector, len_sectors, WHY))
    }

    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> Result<()> {
        Err(refused(&self.device, self.begin, sector, len_sectors, WHY))
    }

    fn status(&self, _kind: StatusType) -> String {
        String::new()
    }
}
