//! Activation in the kernel: the tables lvm2 would load, loaded into the kernel's own
//! device-mapper, under the names and uuids lvm2 gives them (`VG-LV`, `LVM-<vg id><lv id>`)
//! so that dmsetup, lsblk and lvm2 recognise them; `/dev/mapper/VG-LV` and `/dev/VG/LV`
//! made where no udev makes them. A device whose table the kernel refuses is removed again:
//! nothing is left half-activated.

use tessera_kernel::dm::{self, Control, Row};

use super::activate::{dm_name, lv_table};
use super::scan::{Scan, VgState};
use super::snapshot::{stack_devices, stack_origin};
use super::thin::pool_stack_devices;
use crate::error::{EngineError, Result};

/// The uuid lvm2 gives an LV's device.
pub fn lv_uuid(state: &VgState, lv: &str) -> Option<String> {
    let lv = state.vg.lv(lv)?;
    Some(format!(
        "LVM-{}{}",
        String::from_utf8_lossy(state.vg.id.raw()),
        String::from_utf8_lossy(lv.id.raw())
    ))
}

pub use crate::devices::devno;

/// The kernel table of an LV: lvm2's rows, PVs named by device number.
pub fn kernel_rows(scan: &Scan, state: &VgState, lv: &str) -> Result<Vec<Row>> {
    if is_pool_stack(state, lv) {
        return Err(EngineError::Refused {
            vg: state.vg.name.clone(),
            why: format!(
                "LV '{lv}' belongs to thin pool stack of several devices; activate it with \
                 tessera activate"
            ),
        });
    }
    if stack_origin(&state.vg, lv).is_some() {
        return Err(EngineError::Refused {
            vg: state.vg.name.clone(),
            why: format!(
                "LV '{lv}' belongs to a snapshot stack of several devices; activate it with \
                 tessera activate"
            ),
        });
    }
    let text = lv_table(scan, state, lv)?;
    let paths: Vec<&str> = state
        .present
        .values()
        .map(|&i| scan.pvs[i].path.as_str())
        .collect();
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = Vec::new();
        for w in line.split_whitespace() {
            words.push(if paths.contains(&w) {
                devno(w)?
            } else {
                w.to_string()
            });
        }
        rows.push(Row::parse(&words.join(" ")).ok_or_else(|| {
            EngineError::Kernel(format!("LV {lv}: cannot read back its own row {line:?}"))
        })?);
    }
    Ok(rows)
}

/// What activating one LV did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activated {
    New {
        name: String,
        major: u32,
        minor: u32,
    },
    /// It was live with this table already.
    Already { name: String },
    /// It was live with another table, which was replaced.
    Reloaded { name: String },
}

/// The rows of raid LV `lv`, as lvm2 loads them: its metadata and data sub-LVs activated
/// first (devices of their own) and named by device number.
fn raid_rows(control: &Control, scan: &Scan, state: &VgState, lv: &str) -> Result<Vec<Row>> {
    let plan = super::raid_lv::raid_plan(scan, state, lv)?;
    if plan.is_degraded() {
        return Err(EngineError::Refused {
            vg: state.vg.name.clone(),
            why: format!(
                "raid LV '{lv}' is degraded ({}); tessera activates whole raid LVs in the kernel",
                plan.describe_left_out()
            ),
        });
    }
    let raid = state
        .vg
        .lv(lv)
        .and_then(|l| l.raid())
        .expect("raid_plan checked it")
        .clone();
    let mut pairs = Vec::new();
    for image in &raid.images {
        let mut numbers = Vec::new();
        for sub in image.meta.iter().chain(std::iter::once(&image.data)) {
            let (major, minor) = match activate_lv(control, scan, state, sub)? {
                Activated::New { major, minor, .. } => (major, minor),
                Activated::Already { name } | Activated::Reloaded { name } => {
                    let info = control.info(&name)?.expect("just activated");
                    (info.major, info.minor)
                }
            };
            numbers.push(format!("{major}:{minor}"));
        }
        if image.meta.is_none() {
            numbers.insert(0, "-".into());
        }
        pairs.push(numbers.join(" "));
    }
    // The plan's row with its "- NAME" pairs replaced by the devices' numbers.
    let words: Vec<&str> = plan.table.split_whitespace().collect();
    let nparams: usize = words[4].parse().expect("raid_plan writes the count");
    let head = words[..6 + nparams].join(" ");
    let line = format!("{head} {}", pairs.join(" "));
    Ok(vec![Row::parse(&line).ok_or_else(|| {
        EngineError::Kernel(format!("raid LV {lv}: cannot read back its row {line:?}"))
    })?])
}

/// Activates LV `lv` of `state` in the kernel (a raid LV with its sub-LVs; an origin, a
/// snapshot or lvm2's snapshotN LV with the whole stack of its origin, see
/// [`super::snapshot::stack_devices`]).
pub fn activate_lv(control: &Control, scan: &Scan, state: &VgState, lv: &str) -> Result<Activated> {
    if let Some(why) = super::bbr::kernel_refusal(state, lv) {
        return Err(EngineError::Refused {
            vg: state.vg.name.clone(),
            why,
        });
    }
    if is_pool_stack(state, lv) {
        return activate_pool_stack(control, scan, state, lv);
    }
    if let Some(origin) = stack_origin(&state.vg, lv) {
        return activate_stack(control, scan, state, origin, lv);
    }
    if !super::pvmove::pvmoves_under(&state.vg, lv).is_empty() {
        return activate_moving(control, scan, state, lv);
    }
    let is_raid = state.vg.lv(lv).is_some_and(|l| l.raid().is_some());
    let rows = if is_raid {
        raid_rows(control, scan, state, lv)?
    } else {
        kernel_rows(scan, state, lv)?
    };
    let name = dm_name(&state.vg.name, lv);
    let uuid = lv_uuid(state, lv).expect("the LV exists: its table was built");
    load_device(control, state, Some(lv), &name, &uuid, &rows, false)
}

/// Activates LV `lv`, which lies on a pvmove LV, as lvm2 does in the middle of a move: the
/// pvmove device first (`VG-pvmove0`, its `mirror` row where the copy runs), then the LV's
/// own, its moved stripes on it (see [`super::pvmove::pvmove_devices`]).
fn activate_moving(control: &Control, scan: &Scan, state: &VgState, lv: &str) -> Result<Activated> {
    let devices = super::pvmove::pvmove_devices(scan, state, lv)?;
    let mut made: Vec<(String, String)> = Vec::new();
    let mut result = None;
    for d in &devices {
        let rows = rows_with_numbers(scan, state, &d.name, &d.table, &made)?;
        let done = load_device(
            control,
            state,
            d.lv.as_deref(),
            &d.name,
            &d.uuid,
            &rows,
            false,
        )?;
        let info = control
            .info(&d.name)?
            .ok_or_else(|| EngineError::Kernel(format!("{} vanished once loaded", d.name)))?;
        made.push((d.name.clone(), format!("{}:{}", info.major, info.minor)));
        result = Some(done);
    }
    Ok(result.expect("the LV's own device comes last"))
}

/// True if LV `lv` is a thin pool or a thin LV: activated as lvm2 stacks them.
fn is_pool_stack(state: &VgState, lv: &str) -> bool {
    state
        .vg
        .lv(lv)
        .is_some_and(|l| l.thin_pool().is_some() || l.thin().is_some())
}

/// Activates thin pool or thin LV `lv` as lvm2 does: the pool's `_tmeta` and `_tdata`,
/// its `thin-pool` device, then the pool LV's own (read-only) device or the thin LV's
/// (see [`super::thin::pool_stack_devices`]).
fn activate_pool_stack(
    control: &Control,
    scan: &Scan,
    state: &VgState,
    lv: &str,
) -> Result<Activated> {
    let vg = &state.vg;
    let pool = vg
        .pool_of(lv)
        .map(|p| p.name.clone())
        .ok_or_else(|| EngineError::LvNotFound {
            vg: vg.name.clone(),
            lv: lv.into(),
        })?;
    let devices = if pool == lv {
        pool_stack_devices(scan, state, &pool, &[], true)?
    } else {
        pool_stack_devices(scan, state, &pool, &[lv], false)?
    };
    let want = dm_name(&vg.name, lv);
    let mut made: Vec<(String, String)> = Vec::new();
    let mut result = None;
    for d in &devices {
        let rows = rows_with_numbers(scan, state, &d.name, &d.table, &made)?;
        // lvm2 loads a used pool's own device read-only: the pool is used through its
        // thin LVs.
        let read_only = d.uuid.ends_with("-pool");
        let done = load_device(
            control,
            state,
            d.lv.as_deref(),
            &d.name,
            &d.uuid,
            &rows,
            read_only,
        )?;
        let info = control
            .info(&d.name)?
            .ok_or_else(|| EngineError::Kernel(format!("{} vanished once loaded", d.name)))?;
        made.push((d.name.clone(), format!("{}:{}", info.major, info.minor)));
        if d.name == want {
            result = Some(done);
        }
    }
    Ok(result.unwrap_or(Activated::Already { name: want }))
}

/// Removes pool `pool`'s `-tpool`, `_tdata` and `_tmeta` devices when nothing holds them
/// (no thin LV active, the pool's own device gone), as lvm2 deactivates an unused pool.
fn release_pool(control: &Control, state: &VgState, pool: &str) -> Result<bool> {
    let vg = &state.vg;
    let Some(seg) = vg.lv(pool).and_then(|l| l.thin_pool()) else {
        return Ok(false);
    };
    let public = dm_name(&vg.name, pool);
    let mut any = false;
    let layers = [
        format!("{public}-tpool"),
        dm_name(&vg.name, &seg.data),
        dm_name(&vg.name, &seg.metadata),
    ];
    if seg.transaction_id > 0 && control.info(&public)?.is_some() {
        return Ok(false);
    }
    for name in layers {
        match control.info(&name)? {
            Some(info) if info.open_count == 0 => {
                control.remove(&name)?;
                let _ = std::fs::remove_file(format!("/dev/mapper/{name}"));
                any = true;
            }
            Some(_) => return Ok(any),
            None => {}
        }
    }
    Ok(any)
}

/// Removes thin pool or thin LV `lv`'s device, then the pool's layers if nothing else
/// holds them.
fn deactivate_pool_stack(control: &Control, state: &VgState, lv: &str) -> Result<bool> {
    let vg = &state.vg;
    let Some(pool) = vg.pool_of(lv).map(|p| p.name.clone()) else {
        return Ok(false);
    };
    let name = dm_name(&vg.name, lv);
    let mut any = false;
    if let Some(info) = control.info(&name)? {
        // A fresh pool's own device is its thin-pool device: it stays while thin LVs use it.
        if info.open_count == 0 {
            control.remove(&name)?;
            let _ = std::fs::remove_file(format!("/dev/mapper/{name}"));
            let _ = std::fs::remove_file(format!("/dev/{}/{lv}", vg.name));
            let _ = std::fs::remove_dir(format!("/dev/{}", vg.name));
            any = true;
        }
    }
    any |= release_pool(control, state, &pool)?;
    Ok(any)
}

/// The rows of a table in dmsetup's syntax, PVs named by path and the devices in `made`
/// by their names, all named by device number.
fn rows_with_numbers(
    scan: &Scan,
    state: &VgState,
    what: &str,
    text: &str,
    made: &[(String, String)],
) -> Result<Vec<Row>> {
    let paths: Vec<&str> = state
        .present
        .values()
        .map(|&i| scan.pvs[i].path.as_str())
        .collect();
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = Vec::new();
        for w in line.split_whitespace() {
            words.push(if paths.contains(&w) {
                devno(w)?
            } else if let Some((_, number)) = made.iter().find(|(n, _)| n == w) {
                number.clone()
            } else {
                w.to_string()
            });
        }
        rows.push(Row::parse(&words.join(" ")).ok_or_else(|| {
            EngineError::Kernel(format!("{what}: cannot read back its own row {line:?}"))
        })?);
    }
    Ok(rows)
}

/// Activates the stack of `origin` as lvm2 does (`-real`, each snapshot's `-cow` and
/// device, the origin on top) and says what became of LV `asked`'s device.
fn activate_stack(
    control: &Control,
    scan: &Scan,
    state: &VgState,
    origin: &str,
    asked: &str,
) -> Result<Activated> {
    let devices = stack_devices(scan, state, origin)?;
    let want = match state.vg.lv(asked).and_then(|l| l.snapshot()) {
        Some(s) => dm_name(&state.vg.name, &s.cow),
        None => dm_name(&state.vg.name, asked),
    };
    let mut made: Vec<(String, String)> = Vec::new();
    let mut result = None;
    for d in &devices {
        let rows = rows_with_numbers(scan, state, &d.name, &d.table, &made)?;
        let done = load_device(
            control,
            state,
            d.lv.as_deref(),
            &d.name,
            &d.uuid,
            &rows,
            false,
        )?;
        let info = control
            .info(&d.name)?
            .ok_or_else(|| EngineError::Kernel(format!("{} vanished once loaded", d.name)))?;
        made.push((d.name.clone(), format!("{}:{}", info.major, info.minor)));
        if d.name == want {
            result = Some(done);
        }
    }
    // A merging snapshot has no device of its own to report: its origin's stands for it.
    Ok(result.unwrap_or(Activated::Already { name: want }))
}

/// Makes device `name` (uuid `uuid`) live with `rows` (read-only if asked): created,
/// reloaded when its table differs, or left as it is; `/dev/VG/LV` made for `lv`.
fn load_device(
    control: &Control,
    state: &VgState,
    lv: Option<&str>,
    name: &str,
    uuid: &str,
    rows: &[Row],
    read_only: bool,
) -> Result<Activated> {
    let name = name.to_string();
    if let Some(info) = control.info(&name)? {
        if info.live_table && control.table(&name)? == rows {
            make_nodes(&state.vg.name, lv, &name, info.major, info.minor);
            return Ok(Activated::Already { name });
        }
        control.load(&name, rows, read_only)?;
        control.suspend(&name)?;
        control.resume(&name)?;
        return Ok(Activated::Reloaded { name });
    }
    let info = control.create(&name, uuid)?;
    let live = control
        .load(&name, rows, read_only)
        .and_then(|()| control.resume(&name));
    if let Err(e) = live {
        // Nothing half-made: the empty device goes again.
        let _ = control.remove(&name);
        return Err(e.into());
    }
    make_nodes(&state.vg.name, lv, &name, info.major, info.minor);
    Ok(Activated::New {
        name,
        major: info.major,
        minor: info.minor,
    })
}

/// Removes LV `lv`'s device (and a raid LV's sub-LVs'), if it is active; `false` if it
/// was not.
pub fn deactivate_lv(control: &Control, state: &VgState, lv: &str) -> Result<bool> {
    let vg = state.vg.name.as_str();
    if is_pool_stack(state, lv) {
        return deactivate_pool_stack(control, state, lv);
    }
    if let Some(origin) = stack_origin(&state.vg, lv) {
        return deactivate_stack(control, state, origin);
    }
    let name = dm_name(vg, lv);
    if control.info(&name)?.is_none() {
        return Ok(false);
    }
    control.remove(&name)?;
    release_pvmoves(control, state, lv)?;
    if let Some(raid) = state.vg.lv(lv).and_then(|l| l.raid()) {
        for image in &raid.images {
            for sub in image.meta.iter().chain(std::iter::once(&image.data)) {
                let sub_name = dm_name(vg, sub);
                if control.info(&sub_name)?.is_some() {
                    control.remove(&sub_name)?;
                    let _ = std::fs::remove_file(format!("/dev/mapper/{sub_name}"));
                    release_pvmoves(control, state, sub)?;
                }
            }
        }
    }
    let _ = std::fs::remove_file(format!("/dev/{vg}/{lv}"));
    let _ = std::fs::remove_dir(format!("/dev/{vg}"));
    if std::fs::symlink_metadata(format!("/dev/mapper/{name}")).is_ok() {
        let _ = std::fs::remove_file(format!("/dev/mapper/{name}"));
    }
    Ok(true)
}

/// Removes the pvmove devices LV `lv` lay on once nothing holds them, as lvm2 removes
/// `VG-pvmove0` with the last LV on it.
fn release_pvmoves(control: &Control, state: &VgState, lv: &str) -> Result<()> {
    for pvmove in super::pvmove::pvmoves_under(&state.vg, lv) {
        let name = dm_name(&state.vg.name, &pvmove);
        if control.info(&name)?.is_some_and(|i| i.open_count == 0) {
            control.remove(&name)?;
            let _ = std::fs::remove_file(format!("/dev/mapper/{name}"));
        }
    }
    Ok(())
}

/// Removes the stack of `origin` (its top first, `-real` last), whatever of it is active.
fn deactivate_stack(control: &Control, state: &VgState, origin: &str) -> Result<bool> {
    let vg = &state.vg;
    let o = vg.lv(origin).expect("an origin of the VG");
    let mut names = vec![(dm_name(&vg.name, origin), Some(origin.to_string()))];
    for s in vg.snapshots_of(origin) {
        let cow = s.snapshot().map(|s| s.cow.clone()).unwrap_or_default();
        names.push((dm_name(&vg.name, &cow), Some(cow.clone())));
        names.push((format!("{}-cow", dm_name(&vg.name, &cow)), None));
    }
    names.push((format!("{}-real", dm_name(&vg.name, &o.name)), None));
    let mut any = false;
    for (name, lv) in names {
        if control.info(&name)?.is_none() {
            continue;
        }
        control.remove(&name)?;
        any = true;
        let _ = std::fs::remove_file(format!("/dev/mapper/{name}"));
        if let Some(lv) = lv {
            let _ = std::fs::remove_file(format!("/dev/{}/{lv}", vg.name));
        }
    }
    let _ = std::fs::remove_dir(format!("/dev/{}", vg.name));
    Ok(any)
}

/// `/dev/mapper/NAME` and `/dev/VG/LV` (for `lv`), where udev has not made them.
fn make_nodes(vg: &str, lv: Option<&str>, name: &str, major: u32, minor: u32) {
    let node = format!("/dev/mapper/{name}");
    if std::fs::metadata(&node).is_err() {
        if let Err(e) = dm::make_node(&node, libc::S_IFBLK, major, minor) {
            tracing::warn!("could not make {node}: {e}");
        }
    }
    let Some(lv) = lv.filter(|lv| !lv.contains("_rimage_") && !lv.contains("_rmeta_")) else {
        return;
    };
    let dir = format!("/dev/{vg}");
    let link = format!("{dir}/{lv}");
    if std::fs::symlink_metadata(&link).is_err() {
        let made = std::fs::create_dir_all(&dir)
            .and_then(|()| std::os::unix::fs::symlink(format!("../mapper/{name}"), &link));
        if let Err(e) = made {
            tracing::warn!("could not make {link}: {e}");
        }
    }
}
