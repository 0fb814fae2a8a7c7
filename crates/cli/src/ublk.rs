//! `tessera serve --ublk`: every served volume also appears as a `/dev/ublkbN` block device
//! through the kernel's io_uring-based user-space block driver (ublk_drv). Requests reach the
//! same device the NBD export of the volume serves, so both paths see one set of bytes.
//!
//! Devices are created with UBLK_F_USER_RECOVERY: when this process dies, the kernel keeps
//! `/dev/ublkbN` and holds its I/O; a restarted `tessera serve --ublk` finds the device that
//! served each volume (libublk's record in /run/ublksrvd names the volume) and reattaches it
//! instead of creating a new one, so mounted file systems survive a restart.

use std::path::Path;
use std::rc::Rc;
use std::sync::mpsc;

use anyhow::{anyhow, bail, Context, Result};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::{BufDesc, UblkError, UblkFlags};
use tessera_block::SharedDevice;
use tessera_export::{Export, ExportSet};

/// The key in libublk's per-device record under which tessera names the volume it serves.
const EXPORT_KEY: &str = "tessera_export";
const QUEUES: u16 = 2;
const QUEUE_DEPTH: u16 = 64;
/// Largest request the kernel sends; also each in-flight request's buffer size.
const IO_BUF_BYTES: u32 = 512 * 1024;

/// One volume served as a ublk block device.
#[derive(Debug, Clone)]
pub struct UblkServed {
    pub export: String,
    pub dev_id: u32,
    /// Reattached to a device a previous server left behind.
    pub recovered: bool,
}

impl UblkServed {
    pub fn block_path(&self) -> String {
        format!("/dev/ublkb{}", self.dev_id)
    }
}

/// Serves every export of `exports` as a ublk device, each from its own threads, until the
/// process ends. Returns once every device is live.
pub fn serve_all(exports: &ExportSet) -> Result<Vec<UblkServed>> {
    if !Path::new("/dev/ublk-control").exists() {
        bail!("/dev/ublk-control is missing: load the ublk_drv module (modprobe ublk_drv) to serve volumes with --ublk");
    }
    let left_behind = devices_left_behind();
    let mut served = Vec::new();
    for (name, export) in exports.list() {
        let previous = left_behind
            .iter()
            .find(|(_, export)| *export == name)
            .map(|(id, _)| *id);
        served.push(serve_one(name, export, previous)?);
    }
    Ok(served)
}

/// Device ids and volume names from libublk's records of devices that still exist.
fn devices_left_behind() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(UblkCtrl::run_dir()) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
            tracing::warn!("ignoring {}: not a ublk device record", path.display());
            continue;
        };
        if let Some(name) = json["target_data"][EXPORT_KEY].as_str() {
            found.push((id, name.to_string()));
        }
    }
    found
}

fn serve_one(name: String, export: Export, previous: Option<u32>) -> Result<UblkServed> {
    let size_bytes = export.device.size_bytes() & !511;
    let read_only = export.is_read_only();
    let device = export.device.clone();
    if let Some(id) = previous {
        UblkCtrl::new_simple(id as i32)
            .and_then(|ctrl| ctrl.start_user_recover())
            .map_err(|e| {
                anyhow!("cannot reattach /dev/ublkb{id} to {name}: {e} (is another tessera serve running it?)")
            })?;
    }
    let (started_tx, started_rx) = mpsc::channel::<Result<u32, String>>();
    let thread_name = name.clone();
    std::thread::Builder::new()
        .name(format!("ublk {name}"))
        .spawn(move || {
            let flags = if previous.is_some() {
                UblkFlags::UBLK_DEV_F_RECOVER_DEV
            } else {
                UblkFlags::UBLK_DEV_F_ADD_DEV
            };
            let ctrl = match UblkCtrlBuilder::default()
                .name("tessera")
                .id(previous.map_or(-1, |id| id as i32))
                .nr_queues(QUEUES)
                .depth(QUEUE_DEPTH)
                .io_buf_bytes(IO_BUF_BYTES)
                .ctrl_flags(libublk::sys::UBLK_F_USER_RECOVERY as u64)
                .dev_flags(flags)
                .build()
            {
                Ok(ctrl) => ctrl,
                Err(e) => {
                    let _ = started_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let volume = thread_name.clone();
            let init = move |dev: &mut UblkDev| {
                dev.set_default_params(size_bytes);
                if read_only {
                    dev.tgt.params.basic.attrs |= libublk::sys::UBLK_ATTR_READ_ONLY;
                }
                dev.set_target_json(serde_json::json!({ EXPORT_KEY: volume }));
                Ok(())
            };
            let queue_device = device.clone();
            let queue =
                move |qid: u16, dev: &UblkDev| serve_queue(qid, dev, &queue_device, read_only);
            let tx = started_tx.clone();
            let live = move |ctrl: &UblkCtrl| {
                let _ = tx.send(Ok(ctrl.dev_info().dev_id));
            };
            if let Err(e) = ctrl.run_target(init, queue, live) {
                let _ = started_tx.send(Err(e.to_string()));
            }
            // A stopped device is deleted by whoever stopped it; one whose server died is
            // kept by the kernel for the next server, so this handle must not delete it.
            ctrl.disown();
        })
        .context("cannot start a ublk thread")?;
    match started_rx.recv() {
        Ok(Ok(dev_id)) => Ok(UblkServed {
            export: name,
            dev_id,
            recovered: previous.is_some(),
        }),
        Ok(Err(e)) => bail!("cannot serve {name} with ublk: {e}"),
        Err(_) => {
            bail!("cannot serve {name} with ublk: its thread ended before the device started")
        }
    }
}

/// One queue: a task per tag, each taking a request, serving it from `device` and committing
/// the result, until the device stops.
fn serve_queue(qid: u16, dev: &UblkDev, device: &SharedDevice, read_only: bool) {
    let queue = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!("ublk device {}: queue {qid}: {e}", dev.dev_info.dev_id);
            return;
        }
    };
    let executor = Rc::new(smol::LocalExecutor::new());
    let mut tasks = Vec::new();
    for tag in 0..dev.dev_info.queue_depth {
        let queue = queue.clone();
        let device = device.clone();
        tasks.push(executor.spawn(async move {
            match serve_tag(&queue, tag, &device, read_only).await {
                Ok(()) | Err(UblkError::QueueIsDown) => {}
                Err(e) => tracing::error!("ublk tag {tag}: {e}"),
            }
        }));
    }
    let driver = executor.clone();
    smol::block_on(executor.run(async move {
        let run_ops = || while driver.try_tick() {};
        let done = || tasks.iter().all(|t| t.is_finished());
        if let Err(e) = libublk::wait_and_handle_io_events(&queue, Some(20), run_ops, done).await {
            tracing::error!("ublk queue {qid}: {e}");
        }
    }));
}

async fn serve_tag(
    queue: &UblkQueue<'_>,
    tag: u16,
    device: &SharedDevice,
    read_only: bool,
) -> Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(queue.dev.dev_info.max_io_buf_bytes as usize);
    queue
        .submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    loop {
        let result = perform(queue, tag, buf.as_mut_slice(), device, read_only);
        queue
            .submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), result)
            .await?;
    }
}

/// Serves one request; the result is the byte count done or a negative errno.
fn perform(
    queue: &UblkQueue<'_>,
    tag: u16,
    buf: &mut [u8],
    device: &SharedDevice,
    read_only: bool,
) -> i32 {
    let iod = queue.get_iod(tag);
    let op = iod.op_flags & 0xff;
    let offset = iod.start_sector << 9;
    let bytes = (iod.nr_sectors as u64) << 9;
    let is_write = matches!(
        op,
        libublk::sys::UBLK_IO_OP_WRITE
            | libublk::sys::UBLK_IO_OP_DISCARD
            | libublk::sys::UBLK_IO_OP_WRITE_ZEROES
    );
    if is_write && read_only {
        return -libc::EROFS;
    }
    // A flush carries no range: its sector field may hold anything.
    if op != libublk::sys::UBLK_IO_OP_FLUSH && offset.saturating_add(bytes) > device.size_bytes() {
        return -libc::EINVAL;
    }
    let data_len = bytes as usize;
    let done = match op {
        libublk::sys::UBLK_IO_OP_READ if data_len <= buf.len() => {
            device.read_at(&mut buf[..data_len], offset)
        }
        libublk::sys::UBLK_IO_OP_WRITE if data_len <= buf.len() => {
            let written = device.write_at(&buf[..data_len], offset);
            if written.is_ok() && iod.op_flags & libublk::sys::UBLK_IO_F_FUA != 0 {
                device.flush()
            } else {
                written
            }
        }
        libublk::sys::UBLK_IO_OP_FLUSH => device.flush(),
        libublk::sys::UBLK_IO_OP_DISCARD => device.discard(offset, bytes),
        libublk::sys::UBLK_IO_OP_WRITE_ZEROES => device.write_zeroes(offset, bytes),
        _ => {
            tracing::warn!(
                "{}: ublk request of unknown kind {op} refused",
                device.name()
            );
            return -libc::EOPNOTSUPP;
        }
    };
    match done {
        Ok(()) => bytes as i32,
        Err(e) => {
            tracing::warn!(
                "{}: ublk request at byte {offset} ({bytes} bytes): {e}",
                device.name()
            );
            -libc::EIO
        }
    }
}
