//! `tessera pv move`: lvm2's pvmove with a progress bar. With no PV it resumes every move in
//! progress (after a crash, say); `--abort` undoes moves as lvm2's does. When a running
//! `tessera serve` serves the VG, the daemon moves it online, its LVs served throughout.

use anyhow::{bail, Result};
use clap::Args;
use tessera_daemon::Client;
use tessera_engine::pvmove::{MoveLimits, MoveProgress, MoveReport};
use tessera_engine::Engine;

#[derive(Args)]
pub struct MoveArgs {
    /// The PV to empty; none resumes (or with --abort undoes) every move in progress.
    #[arg(value_name = "SOURCE")]
    pub source: Option<String>,
    /// PVs of the same VG to move to (default: every other allocatable PV).
    #[arg(value_name = "DEST")]
    pub dests: Vec<String>,
    /// Move only this LV (VG/LV or LV; a raid LV moves with its images).
    #[arg(short = 'n', long = "name", value_name = "LV")]
    pub lv: Option<String>,
    /// Undo the move in progress: extents not moved yet go back to the source.
    #[arg(long)]
    pub abort: bool,
    /// Copy no faster than this, KiB/s (md's speed_limit_max; default md's, 200000).
    #[arg(long, value_name = "KIB_S")]
    pub max_rate: Option<u64>,
    /// While clients use the LVs of a served VG, copy at least this fast, KiB/s (md's
    /// speed_limit_min; default md's, 1000).
    #[arg(long, value_name = "KIB_S")]
    pub min_rate: Option<u64>,
}

/// md's speed limits from /proc where the kernel has md, else md's defaults.
fn md_limits() -> MoveLimits {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/dev/raid/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let mut limits = MoveLimits::default();
    if let Some(min) = read("speed_limit_min") {
        limits.min_rate_kib = min;
    }
    if let Some(max) = read("speed_limit_max") {
        limits.max_rate_kib = max;
    }
    limits
}

pub fn run(engine: &Engine, socket: &std::path::Path, args: MoveArgs) -> Result<bool> {
    let mut limits = md_limits();
    if let Some(max) = args.max_rate {
        limits.max_rate_kib = max;
    }
    if let Some(min) = args.min_rate {
        limits.min_rate_kib = min;
    }
    let pending = engine.pv_moves()?;
    if let Some(vg) = served_vg(engine, socket, &args, &pending)? {
        if args.abort {
            bail!(
                "VG {vg} is served by tessera serve ({}); a move there is aborted offline: stop \
                 serving it first",
                socket.display()
            );
        }
        return online(socket, &args, &vg, limits);
    }
    let same = |a: &str, b: &str| {
        a == b
            || std::fs::canonicalize(a)
                .ok()
                .zip(std::fs::canonicalize(b).ok())
                .is_some_and(|(x, y)| x == y)
    };
    // The moves this command works on: those in progress (from SOURCE if given).
    let ours: Vec<(String, String)> = pending
        .iter()
        .filter(|(_, src)| args.source.as_deref().is_none_or(|s| same(s, src)))
        .cloned()
        .collect();
    if args.abort {
        if !args.dests.is_empty() || args.lv.is_some() {
            bail!("--abort takes at most the source PV");
        }
        if ours.is_empty() {
            bail!("no move is in progress{}", from(&args.source));
        }
        for (vg, src) in ours {
            engine.pv_move_abort(&vg)?;
            println!("  {src}: move in VG {vg} aborted; extents not yet moved are back on it.");
        }
        return Ok(true);
    }
    if ours.is_empty() {
        let Some(source) = &args.source else {
            println!("  No move in progress.");
            return Ok(true);
        };
        let lv = args
            .lv
            .as_deref()
            .map(|n| n.rsplit_once('/').map_or(n, |(_, lv)| lv));
        let vg = engine.pv_move_start(source, &args.dests, lv)?;
        return follow(engine, &vg, source, limits);
    }
    if !args.dests.is_empty() || args.lv.is_some() {
        bail!(
            "a move is in progress{}; resume it without destinations or LV, or --abort it",
            from(&args.source)
        );
    }
    for (vg, src) in ours {
        println!("  Detected a move in progress in VG {vg} for {src}.");
        follow(engine, &vg, &src, limits)?;
    }
    Ok(true)
}

/// The VG this command moves in, when a running daemon serves it.
fn served_vg(
    engine: &Engine,
    socket: &std::path::Path,
    args: &MoveArgs,
    pending: &[(String, String)],
) -> Result<Option<String>> {
    let Some(mut client) = Client::connect(socket)? else {
        return Ok(None);
    };
    let vg = match &args.source {
        Some(source) => {
            let scan = engine.scan()?;
            let same = |p: &str| {
                p == source
                    || std::fs::canonicalize(p)
                        .ok()
                        .zip(std::fs::canonicalize(source).ok())
                        .is_some_and(|(x, y)| x == y)
            };
            scan.pvs
                .iter()
                .find(|p| same(&p.path))
                .and_then(|p| p.vg_name.clone())
        }
        None => pending.first().map(|(vg, _)| vg.clone()),
    };
    match vg {
        Some(vg) if client.serves(&vg)? => Ok(Some(vg)),
        _ => Ok(None),
    }
}

/// Has the daemon move the PV while it serves the VG, with a progress bar fed by another
/// connection's status requests.
fn online(socket: &std::path::Path, args: &MoveArgs, vg: &str, limits: MoveLimits) -> Result<bool> {
    let mut mover =
        Client::connect(socket)?.ok_or_else(|| anyhow::anyhow!("the daemon went away"))?;
    let mut watcher =
        Client::connect(socket)?.ok_or_else(|| anyhow::anyhow!("the daemon went away"))?;
    let (source, dests, lv) = (args.source.clone(), args.dests.clone(), args.lv.clone());
    let moving = std::thread::spawn(move || {
        mover.pv_move(
            source.as_deref(),
            &dests,
            lv.as_deref(),
            Some(limits.min_rate_kib),
            Some(limits.max_rate_kib),
        )
    });
    let bar = bar(&format!(
        "{}: moving online",
        args.source.as_deref().unwrap_or(vg)
    ));
    while !moving.is_finished() {
        if let Ok(reply) = watcher.pv_move_status(Some(vg)) {
            let s = &reply.data[vg];
            let num = |k: &str| s[k].as_u64().unwrap_or(0);
            bar.set_length(num("total_extents") * num("extent_bytes"));
            bar.set_position(num("done_extents") * num("extent_bytes"));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    bar.finish_and_clear();
    let reply = moving
        .join()
        .map_err(|_| anyhow::anyhow!("the move's connection to the daemon failed"))??;
    print!("{}", reply.output);
    Ok(reply.data["finished"] == serde_json::Value::Bool(true))
}

fn bar(message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {percent:>3}% {binary_bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

fn from(source: &Option<String>) -> String {
    source
        .as_deref()
        .map(|s| format!(" from {s}"))
        .unwrap_or_default()
}

/// Runs a move to its end with a progress bar, then says what it did.
fn follow(engine: &Engine, vg: &str, source: &str, limits: MoveLimits) -> Result<bool> {
    let bar = bar(&format!("{source}: moving"));
    let mut progress = |p: &MoveProgress| {
        bar.set_length(p.total_extents * p.extent_bytes);
        bar.set_position(p.done_extents * p.extent_bytes);
    };
    let report: MoveReport = engine.pv_move_run(vg, limits, &mut progress, &|| false)?;
    bar.finish_and_clear();
    println!(
        "  {source}: moved {} extents in VG {vg} ({} copied by this run, {} were moved \
         before it; {} checkpoints).",
        report.total_extents, report.copied_extents, report.resumed_at_extents, report.checkpoints
    );
    Ok(report.finished)
}
