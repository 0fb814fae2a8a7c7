//! The commit, as lvm2 does it: the new text goes after the current one in every metadata
//! area, every device is flushed, then every area's header is pointed at the new text, and
//! every device is flushed again. A power cut before the second phase leaves the old text
//! current everywhere; during it, some areas hold the new seqno and the scan takes the
//! highest, so the old or the new VG comes back, never a mix.

use tessera_block::SharedDevice;
use tessera_formats::lvm2::config::Style;
use tessera_formats::lvm2::label::{write_label, PvLabel, PV_EXT_USED};
use tessera_formats::lvm2::mda::{next_text_offset, write_mda_header, write_text, MdaHeader};
use tessera_formats::lvm2::vg::{TextInfo, VolumeGroup};

use super::scan::PvInfo;
use crate::error::Result;

/// Runs `f` on every item on its own thread, so flushes to many devices overlap; returns
/// the first error.
fn on_each<T: Sync>(items: &[T], f: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    if items.len() <= 1 {
        return items.iter().try_for_each(&f);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|item| s.spawn(|| f(item))).collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or(Ok(())))
    })
}

fn flush_all(devices: &[SharedDevice]) -> Result<()> {
    on_each(devices, |d| Ok(d.flush()?))
}

/// An empty header for an area whose header could not be read.
fn fresh_header(start: u64, size: u64) -> MdaHeader {
    MdaHeader {
        start,
        size,
        raw_locns: Vec::new(),
    }
}

/// One PV's share of a commit: its new text in every metadata area, then the headers.
struct Staged<'a> {
    pv: &'a PvInfo,
    headers: Vec<MdaHeader>,
}

impl Staged<'_> {
    fn write_texts(&mut self, text: &str) -> Result<()> {
        for mda in &self.pv.mdas {
            if mda.is_ignored() {
                continue;
            }
            let mut header = mda
                .header
                .clone()
                .unwrap_or_else(|| fresh_header(mda.start, mda.size));
            // The stored text carries a trailing NUL.
            let offset = next_text_offset(&self.pv.path, &header, text.len() as u64 + 1)?;
            let locn = write_text(self.pv.device.as_ref(), &header, offset, text.as_bytes())?;
            header.raw_locns = vec![locn];
            self.headers.push(header);
        }
        Ok(self.pv.device.flush()?)
    }

    fn write_headers(&self) -> Result<()> {
        for header in &self.headers {
            write_mda_header(self.pv.device.as_ref(), header)?;
        }
        Ok(self.pv.device.flush()?)
    }
}

/// Writes `vg` to every metadata area of `pvs` (crash-safely, as described above). Each PV
/// gets its own thread for both phases, so flushes to many devices overlap; a barrier keeps
/// every header write after every text flush, and one failed text write stops all headers.
pub fn write_vg(pvs: &[&PvInfo], vg: &VolumeGroup, info: &TextInfo) -> Result<()> {
    let text = vg.to_text(info, Style::Disk);
    let mut staged: Vec<Staged> = pvs
        .iter()
        .map(|pv| Staged {
            pv,
            headers: Vec::new(),
        })
        .collect();
    if staged.len() <= 1 {
        staged.iter_mut().try_for_each(|s| s.write_texts(&text))?;
        return staged.iter().try_for_each(Staged::write_headers);
    }
    let barrier = std::sync::Barrier::new(staged.len());
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = staged
            .iter_mut()
            .map(|s| {
                let (barrier, failed, text) = (&barrier, &failed, &text);
                scope.spawn(move || {
                    let first = s.write_texts(text);
                    if first.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    barrier.wait();
                    first?;
                    if failed.load(std::sync::atomic::Ordering::SeqCst) {
                        return Ok(());
                    }
                    s.write_headers()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Ok(())))
            .collect()
    });
    // A failed text write returns its error from its own thread; the others return Ok
    // without writing headers.
    results.into_iter().collect()
}

/// Makes `pvs` orphans: empties their metadata areas and clears the in-use flag.
pub fn release_pvs(pvs: &[&PvInfo]) -> Result<()> {
    for pv in pvs {
        for mda in &pv.mdas {
            let mut header = mda
                .header
                .clone()
                .unwrap_or_else(|| fresh_header(mda.start, mda.size));
            header.raw_locns.clear();
            write_mda_header(pv.device.as_ref(), &header)?;
        }
        let mut label = pv.label.clone();
        label.ext_flags &= !PV_EXT_USED;
        write_label(pv.device.as_ref(), &label)?;
    }
    flush_all(&pvs.iter().map(|p| p.device.clone()).collect::<Vec<_>>())
}

/// Marks `pvs` as in use by a VG, as lvm2 does once they hold its metadata.
pub fn mark_used(pvs: &[&PvInfo]) -> Result<()> {
    let mut changed = Vec::new();
    for pv in pvs {
        if pv.label.ext_flags & PV_EXT_USED == 0 {
            let label = PvLabel {
                ext_flags: pv.label.ext_flags | PV_EXT_USED,
                ..pv.label.clone()
            };
            write_label(pv.device.as_ref(), &label)?;
            changed.push(pv.device.clone());
        }
    }
    flush_all(&changed)
}
