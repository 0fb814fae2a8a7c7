//! Thin provisioning on the command line, as lvcreate takes it: pools
//! (`lv create --type thin-pool`), thin LVs (`lv create --thin -V SIZE -n NAME VG/POOL`),
//! thin snapshots (`lv create --snapshot VG/THIN -n NAME`, no size), and `thin check`.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::Path;

use tessera_daemon::LvChange;
use tessera_engine::units::{parse_size, Amount, SizeArg};
use tessera_engine::Engine;
use tessera_formats::lvm2::vg::ThinDiscards;

/// The thin options of `lv create`.
#[derive(Args, Debug, Default)]
pub struct ThinCreateArgs {
    /// Make a thin LV in the pool VG/POOL (with -V and -n), as lvcreate -T; with -L and no
    /// -V, make the pool VG/POOL itself.
    #[arg(short = 'T', long = "thin")]
    pub thin: bool,
    /// The pool of a new thin LV: VG/POOL, or POOL with the VG as the positional argument.
    #[arg(long = "thinpool", value_name = "POOL")]
    pub thinpool: Option<String>,
    /// A thin LV's virtual size (e.g. 10G): what its users see. It may exceed the pool's
    /// free space (overprovisioning, warned about as lvm2 does); blocks are taken from the
    /// pool as they are first written.
    #[arg(short = 'V', long = "virtualsize", value_name = "SIZE")]
    pub virtual_size: Option<String>,
    /// A new pool's metadata size (e.g. 64M; 2M to about 15.8G). Default: lvm2's estimate,
    /// 64 bytes per chunk of data, at least 2 MiB. With `lv extend VG/POOL`, grows the
    /// pool's metadata (absolute or +SIZE).
    #[arg(long = "poolmetadatasize", value_name = "SIZE")]
    pub pool_metadata_size: Option<String>,
    /// Zero a pool's data blocks before first use: y (lvm2's default) or n. Zeroing keeps
    /// old data of the disk from showing through new thin LVs; n is faster.
    #[arg(short = 'Z', long = "zero", value_name = "y|n")]
    pub zero: Option<String>,
    /// What a pool does with discards from its thin LVs: passdown (lvm2's default: frees
    /// the blocks in the pool and discards them on the disk beneath), nopassdown (frees
    /// them in the pool only) or ignore.
    #[arg(long = "discards", value_name = "MODE")]
    pub discards: Option<String>,
}

impl ThinCreateArgs {
    fn pool_only_flags(&self) -> bool {
        self.pool_metadata_size.is_some() || self.zero.is_some() || self.discards.is_some()
    }
}

/// What `lv create` was asked to make, for the thin forms.
pub enum ThinCreate {
    Pool,
    Thin,
    Snapshot,
}

/// Which thin form `lv create`'s arguments ask for, if any.
pub fn form(
    segtype: Option<&str>,
    thin: &ThinCreateArgs,
    snapshot: bool,
    sized: bool,
) -> Result<Option<ThinCreate>> {
    let form = match segtype {
        Some("thin-pool") => Some(ThinCreate::Pool),
        Some("thin") => Some(ThinCreate::Thin),
        _ if snapshot && !sized => Some(ThinCreate::Snapshot),
        _ if thin.thin && sized && thin.virtual_size.is_none() => Some(ThinCreate::Pool),
        _ if thin.thin || thin.thinpool.is_some() || thin.virtual_size.is_some() => {
            Some(ThinCreate::Thin)
        }
        _ => None,
    };
    if form.is_none() && thin.pool_only_flags() {
        bail!("--poolmetadatasize, --zero and --discards apply to thin pools (--type thin-pool)");
    }
    Ok(form)
}

fn size_of(text: &str, what: &str) -> Result<u64> {
    match parse_size(text)? {
        SizeArg {
            sign: None,
            amount: Amount::Bytes(b),
        } => Ok(b),
        _ => bail!("--{what} '{text}': expected a size such as 64k"),
    }
}

fn yes_no(text: &str) -> Result<bool> {
    match text.to_ascii_lowercase().as_str() {
        "y" | "yes" | "1" => Ok(true),
        "n" | "no" | "0" => Ok(false),
        _ => bail!("--zero '{text}': expected y or n"),
    }
}

pub fn discards(text: &str) -> Result<ThinDiscards> {
    ThinDiscards::parse(text).ok_or_else(|| {
        anyhow::anyhow!("--discards '{text}': expected ignore, nopassdown or passdown")
    })
}

/// Makes pool `vg/pool` of data `size`.
pub fn create_pool(
    engine: &Engine,
    socket: &Path,
    vg: &str,
    pool: &str,
    size: SizeArg,
    chunk: Option<&str>,
    pvs: Vec<String>,
    thin: &ThinCreateArgs,
) -> Result<()> {
    // A daemon serving the VG makes it (and serves it); otherwise it is made here.
    let change = LvChange::ThinPool {
        vg: vg.into(),
        lv: pool.into(),
        size,
        chunk_bytes: chunk.map(|c| size_of(c, "chunksize")).transpose()?,
        metadata_bytes: thin
            .pool_metadata_size
            .as_deref()
            .map(|m| size_of(m, "poolmetadatasize"))
            .transpose()?,
        zero: thin
            .zero
            .as_deref()
            .map(yes_no)
            .transpose()?
            .unwrap_or(true),
        discards: thin
            .discards
            .as_deref()
            .map(discards)
            .transpose()?
            .unwrap_or(ThinDiscards::Passdown)
            .name()
            .to_string(),
        pvs,
    };
    print_change(&crate::lv_change(engine, socket, &change)?);
    Ok(())
}

/// The pool named by `--thinpool` or the positional VG/POOL, as (VG, POOL).
pub fn thin_target<'a>(
    positional: Option<&'a str>,
    thin: &'a ThinCreateArgs,
) -> Result<(&'a str, &'a str)> {
    let positional = positional.map(|p| p.strip_prefix("/dev/").unwrap_or(p));
    match (thin.thinpool.as_deref(), positional) {
        (Some(tp), pos) => match tp.split_once('/') {
            Some((vg, pool)) => {
                if let Some(p) = pos.filter(|p| *p != vg) {
                    bail!("--thinpool {tp} is in VG '{vg}', not '{p}'");
                }
                Ok((vg, pool))
            }
            None => match pos {
                Some(vg) if !vg.contains('/') => Ok((vg, tp)),
                _ => bail!("--thinpool {tp}: give it as VG/POOL, or the VG as the argument"),
            },
        },
        (None, Some(p)) => match p.split_once('/') {
            Some((vg, pool)) if !vg.is_empty() && !pool.is_empty() && !pool.contains('/') => {
                Ok((vg, pool))
            }
            _ => bail!("'{p}': expected the pool as VG/POOL"),
        },
        (None, None) => bail!("name the pool: lv create --thin -V SIZE -n NAME VG/POOL"),
    }
}

/// Makes thin LV `name` in `vg/pool`.
pub fn create_thin(
    engine: &Engine,
    socket: &Path,
    vg: &str,
    pool: &str,
    name: Option<&str>,
    thin: &ThinCreateArgs,
) -> Result<()> {
    let Some(size) = thin.virtual_size.as_deref() else {
        bail!("a thin LV needs its virtual size: -V SIZE (e.g. -V 10G)");
    };
    let Some(name) = name else {
        bail!("give the thin LV a name with -n NAME");
    };
    let change = LvChange::Thin {
        vg: vg.into(),
        pool: pool.into(),
        lv: name.into(),
        size: parse_size(size)?,
    };
    print_change(&crate::lv_change(engine, socket, &change)?);
    Ok(())
}

/// Makes thin snapshot `name` of thin LV `vg/origin`.
pub fn create_snapshot(
    engine: &Engine,
    socket: &Path,
    vg: &str,
    origin: &str,
    name: &str,
) -> Result<()> {
    let change = LvChange::ThinSnapshot {
        vg: vg.into(),
        origin: origin.into(),
        lv: name.into(),
    };
    print_change(&crate::lv_change(engine, socket, &change)?);
    Ok(())
}

/// Prints what a thin change said, its warnings on standard error as lvm2 prints them.
fn print_change(text: &str) {
    for line in text.lines() {
        if line.trim_start().starts_with("WARNING:") {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

#[derive(Subcommand)]
pub enum ThinCommand {
    /// Check a thin pool's metadata (reads only, the pool inactive): every thin device's
    /// mappings inside the pool and counted as its details say, every data block's
    /// reference count matching the mappings that share it, the space map's count of used
    /// blocks, and the transaction id the VG expects. Exit status 1 when anything is wrong.
    Check {
        /// VG/POOL
        name: String,
    },
}

pub fn run(engine: &Engine, cmd: ThinCommand) -> Result<bool> {
    match cmd {
        ThinCommand::Check { name } => {
            let (vg, pool) = name
                .strip_prefix("/dev/")
                .unwrap_or(&name)
                .split_once('/')
                .filter(|(v, p)| !v.is_empty() && !p.is_empty())
                .ok_or_else(|| anyhow::anyhow!("'{name}': expected VG/POOL"))?;
            let scan = engine.scan()?;
            let state = scan
                .vg(vg)
                .ok_or_else(|| anyhow::anyhow!("volume group '{vg}' not found"))?;
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} metadata blocks",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_message(format!("checking {vg}/{pool}"));
            let (report, mismatch) =
                tessera_engine::thin::check_pool(&scan, state, pool, &mut |done, all| {
                    bar.set_length(all);
                    bar.set_position(done);
                })?;
            bar.finish_and_clear();
            for p in &report.problems {
                eprintln!("tessera: {vg}/{pool}: {p}");
            }
            if report.nr_problems > report.problems.len() as u64 {
                eprintln!(
                    "tessera: {vg}/{pool}: ... and {} more",
                    report.nr_problems - report.problems.len() as u64
                );
            }
            if let Some(m) = &mismatch {
                eprintln!("tessera: {m}");
            }
            let faults = report.nr_problems + u64::from(mismatch.is_some());
            println!(
                "  {vg}/{pool}: {} thin device(s), {} mapping(s), {} metadata blocks read: {}",
                report.nr_devices,
                report.nr_mappings,
                report.metadata_blocks_read,
                if faults == 0 {
                    "no faults found".to_string()
                } else {
                    format!("{faults} fault(s)")
                }
            );
            Ok(faults == 0)
        }
    }
}
