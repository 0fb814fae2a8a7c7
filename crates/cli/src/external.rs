//! IMSM and DDF containers in the kernel's md through its external-metadata interface, as
//! mdadm assembles them, and `tessera monitor`, which keeps their records while md runs them, as
//! mdmon does.
//!
//! Activation makes the container an inactive array holding the member disks
//! (`external:imsm`, `/dev/md/imsm0`), each volume its own array (`external:/md127/N`,
//! `/dev/md/NAME`) started `readonly`, and starts one monitor per container in the
//! background as mdadm starts mdmon. The monitor is a process of its own rather than the
//! daemon's work: an array started from an initramfs or a shell has no daemon, md blocks
//! every writer until someone answers `write-pending`, and one process per container that
//! ends with its arrays is what mdadm's users and tools (`mdadm --stop`) expect.
//!
//! The monitor switches a started volume to `read-auto` (`active` when it must resync),
//! answers `write-pending` by recording the volume dirty then writing `active`, marks it
//! clean once md reports it idle (`active-idle`, then `clean`, resync done), records a
//! member md failed then unblocks and removes it, and records the volume clean when it is
//! stopped. It exits once the container has no running volume left.
//!
//! When md fails a member and the container holds a spare, the monitor gives md the spare
//! in the lost slot, records the rebuild (mdmon's records, through the engine's writers),
//! asks md to `recover`, records md's progress (`sync_completed`) as checkpoints and the
//! end as one normal map. A volume assembled in the middle of a rebuild gets the disk with
//! `recovery_start` at the checkpoint, and md resumes there.
//!
//! DDF volumes run the same way, the monitor keeping DDF's records (the virtual disk
//! consistent or not, failed members' physical disks Failed, a global spare rebuilt into
//! a lost member's place); DDF keeps no rebuild progress, so a rebuild cut short starts
//! again from the beginning.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tessera_block::{FileDevice, OpenOptions, SharedDevice};
use tessera_engine::modules::ddf_kernel;
use tessera_engine::modules::imsm::external::{
    kernel_containers, KernelRecords, KernelVolume, MemberRecord, MemberRole,
};
use tessera_engine::Engine;
use tessera_kernel::md::{self as kmd, ContainerMember, External, Member, SubarrayStart};

/// Where monitors note their process ids, one file per container (`md127.pid`).
const RUN_DIR: &str = "/run/tessera";

fn devno(path: &str) -> Result<(u32, u32), String> {
    let d = tessera_engine::devices::devno(path).map_err(|e| e.to_string())?;
    let (a, b) = d
        .split_once(':')
        .ok_or_else(|| format!("{path}: no device number"))?;
    Ok((
        a.parse().map_err(|_| format!("{path}: bad major"))?,
        b.parse().map_err(|_| format!("{path}: bad minor"))?,
    ))
}

/// A container md runs: kernel name, kind, member device numbers.
type RunningContainer = (String, String, Vec<(u32, u32)>);

/// The external-metadata containers md runs.
fn running_containers() -> Vec<RunningContainer> {
    kmd::arrays()
        .into_iter()
        .filter_map(|(dev, version)| match kmd::parse_external(&version)? {
            External::Container { kind } => {
                let members = member_dirs(&dev)
                    .into_iter()
                    .filter_map(|(_, kname)| block_devno(&kname))
                    .collect();
                Some((dev, kind, members))
            }
            _ => None,
        })
        .collect()
}

/// The subarrays md runs of container `container`: kernel name, index, held read-only.
fn running_subarrays(container: &str) -> Vec<(String, usize, bool)> {
    kmd::arrays()
        .into_iter()
        .filter_map(|(dev, version)| match kmd::parse_external(&version)? {
            External::Subarray {
                container: c,
                index,
                read_only,
            } if c == container => {
                let state = kmd::read_attr(&dev, "array_state")?;
                (state != "clear").then_some((dev, index, read_only))
            }
            _ => None,
        })
        .collect()
}

/// An array's member entries: `dev-loop0` and `loop0`.
fn member_dirs(device: &str) -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/sys/block/{device}/md")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = dir
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let k = n.strip_prefix("dev-")?.to_string();
            Some((n, k))
        })
        .collect();
    out.sort();
    out
}

fn block_devno(kname: &str) -> Option<(u32, u32)> {
    let s = std::fs::read_to_string(format!("/sys/class/block/{kname}/dev")).ok()?;
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The /dev/md/ link of an array, if there is one (`/dev/md/vol5` for `md126`).
fn md_link(device: &str) -> Option<String> {
    std::fs::read_dir("/dev/md").ok()?.flatten().find_map(|e| {
        let target = std::fs::read_link(e.path()).ok()?;
        (target.file_name()?.to_string_lossy() == device).then(|| e.path().display().to_string())
    })
}

fn make_nodes(device: &str, link: &str, major: u32, minor: u32) {
    let node = format!("/dev/{device}");
    if std::fs::metadata(&node).is_err() {
        let _ = tessera_kernel::dm::make_node(&node, libc::S_IFBLK, major, minor);
    }
    let _ = std::fs::create_dir_all("/dev/md");
    let _ = std::fs::remove_file(link);
    let _ = std::os::unix::fs::symlink(format!("../{device}"), link);
}

/// The first `/dev/md/imsmN` (`ddfN`) name free for container `device`, as mdadm names
/// containers:
/// one that is not there, dangles (left by an array stopped without udev) or names it.
fn container_link(kind: &str, device: &str) -> String {
    (0..)
        .map(|n| format!("/dev/md/{kind}{n}"))
        .find(|l| {
            let Ok(target) = std::fs::read_link(l) else {
                return std::fs::symlink_metadata(l).is_err();
            };
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned());
            name.as_deref() == Some(device) || !Path::new("/dev/md").join(&target).exists()
        })
        .expect("a free name")
}

/// A container found on the devices, of either kind, as activation needs it.
struct Found<'a> {
    kind: &'static str,
    label: &'a str,
    /// Each member: path, and where its metadata lies (sectors: offset, length).
    members: Vec<(String, u64, u64)>,
    left_out: &'a [(String, String)],
    volumes: &'a [KernelVolume],
}

/// Starts IMSM or DDF volume `md/NAME` in the kernel (its container first, if md does not
/// hold it yet), with a monitor keeping its records.
/// `Ok(None)` if no such volume is on the devices.
pub fn activate(engine: &Engine, name: &str) -> Result<Option<String>> {
    let imsm = engine.imsm_kernel_containers()?;
    let ddf = engine.ddf_kernel_containers()?;
    let mut found: Vec<Found> = Vec::new();
    for c in &imsm {
        found.push(Found {
            kind: "imsm",
            label: &c.label,
            // Spares sit in md's container with the members, as mdadm puts them.
            members: c
                .members
                .iter()
                .map(|(_, p, o, s)| (p.clone(), *o, *s))
                .chain(c.spares.iter().cloned())
                .collect(),
            left_out: &c.left_out,
            volumes: &c.volumes,
        });
    }
    for c in &ddf {
        found.push(Found {
            kind: "ddf",
            label: &c.label,
            members: c.members.clone(),
            left_out: &c.left_out,
            volumes: &c.volumes,
        });
    }
    let wanted = format!("md/{name}");
    let Some((c, v)) = found
        .iter()
        .find_map(|c| c.volumes.iter().find(|v| v.name == wanted).map(|v| (c, v)))
    else {
        return Ok(None);
    };
    for (path, why) in c.left_out {
        eprintln!("tessera: warning: {}: leaving out {path}: {why}", c.label);
    }
    let array = v
        .array
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{}: cannot start: {e}", v.name))?;
    let container = start_container(c)?;
    if let Some((dev, _, _)) = running_subarrays(&container)
        .into_iter()
        .find(|(_, i, _)| *i == v.index)
    {
        println!("  {}: running already as /dev/{dev}", v.name);
        return Ok(Some(format!("/dev/{dev}")));
    }
    let subarray = array
        .subarray(devno)
        .map_err(|e| anyhow::anyhow!("{}: {e}", v.name))?;
    let start = match &v.read_only_because {
        Some(why) => {
            eprintln!("tessera: warning: {}: started read-only: {why}", v.name);
            SubarrayStart::ReadonlyOnly
        }
        None => SubarrayStart::ReadonlyForMonitor,
    };
    let number = kmd::free_number(&[]).context("no free md device number")?;
    let device = kmd::numbered_name(number);
    let made = kmd::assemble_subarray(&device, &container, v.index, &subarray, start)
        .with_context(|| format!("{}: starting it in the kernel", v.name))?;
    let link = format!("/dev/{}", v.name);
    make_nodes(&made.device, &link, made.major, made.minor);
    if let Some((slot, path, _, done)) = &array.recovering {
        // What md holds before anything runs: where it resumes.
        let entry = devno(path)
            .ok()
            .and_then(|(major, minor)| kmd::member_kernel_name(Member { major, minor }).ok());
        let md_start = entry
            .and_then(|e| kmd::read_attr(&made.device, &format!("dev-{e}/recovery_start")))
            .unwrap_or_default();
        println!(
            "  {}: the rebuild of slot {slot} onto {path} resumes at sector {done} of {} (md's recovery_start {md_start})",
            v.name, array.component_sectors
        );
    }
    let mut state = made.state.clone();
    if start == SubarrayStart::ReadonlyForMonitor {
        spawn_monitor(&container)?;
        // As mdadm waits for mdmon: the monitor makes it writable.
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            state = kmd::read_attr(&device, "array_state").unwrap_or_default();
            if state != "readonly" {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if state == "readonly" {
            eprintln!(
                "tessera: warning: {}: its monitor has not made it writable yet",
                v.name
            );
        }
    }
    println!(
        "  {}: {} raid{} active as /dev/{} ({}:{}) in container /dev/{container}, {} of {} members, state {state}",
        v.name,
        c.kind.to_uppercase(),
        array.level,
        made.device,
        made.major,
        made.minor,
        array.members.len(),
        array.raid_disks,
    );
    Ok(Some(format!("/dev/{}", made.device)))
}

/// The container's md device, made if md does not hold its disks yet.
fn start_container(c: &Found) -> Result<String> {
    let mut list = Vec::new();
    for (path, offset, size) in &c.members {
        let (major, minor) = devno(path).map_err(|e| anyhow::anyhow!("{}: {e}", c.label))?;
        list.push(ContainerMember {
            disk: Member { major, minor },
            metadata_offset_sectors: *offset,
            metadata_sectors: *size,
        });
    }
    let members: Vec<(u32, u32)> = list.iter().map(|m| (m.disk.major, m.disk.minor)).collect();
    for (dev, kind, held) in running_containers() {
        if kind == c.kind && members.iter().any(|m| held.contains(m)) {
            if members.iter().all(|m| held.contains(m)) {
                return Ok(dev);
            }
            bail!(
                "{}: md holds some of its disks in /dev/{dev} already, but not all",
                c.label
            );
        }
    }
    let number = kmd::free_number(&[]).context("no free md device number")?;
    let device = kmd::numbered_name(number);
    let made = kmd::assemble_container(&device, c.kind, &list)
        .with_context(|| format!("{}: making the container in the kernel", c.label))?;
    let link = container_link(c.kind, &made.device);
    make_nodes(&made.device, &link, made.major, made.minor);
    println!(
        "  {}: {} container as /dev/{} ({link}), {} disks",
        c.label,
        c.kind.to_uppercase(),
        made.device,
        list.len()
    );
    Ok(made.device)
}

fn pid_file(container: &str) -> String {
    format!("{RUN_DIR}/{container}.pid")
}

/// Whether a monitor of `container` runs.
fn monitor_running(container: &str) -> bool {
    let Ok(pid) = std::fs::read_to_string(pid_file(container)) else {
        return false;
    };
    let pid = pid.trim();
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split('\0').any(|a| a == "monitor") && c.contains(container))
}

/// Starts `tessera monitor CONTAINER` in the background, unless one runs.
fn spawn_monitor(container: &str) -> Result<()> {
    if monitor_running(container) {
        return Ok(());
    }
    std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let exe = std::env::current_exe().context("finding tessera's own binary")?;
    let log = File::create(format!("{RUN_DIR}/{container}.log"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("monitor")
        .arg(container)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session, so it outlives the shell that ran `activate`.
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting tessera monitor")?;
    std::fs::write(pid_file(container), format!("{}\n", child.id()))?;
    Ok(())
}

/// Stops `md/NAME`: an IMSM volume md runs (then its container, once it holds no volume),
/// or a container (`md/imsm0`: its volumes first). `Ok(false)` if it is neither.
pub fn deactivate(name: &str) -> Result<bool> {
    let link = format!("/dev/md/{name}");
    let Some(device) = std::fs::read_link(&link)
        .ok()
        .and_then(|t| Some(t.file_name()?.to_string_lossy().into_owned()))
    else {
        return Ok(false);
    };
    let Some(version) = kmd::read_attr(&device, "metadata_version") else {
        return Ok(false);
    };
    match kmd::parse_external(&version) {
        Some(External::Subarray { container, .. }) => {
            stop_subarray(&device)?;
            println!("  md/{name}: stopped");
            if running_subarrays(&container).is_empty() {
                stop_container(&container)?;
            }
            Ok(true)
        }
        Some(External::Container { .. }) => {
            for (dev, _, _) in running_subarrays(&device) {
                let shown =
                    md_link(&dev).map_or(dev.clone(), |l| l.trim_start_matches("/dev/").into());
                stop_subarray(&dev)?;
                println!("  {shown}: stopped");
            }
            stop_container(&device)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Stops a subarray as mdadm does with a monitor: `inactive` (md finishes its writes and
/// marks it in sync), the monitor records it clean and clears it; cleared here if no
/// monitor did within a few seconds.
fn stop_subarray(device: &str) -> Result<()> {
    let link = md_link(device);
    kmd::write_array_attr(device, "array_state", "inactive")?;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if kmd::read_attr(device, "array_state").is_none_or(|s| s == "clear") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kmd::stop_device(device)?;
    if let Some(l) = link {
        let _ = std::fs::remove_file(l);
    }
    let _ = std::fs::remove_file(format!("/dev/{device}"));
    Ok(())
}

fn stop_container(device: &str) -> Result<()> {
    let link = md_link(device);
    kmd::stop_device(device)?;
    if let Some(l) = &link {
        let _ = std::fs::remove_file(l);
    }
    let _ = std::fs::remove_file(format!("/dev/{device}"));
    println!(
        "  {}: container stopped",
        link.unwrap_or_else(|| format!("/dev/{device}"))
    );
    Ok(())
}

/// A rebuild md runs onto a member, as the monitor follows it.
struct Rebuild {
    path: String,
    slot: u32,
    /// Sectors recorded as done (the records' checkpoint).
    recorded: u64,
    /// Sectors md reported done last (`sync_completed`).
    seen: u64,
    /// `recover` was asked of md for it.
    asked: bool,
}

/// What the monitor knows of one volume.
struct Watched {
    device: String,
    index: usize,
    /// Recorded clean last time.
    clean: Option<bool>,
    /// Members md failed, by path, recorded.
    faulty: Vec<String>,
    /// `resync_start` last read: `none` when in sync.
    in_sync: bool,
    state: String,
    rebuild: Option<Rebuild>,
    /// The members' roles as md held them last pass, recorded with the volume's state.
    roles: Vec<MemberRecord>,
    /// Open attribute files, read to arm poll.
    files: Vec<File>,
}

/// A member of a running subarray, as md shows it.
struct Live {
    entry: String,
    path: String,
    slot: Option<u32>,
    faulty: bool,
    in_sync: bool,
    blocked: bool,
}

fn read_fd(f: &File) -> String {
    let mut buf = [0u8; 256];
    let n = f.read_at(&mut buf, 0).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

fn open_attr(device: &str, a: &str) -> Option<File> {
    File::open(kmd::attr_path(device, a)).ok()
}

/// `tessera monitor CONTAINER`: keeps the records of the IMSM or DDF volumes md runs in
/// container `CONTAINER` (`md127`) until none runs.
pub fn monitor(container: &str) -> Result<bool> {
    let container = container.trim_start_matches("/dev/").to_string();
    let kind = match kmd::read_attr(&container, "metadata_version").as_deref() {
        Some("external:imsm") => "IMSM",
        Some("external:ddf") => "DDF",
        Some(v) => bail!("/dev/{container} is not an IMSM or DDF container (metadata {v})"),
        None => bail!("/dev/{container}: no such md array"),
    };
    // The members as the container holds them, opened for writing the records.
    let mut opened: Vec<(String, SharedDevice)> = Vec::new();
    for (_, kname) in member_dirs(&container) {
        let path = format!("/dev/{kname}");
        let rw = OpenOptions {
            read_only: false,
            direct: true,
        };
        let d = FileDevice::open(&path, rw).with_context(|| format!("{path}: opening it"))?;
        opened.push((path, Arc::new(d)));
    }
    let found: Option<Box<dyn KernelRecords>> = if kind == "IMSM" {
        kernel_containers(&opened)
            .into_iter()
            .next()
            .map(|c| Box::new(c) as Box<dyn KernelRecords>)
    } else {
        ddf_kernel::kernel_containers(&opened, true)
            .into_iter()
            .next()
            .map(|c| Box::new(c) as Box<dyn KernelRecords>)
    };
    let Some(records) = found else {
        bail!("/dev/{container}: its disks hold no {kind} container tessera can read");
    };
    let records = records.as_ref();
    eprintln!("monitoring {} in /dev/{container}", records.label());
    let mut watched: BTreeMap<usize, Watched> = BTreeMap::new();
    let mut empty_since: Option<Instant> = None;
    loop {
        for (dev, index, read_only) in running_subarrays(&container) {
            if read_only || watched.contains_key(&index) {
                continue;
            }
            watched.insert(
                index,
                Watched {
                    device: dev,
                    index,
                    clean: None,
                    faulty: Vec::new(),
                    in_sync: true,
                    state: String::new(),
                    rebuild: None,
                    roles: Vec::new(),
                    files: Vec::new(),
                },
            );
        }
        let mut gone = Vec::new();
        for w in watched.values_mut() {
            if !step(records, w) {
                gone.push(w.index);
            }
        }
        for i in gone {
            watched.remove(&i);
        }
        if watched.is_empty() {
            let since = *empty_since.get_or_insert_with(Instant::now);
            let container_gone =
                kmd::read_attr(&container, "array_state").is_none_or(|s| s == "clear");
            if container_gone || since.elapsed() > Duration::from_secs(2) {
                eprintln!("no volume of /dev/{container} runs: monitor ends");
                let _ = std::fs::remove_file(pid_file(&container));
                return Ok(true);
            }
        } else {
            empty_since = None;
        }
        // Wait for md to notify a change (sysfs_notify: POLLPRI) or a second to pass.
        let mut fds: Vec<libc::pollfd> = watched
            .values()
            .flat_map(|w| w.files.iter())
            .map(|f| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            })
            .collect();
        let timeout = if watched.is_empty() { 200 } else { 1000 };
        // SAFETY: `fds` is a valid array of pollfd for its length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    }
}

/// The members of subarray `dev` as md holds them; their state files are kept in `files`
/// to wait on.
fn live_members(dev: &str, files: &mut Vec<File>) -> Vec<Live> {
    let mut out = Vec::new();
    for (entry, kname) in member_dirs(dev) {
        let Some(f) = open_attr(dev, &format!("{entry}/state")) else {
            continue;
        };
        let state = read_fd(&f);
        files.push(f);
        let flags: Vec<&str> = state.split(',').collect();
        out.push(Live {
            slot: kmd::read_attr(dev, &format!("{entry}/slot")).and_then(|s| s.parse().ok()),
            faulty: flags.contains(&"faulty"),
            in_sync: flags.contains(&"in_sync"),
            blocked: flags.contains(&"blocked"),
            path: format!("/dev/{kname}"),
            entry,
        });
    }
    out
}

/// The members' roles as md holds them, for the records: failed ones (all recorded so
/// far), those in sync in their slots, and the one being rebuilt with its sectors done.
fn roles(w: &Watched, live: &[Live]) -> Vec<MemberRecord> {
    let mut out: Vec<MemberRecord> = w
        .faulty
        .iter()
        .map(|p| MemberRecord {
            device: p.clone(),
            role: MemberRole::Faulty,
        })
        .collect();
    for m in live.iter().filter(|m| !m.faulty) {
        let Some(slot) = m.slot else { continue };
        let role = if m.in_sync {
            MemberRole::InSync(slot as usize)
        } else {
            let done = w
                .rebuild
                .as_ref()
                .filter(|r| r.path == m.path)
                .map_or(0, |r| r.recorded);
            MemberRole::Recovering {
                slot: slot as usize,
                done,
            }
        };
        out.push(MemberRecord {
            device: m.path.clone(),
            role,
        });
    }
    out
}

/// One pass over a volume: reads its state and acts as mdmon's `read_and_act` (and, for a
/// lost member, managemon's spare activation). False once it has stopped.
fn step(records: &dyn KernelRecords, w: &mut Watched) -> bool {
    let dev = w.device.clone();
    // Reopened each pass: members come and go. Reading arms poll for the next change.
    w.files.clear();
    let Some(state_file) = open_attr(&dev, "array_state") else {
        let roles = w.roles.clone();
        record(records, w, true, roles);
        return false;
    };
    let state = read_fd(&state_file);
    w.files.push(state_file);
    let mut action = String::new();
    if let Some(f) = open_attr(&dev, "sync_action") {
        action = read_fd(&f);
        w.files.push(f);
    }
    // md notifies each step of a sync here: the rebuild's checkpoints.
    if let Some(f) = open_attr(&dev, "sync_completed") {
        read_fd(&f);
        w.files.push(f);
    }
    // raid0 has nothing to resync (md leaves its resync_start at 0).
    let raid0 = kmd::read_attr(&dev, "level").as_deref() == Some("raid0");
    if raid0 {
        w.in_sync = true;
    } else if let Some(r) = kmd::read_attr(&dev, "resync_start") {
        w.in_sync = r == "none";
    }
    let raid_disks: u32 = kmd::read_attr(&dev, "raid_disks")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let live = live_members(&dev, &mut w.files);
    let held: Vec<u32> = live
        .iter()
        .filter(|m| !m.faulty)
        .filter_map(|m| m.slot)
        .collect();
    let degraded = (0..raid_disks).any(|s| !held.contains(&s));
    let rebuilding = live
        .iter()
        .find(|m| !m.faulty && m.slot.is_some() && !m.in_sync);
    // A rebuild md runs that the monitor has not seen start: resumed at assembly.
    if let (Some(m), None) = (rebuilding, &w.rebuild) {
        let done = records.rebuild_checkpoint(w.index).unwrap_or(0);
        eprintln!(
            "{dev}: {} rebuilds slot {}, {done} sectors done as recorded",
            m.path,
            m.slot.unwrap_or(0)
        );
        w.rebuild = Some(Rebuild {
            path: m.path.clone(),
            slot: m.slot.unwrap_or(0),
            recorded: done,
            seen: done,
            asked: false,
        });
    }
    let prev = std::mem::replace(&mut w.state, state.clone());
    let was_running = !matches!(prev.as_str(), "" | "clear" | "inactive");
    match state.as_str() {
        // Not started yet (activation is still setting it up): nothing to do.
        "clear" | "inactive" if !was_running => return true,
        "clear" | "inactive" => {
            // Stopped: md finished its writes and left it in sync. A rebuild cut short
            // keeps the last point md reported done.
            if let Some(r) = &mut w.rebuild {
                r.recorded = r.recorded.max(r.seen);
            }
            let roles = w.roles.clone();
            let roles = roles
                .into_iter()
                .map(|mut m| {
                    if let (MemberRole::Recovering { done, .. }, Some(r)) =
                        (&mut m.role, &w.rebuild)
                    {
                        *done = r.recorded;
                    }
                    m
                })
                .collect();
            record(records, w, w.in_sync, roles);
            let _ = kmd::write_array_attr(&dev, "array_state", "clear");
            return false;
        }
        "readonly" => {
            // Ready to run it: read-auto, or active at once when it must resync or
            // rebuild (mdmon: not consistent unless in sync, normal and not migrating).
            // raid0 goes active as mdmon takes it (md never reports it in sync).
            if w.in_sync && !raid0 && !degraded && rebuilding.is_none() {
                let _ = kmd::write_array_attr(&dev, "array_state", "read-auto");
            } else {
                let roles = roles(w, &live);
                record(records, w, false, roles);
                let _ = kmd::write_array_attr(&dev, "array_state", "active");
            }
        }
        "write-pending" => {
            let roles = roles(w, &live);
            record(records, w, false, roles);
            let _ = kmd::write_array_attr(&dev, "array_state", "active");
        }
        "active-idle" => {
            // md first, then the records: a write after this point is seen again.
            let _ = kmd::write_array_attr(&dev, "array_state", "clean");
        }
        "clean" => {
            let roles = roles(w, &live);
            record(records, w, w.in_sync, roles);
        }
        _ => {}
    }
    for m in live.iter().filter(|m| m.faulty) {
        if !w.faulty.contains(&m.path) {
            w.faulty.push(m.path.clone());
            eprintln!(
                "{dev}: {} failed (slot {}): recording it",
                m.entry,
                m.slot.map_or("none".into(), |s| s.to_string())
            );
            if w.rebuild.as_ref().is_some_and(|r| r.path == m.path) {
                eprintln!("{dev}: the rebuild onto {} ends with it", m.path);
                w.rebuild = None;
            }
            let clean = w.clean.unwrap_or(false) && state == "clean";
            let roles = roles(w, &live);
            record(records, w, clean, roles);
        }
        if m.blocked {
            let _ = kmd::write_array_attr(&dev, &format!("{}/state", m.entry), "-blocked");
        }
        if state != "readonly" {
            // md lets go of it once its personality has; tried again next pass if not yet.
            let _ = kmd::write_array_attr(&dev, &format!("{}/state", m.entry), "remove");
        }
    }
    if state == "write-pending" {
        // A failure leaves md waiting too.
        let _ = kmd::write_array_attr(&dev, "array_state", "active");
    }
    let failed_present = live.iter().any(|m| m.faulty);
    if state == "read-auto" {
        // A member to let go of, a rebuild to run or a spare to take a lost slot: md does
        // none of these until the array is writable, so it is made writable (recorded
        // dirty first), as mdmon does on a failure.
        let spare_waits = degraded
            && !raid0
            && records
                .spare_for(
                    w.index,
                    &live.iter().map(|m| m.path.clone()).collect::<Vec<_>>(),
                )
                .is_some();
        if failed_present || rebuilding.is_some() || spare_waits {
            let roles = roles(w, &live);
            record(records, w, false, roles);
            let _ = kmd::write_array_attr(&dev, "array_state", "active");
        }
    }
    let writable = matches!(state.as_str(), "active" | "clean" | "active-idle");
    follow_rebuild(records, w, &live, &action, &state);
    if writable
        && degraded
        && !raid0
        && w.in_sync
        && w.rebuild.is_none()
        && !failed_present
        && action == "idle"
    {
        activate_spare(records, w, &live, raid_disks, &held);
    }
    w.roles = roles(w, &live);
    true
}

/// Follows the rebuild md runs: asks md to start it if it has not, records its progress
/// as checkpoints (each a sixteenth of the member at least apart, as mdmon spaces them),
/// and its end once the member is in sync.
fn follow_rebuild(
    records: &dyn KernelRecords,
    w: &mut Watched,
    live: &[Live],
    action: &str,
    state: &str,
) {
    let writable = matches!(state, "active" | "clean" | "active-idle");
    // A checkpoint leaves the dirty flag as md has it.
    let clean = state == "clean" && w.in_sync;
    let dev = w.device.clone();
    let Some(r) = &mut w.rebuild else { return };
    let Some(m) = live.iter().find(|m| m.path == r.path && !m.faulty) else {
        return;
    };
    if m.in_sync && m.slot == Some(r.slot) {
        eprintln!("{dev}: rebuild of slot {} onto {} done", r.slot, r.path);
        w.rebuild = None;
        let roles = roles(w, live);
        record(records, w, clean, roles);
        return;
    }
    if !writable {
        return;
    }
    if action == "recover" {
        let Some(done) = kmd::sync_completed(&dev) else {
            return;
        };
        r.seen = r.seen.max(done);
        let component: u64 = kmd::read_attr(&dev, "component_size")
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(0, |k| k * 2);
        let unit = records.checkpoint_unit_sectors(w.index);
        if done > r.recorded && done - r.recorded >= (component >> 4).max(unit) {
            r.recorded = done;
            eprintln!(
                "{dev}: rebuild of slot {} at sector {done}: checkpoint",
                r.slot
            );
            let roles = roles(w, live);
            record(records, w, clean, roles);
        }
    } else if action == "idle" && !r.asked {
        // md leaves starting a rebuild of external metadata to user space.
        r.asked = true;
        if let Err(e) = kmd::write_array_attr(&dev, "sync_action", "recover") {
            eprintln!("{dev}: starting the rebuild of slot {}: {e}", r.slot);
        }
    }
}

/// A lost slot of the volume taken by a spare of the container, as mdmon does: md is given
/// the disk in the slot, the records then show it rebuilding (map 1 the degraded layout,
/// map 0 the whole one), and md is asked to rebuild it.
fn activate_spare(
    records: &dyn KernelRecords,
    w: &mut Watched,
    live: &[Live],
    raid_disks: u32,
    held: &[u32],
) {
    let dev = w.device.clone();
    let Some(slot) = (0..raid_disks).find(|s| !held.contains(s)) else {
        return;
    };
    let taken: Vec<String> = live
        .iter()
        .map(|m| m.path.clone())
        .chain(w.faulty.iter().cloned())
        .collect();
    let Some(spare) = records.spare_for(w.index, &taken) else {
        return;
    };
    let disk = match devno(&spare.path) {
        Ok((major, minor)) => Member { major, minor },
        Err(e) => {
            eprintln!("{dev}: spare {}: {e}", spare.path);
            return;
        }
    };
    let member = kmd::SubarrayMember {
        disk,
        slot,
        offset_sectors: spare.offset_sectors,
        size_sectors: spare.size_sectors,
        recovery_start: Some(0),
    };
    let entry = match kmd::add_subarray_member(&dev, &member) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{dev}: giving md spare {} for slot {slot}: {e}", spare.path);
            return;
        }
    };
    eprintln!(
        "{dev}: {} ({entry}) takes slot {slot}: rebuilding",
        spare.path
    );
    w.rebuild = Some(Rebuild {
        path: spare.path.clone(),
        slot,
        recorded: 0,
        seen: 0,
        asked: false,
    });
    let mut files = Vec::new();
    let now = live_members(&dev, &mut files);
    let roles = roles(w, &now);
    if !record(records, w, false, roles) {
        // Not recorded: md must not rebuild onto a disk the records do not name.
        eprintln!(
            "{dev}: {} let go: its rebuild could not be recorded",
            spare.path
        );
        let _ = kmd::write_array_attr(&dev, &format!("{entry}/state"), "faulty");
        let _ = kmd::write_array_attr(&dev, &format!("{entry}/state"), "remove");
        w.rebuild = None;
        return;
    }
    if let Some(r) = &mut w.rebuild {
        r.asked = true;
    }
    if let Err(e) = kmd::write_array_attr(&dev, "sync_action", "recover") {
        eprintln!("{dev}: starting the rebuild of slot {slot}: {e}");
    }
}

/// Records the volume's state; false if the records could not be written.
fn record(
    records: &dyn KernelRecords,
    w: &mut Watched,
    clean: bool,
    roles: Vec<MemberRecord>,
) -> bool {
    match records.record(w.index, clean, roles) {
        Ok(()) => {
            if w.clean != Some(clean) {
                eprintln!(
                    "{}: recorded {}",
                    w.device,
                    if clean { "clean" } else { "dirty" }
                );
            }
            w.clean = Some(clean);
            true
        }
        Err(e) => {
            eprintln!("{}: cannot record its state: {e}", w.device);
            false
        }
    }
}

/// The external-metadata arrays md runs, for `md list`: `(device, link, what)`.
pub fn kernel_arrays() -> Vec<(String, Option<String>, String)> {
    kmd::arrays()
        .into_iter()
        .filter_map(|(dev, version)| {
            let what = match kmd::parse_external(&version)? {
                External::Container { kind } => format!(
                    "{kind} container, {} disks, {}",
                    member_dirs(&dev).len(),
                    kmd::read_attr(&dev, "array_state").unwrap_or_default()
                ),
                External::Subarray {
                    container,
                    index,
                    read_only,
                } => format!(
                    "{} over {}, volume {index} of /dev/{container}, {}{}",
                    kmd::read_attr(&dev, "level").unwrap_or_default(),
                    kmd::read_attr(&dev, "raid_disks").unwrap_or_default(),
                    kmd::read_attr(&dev, "array_state").unwrap_or_default(),
                    if read_only { ", held read-only" } else { "" }
                ),
            };
            let link = md_link(&dev);
            Some((dev, link, what))
        })
        .collect()
}
