//! `tessera dm --kernel VERB`: dmsetup's verbs on the kernel's device-mapper, through its
//! ioctls (root only), and `tessera activate|deactivate --kernel`: LVs as kernel devices
//! with the tables, names and uuids lvm2 gives them.

use anyhow::{bail, Context, Result};

use tessera_engine::kernel::{self, Activated};
use tessera_engine::Engine;
use tessera_kernel::dm::{Control, Row};

use crate::dm::DmCommand;

fn rows(text: &str) -> Result<Vec<Row>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Row::parse(l).with_context(|| format!("not a table row: {l:?}")))
        .collect()
}

pub fn run_dm(command: DmCommand) -> Result<bool> {
    let c = Control::open()?;
    match command {
        DmCommand::Create { name, table } => {
            let rows = rows(&table.text()?)?;
            let info = c.create(&name, "")?;
            if let Err(e) = c.load(&name, &rows, false).and_then(|()| c.resume(&name)) {
                let _ = c.remove(&name);
                bail!("{e}; {name} was not created");
            }
            println!("{name} created as {}:{}", info.major, info.minor);
        }
        DmCommand::Load { name, table } => c.load(&name, &rows(&table.text()?)?, false)?,
        DmCommand::Suspend { name } => {
            c.suspend(&name)?;
        }
        DmCommand::Resume { name } => {
            c.resume(&name)?;
        }
        DmCommand::Remove { name } => c.remove(&name)?,
        DmCommand::Table {
            name,
            inactive,
            showkeys,
        } => {
            if inactive {
                bail!("--inactive is for the daemon's devices; the kernel's inactive table is not read back");
            }
            for row in c.table(&name)? {
                let text = row.to_string();
                if showkeys {
                    println!("{text}");
                } else {
                    print!("{}", crate::dm::mask_keys(&text));
                }
            }
        }
        DmCommand::Status { name } => {
            for row in c.status(&name)? {
                println!("{row}");
            }
        }
        DmCommand::Message {
            name,
            sector,
            message,
        } => {
            let answer = c.message(&name, sector, &message.join(" "))?;
            if !answer.is_empty() {
                println!("{answer}");
            }
        }
        DmCommand::Version { interface } => {
            let k = c.kernel_version();
            println!("Driver version:    {}.{}.{}", k[0], k[1], k[2]);
            let v = tessera_kernel::dm::VERSION;
            println!("Tessera speaks:    {}.{}.{}", v[0], v[1], v[2]);
            if let Some(text) = interface {
                let parts: Vec<u32> = text
                    .split('.')
                    .map(str::parse)
                    .collect::<std::result::Result<_, _>>()
                    .with_context(|| format!("--interface {text:?}: MAJOR.MINOR.PATCH"))?;
                let [a, b, p] = parts[..] else {
                    bail!("--interface {text:?}: MAJOR.MINOR.PATCH");
                };
                let answer = c.handshake([a, b, p])?;
                println!(
                    "Interface {a}.{b}.{p}: served (the kernel answers {}.{}.{})",
                    answer[0], answer[1], answer[2]
                );
            }
        }
        DmCommand::Ls { json } => {
            let list = c.list()?;
            if json {
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .map(|(n, ma, mi)| serde_json::json!({"name": n, "major": ma, "minor": mi}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if list.is_empty() {
                println!("No devices found");
            } else {
                for (n, ma, mi) in list {
                    println!("{n}\t({ma}:{mi})");
                }
            }
        }
    }
    Ok(true)
}

/// The (VG, LV) pairs a target names: `VG/LV`, `VG` (its visible LVs), or every VG.
fn targets(
    engine: &Engine,
    names: &[String],
    ignore_skip: bool,
) -> Result<(tessera_engine::scan::Scan, Vec<(String, String)>)> {
    let scan = engine.scan()?;
    let mut out = Vec::new();
    let vgs: Vec<String> = if names.is_empty() {
        scan.vgs.keys().cloned().collect()
    } else {
        names.to_vec()
    };
    for t in vgs {
        let (vg, lv) = match t.split_once('/') {
            Some((vg, lv)) => (vg.to_string(), Some(lv.to_string())),
            None => (t.clone(), None),
        };
        let Some(state) = scan.vg(&vg) else {
            bail!("no VG '{vg}' on the devices scanned");
        };
        match lv {
            Some(lv) => out.push((vg, lv)),
            None => out.extend(
                state
                    .vg
                    .lvs
                    .iter()
                    .filter(|l| state.vg.lv_is_visible(l))
                    // As lvm2: LVs flagged to skip activation (thin snapshots) only when
                    // named, or with the skip ignored.
                    .filter(|l| ignore_skip || !l.activation_skip())
                    .map(|l| (vg.clone(), l.name.clone())),
            ),
        }
    }
    Ok((scan, out))
}

/// Starts, ahead of the VGs `names` (every VG when empty), the MD arrays that discovery
/// found holding their PVs, and adds each running array to the engine's devices. An array
/// running already (started by tessera or mdadm) is used as it is. False when an array
/// could not start (degraded without --degraded, too few members).
fn assemble_under(engine: &Engine, names: &[String], degraded: bool, force: bool) -> Result<bool> {
    let report = engine.discover()?;
    let wanted: Vec<&str> = names
        .iter()
        .map(|n| n.split_once('/').map_or(n.as_str(), |(vg, _)| vg))
        .collect();
    let mut arrays: Vec<String> = Vec::new();
    for (_, node) in report.walk() {
        if node.kind != "md" || arrays.contains(&node.name) {
            continue;
        }
        let holds = |n: &tessera_engine::discover::Node| -> bool {
            fn any_vg(n: &tessera_engine::discover::Node, wanted: &[&str]) -> bool {
                (n.kind == "vg" && (wanted.is_empty() || wanted.contains(&n.name.as_str())))
                    || n.children.iter().any(|c| any_vg(c, wanted))
            }
            any_vg(n, &wanted)
        };
        if wanted.is_empty() || holds(node) {
            arrays.push(node.name.clone());
        }
    }
    let mut ok = true;
    for array in arrays {
        let name = &array[3..];
        let node = match running_array(engine, name)? {
            Some(node) => {
                println!("  {array}: running already as {node}");
                Some(node)
            }
            None => match activate_md(engine, name, degraded, force) {
                Ok(node) => node,
                Err(e) => {
                    eprintln!("tessera: error: {e:#}");
                    None
                }
            },
        };
        match node {
            Some(node) => {
                let ro = tessera_block::OpenOptions {
                    read_only: true,
                    ..Default::default()
                };
                let device = tessera_block::FileDevice::open(&node, ro)?;
                engine.add_stacked(node, std::sync::Arc::new(device));
            }
            None => ok = false,
        }
    }
    Ok(ok)
}

/// The kernel device of array `name` if it runs already: tessera's `md_NAME`, or the md
/// device holding its members (an array mdadm started, `md127`).
fn running_array(engine: &Engine, name: &str) -> Result<Option<String>> {
    let device = tessera_kernel::md::device_name(name);
    if let Some(state) = tessera_kernel::md::read_attr(&device, "array_state") {
        if state != "clear" && state != "inactive" {
            return Ok(Some(format!("/dev/{device}")));
        }
    }
    let scan = engine.md_scan(false)?;
    let Some(array) = scan.array(name) else {
        return Ok(None);
    };
    Ok(array
        .slots
        .iter()
        .flatten()
        .filter_map(|m| tessera_engine::md::kernel_holder(&m.path))
        .find(|node| std::path::Path::new(node).exists()))
}

/// Starts MD array `name` in the kernel from the members tessera's assembly found fresh
/// (and its spares); degraded only when asked. With `force`, an array that would not
/// start is put together from the members `mdadm --assemble --force` would take, recorded
/// in their superblocks first (md reads them), and started degraded if need be.
/// Returns its device node.
fn activate_md(
    engine: &Engine,
    name: &str,
    degraded: bool,
    force: bool,
) -> Result<Option<String>> {
    use tessera_engine::md::Health;
    let scan = engine.md_scan(force)?;
    let Some(array) = scan.array(name) else {
        if let Some(node) = crate::external::activate(engine, name)? {
            return Ok(Some(node));
        }
        bail!("no MD array '{name}' on the devices scanned");
    };
    let mut array = array.clone();
    let mut degraded = degraded;
    if force {
        let (mut forced, plan) = array.forced()?;
        for line in plan.describe(&format!("md/{}", array.name)) {
            eprintln!("tessera: warning: {line}");
        }
        forced
            .write_forced(&plan)
            .with_context(|| format!("md/{}: cannot record the forced assembly", array.name))?;
        array = forced;
        degraded = true;
    }
    for (m, why) in &array.left_out {
        eprintln!(
            "tessera: warning: md/{}: leaving out {}: {why}",
            array.name, m.path
        );
    }
    match array.health() {
        Health::Complete => {}
        Health::Degraded { missing } if degraded => {
            eprintln!(
                "tessera: warning: md/{}: starting degraded, slots {missing:?} missing",
                array.name
            )
        }
        Health::Degraded { missing } => {
            bail!(
                "md/{}: slots {missing:?} are missing; --degraded starts it anyway",
                array.name
            )
        }
        Health::Failed { missing, tolerated } => {
            let mut why = format!(
                "md/{}: slots {missing:?} are missing and {} survives {tolerated}",
                array.name,
                array.level_name()
            );
            for (m, left) in array.dropped_out() {
                why.push_str(&format!("; {m} left out: {left}"));
            }
            match array.forced() {
                Ok(_) => why.push_str(
                    "; --force starts it from the members mdadm --assemble --force would take",
                ),
                Err(e) => why.push_str(&format!("; {e}")),
            }
            bail!("{why}")
        }
    }
    let mut members = Vec::new();
    for m in array.slots.iter().flatten().chain(&array.spares) {
        let devno = tessera_engine::kernel::devno(&m.path)?;
        let (major, minor) = devno.split_once(':').expect("major:minor");
        members.push(tessera_kernel::md::Member {
            major: major.parse()?,
            minor: minor.parse()?,
        });
    }
    let made =
        tessera_kernel::md::assemble(&array.name, &array.version.to_string(), &members, false)?;
    let node = format!("/dev/{}", made.device);
    if std::fs::metadata(&node).is_err() {
        let _ = tessera_kernel::dm::make_node(&node, libc::S_IFBLK, made.major, made.minor);
    }
    let link = format!("/dev/md/{}", array.name);
    if std::fs::symlink_metadata(&link).is_err() {
        let _ = std::fs::create_dir_all("/dev/md")
            .and_then(|()| std::os::unix::fs::symlink(format!("../{}", made.device), &link));
    }
    println!(
        "  md/{}: {} active as {node} ({}:{}), {} of {} members, state {}",
        array.name,
        array.level_name(),
        made.major,
        made.minor,
        array.slots.iter().flatten().count(),
        array.raid_disks,
        made.state
    );
    Ok(Some(node))
}

pub fn activate(
    engine: &Engine,
    names: &[String],
    degraded: bool,
    force: bool,
    ignore_skip: bool,
) -> Result<bool> {
    let (md, names): (Vec<&String>, Vec<String>) = {
        let (md, rest): (Vec<&String>, Vec<&String>) =
            names.iter().partition(|n| n.starts_with("md/"));
        (md, rest.into_iter().cloned().collect())
    };
    let mut ok = true;
    for n in &md {
        ok &= activate_md(engine, &n[3..], degraded, force)?.is_some();
    }
    if !md.is_empty() && names.is_empty() {
        return Ok(ok);
    }
    let control = Control::open()?;
    // The arrays under the VGs first, so that the PVs on them are found.
    ok &= assemble_under(engine, &names, degraded, force)?;
    // A pool change cut short between its commits is finished first, as lvm2 finishes it
    // when it activates the pool: here on the metadata, for pools not yet in the kernel.
    for (vg, pool) in engine.unsettled_pools(None)? {
        let name = tessera_engine::activate::dm_name(&vg, &pool);
        if control.info(&format!("{name}-tpool"))?.is_none() && control.info(&name)?.is_none() {
            engine.thin_pool_settle(&vg, &pool)?;
        }
    }
    let (scan, lvs) = targets(engine, &names, ignore_skip)?;
    for (vg, lv) in lvs {
        let state = scan.vg(&vg).expect("found above");
        match kernel::activate_lv(&control, &scan, state, &lv) {
            Ok(Activated::New { name, major, minor }) => {
                println!("  {vg}/{lv}: active as /dev/mapper/{name} ({major}:{minor})")
            }
            Ok(Activated::Already { name }) => println!("  {vg}/{lv}: already active as {name}"),
            Ok(Activated::Reloaded { name }) => println!("  {vg}/{lv}: {name} reloaded"),
            Err(e) => {
                ok = false;
                eprintln!("tessera: error: {vg}/{lv}: {e}");
            }
        }
    }
    Ok(ok)
}

pub fn deactivate(engine: &Engine, names: &[String]) -> Result<bool> {
    let mut ok = true;
    let mut rest = Vec::new();
    for n in names {
        match n.strip_prefix("md/") {
            Some(md) if crate::external::deactivate(md)? => {}
            Some(md) => {
                if tessera_kernel::md::stop(md)? {
                    let device = tessera_kernel::md::device_name(md);
                    let _ = std::fs::remove_file(format!("/dev/md/{md}"));
                    let _ = std::fs::remove_file(format!("/dev/{device}"));
                    println!("  md/{md}: stopped");
                }
            }
            None => rest.push(n.clone()),
        }
    }
    if rest.is_empty() && !names.is_empty() {
        return Ok(ok);
    }
    let names = &rest[..];
    let control = Control::open()?;
    let (scan, lvs) = targets(engine, names, true)?;
    for (vg, lv) in lvs {
        let state = scan.vg(&vg).expect("found above");
        match kernel::deactivate_lv(&control, state, &lv) {
            Ok(true) => println!("  {vg}/{lv}: deactivated"),
            Ok(false) => {}
            Err(e) => {
                ok = false;
                eprintln!("tessera: error: {vg}/{lv}: {e}");
            }
        }
    }
    Ok(ok)
}

/// `activate --userspace`: LVs are active in a running daemon by themselves; arrays are
/// started there.
pub fn activate_userspace(
    socket: &std::path::Path,
    names: &[String],
    degraded: bool,
) -> Result<bool> {
    use tessera_daemon::{Client, DaemonError};
    let Some(mut client) = Client::connect(socket)? else {
        bail!(
            "no tessera daemon is listening on {}: user-space activation runs inside \
             `tessera serve`, which activates every LV and complete array it finds",
            socket.display()
        );
    };
    for n in names {
        if let Some(md) = n.strip_prefix("md/") {
            match client.md_assemble(md, degraded) {
                Ok(reply) => print!("{}", reply.output),
                Err(DaemonError::Refused(why)) if why.contains("exists already") => {
                    println!("  md/{md}: running in the daemon already")
                }
                Err(DaemonError::Refused(why)) => bail!("md/{md}: {why}"),
                Err(e) => return Err(e.into()),
            }
        } else {
            println!("  {n}: served by the daemon (its LVs are active there as VG-LV)");
        }
    }
    Ok(true)
}
