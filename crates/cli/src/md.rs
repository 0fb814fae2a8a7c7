//! `tessera md`: MD software RAID arrays, read from their members' superblocks as mdadm
//! writes them.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use tessera_daemon::{Client, DaemonError, Reply};
use tessera_engine::md::{Health, MdArray};
use tessera_engine::Engine;
use tessera_engine::MdCreateOptions;
use tessera_formats::md::{self as md_format, ArrayState, MdSuperblock, MdVersion, Role};

pub const ABOUT: &str = "\
Arrays are found on the devices given with --devices (image files or block devices) and
grouped by array UUID; the member with the highest events count speaks for the array, and a
member behind it (one that missed writes) is left out and reported. Names are shown without
the homehost prefix (\"host:name\" is \"name\"); arrays without a name (0.90) go by UUID.

Examples:
  tessera --devices 'disks/*.img' md list
  tessera --devices 'disks/*.img' md detail home --json
  tessera md examine disks/a.img";

#[derive(Subcommand)]
pub enum MdCommand {
    /// Create an array over devices (in slot order), as mdadm --create: their data areas
    /// are zeroed, so the array starts clean with consistent parity.
    Create {
        name: String,
        /// 0, 1, 4, 5, 6 or 10 (also raid5, mirror, stripe...).
        #[arg(short, long)]
        level: String,
        /// raid5/6: left-symmetric (default), left-asymmetric, right-symmetric,
        /// right-asymmetric, parity-first, parity-last, ddf-zero-restart, ddf-N-restart,
        /// ddf-N-continue, and the raid6 *-6 forms; raid10: n2 (default), f2, o2, n3...
        #[arg(short = 'p', long)]
        layout: Option<String>,
        /// Chunk size (default 512k).
        #[arg(short, long)]
        chunk: Option<String>,
        /// Superblock version: 1.2 (default), 1.1, 1.0 or 0.90.
        #[arg(short = 'e', long, default_value = "1.2")]
        metadata: String,
        /// Overwrite other formats' signatures on the devices.
        #[arg(short, long)]
        force: bool,
        /// The homehost recorded in the name (default: this machine's hostname).
        #[arg(long)]
        homehost: Option<String>,
        /// A device that joins as a hot spare: it takes the place of a member that fails
        /// (repeatable; 1.x superblocks).
        #[arg(short = 'x', long = "spare", value_name = "DEVICE")]
        spares: Vec<String>,
        /// Keep an internal write-intent bitmap (1.1 and 1.2), so that after a crash only
        /// the regions written shortly before are resynced.
        #[arg(long)]
        bitmap: bool,
        /// Bytes of the array one bitmap bit covers (default 64M; implies --bitmap).
        #[arg(long, value_name = "SIZE")]
        bitmap_chunk: Option<String>,
        #[arg(required = true, value_name = "DEVICE")]
        members: Vec<String>,
    },
    /// Add a device as a hot spare (mdadm --add). A running degraded array takes it at once
    /// and rebuilds onto it.
    Add {
        name: String,
        device: String,
        /// Overwrite another format's signature on the device.
        #[arg(short, long)]
        force: bool,
    },
    /// Take a spare or a failed member out of the array (mdadm --remove); its superblock
    /// is wiped.
    Remove { name: String, device: String },
    /// Mark an active member failed (mdadm --fail): the array runs without it, and a spare,
    /// if there is one, takes its place. Refused if the array would lose data.
    Fail { name: String, device: String },
    /// Put NEW in the place of OLD: NEW joins as a spare, OLD is failed, and the array
    /// rebuilds onto NEW (degraded meanwhile by the one member).
    Replace {
        name: String,
        old: String,
        new: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Read every stripe and count where parity or copies disagree with the data
    /// (md's check). Shows progress; the count is in sectors, per 4 KiB, as md counts.
    Check {
        name: String,
        /// Start it and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// As check, and rewrite parity (or the other copies) where it disagrees.
    Repair {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Limit the speed of resync, recovery and check (KiB/s): they slow to MIN while
    /// clients do I/O and never pass MAX (md's defaults: 1000 and 200000).
    Speed { name: String, min: u64, max: u64 },
    /// Start an array in the running daemon (`tessera serve`), exported as md/NAME.
    Assemble {
        /// Array name (without homehost) or UUID.
        name: String,
        /// Start it even with members missing, if its redundancy covers them.
        #[arg(long)]
        degraded: bool,
        /// Start an array that lost more members than it survives, from the members
        /// `mdadm --assemble --force` would take: those the others record faulty while
        /// they are as fresh, then the stale ones with the most events, as few as the
        /// level needs (they missed the writes made after they dropped out). A daemon
        /// serving writable records this in the superblocks (events brought up, faulty
        /// marks cleared), as mdadm does; one serving --read-only writes nothing.
        #[arg(long)]
        force: bool,
    },
    /// Stop an array running in the daemon: its export goes and its members are flushed.
    Stop { name: String },
    /// Print a member's superblock (as mdadm --examine).
    Examine {
        device: String,
        #[arg(long)]
        json: bool,
        /// Print the member's bad-block log instead, as `mdadm --examine-badblocks`.
        #[arg(long)]
        badblocks: bool,
    },
    /// List the arrays on the devices.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one array: its geometry, each slot's member, spares, and members left out.
    Detail {
        /// Array name (without homehost) or UUID.
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(engine: &Engine, socket: &std::path::Path, command: MdCommand) -> Result<bool> {
    match command {
        MdCommand::Assemble {
            name,
            degraded,
            force,
        } => daemon_call(socket, |c| c.md_assemble_forced(&name, degraded, force)),
        MdCommand::Stop { name } => daemon_call(socket, |c| c.md_stop(&name)),
        MdCommand::Create {
            name,
            level,
            layout,
            chunk,
            metadata,
            force,
            homehost,
            spares,
            bitmap,
            bitmap_chunk,
            members,
        } => {
            let level = parse_level(&level)?;
            let bitmap_chunk_bytes = match (bitmap, bitmap_chunk) {
                (_, Some(c)) => Some(parse_size(&c)?),
                (true, None) => Some(64 << 20),
                (false, None) => None,
            };
            let opts = MdCreateOptions {
                name: name.clone(),
                level,
                layout: layout
                    .as_deref()
                    .map(|l| parse_layout(level, l))
                    .transpose()?,
                chunk_bytes: chunk.as_deref().map(parse_chunk).transpose()?,
                version: parse_metadata(&metadata)?,
                force,
                homehost,
                spares,
                bitmap_chunk_bytes,
            };
            engine.md_create(&opts, &members)?;
            println!(
                "Array {name} created: raid{level} over {} members.",
                members.len()
            );
            Ok(true)
        }
        MdCommand::Add {
            name,
            device,
            force,
        } => {
            // An IMSM container takes a spare as mdadm --add does: its own spare record.
            if let Some(container) = engine.imsm_add_spare(&name, &device, force)? {
                println!(
                    "{device} added to IMSM container {container} as a spare \
                     (its volumes take it when next started)."
                );
                return Ok(true);
            }
            engine.md_add(&name, &device, force)?;
            println!("{device} added to {name} as a spare.");
            reload_if_served(socket, &name)
        }
        MdCommand::Remove { name, device } => {
            engine.md_remove(&name, &device)?;
            println!("{device} removed from {name}.");
            reload_if_served(socket, &name)
        }
        MdCommand::Fail { name, device } => {
            message(socket, &name, &["fail", &device])?;
            println!("{device} failed in {name}.");
            Ok(true)
        }
        MdCommand::Replace {
            name,
            old,
            new,
            force,
        } => {
            engine.md_add(&name, &new, force)?;
            reload_if_served(socket, &name)?;
            message(socket, &name, &["fail", &old])?;
            println!("{old} failed in {name}; {new} takes its place and is being rebuilt.");
            Ok(true)
        }
        MdCommand::Check { name, no_wait } => scrub(socket, &name, "check", no_wait),
        MdCommand::Repair { name, no_wait } => scrub(socket, &name, "repair", no_wait),
        MdCommand::Speed { name, min, max } => {
            message(
                socket,
                &name,
                &["speed", &min.to_string(), &max.to_string()],
            )?;
            Ok(true)
        }
        MdCommand::Examine {
            device,
            badblocks: true,
            ..
        } => examine_badblocks(engine, &device),
        MdCommand::Examine { device, json, .. } => examine(engine, &device, json),
        MdCommand::List { json } => {
            let scan = engine.md_scan(false)?;
            if json {
                let arrays: Vec<Value> = scan.arrays.iter().map(array_json).collect();
                let external: Vec<Value> = crate::external::kernel_arrays()
                    .into_iter()
                    .map(|(dev, link, what)| json!({"device": dev, "link": link, "summary": what}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "arrays": arrays, "kernel_external": external })
                    )?
                );
            } else {
                println!(
                    "  {:<16} {:<7} {:>7} {:<10} {:>8}  UUID",
                    "Name", "Level", "Members", "State", "Events"
                );
                for a in &scan.arrays {
                    let present = a.slots.iter().filter(|s| s.is_some()).count();
                    println!(
                        "  {:<16} {:<7} {:>7} {:<10} {:>8}  {}",
                        a.name,
                        a.level_name(),
                        format!("{present}/{}", a.raid_disks),
                        health_word(a),
                        a.events,
                        a.uuid
                    );
                }
                let external = crate::external::kernel_arrays();
                if !external.is_empty() {
                    println!("  In the kernel, external metadata (IMSM/DDF):");
                }
                for (dev, link, what) in external {
                    println!("  {:<16} {dev}: {what}", link.unwrap_or_default());
                }
            }
            for p in &scan.problems {
                eprintln!("tessera: warning: {p}");
            }
            Ok(scan.problems.is_empty())
        }
        MdCommand::Detail { name, json } => {
            let scan = engine.md_scan(false)?;
            for p in &scan.problems {
                eprintln!("tessera: warning: {p}");
            }
            let Some(a) = scan.array(&name) else {
                // A subarray of an IMSM or DDF container, as mdadm --detail shows one.
                if let Some(d) = subarray_detail(engine, &name)? {
                    return external_detail(socket, d, json);
                }
                bail!("no MD array '{name}' on the devices scanned (tessera md list shows them)");
            };
            let running = running_json(socket, &a.name)?;
            if json {
                let mut v = array_json(a);
                v["running"] = running;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", detail_text(a));
                if !running.is_null() {
                    let pct = running["done_sectors"].as_f64().unwrap_or(0.0) * 100.0
                        / running["total_sectors"].as_f64().unwrap_or(1.0).max(1.0);
                    println!();
                    println!("   Running in : tessera serve (md/{})", a.name);
                    println!(
                        "       Health : {}",
                        running["health"].as_str().unwrap_or("?")
                    );
                    println!(
                        "  Sync Action : {} {pct:.1}%",
                        running["sync_action"].as_str().unwrap_or("?")
                    );
                    println!(" Mismatch Cnt : {}", running["mismatch_sectors"]);
                    println!(
                        " Speed Limits : {} - {} KiB/s",
                        running["min_rate_kib"], running["max_rate_kib"]
                    );
                    if let Some(last) = running["last"].as_object() {
                        println!(
                            "  Last Action : {} of {} sectors in {} ms ({:.0} MiB/s), {} mismatched",
                            last["action"].as_str().unwrap_or("?"),
                            last["sectors"],
                            last["millis"],
                            last["mib_per_sec"].as_f64().unwrap_or(0.0),
                            last["mismatch_sectors"]
                        );
                    }
                }
            }
            Ok(true)
        }
    }
}

fn parse_size(text: &str) -> Result<u64> {
    parse_chunk(text)
}

fn client(socket: &std::path::Path) -> Result<Client> {
    Client::connect(socket)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no tessera daemon is listening on {}: arrays run inside `tessera serve`",
            socket.display()
        )
    })
}

/// Sends a message to array `name`'s set in the daemon.
fn message(socket: &std::path::Path, name: &str, args: &[&str]) -> Result<String> {
    match client(socket)?.dm_message(&format!("md-{name}"), 0, args) {
        Ok(reply) => Ok(reply.output),
        Err(DaemonError::Refused(why)) => bail!("md/{name}: {why}"),
        Err(e) => Err(e.into()),
    }
}

/// The set's status in the daemon, split: type, #devs, health, done/total, action, mismatches.
pub fn sync_status(socket: &std::path::Path, name: &str) -> Result<Option<Vec<String>>> {
    let Some(mut c) = Client::connect(socket)? else {
        return Ok(None);
    };
    let reply = match c.dm_status(&format!("md-{name}")) {
        Ok(reply) => reply,
        Err(DaemonError::Refused(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // "<start> <len> raid <type> <#devs> <health> <done>/<total> <action> <mismatches> ..."
    Ok(Some(
        reply
            .output
            .split_whitespace()
            .skip(3)
            .map(str::to_string)
            .collect(),
    ))
}

/// What the daemon's running set reports, or null when the array is not running there.
fn running_json(socket: &std::path::Path, name: &str) -> Result<Value> {
    let Some(st) = sync_status(socket, name)? else {
        return Ok(Value::Null);
    };
    let report = message(socket, name, &["report"])?;
    let field = |k: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let num = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok());
    let (done, total) = st[3].split_once('/').unwrap_or(("0", "0"));
    let last = match (
        field("last_action"),
        num("last_sectors"),
        num("last_millis"),
    ) {
        (Some(action), Some(sectors), Some(millis)) => json!({
            "action": action,
            "sectors": sectors,
            "millis": millis,
            "mib_per_sec": sectors as f64 / 2048.0 / (millis.max(1) as f64 / 1000.0),
            "mismatch_sectors": num("last_mismatches"),
            "complete": field("last_complete").as_deref() == Some("true"),
        }),
        _ => Value::Null,
    };
    Ok(json!({
        "health": st[2],
        "done_sectors": done.parse::<u64>().unwrap_or(0),
        "total_sectors": total.parse::<u64>().unwrap_or(0),
        "sync_action": st[4],
        "mismatch_sectors": st[5].parse::<u64>().unwrap_or(0),
        "min_rate_kib": num("min_rate"),
        "max_rate_kib": num("max_rate"),
        "corrected_read_sectors": num("corrected_read_sectors"),
        "member_failures": num("member_failures"),
        "last": last,
    }))
}

fn reload_if_served(socket: &std::path::Path, name: &str) -> Result<bool> {
    if let Some(mut c) = Client::connect(socket)? {
        match c.md_reload(name) {
            Ok(reply) => print!("{}", reply.output),
            Err(DaemonError::Refused(why)) if why.contains("not running") => {}
            Err(DaemonError::Refused(why)) => bail!("md/{name}: {why}"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Starts a check or repair and follows it with a progress bar until it ends.
fn scrub(socket: &std::path::Path, name: &str, action: &str, no_wait: bool) -> Result<bool> {
    message(socket, name, &[action])?;
    if no_wait {
        println!("md/{name}: {action} started.");
        return Ok(true);
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {percent:>3}% {binary_bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("md/{name} {action}"));
    // The set picks the request up within its next tick.
    let started = std::time::Instant::now();
    let mut seen_running = false;
    let mismatches = loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let Some(st) = sync_status(socket, name)? else {
            bail!("md/{name} stopped running");
        };
        let (progress, act, mism) = (&st[3], &st[4], &st[5]);
        let (done, total) = progress.split_once('/').unwrap_or(("0", "0"));
        let (done, total): (u64, u64) = (done.parse()?, total.parse()?);
        if act == action {
            seen_running = true;
            bar.set_length(total * 512);
            bar.set_position(done * 512);
        } else if seen_running || started.elapsed() > std::time::Duration::from_secs(2) {
            bar.finish_and_clear();
            break mism.parse::<u64>()?;
        }
    };
    let report = message(socket, name, &["report"])?;
    let field = |k: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("?")
            .to_string()
    };
    if field("last_action") != action || field("last_complete") != "true" {
        bail!("md/{name}: {action} did not run to the end (is the array degraded or busy?)");
    }
    let secs = field("last_millis").parse::<f64>().unwrap_or(0.0) / 1000.0;
    let sectors: f64 = field("last_sectors").parse().unwrap_or(0.0);
    println!(
        "md/{name}: {action} done: {mismatches} mismatched sectors, {:.0} MiB in {secs:.1} s ({:.0} MiB/s)",
        sectors / 2048.0,
        sectors / 2048.0 / secs.max(1e-3)
    );
    Ok(true)
}

/// Sends an array request to the daemon and prints its answer.
fn daemon_call(
    socket: &std::path::Path,
    request: impl FnOnce(&mut Client) -> tessera_daemon::Result<Reply>,
) -> Result<bool> {
    let Some(mut client) = Client::connect(socket)? else {
        bail!(
            "no tessera daemon is listening on {}: arrays run inside `tessera serve`, which \
             starts every complete array itself (and degraded ones with --degraded)",
            socket.display()
        );
    };
    let reply = request(&mut client)?;
    print!("{}", reply.output);
    Ok(true)
}

fn parse_level(text: &str) -> Result<i32> {
    Ok(match text.trim_start_matches("raid") {
        "0" | "stripe" => 0,
        "1" | "mirror" => 1,
        "4" => 4,
        "5" => 5,
        "6" => 6,
        "10" => 10,
        _ => bail!("level '{text}': expected 0, 1, 4, 5, 6 or 10"),
    })
}

fn parse_layout(level: i32, text: &str) -> Result<u32> {
    if level == 10 {
        let (kind, copies) = text.split_at(1.min(text.len()));
        let copies: u32 = copies
            .parse()
            .ok()
            .filter(|c| (1..=255).contains(c))
            .with_context(|| format!("raid10 layout '{text}': expected n2, f2, o2, n3..."))?;
        return Ok(match kind {
            "n" => copies | (1 << 8),
            "f" => 1 | (copies << 8),
            "o" => 1 | (copies << 8) | (1 << 16),
            _ => bail!("raid10 layout '{text}': expected n2, f2, o2, n3..."),
        });
    }
    if !matches!(level, 5 | 6) {
        bail!("raid{level} takes no layout");
    }
    let (base, six) = match text.strip_suffix("-6") {
        Some(b) if level == 6 => (b, 16),
        _ => (text, 0),
    };
    let code = match base {
        "left-asymmetric" | "la" => 0,
        "right-asymmetric" | "ra" => 1,
        "left-symmetric" | "ls" => 2,
        "right-symmetric" | "rs" => 3,
        "parity-first" => 4,
        "parity-last" if six == 0 => 5,
        "ddf-zero-restart" if six == 0 => 8,
        "ddf-N-restart" if six == 0 => 9,
        "ddf-N-continue" if six == 0 => 10,
        _ => bail!("raid{level} layout '{text}' is not one md has"),
    };
    Ok(code + six)
}

fn parse_chunk(text: &str) -> Result<u64> {
    match tessera_engine::units::parse_size(text)? {
        tessera_engine::units::SizeArg {
            sign: None,
            amount: tessera_engine::units::Amount::Bytes(b),
        } => Ok(b),
        _ => bail!("--chunk '{text}': expected a size such as 64k"),
    }
}

fn parse_metadata(text: &str) -> Result<MdVersion> {
    Ok(match text {
        "0.90" | "0.9" | "0" => MdVersion::V0_90,
        "1.0" => MdVersion::V1_0,
        "1.1" => MdVersion::V1_1,
        "1.2" | "1" | "default" => MdVersion::V1_2,
        _ => bail!("--metadata '{text}': expected 1.2, 1.1, 1.0 or 0.90"),
    })
}

fn health_word(a: &MdArray) -> &'static str {
    match (a.health(), a.state) {
        (Health::Failed { .. }, _) => "failed",
        (Health::Degraded { .. }, _) => "degraded",
        (Health::Complete, ArrayState::Dirty { .. }) => "dirty",
        (Health::Complete, ArrayState::Clean) => "clean",
    }
}

fn layout_name(level: i32, layout: u32) -> String {
    match level {
        4..=6 => {
            let base = match layout & !16 {
                0 => "left-asymmetric",
                1 => "right-asymmetric",
                2 => "left-symmetric",
                3 => "right-symmetric",
                4 => "parity-first",
                5 => "parity-last",
                8 => "ddf-zero-restart",
                9 => "ddf-N-restart",
                10 => "ddf-N-continue",
                _ => return format!("layout {layout}"),
            };
            if layout & 16 != 0 {
                format!("{base}-6")
            } else {
                base.to_string()
            }
        }
        10 => {
            let near = layout & 0xff;
            let far = (layout >> 8) & 0xff;
            let offset = layout & (1 << 16) != 0;
            match (near, far, offset) {
                (n, 1, _) => format!("near={n}"),
                (1, f, true) => format!("offset={f}"),
                (1, f, false) => format!("far={f}"),
                (n, f, o) => format!("near={n} {}={f}", if o { "offset" } else { "far" }),
            }
        }
        _ => "-".into(),
    }
}

fn state_json(state: ArrayState) -> Value {
    match state {
        ArrayState::Clean => json!("clean"),
        ArrayState::Dirty { resync_from_sector } => {
            json!({ "dirty": { "resync_from_sector": resync_from_sector } })
        }
    }
}

fn array_json(a: &MdArray) -> Value {
    let slots: Vec<Value> = a
        .slots
        .iter()
        .enumerate()
        .map(|(slot, m)| match m {
            Some(m) => json!({ "slot": slot, "device": m.path, "events": m.sb.events() }),
            None => json!({ "slot": slot, "device": null, "missing": true }),
        })
        .collect();
    let health = match a.health() {
        Health::Complete => json!("complete"),
        Health::Degraded { missing } => json!({ "degraded": { "missing_slots": missing } }),
        Health::Failed { missing, tolerated } => {
            json!({ "failed": { "missing_slots": missing, "tolerated": tolerated } })
        }
    };
    json!({
        "name": a.name,
        "uuid": a.uuid,
        "homehost": a.homehost,
        "metadata": a.version.to_string(),
        "level": a.level_name(),
        "layout": layout_name(a.level, a.layout),
        "layout_code": a.layout,
        "chunk_bytes": a.chunk_bytes,
        "raid_disks": a.raid_disks,
        "size_bytes": a.size_sectors().map(|s| s * 512),
        "events": a.events,
        "state": state_json(a.state),
        "health": health,
        "members": slots,
        "spares": a.spares.iter().map(|m| m.path.clone()).collect::<Vec<_>>(),
        "left_out": a.left_out.iter().map(|(m, why)| json!({
            "device": m.path, "events": m.sb.events(), "reason": why.to_string(),
        })).collect::<Vec<_>>(),
    })
}

/// The `md` detail of the IMSM or DDF subarray called `name` (with or without `md/`, or
/// its UUID) that discovery finds on the devices: its container's node lists each of its
/// subarrays' (a subarray's own node shows what lies on it).
fn subarray_detail(engine: &Engine, name: &str) -> Result<Option<Value>> {
    let wanted = name.strip_prefix("md/").unwrap_or(name);
    let report = engine.discover()?;
    Ok(report.walk().into_iter().find_map(|(_, n)| {
        let listed = ["subarrays", "volumes"].iter().flat_map(|k| {
            n.detail
                .get(*k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        });
        let d = listed
            .filter_map(|s| s.get("md"))
            .find(|d| d["metadata"].is_string() && (d["name"] == wanted || d["uuid"] == wanted))?;
        let mut d = d.clone();
        let device = format!("md/{}", d["name"].as_str().unwrap_or(wanted));
        let own = format!("{device}:");
        d["problems"] = json!(n
            .problems
            .iter()
            .filter(|p| p.starts_with(&own))
            .collect::<Vec<_>>());
        d["device"] = json!(device);
        Some(d)
    }))
}

/// Prints a subarray's detail (`--json`: as it is, with what the daemon's running set
/// reports under `running`).
fn external_detail(socket: &std::path::Path, mut d: Value, json_out: bool) -> Result<bool> {
    let name = d["name"].as_str().unwrap_or("").to_string();
    let running = running_json(socket, &name)?;
    if !running.is_null() {
        // A running set knows its recovery better than the records' last checkpoint.
        let done = running["done_sectors"].as_f64().unwrap_or(0.0);
        let total = running["total_sectors"].as_f64().unwrap_or(0.0);
        if running["sync_action"] == "recover" && total > 0.0 {
            d["state"] = json!("recovering");
            d["rebuild"] = json!({ "percent": (done * 1000.0 / total).floor() / 10.0 });
        }
    }
    d["running"] = running;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(true);
    }
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:>18} : {v}\n"));
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    line(
        "Container",
        format!("{}, member {}", text(&d["container"]), d["member"]),
    );
    line("Metadata", text(&d["metadata"]));
    line("Raid Level", text(&d["level"]));
    let bytes = d["size_bytes"].as_u64().unwrap_or(0);
    line(
        "Array Size",
        format!("{} KiB ({} sectors)", bytes / 1024, bytes / 512),
    );
    line("Raid Devices", d["raid_disks"].to_string());
    let mut state = text(&d["state"]);
    if d["dirty"] == true {
        state.push_str(", dirty");
    }
    line("State", state);
    if let Some(l) = d["layout"].as_str() {
        line("Layout", l.to_string());
    }
    if let Some(c) = d["chunk_bytes"].as_u64().filter(|c| *c > 0) {
        line("Chunk Size", format!("{}K", c / 1024));
    }
    if let Some(p) = d["rebuild"]["percent"].as_f64() {
        line("Rebuild Status", format!("{p}% complete"));
    }
    line("UUID", text(&d["uuid"]));
    out.push_str("\n    Slot  State              Device\n");
    for m in d["members"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:>8}  {:<17}  {}\n",
            m["slot"],
            text(&m["state"]),
            m["device"].as_str().unwrap_or("-")
        ));
    }
    for s in d["spares"].as_array().into_iter().flatten() {
        out.push_str(&format!("{:>8}  {:<17}  {}\n", "-", "spare", text(s)));
    }
    print!("{out}");
    for p in d["problems"].as_array().into_iter().flatten() {
        eprintln!("tessera: {}", text(p));
    }
    Ok(true)
}

fn detail_text(a: &MdArray) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:>16} : {v}\n"));
    line("Name", a.name.clone());
    if let Some(h) = &a.homehost {
        line("Homehost", h.clone());
    }
    line("UUID", a.uuid.clone());
    line("Metadata", a.version.to_string());
    line("Raid Level", a.level_name());
    line("Layout", layout_name(a.level, a.layout));
    line("Chunk Size", format!("{}K", a.chunk_bytes / 1024));
    line("Raid Devices", a.raid_disks.to_string());
    if let Some(s) = a.size_sectors() {
        line("Array Size", format!("{} KiB ({s} sectors)", s / 2));
    }
    line("Events", a.events.to_string());
    line("State", health_word(a).to_string());
    out.push_str("\n    Slot  Device\n");
    for (slot, m) in a.slots.iter().enumerate() {
        match m {
            Some(m) => out.push_str(&format!("{slot:>8}  {}\n", m.path)),
            None => out.push_str(&format!("{slot:>8}  missing\n")),
        }
    }
    for m in &a.spares {
        out.push_str(&format!("{:>8}  {}\n", "spare", m.path));
    }
    for (m, why) in &a.left_out {
        out.push_str(&format!("{:>8}  {} ({why})\n", "out", m.path));
    }
    out
}

/// `mdadm --examine-badblocks`: the member's bad-block log, one entry a line.
fn examine_badblocks(engine: &Engine, path: &str) -> Result<bool> {
    let dev = engine
        .open_named(path, false)
        .with_context(|| format!("cannot open {path}"))?;
    let Some((_, sb)) = md_format::probe(&*dev)? else {
        bail!("{path}: no MD superblock (versions 0.90, 1.0, 1.1, 1.2 looked for)");
    };
    let MdSuperblock::V1(s) = &sb else {
        bail!("{path}: a 0.90 superblock has no bad-block log");
    };
    let table = md_format::badblocks::read(&*dev, s)?;
    print!(
        "{}",
        md_format::badblocks::examine_text(path, s, table.as_ref())
    );
    Ok(true)
}

fn examine(engine: &Engine, path: &str, json_out: bool) -> Result<bool> {
    // A path, or a partition tessera read from an image file's table (`disk.img1`).
    let dev = engine
        .open_named(path, false)
        .with_context(|| format!("cannot open {path}"))?;
    let Some((version, sb)) = md_format::probe(&*dev)? else {
        bail!("{path}: no MD superblock (versions 0.90, 1.0, 1.1, 1.2 looked for)");
    };
    let role = match sb.role() {
        Role::Active(slot) => format!("active {slot}"),
        Role::Spare => "spare".into(),
        Role::Faulty => "faulty".into(),
        Role::Journal => "journal".into(),
    };
    let name = sb.name();
    let v = json!({
        "device": path,
        "metadata": version.to_string(),
        "uuid": sb.uuid_string(),
        "name": name,
        "level": sb.level(),
        "layout": layout_name(sb.level(), sb.layout()),
        "chunk_bytes": sb.chunk_bytes(),
        "raid_disks": sb.raid_disks(),
        "events": sb.events(),
        "role": role,
        "state": state_json(sb.state()),
        "data_offset_sectors": sb.data_offset_sectors(),
        "used_size_sectors": sb.used_size_sectors(),
        "superblock_offset_bytes": version.offset_bytes(dev.size_bytes()),
        "bitmap": bitmap_present(&sb),
        "recovery_offset_sectors": sb.recovery_offset(),
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(true);
    }
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:>18} : {v}\n"));
    line("Device", path.into());
    line("Version", version.to_string());
    line("Array UUID", sb.uuid_string());
    if version != MdVersion::V0_90 {
        line("Name", name);
    }
    line("Raid Level", format!("raid{}", sb.level()));
    line("Raid Devices", sb.raid_disks().to_string());
    line("Layout", layout_name(sb.level(), sb.layout()));
    line("Chunk Size", format!("{}K", sb.chunk_bytes() / 1024));
    line("Events", sb.events().to_string());
    line("Device Role", role);
    line(
        "State",
        match sb.state() {
            ArrayState::Clean => "clean".into(),
            ArrayState::Dirty { resync_from_sector } => {
                format!("active (resync from sector {resync_from_sector})")
            }
        },
    );
    if let Some(at) = sb.recovery_offset() {
        line("Recovery Offset", format!("{at} sectors"));
    }
    line(
        "Data Offset",
        format!("{} sectors", sb.data_offset_sectors()),
    );
    line(
        "Used Dev Size",
        format!("{} sectors", sb.used_size_sectors()),
    );
    line(
        "Bitmap",
        if bitmap_present(&sb) {
            "internal"
        } else {
            "none"
        }
        .into(),
    );
    print!("{out}");
    Ok(true)
}

fn bitmap_present(sb: &MdSuperblock) -> bool {
    sb.bitmap_offset_bytes(0).is_some()
}
