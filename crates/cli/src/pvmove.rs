//! `tessera pv move`: lvm2's pvmove, offline, with a progress bar. With no PV it resumes
//! every move in progress (after a crash, say); `--abort` undoes moves as lvm2's does.

use anyhow::{bail, Result};
use clap::Args;
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

pub fn run(engine: &Engine, args: MoveArgs) -> Result<bool> {
    let mut limits = md_limits();
    if let Some(max) = args.max_rate {
        limits.max_rate_kib = max;
    }
    let pending = engine.pv_moves()?;
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

fn from(source: &Option<String>) -> String {
    source
        .as_deref()
        .map(|s| format!(" from {s}"))
        .unwrap_or_default()
}

/// Runs a move to its end with a progress bar, then says what it did.
fn follow(engine: &Engine, vg: &str, source: &str, limits: MoveLimits) -> Result<bool> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {percent:>3}% {binary_bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("{source}: moving"));
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
