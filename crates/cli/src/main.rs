//! `tessera`: one command for physical volumes, volume groups and logical volumes on the real
//! LVM2 on-disk format, and MD RAID arrays as mdadm writes them (lvm2 and mdadm read what
//! tessera writes, and the reverse); `tessera serve` serves them over NBD from user space.

mod bbr;
mod demo;
mod dm;
mod external;
mod kdm;
mod lock;
mod luks;
mod md;
mod pvmove;
mod report;
mod serve;
mod show;
mod thin;
#[cfg(feature = "ublk")]
mod ublk;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tessera_daemon::{Client, DaemonError, LvChange};
use tessera_engine::units::{parse_extents, parse_size, Amount, SizeArg, Units};
use tessera_engine::Engine;
use tessera_engine::{LvCreateOptions, PvCreateOptions};

const AFTER_HELP: &str = "\
Sizes take lvm2's suffixes: b, s (512-byte sectors), k, m, g, t, p, e (powers of 1024; m when
none is given). Extent counts take percentages: 100%FREE, 50%VG, 100%PVS.

Examples:
  tessera --devices 'disks/*.img' pv create disks/a.img disks/b.img
  tessera --devices 'disks/*.img' vg create vg0 disks/a.img disks/b.img
  tessera --devices 'disks/*.img' lv create vg0/data --size 100M
  tessera --devices 'disks/*.img' lv create vg0/fast -l 50%FREE --stripes 2 --stripe-size 64k
  tessera --devices 'disks/*.img' lv list --segments -o +seg_pe_ranges";

#[derive(Parser)]
#[command(name = "tessera", version, about = "A volume manager: LVM2 volume groups and MD RAID arrays on disks and image files, served from user space", after_help = AFTER_HELP)]
struct Cli {
    /// Where to look for PVs, arrays and partitions: a device, an image file or a glob
    /// (repeatable; TESSERA_DEVICES takes a comma-separated list). Without it, every block
    /// device is scanned.
    #[arg(long, global = true, env = "TESSERA_DEVICES", value_delimiter = ',')]
    devices: Vec<String>,
    /// Directory for locks, the metadata archive and backups (default /var/lib/tessera for
    /// root, else ~/.local/state/tessera).
    #[arg(long, global = true, env = "TESSERA_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The control socket of `tessera serve` (default STATE_DIR/control.sock). While a
    /// daemon listens there, `lv` changes and `dm` commands go through it.
    #[arg(long, global = true, env = "TESSERA_CONTROL")]
    control: Option<PathBuf>,
    /// This host's id in the lockspaces of shared VGs (lvmlockd's host_id, 1-2000); the
    /// sanlock daemon is the one SANLOCK_RUN_DIR names.
    #[arg(long, global = true, env = "TESSERA_HOST_ID")]
    host_id: Option<u64>,
    /// More log output (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Physical volumes: devices or image files labelled for LVM2.
    #[command(subcommand)]
    Pv(PvCommand),
    /// Volume groups: pools of extents over one or more PVs.
    #[command(subcommand)]
    Vg(VgCommand),
    /// Logical volumes: linear or striped runs of extents in a VG.
    #[command(subcommand)]
    Lv(LvCommand),
    /// Serve every LV (VG/LV) and MD array (md/NAME) over NBD: the user-space data path, no
    /// root and no kernel modules needed for image files.
    Serve(serve::ServeArgs),
    /// Show every volume as a file DIR/VG/LV through FUSE (a daemon, like serve, without NBD).
    Mount(serve::MountArgs),
    /// MD software RAID arrays, as mdadm makes them.
    #[command(subcommand, after_help = md::ABOUT)]
    Md(md::MdCommand),
    /// Mapped devices of a running `tessera serve` (or with --kernel the kernel's), with
    /// dmsetup's verbs.
    #[command(after_help = dm::ABOUT)]
    Dm(DmArgs),
    /// Activate LVs and MD arrays in the kernel (root): LVs with the tables, names (VG-LV)
    /// and uuids lvm2 gives them, /dev/mapper/VG-LV and /dev/VG/LV made where udev does not;
    /// arrays (md/NAME) assembled through sysfs from the members tessera finds fresh, as
    /// /dev/md_NAME and /dev/md/NAME. Targets: VG, VG/LV or md/NAME; none means every VG
    /// found. The arrays holding a VG's PVs are started first (degraded ones only with
    /// --degraded). For image files and no root, use `tessera serve`.
    Activate(ActivateArgs),
    /// Remove LVs' kernel devices (VG, VG/LV, or all found).
    Deactivate(ActivateArgs),
    /// Keep the records of the IMSM volumes the kernel's md runs in container CONTAINER
    /// (md127), as mdmon does; `activate` starts it, and it ends with the volumes.
    #[command(hide = true)]
    Monitor { container: String },
    /// Make a VG over image files in a folder, list it and serve it: a first look at tessera.
    Demo(demo::DemoArgs),
    /// LUKS1 and LUKS2 encrypted devices, as cryptsetup makes them: open (in the daemon, or
    /// --kernel), close, format, add-key, remove-key, kill-slot, dump.
    #[command(subcommand, after_help = luks::ABOUT)]
    Luks(luks::LuksCommand),
    /// Thin pools: `thin check VG/POOL` (pools, thin LVs and thin snapshots are made with
    /// `lv create --type thin-pool`, `--thin` and `--snapshot`).
    #[command(subcommand)]
    Thin(thin::ThinCommand),
    /// Show the whole storage stack as a tree: disk > partition > array > PV > VG > LV >
    /// LUKS or filesystem, with sizes, states and problems (reads only).
    #[command(after_help = show::SHOW_ABOUT)]
    Show(show::ShowArgs),
    /// Probe every device (block devices and their partitions, or --devices) and list what
    /// each holds, one line per device, array and LV (reads only).
    #[command(after_help = show::SHOW_ABOUT)]
    Scan(show::ShowArgs),
    /// Locks of shared VGs (lvmlockd with sanlock): status, start, stop.
    #[command(subcommand, after_help = lock::ABOUT)]
    Lock(lock::LockCommand),
}

#[derive(Args, Clone)]
struct ListArgs {
    /// Fields to show, lvm2's names (e.g. pv_name,pv_size); a leading '+' adds to the defaults.
    #[arg(short = 'o', long = "options")]
    fields: Option<String>,
    /// JSON, shaped as lvm2's `--reportformat json`.
    #[arg(long)]
    json: bool,
    /// Units for sizes: h (human), b, s, k, m, g, t, p, e; upper case for powers of 1000.
    #[arg(long, default_value = "h")]
    units: String,
    /// Sizes without the unit letter.
    #[arg(long)]
    nosuffix: bool,
    /// No heading line.
    #[arg(long)]
    noheadings: bool,
    /// Separate columns with this string instead of aligning them.
    #[arg(long)]
    separator: Option<String>,
}

#[derive(Subcommand)]
enum PvCommand {
    /// Label devices as PVs (as pvcreate). Refuses devices holding another format without --force.
    Create {
        #[arg(required = true, value_name = "DEVICE")]
        targets: Vec<String>,
        /// Overwrite a filesystem, RAID, LUKS or partition-table signature.
        #[arg(short, long)]
        force: bool,
        /// Offset of the first extent (default 1M).
        #[arg(long)]
        pe_start: Option<String>,
    },
    /// Remove the label of PVs that belong to no VG (as pvremove).
    Remove {
        #[arg(required = true, value_name = "DEVICE")]
        targets: Vec<String>,
    },
    /// List PVs (as pvs).
    List(ListArgs),
    /// Move a PV's extents to other PVs of its VG (as pvmove); with no PV, resume moves in
    /// progress.
    Move(pvmove::MoveArgs),
}

#[derive(Subcommand)]
enum VgCommand {
    /// Create a VG; devices that are not PVs yet are labelled first.
    Create {
        name: String,
        #[arg(required = true, value_name = "DEVICE")]
        targets: Vec<String>,
        /// Extent size (default 4M).
        #[arg(short = 's', long)]
        extent_size: Option<String>,
        /// Overwrite other formats' signatures on devices that become PVs.
        #[arg(short, long)]
        force: bool,
        /// A VG shared by hosts, locked as lvmlockd does (needs the sanlock daemon).
        #[arg(long)]
        shared: bool,
        /// The lock manager of a shared VG; tessera speaks sanlock.
        #[arg(long, value_name = "TYPE", requires = "shared", default_value = "sanlock")]
        lock_type: String,
        /// sanlock's io timeout written into the lockspace, in seconds (lvmlockd's 10).
        #[arg(long, requires = "shared")]
        io_timeout: Option<u32>,
    },
    /// Add PVs to a VG.
    Extend {
        name: String,
        #[arg(required = true, value_name = "DEVICE")]
        targets: Vec<String>,
        #[arg(short, long)]
        force: bool,
    },
    /// Take unused PVs out of a VG, or drop the PVs that are missing (--remove-missing).
    Reduce {
        name: String,
        #[arg(value_name = "DEVICE", required_unless_present = "remove_missing")]
        targets: Vec<String>,
        /// Drop the VG's missing PVs; with --force also the LVs that had extents on them.
        #[arg(long, conflicts_with = "targets")]
        remove_missing: bool,
        #[arg(short, long, requires = "remove_missing")]
        force: bool,
    },
    /// Remove a VG; its PVs stay labelled. With LVs in it, needs --force.
    Remove {
        name: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Rename a VG.
    Rename { old: String, new: String },
    /// List VGs (as vgs).
    List {
        names: Vec<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Write a VG's metadata to a file in lvm2's vgcfgbackup format.
    Backup {
        name: String,
        /// Output file (default: STATE_DIR/backup/NAME).
        #[arg(short, long)]
        file: Option<PathBuf>,
    },
    /// Write a VG's metadata back from a backup file (ours or lvm2's vgcfgbackup).
    Restore {
        name: String,
        /// Backup file (default: the newest archived copy).
        #[arg(short, long)]
        file: Option<PathBuf>,
        /// List the archived copies instead of restoring.
        #[arg(short, long)]
        list: bool,
    },
}

#[derive(Args)]
struct SizeArgs {
    /// Size, e.g. 10G, 512M (relative +/- for extend/reduce).
    #[arg(
        short = 'L',
        long,
        allow_hyphen_values = true,
        conflicts_with = "extents"
    )]
    size: Option<String>,
    /// Extents, e.g. 100, 100%FREE, 50%VG (relative +/- for extend/reduce).
    #[arg(short = 'l', long, allow_hyphen_values = true)]
    extents: Option<String>,
}

impl SizeArgs {
    fn parse(&self) -> Result<SizeArg> {
        match (&self.size, &self.extents) {
            (Some(s), _) => Ok(parse_size(s)?),
            (None, Some(e)) => Ok(parse_extents(e)?),
            (None, None) => {
                bail!("give a size with --size (e.g. 10G) or --extents (e.g. 100%FREE)")
            }
        }
    }
}

/// How much space and where from: shared by `lv create` and `lv extend`.
#[derive(Args)]
struct AllocArgs {
    #[command(flatten)]
    size: SizeArgs,
    /// Number of stripes, each on its own PV.
    #[arg(short = 'i', long)]
    stripes: Option<u32>,
    /// Stripe size (default 64k).
    #[arg(short = 'I', long)]
    stripe_size: Option<String>,
    /// Allocate only from these PVs.
    #[arg(long = "pv")]
    pvs: Vec<String>,
}

impl AllocArgs {
    fn options(self) -> Result<LvCreateOptions> {
        Ok(LvCreateOptions {
            size: self.size.parse()?,
            stripes: self.stripes,
            stripe_size_bytes: opt_size(&self.stripe_size, "stripe-size")?,
            pvs: self.pvs,
            segtype: None,
            mirrors: None,
            region_size_bytes: None,
        })
    }
}

#[derive(clap::Args)]
struct DmArgs {
    /// Work on the kernel's device-mapper (through /dev/mapper/control; root) instead of
    /// the daemon's devices; tables name devices as /dev paths or MAJOR:MINOR.
    #[arg(long)]
    kernel: bool,
    #[command(subcommand)]
    command: dm::DmCommand,
}

#[derive(clap::Args)]
struct ActivateArgs {
    /// VG, VG/LV or md/NAME (repeatable); none, or --all: every VG found.
    targets: Vec<String>,
    /// Every VG found.
    #[arg(long, conflicts_with = "targets")]
    all: bool,
    /// In the kernel's device-mapper and MD (the default).
    #[arg(long, conflicts_with = "userspace")]
    kernel: bool,
    /// In the running `tessera serve` instead: it activates every LV itself; md/NAME
    /// starts an array there.
    #[arg(long)]
    userspace: bool,
    /// Start MD arrays (md/NAME) even with members missing, if redundancy covers them.
    #[arg(long)]
    degraded: bool,
    /// Start MD arrays that lost more members than they survive from the members
    /// `mdadm --assemble --force` would take (see `tessera md assemble --help`). md reads
    /// the superblocks, so they are updated first, as mdadm does.
    #[arg(long)]
    force: bool,
    /// Also activate LVs flagged to skip activation (lvm2's thin snapshots, attr 'k') when
    /// activating a whole VG, as lvm2's -K; an LV named as VG/LV is activated regardless.
    #[arg(short = 'K', long = "ignoreactivationskip")]
    ignore_activation_skip: bool,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum LvCommand {
    /// Create an LV (as lvcreate): linear, striped (-i), or raid (--type raid1 -m 1, raid5
    /// -i 2, raid6 -i 3, raid10 -i 2 -m 1), laid out as lvm2 lays raid LVs out (an rmeta and
    /// an rimage sub-LV per image, each image on its own PV) so lvm2 activates them.
    ///
    /// A snapshot (as lvcreate -s): `lv create --snapshot VG/ORIGIN -n NAME -L SIZE
    /// [-c CHUNK]`, its copy-on-write store NAME of SIZE on the VG's free extents.
    ///
    /// Thin provisioning, as lvm2 lays it out so lvm2 uses it:
    ///
    /// - a pool: `lv create --type thin-pool -L SIZE [-c CHUNK] [--poolmetadatasize SIZE]
    ///   [--zero y|n] [--discards MODE] VG/POOL`: hidden POOL_tdata (SIZE of data) and
    ///   POOL_tmeta (its metadata) and the VG's lvolN_pmspare (a spare as large as the
    ///   largest metadata, for repairs);
    ///
    /// - a thin LV: `lv create --thin -V SIZE -n NAME VG/POOL` (or `--thinpool VG/POOL`);
    ///   SIZE may exceed what the pool holds: blocks come from the pool when first written;
    ///
    /// - a thin snapshot: `lv create --snapshot VG/THIN -n NAME` without a size: it shares
    ///   every block with THIN until either is written; as lvm2 it is skipped by activation
    ///   unless named (tessera activate VG/NAME). A snapshot of a snapshot works the same.
    ///
    /// Bad block relocation: `lv create --bbr -L SIZE VG/LV [--bbr-pool SIZE]` makes a
    /// linear or striped LV whose sectors that fail on write move to replacement sectors
    /// kept at its end; served by tessera serve (see `--help` for what it does not cover).
    Create {
        /// VG/LV (VG/POOL for a pool or a thin LV's pool; for a snapshot, VG/NAME or -n NAME)
        #[arg(required_unless_present_any = ["snapshot", "thinpool"])]
        name: Option<String>,
        /// Make a snapshot of this origin LV (VG/ORIGIN); of a thin LV without -L, a thin
        /// snapshot.
        #[arg(short = 's', long, value_name = "VG/ORIGIN")]
        snapshot: Option<String>,
        /// The new LV's name (a snapshot's or a thin LV's).
        #[arg(short = 'n', long = "name", value_name = "NAME")]
        lv_name: Option<String>,
        /// A snapshot's chunk: a power of two from 4k to 512k (default 4k, as lvm2). A thin
        /// pool's: a multiple of 64k from 64k to 1g (default 64k, doubled while the
        /// metadata would pass 128 MiB, as lvm2). Bigger chunks need less metadata and
        /// snapshot less finely.
        #[arg(short = 'c', long = "chunksize", value_name = "SIZE")]
        chunk_size: Option<String>,
        #[command(flatten)]
        alloc: AllocArgs,
        /// linear, striped, raid1, raid4, raid5[_la|_ra|_ls|_rs|_n], raid6[_zr|_nr|_nc|...],
        /// raid10 (raid5 is raid5_ls and raid6 raid6_zr, as in lvm2); thin-pool (a pool of
        /// -L SIZE of data), thin (a thin LV: -V SIZE -n NAME VG/POOL).
        #[arg(long = "type", value_name = "TYPE")]
        segtype: Option<String>,
        /// Copies beyond the first: raid1 images - 1 (default 1); raid10 takes 1.
        #[arg(short = 'm', long)]
        mirrors: Option<u32>,
        /// The raid write-intent region (default 2M).
        #[arg(short = 'R', long = "regionsize", value_name = "SIZE")]
        region_size: Option<String>,
        #[command(flatten)]
        thin: thin::ThinCreateArgs,
        /// Relocate bad blocks: sectors whose writes fail move to a pool of replacement
        /// sectors at the LV's end (linear and striped LVs; see --help).
        #[arg(long, long_help = bbr::LONG_HELP)]
        bbr: bool,
        /// The bad block relocation pool's size (default about 0.1% of the LV).
        #[arg(long = "bbr-pool", value_name = "SIZE", requires = "bbr")]
        bbr_pool: Option<String>,
    },
    /// Repair raid LVs that lost images with a missing PV (as lvconvert --repair, then
    /// vgreduce --removemissing): each lost image moves to a PV none of the LV's other
    /// images uses, is rebuilt from them, and the missing PVs leave the VG. VG/LV repairs
    /// one LV; VG every raid LV that needs it.
    Repair {
        /// VG or VG/LV
        name: String,
    },
    /// Grow an LV; new extents are striped like its last segment unless --stripes says otherwise.
    /// A thin pool grows its data with -L/-l (its metadata notes the new blocks) and its
    /// metadata with --poolmetadatasize (the VG's spare grows to match).
    Extend {
        /// VG/LV
        name: String,
        #[command(flatten)]
        alloc: AllocArgs,
        /// Grow a thin pool's metadata to SIZE, or by +SIZE.
        #[arg(
            long = "poolmetadatasize",
            value_name = "SIZE",
            allow_hyphen_values = true
        )]
        pool_metadata_size: Option<String>,
    },
    /// Shrink an LV: the data past the new end is lost, so it needs --force.
    Reduce {
        name: String,
        #[command(flatten)]
        size: SizeArgs,
        #[arg(short, long)]
        force: bool,
    },
    /// Remove an LV; a snapshot goes with lvm2's internal snapshotN LV. An origin with
    /// snapshots needs --force, which removes its snapshots too (as lvremove -f).
    Remove {
        name: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Merge a snapshot back into its origin (as lvconvert --merge): the origin's data
    /// returns to the snapshot's. While `tessera serve` serves the origin the merge starts
    /// at once (the origin reads as the snapshot from the first moment) and this waits for
    /// it with a progress bar, then removes the snapshot; otherwise the copy runs when the
    /// origin is next served or activated.
    Merge {
        /// VG/SNAPSHOT
        name: String,
        /// Do not wait: the daemon finishes the merge, and its next start removes the
        /// snapshot.
        #[arg(short, long)]
        background: bool,
    },
    /// Change an LV's settings (as lvchange): `lv change --errorwhenfull y|n VG/POOL`.
    Change {
        /// VG/LV
        name: String,
        /// For a thin pool: y fails writes that need a new block when the pool is full
        /// (the kernel's error_if_no_space); n (lvm2's default) holds them until the pool
        /// grows, up to the kernel's no-space timeout (60 s), then fails them. A served
        /// pool takes it at once.
        #[arg(long = "errorwhenfull", value_name = "y|n")]
        error_when_full: Option<String>,
    },
    /// Print the device-mapper table that maps an LV onto its PVs, in dmsetup's syntax: the
    /// table lvm2 loads when it activates the LV (devices named by path, not major:minor).
    Table { name: String },
    /// Rename an LV: `lv rename VG/OLD NEW`.
    Rename { name: String, new: String },
    /// List LVs (as lvs).
    List {
        /// Only this VG.
        vg: Option<String>,
        /// One row per segment.
        #[arg(long)]
        segments: bool,
        /// Also hidden LVs (raid images, pool metadata...).
        #[arg(short, long)]
        all: bool,
        #[command(flatten)]
        list: ListArgs,
    },
}

fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/tessera");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("tessera");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/tessera")
}

fn split_vg_lv(name: &str) -> Result<(&str, &str)> {
    let name = name.strip_prefix("/dev/").unwrap_or(name);
    match name.split_once('/') {
        Some((vg, lv)) if !vg.is_empty() && !lv.is_empty() && !lv.contains('/') => Ok((vg, lv)),
        _ => bail!("'{name}': expected VG/LV"),
    }
}

fn byte_size(text: &str, what: &str) -> Result<u64> {
    match parse_size(text).with_context(|| format!("--{what}"))? {
        SizeArg {
            sign: None,
            amount: Amount::Bytes(b),
        } => Ok(b),
        _ => bail!("--{what} '{text}': expected a size such as 64k"),
    }
}

fn opt_size(text: &Option<String>, what: &str) -> Result<Option<u64>> {
    text.as_deref().map(|t| byte_size(t, what)).transpose()
}

fn list_options(args: &ListArgs) -> Result<report::Options> {
    Ok(report::Options {
        fields: args.fields.clone(),
        json: args.json,
        units: Units::parse(&args.units, !args.nosuffix)?,
        headings: !args.noheadings,
        separator: args.separator.clone(),
    })
}

/// Prints what the scan could not read; the list still shows the rest. Returns whether
/// anything was wrong, which makes the exit status 1.
fn report_problems(scan: &tessera_engine::Scan) -> bool {
    for p in &scan.problems {
        eprintln!("tessera: warning: {p}");
    }
    !scan.problems.is_empty()
}

/// An LV change: through the daemon when one listens on `socket` and serves the VG (so its
/// served LVs follow the change online), else made here.
fn lv_change(engine: &Engine, socket: &Path, change: &LvChange) -> Result<String> {
    if let Some(mut client) = Client::connect(socket)? {
        match client.lv_change(change) {
            Ok(reply) => return Ok(reply.output),
            Err(DaemonError::NotServed(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(tessera_daemon::apply_lv_change(engine, change)?)
}

/// Refuses a VG change that would pull extents from under LVs the daemon serves; the
/// daemon makes only LV changes itself.
/// Follows a merge the daemon runs in origin `origin`'s device, with a progress bar, then
/// has the finished snapshot taken out of the metadata (as lvconvert --merge polls).
fn follow_merge(client: &mut Client, vg: &str, snap: &str, origin: &str) -> Result<bool> {
    let device = tessera_engine::activate::dm_name(vg, origin);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} chunks eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("merging {vg}/{snap} into {vg}/{origin}"));
    let mut first = None;
    loop {
        let reply = client.dm_message(&device, 0, &["progress".to_string()])?;
        // "<exceptions left> running|stopped|done|failed: ..."
        let text = reply.output.trim().to_string();
        let left: u64 = text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let total = *first.get_or_insert(left.max(1));
        bar.set_length(total);
        bar.set_position(total.saturating_sub(left));
        if text.contains("done") {
            break;
        }
        if text.contains("failed") {
            bar.abandon();
            bail!("merge of {vg}/{snap} into {vg}/{origin} failed: {text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    bar.finish_and_clear();
    let reply = client.lv_change(&LvChange::FinishMerges { vg: vg.into() })?;
    print!("{}", reply.output);
    println!("Merged {vg}/{snap} into {vg}/{origin}.");
    Ok(true)
}

fn refuse_if_served(socket: &Path, vg: &str) -> Result<()> {
    if let Some(mut client) = Client::connect(socket)? {
        let serves = match client.serves(vg) {
            Ok(serves) => serves,
            // A daemon that cannot say does not hold the VG back.
            Err(DaemonError::Refused(_)) => false,
            Err(e) => return Err(e.into()),
        };
        if serves {
            bail!(
                "volume group '{vg}' is served by the tessera daemon at {}; stop it first",
                socket.display()
            );
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<bool> {
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let mut engine = Engine::new(state_dir, cli.devices.clone());
    engine.set_description(format!(
        "Write from tessera {}.",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    ));
    engine.provide(std::sync::Arc::new(
        tessera_engine::modules::lvm2::shared::HostLocking::from_env(cli.host_id),
    ));
    let socket = tessera_daemon::socket_path(cli.control.as_deref(), engine.state_dir());
    // PVs on MD arrays are seen by the PV, VG and LV commands, which put the arrays
    // together for themselves; the daemon runs its own, and the kernel path uses the
    // kernel's.
    engine.set_assemble_arrays(matches!(
        cli.command,
        Command::Pv(_) | Command::Vg(_) | Command::Lv(_) | Command::Luks(_)
    ));
    match cli.command {
        Command::Demo(args) => return demo::run(&args),
        Command::Show(args) => return show::show(&engine, &socket, &args),
        Command::Scan(args) => return show::scan(&engine, &socket, &args),
        Command::Luks(cmd) => return luks::run(&engine, &socket, cmd),
        Command::Serve(args) => return serve::run(engine, &socket, &args, false),
        Command::Dm(DmArgs {
            kernel: true,
            command,
        }) => return kdm::run_dm(command),
        Command::Dm(DmArgs { command, .. }) => return dm::run(&socket, command),
        Command::Activate(args) if args.userspace => {
            return kdm::activate_userspace(&socket, &args.targets, args.degraded)
        }
        Command::Activate(args) => {
            return kdm::activate(
                &engine,
                &args.targets,
                args.degraded,
                args.force,
                args.ignore_activation_skip,
            )
        }
        Command::Deactivate(args) => return kdm::deactivate(&engine, &args.targets),
        Command::Monitor { container } => return external::monitor(&container),
        Command::Mount(args) => return serve::run(engine, &socket, &args.serve_args(), false),
        Command::Md(cmd) => return md::run(&engine, &socket, cmd),
        Command::Thin(cmd) => return thin::run(&engine, cmd),
        Command::Lock(cmd) => return lock::run(&engine, cmd),
        Command::Pv(cmd) => match cmd {
            PvCommand::Create {
                targets,
                force,
                pe_start,
            } => {
                let opts = PvCreateOptions {
                    force,
                    pe_start_bytes: opt_size(&pe_start, "pe-start")?,
                };
                engine.pv_create(&targets, &opts)?;
                for d in targets {
                    println!("Physical volume \"{d}\" successfully created.");
                }
            }
            PvCommand::Remove { targets } => {
                engine.pv_remove(&targets)?;
                for d in targets {
                    println!("Labels on physical volume \"{d}\" successfully wiped.");
                }
            }
            PvCommand::Move(args) => return pvmove::run(&engine, &socket, args),
            PvCommand::List(args) => {
                let scan = engine.scan()?;
                print!("{}", report::pv_list(&scan, &list_options(&args)?)?);
                return Ok(!report_problems(&scan));
            }
        },
        Command::Vg(cmd) => match cmd {
            VgCommand::Create {
                name,
                targets,
                extent_size,
                force,
                shared,
                lock_type,
                io_timeout,
            } => {
                if shared {
                    if lock_type != "sanlock" {
                        bail!("--lock-type {lock_type}: tessera locks shared VGs through sanlock only");
                    }
                    let opts = tessera_engine::modules::lvm2::shared::SharedVgOptions {
                        io_timeout: io_timeout.unwrap_or(
                            tessera_engine::modules::lvm2::shared::DEFAULT_IO_TIMEOUT,
                        ),
                    };
                    engine.vg_create_shared(
                        &name,
                        &targets,
                        opt_size(&extent_size, "extent-size")?,
                        force,
                        &opts,
                    )?;
                    println!("Volume group \"{name}\" successfully created for sanlock (lockspace lvm_{name})");
                } else {
                    engine.vg_create(
                        &name,
                        &targets,
                        opt_size(&extent_size, "extent-size")?,
                        force,
                    )?;
                    println!("Volume group \"{name}\" successfully created");
                }
            }
            VgCommand::Extend {
                name,
                targets,
                force,
            } => {
                engine.vg_extend(&name, &targets, force)?;
                println!("Volume group \"{name}\" successfully extended");
            }
            VgCommand::Reduce {
                name,
                remove_missing: true,
                force,
                ..
            } => {
                refuse_if_served(&socket, &name)?;
                let vg = engine.vg_reduce_missing(&name, force)?;
                println!(
                    "Volume group \"{name}\" is complete again: {} PV(s), {} LV(s)",
                    vg.pvs.len(),
                    vg.lvs.len()
                );
            }
            VgCommand::Reduce { name, targets, .. } => {
                refuse_if_served(&socket, &name)?;
                engine.vg_reduce(&name, &targets)?;
                println!(
                    "Removed {} PV(s) from volume group \"{name}\"",
                    targets.len()
                );
            }
            VgCommand::Remove { name, force } => {
                refuse_if_served(&socket, &name)?;
                engine.vg_remove(&name, force)?;
                println!("Volume group \"{name}\" successfully removed");
            }
            VgCommand::Rename { old, new } => {
                refuse_if_served(&socket, &old)?;
                engine.vg_rename(&old, &new)?;
                println!("Volume group \"{old}\" successfully renamed to \"{new}\"");
            }
            VgCommand::List { names, list } => {
                let scan = engine.scan()?;
                print!("{}", report::vg_list(&scan, &names, &list_options(&list)?)?);
                return Ok(!report_problems(&scan));
            }
            VgCommand::Backup { name, file } => {
                let path = engine.vg_backup(&name, file.as_deref())?;
                println!(
                    "Volume group \"{name}\" successfully backed up to {}",
                    path.display()
                );
            }
            VgCommand::Restore { name, file, list } => {
                if !list {
                    refuse_if_served(&socket, &name)?;
                }
                if list {
                    for entry in engine.archive().list(&name)? {
                        println!("{:>8}  {}", entry.seqno, entry.path.display());
                    }
                } else {
                    let vg = engine.vg_restore(&name, file.as_deref())?;
                    println!("Restored volume group \"{name}\" (seqno {})", vg.seqno);
                }
            }
        },
        Command::Lv(cmd) => match cmd {
            LvCommand::Create {
                name,
                snapshot,
                lv_name,
                chunk_size,
                alloc,
                segtype,
                mirrors,
                region_size,
                thin,
                bbr,
                ..
            } if thin::form(
                segtype.as_deref(),
                &thin,
                snapshot.is_some(),
                alloc.size.size.is_some() || alloc.size.extents.is_some(),
            )?
            .is_some() =>
            {
                if bbr {
                    bail!("--bbr makes a linear or striped LV; thin pools and thin LVs do not take it");
                }
                if mirrors.is_some()
                    || region_size.is_some()
                    || alloc.stripes.is_some_and(|n| n > 1)
                {
                    bail!("thin pools and thin LVs are linear here: -m, -R and -i do not apply");
                }
                let sized = alloc.size.size.is_some() || alloc.size.extents.is_some();
                match thin::form(segtype.as_deref(), &thin, snapshot.is_some(), sized)? {
                    Some(thin::ThinCreate::Pool) => {
                        let name = name.ok_or_else(|| anyhow::anyhow!("name the pool: VG/POOL"))?;
                        let (vg, pool) = split_vg_lv(&name)?;
                        let size = alloc.size.parse()?;
                        thin::create_pool(
                            &engine,
                            &socket,
                            vg,
                            pool,
                            size,
                            chunk_size.as_deref(),
                            alloc.pvs,
                            &thin,
                        )?;
                    }
                    Some(thin::ThinCreate::Thin) => {
                        if sized {
                            bail!("a thin LV takes its virtual size with -V, not -L/-l");
                        }
                        if chunk_size.is_some() {
                            bail!("a thin LV has its pool's chunk; -c applies to the pool");
                        }
                        let (vg, pool) = thin::thin_target(name.as_deref(), &thin)?;
                        thin::create_thin(&engine, &socket, vg, pool, lv_name.as_deref(), &thin)?;
                    }
                    Some(thin::ThinCreate::Snapshot) => {
                        let origin = snapshot.expect("the snapshot form");
                        let (vg, origin) = split_vg_lv(&origin)?;
                        let snap = match (lv_name.as_deref(), name.as_deref()) {
                            (Some(n), _) => n,
                            (None, Some(n)) => n.strip_prefix(&format!("{vg}/")).unwrap_or(n),
                            (None, None) => bail!("give the snapshot a name with -n NAME"),
                        };
                        if chunk_size.is_some() {
                            bail!("a thin snapshot has its pool's chunk; -c applies to snapshots with -L");
                        }
                        thin::create_snapshot(&engine, &socket, vg, origin, snap)?;
                    }
                    None => unreachable!("the guard found a thin form"),
                }
            }
            LvCommand::Create {
                name,
                snapshot: Some(origin),
                lv_name,
                chunk_size,
                alloc,
                segtype,
                mirrors,
                region_size,
                bbr,
                ..
            } => {
                if bbr {
                    bail!("--bbr makes a linear or striped LV; a snapshot does not take it");
                }
                let (vg, origin) = split_vg_lv(&origin)?;
                let named = name.as_deref().map(|n| match n.split_once('/') {
                    Some((v, l)) if v == vg => Ok(l),
                    Some((v, _)) => bail!("the snapshot goes in the origin's VG '{vg}', not '{v}'"),
                    None => Ok(n),
                });
                let snap = match (lv_name.as_deref(), named.transpose()?) {
                    (Some(n), None) => n,
                    (None, Some(n)) => n,
                    (Some(a), Some(b)) if a == b => a,
                    (Some(_), Some(_)) => bail!("two names given for the snapshot"),
                    (None, None) => bail!("give the snapshot a name with -n NAME"),
                };
                if segtype.as_deref().is_some_and(|t| t != "snapshot")
                    || mirrors.is_some()
                    || region_size.is_some()
                    || alloc.stripes.is_some_and(|n| n > 1)
                {
                    bail!("a snapshot is linear: --type, -m, -R and -i do not apply to it");
                }
                let change = LvChange::Snapshot {
                    vg: vg.into(),
                    origin: origin.into(),
                    lv: snap.into(),
                    size: alloc.size.parse()?,
                    chunk_bytes: opt_size(&chunk_size, "chunksize")?,
                };
                print!("{}", lv_change(&engine, &socket, &change)?);
            }
            LvCommand::Create {
                name,
                snapshot: None,
                alloc,
                segtype,
                mirrors,
                region_size,
                lv_name,
                chunk_size,
                bbr,
                bbr_pool,
                ..
            } => {
                if lv_name.is_some() || chunk_size.is_some() {
                    bail!("-n and -c apply to snapshots, thin LVs and thin pools; give a plain LV as VG/LV");
                }
                let name = name.ok_or_else(|| anyhow::anyhow!("name the new LV: VG/LV"))?;
                let (vg, lv) = split_vg_lv(&name)?;
                let mut options = alloc.options()?;
                options.segtype = segtype;
                options.mirrors = mirrors;
                options.region_size_bytes = opt_size(&region_size, "regionsize")?;
                if bbr {
                    let pool = opt_size(&bbr_pool, "bbr-pool")?;
                    print!("{}", bbr::create(&engine, &socket, vg, lv, &options, pool)?);
                    return Ok(true);
                }
                let change = LvChange::Create {
                    vg: vg.into(),
                    lv: lv.into(),
                    options,
                };
                print!("{}", lv_change(&engine, &socket, &change)?);
            }
            LvCommand::Repair { name } => {
                let (vg, lv) = match name.split_once('/') {
                    Some((vg, lv)) => (vg, Some(lv)),
                    None => (name.as_str(), None),
                };
                refuse_if_served(&socket, vg)?;
                let repaired = engine.lv_repair(vg, lv)?;
                for r in &repaired {
                    let moved: Vec<String> = r
                        .images
                        .iter()
                        .map(|(slot, pv)| format!("image {slot} to {pv}"))
                        .collect();
                    println!(
                        "  {vg}/{}: {}; rebuilt {} MiB per image in {:.1} s",
                        r.lv,
                        moved.join(", "),
                        r.rebuilt.sectors / 2048,
                        r.rebuilt.millis as f64 / 1000.0
                    );
                }
                println!("Volume group \"{vg}\" repaired; its missing PVs are removed.");
            }
            LvCommand::Extend {
                name,
                alloc,
                pool_metadata_size: Some(meta),
            } => {
                let (vg, lv) = split_vg_lv(&name)?;
                let pvs = alloc.pvs.clone();
                // Through a daemon serving the VG when there is one: the pool grows online.
                if alloc.size.size.is_some() || alloc.size.extents.is_some() {
                    let change = LvChange::Extend {
                        vg: vg.into(),
                        lv: lv.into(),
                        options: alloc.options()?,
                    };
                    print!("{}", lv_change(&engine, &socket, &change)?);
                }
                let change = LvChange::PoolMetadataExtend {
                    vg: vg.into(),
                    lv: lv.into(),
                    size: parse_size(&meta)?,
                    pvs,
                };
                print!("{}", lv_change(&engine, &socket, &change)?);
            }
            LvCommand::Extend { name, alloc, .. } => {
                let (vg, lv) = split_vg_lv(&name)?;
                let change = LvChange::Extend {
                    vg: vg.into(),
                    lv: lv.into(),
                    options: alloc.options()?,
                };
                print!("{}", lv_change(&engine, &socket, &change)?);
            }
            LvCommand::Reduce { name, size, force } => {
                let (vg, lv) = split_vg_lv(&name)?;
                if !force {
                    bail!("reducing {vg}/{lv} destroys the data past its new end; add --force to go ahead");
                }
                let change = LvChange::Reduce {
                    vg: vg.into(),
                    lv: lv.into(),
                    size: size.parse()?,
                };
                print!("{}", lv_change(&engine, &socket, &change)?);
            }
            LvCommand::Table { name } => {
                let (vg, lv) = split_vg_lv(&name)?;
                let scan = engine.scan()?;
                let state = scan
                    .vg(vg)
                    .ok_or_else(|| anyhow::anyhow!("volume group '{vg}' not found"))?;
                let devices = tessera_engine::activate::lv_devices(&scan, state, lv)?;
                if devices.len() == 1 {
                    print!("{}", devices[0].table);
                } else {
                    // An origin's stack: every device, as `dmsetup table` lists them.
                    for d in &devices {
                        for row in d.table.lines() {
                            println!("{}: {row}", d.name);
                        }
                    }
                }
                return Ok(!report_problems(&scan));
            }
            LvCommand::Remove { name, force } => {
                let (vg, lv) = split_vg_lv(&name)?;
                if force {
                    refuse_if_served(&socket, vg)?;
                    for gone in engine.lv_remove_with(vg, lv, true)? {
                        // lvm2 names only the LVs users know, not its internal ones.
                        let internal = ["_tmeta", "_tdata", "_pmspare"]
                            .iter()
                            .any(|s| gone.ends_with(s));
                        if (!gone.starts_with("snapshot") || gone == lv) && !internal {
                            println!("Logical volume \"{gone}\" successfully removed.");
                        }
                    }
                    return Ok(true);
                }
                let change = LvChange::Remove {
                    vg: vg.into(),
                    lv: lv.into(),
                };
                print!("{}", lv_change(&engine, &socket, &change)?);
            }
            LvCommand::Change {
                name,
                error_when_full,
            } => {
                let (vg, lv) = split_vg_lv(&name)?;
                let Some(when) = error_when_full else {
                    bail!("nothing to change: give --errorwhenfull y|n");
                };
                let error = match when.as_str() {
                    "y" | "yes" => true,
                    "n" | "no" => false,
                    other => bail!("--errorwhenfull '{other}': expected y or n"),
                };
                let change = LvChange::WhenFull {
                    vg: vg.into(),
                    lv: lv.into(),
                    error,
                };
                print!("{}", lv_change(&engine, &socket, &change)?);
            }
            LvCommand::Rename { name, new } => {
                let (vg, lv) = split_vg_lv(&name)?;
                let new = new.strip_prefix(&format!("{vg}/")).unwrap_or(&new);
                let change = LvChange::Rename {
                    vg: vg.into(),
                    lv: lv.into(),
                    new: new.into(),
                };
                print!("{}", lv_change(&engine, &socket, &change)?);
            }
            LvCommand::Merge { name, background } => {
                let (vg, lv) = split_vg_lv(&name)?;
                let change = LvChange::Merge {
                    vg: vg.into(),
                    lv: lv.into(),
                };
                // Served: the daemon starts the merge at once; follow it to the end.
                if let Some(mut client) = Client::connect(&socket)? {
                    match client.lv_change(&change) {
                        Ok(_) => {
                            let scan = engine.scan()?;
                            let origin = scan
                                .vg(vg)
                                .and_then(|s| s.vg.snapshot_of_cow(lv))
                                .and_then(|l| l.snapshot())
                                .map(|snap| snap.origin.clone())
                                .ok_or_else(|| {
                                    anyhow::anyhow!("{vg}/{lv} is no longer a snapshot")
                                })?;
                            if background {
                                println!(
                                    "Merging of {vg}/{lv} into {vg}/{origin} runs in the daemon."
                                );
                                return Ok(true);
                            }
                            return follow_merge(&mut client, vg, lv, &origin);
                        }
                        Err(DaemonError::NotServed(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                print!("{}", tessera_daemon::apply_lv_change(&engine, &change)?);
            }
            LvCommand::List {
                vg,
                segments,
                all,
                list,
            } => {
                let scan = engine.scan()?;
                print!(
                    "{}",
                    report::lv_list(&scan, vg.as_deref(), all, segments, &list_options(&list)?)?
                );
                return Ok(!report_problems(&scan));
            }
        },
    }
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tessera: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
