//! `delay <device> <offset> <delay_ms> [<write_device> <write_offset> <write_delay_ms>
//! [<flush_device> <flush_offset> <flush_delay_ms>]]`: a linear mapping that holds each
//! request for a while before passing it on, as dm-delay does. Reads use the first class;
//! writes, discards and write-zeroes the second (the first if absent); flushes the third
//! (the second if absent). A suspend releases held requests at once, as dm-delay's
//! presuspend does, and requests are not held again until resume.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use tessera_block::{Result, SharedDevice};

use super::byte_offset;
use crate::table::escape_arg;
use crate::target::{StatusType, Target, TargetArgs, TargetError};
use crate::SECTOR_BYTES;

/// One class of requests: where they go and how long they wait.
struct Class {
    name: String,
    dev: SharedDevice,
    start: u64,
    delay_ms: u32,
    /// Requests held right now, for `dmsetup status`.
    held: AtomicU32,
}

struct Delay {
    read: Class,
    write: Class,
    flush: Class,
    /// How many argument words the table gave (3, 6 or 9), to print the table back alike.
    argc: usize,
    /// False between presuspend and resume: requests pass without waiting.
    may_delay: Mutex<bool>,
    released: Condvar,
}

pub(super) fn construct(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    let argc = args.args.len();
    if ![3, 6, 9].contains(&argc) {
        return Err(TargetError::Invalid(format!(
            "delay takes 3, 6 or 9 arguments (<device> <offset> <delay_ms> for reads, then \
             writes, then flushes), found {argc}"
        )));
    }
    let mut r = args.reader();
    let mut class = || -> Result<Class, TargetError> {
        let name = r.next("device")?;
        let start = r.number("offset")?;
        let delay_ms = r.number("delay_ms")?;
        Ok(Class {
            name: name.to_string(),
            dev: args.open(name, start, args.length_sectors)?,
            start,
            delay_ms,
            held: AtomicU32::new(0),
        })
    };
    let read = class()?;
    let write = if argc >= 6 { class()? } else { read.copy() };
    let flush = if argc >= 9 { class()? } else { write.copy() };
    r.finish()?;
    Ok(Box::new(Delay {
        read,
        write,
        flush,
        argc,
        may_delay: Mutex::new(true),
        released: Condvar::new(),
    }))
}

impl Class {
    /// The same destination with its own count of held requests.
    fn copy(&self) -> Class {
        Class {
            name: self.name.clone(),
            dev: self.dev.clone(),
            start: self.start,
            delay_ms: self.delay_ms,
            held: AtomicU32::new(0),
        }
    }

    fn table(&self) -> String {
        format!(
            "{} {} {}",
            escape_arg(&self.name),
            self.start,
            self.delay_ms
        )
    }
}

impl Delay {
    /// Holds the calling request for its class's delay, or until a suspend starts.
    fn hold(&self, class: &Class) {
        if class.delay_ms == 0 {
            return;
        }
        class.held.fetch_add(1, Ordering::Relaxed);
        let may = self
            .may_delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let wait = Duration::from_millis(u64::from(class.delay_ms));
        let _unused = self
            .released
            .wait_timeout_while(may, wait, |may| *may)
            .unwrap_or_else(PoisonError::into_inner);
        class.held.fetch_sub(1, Ordering::Relaxed);
    }

    fn set_may_delay(&self, may: bool) {
        *self
            .may_delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = may;
        self.released.notify_all();
    }
}

impl Target for Delay {
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<()> {
        let c = &self.read;
        self.hold(c);
        c.dev.read_at(buf, byte_offset(c.start, sector))
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<()> {
        let c = &self.write;
        self.hold(c);
        c.dev.write_at(buf, byte_offset(c.start, sector))
    }

    fn flush(&self) -> Result<()> {
        self.hold(&self.flush);
        self.flush.dev.flush()
    }

    fn discard(&self, sector: u64, len_sectors: u64) -> Result<()> {
        let c = &self.write;
        self.hold(c);
        c.dev
            .discard(byte_offset(c.start, sector), len_sectors * SECTOR_BYTES)
    }

    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> Result<()> {
        let c = &self.write;
        self.hold(c);
        c.dev
            .write_zeroes(byte_offset(c.start, sector), len_sectors * SECTOR_BYTES)
    }

    fn status(&self, kind: StatusType) -> String {
        match kind {
            StatusType::Info => format!(
                "{} {} {}",
                self.read.held.load(Ordering::Relaxed),
                self.write.held.load(Ordering::Relaxed),
                self.flush.held.load(Ordering::Relaxed)
            ),
            StatusType::Table => {
                let mut out = self.read.table();
                if self.argc >= 6 {
                    out = format!("{out} {}", self.write.table());
                }
                if self.argc >= 9 {
                    out = format!("{out} {}", self.flush.table());
                }
                out
            }
        }
    }

    fn devices(&self) -> Vec<SharedDevice> {
        vec![
            self.read.dev.clone(),
            self.write.dev.clone(),
            self.flush.dev.clone(),
        ]
    }

    fn presuspend(&self) {
        self.set_may_delay(false);
    }

    fn resume(&self) {
        self.set_may_delay(true);
    }
}
