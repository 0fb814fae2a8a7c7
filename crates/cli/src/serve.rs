//! `tessera serve`: finds the VGs on the devices, activates their LVs in user space and
//! exports each over NBD as `VG/LV`. LVs of types tessera cannot map yet are listed and
//! skipped with a warning; the rest of the VG is served. A control socket takes `tessera
//! dm` commands and LV changes, which the served LVs follow online.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use tessera_daemon::Daemon;
use tessera_engine::Engine;
use tessera_export::{Server, DEFAULT_TCP_ADDR};

#[derive(Args)]
pub struct ServeArgs {
    /// TCP address to listen on (loopback unless told otherwise; port 0 picks a free one).
    #[arg(long, default_value = DEFAULT_TCP_ADDR)]
    listen: String,
    /// Also listen on this Unix socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Open every device read-only and refuse writes from clients and changes from the
    /// control socket.
    #[arg(long)]
    read_only: bool,
    /// Start MD arrays that miss members their redundancy covers (read-only serving
    /// starts them anyway).
    #[arg(long)]
    degraded: bool,
    /// Start MD arrays that lost more members than they survive from the members
    /// `mdadm --assemble --force` would take (see `tessera md assemble --help`); with
    /// --read-only nothing is written, the choice is made in memory only.
    #[arg(long)]
    force: bool,
    /// Also show every volume as a file DIR/VG/LV (FUSE), which losetup can attach.
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// With --mount: let users other than this one reach the files.
    #[arg(long, requires = "mount")]
    allow_other: bool,
    /// Also serve every volume as a /dev/ublkbN block device (root; the ublk_drv module). A
    /// restarted server reattaches the devices a killed one left, with their I/O held.
    /// Needs a tessera built with `--features ublk`.
    #[arg(long)]
    ublk: bool,
    /// Serve over NBD (`tessera mount` does not).
    #[arg(skip = true)]
    nbd: bool,
}

/// `tessera mount DIR`: the daemon with its volumes as files, without NBD.
#[derive(Args)]
pub struct MountArgs {
    /// An empty directory; DIR/VG/LV appear in it (DIR/md/NAME for arrays).
    dir: PathBuf,
    /// Open every device read-only; the files refuse writes.
    #[arg(long)]
    read_only: bool,
    /// Start MD arrays that miss members their redundancy covers.
    #[arg(long)]
    degraded: bool,
    /// Let users other than this one reach the files (FUSE's allow_other).
    #[arg(long)]
    allow_other: bool,
}

impl MountArgs {
    pub fn serve_args(&self) -> ServeArgs {
        ServeArgs {
            listen: String::new(),
            socket: None,
            read_only: self.read_only,
            degraded: self.degraded,
            force: false,
            mount: Some(self.dir.clone()),
            allow_other: self.allow_other,
            ublk: false,
            nbd: false,
        }
    }
}

impl ServeArgs {
    /// Serving on `listen` over TCP only, writable.
    pub fn tcp(listen: impl Into<String>) -> ServeArgs {
        ServeArgs {
            listen: listen.into(),
            socket: None,
            read_only: false,
            degraded: false,
            force: false,
            mount: None,
            allow_other: false,
            ublk: false,
            nbd: true,
        }
    }
}

/// Runs the daemon until it is killed. With `hints`, it also prints how to reach the LVs
/// with the usual clients (the demo does).
pub fn run(engine: Engine, control_path: &Path, args: &ServeArgs, hints: bool) -> Result<bool> {
    #[cfg(not(feature = "ublk"))]
    if args.ublk {
        anyhow::bail!(
            "--ublk: this tessera was built without the ublk front end; build it with \
             `cargo build --release -p tessera-cli --features ublk` (libublk's bindings need \
             libclang: apt-get install libclang-dev)"
        );
    }
    // Shared VGs: their LVs' leases, held until this process ends.
    if let Some(leases) = engine.take_lv_leases(&engine.scan()?, args.read_only)? {
        for l in &leases.held {
            let mode = if l.shared { "shared" } else { "exclusive" };
            eprintln!("tessera: holding the {mode} lease of {}/{}", l.vg, l.lv);
        }
        tessera_engine::modules::lvm2::shared::hold_for_process(leases);
    }
    let (daemon, warnings) =
        Daemon::start_forced(engine, args.read_only, args.degraded, args.force)?;
    for w in &warnings {
        eprintln!("tessera: warning: {w}");
    }
    let exports = daemon.exports().clone();
    if exports.is_empty() {
        eprintln!(
            "tessera: warning: no LV to serve on the devices scanned yet; \
             `tessera lv create` and `tessera dm create` add exports while this runs"
        );
    }
    let daemon = Arc::new(daemon);
    // SIGTERM, SIGINT (Ctrl-C) and SIGHUP stop the daemon cleanly: arrays are recorded clean,
    // so the next start needs no resync. (SIGKILL cannot be caught; the bitmap covers it.)
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    let stopping = daemon.clone();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("tessera: signal {signal}: stopping, arrays recorded clean");
            stopping.shutdown();
            tessera_engine::modules::lvm2::shared::release_held();
            std::process::exit(0);
        }
    });
    let control = daemon.listen(control_path)?;
    // Moves a crash cut short go on, as lvm2's lvmpolld resumes them on activation.
    daemon.resume_moves();

    // A closed stdout (a supervisor that stopped reading) must not stop the service, so
    // these lines ignore write errors.
    use std::io::Write;
    let mut out = std::io::stdout();
    let fuse = match &args.mount {
        Some(dir) => {
            let options = tessera_fuse::MountOptions {
                read_only: args.read_only,
                allow_other: args.allow_other,
            };
            Some(tessera_fuse::mount(dir, exports.clone(), options)?)
        }
        None => None,
    };
    let mounted = |out: &mut std::io::Stdout| {
        if let Some(dir) = &args.mount {
            let _ = writeln!(
                out,
                "mounted {} volume(s) as files in {}/VG/LV",
                exports.len(),
                dir.display()
            );
        }
    };
    #[cfg(feature = "ublk")]
    if args.ublk {
        for served in crate::ublk::serve_all(&exports)? {
            let how = if served.recovered {
                " (reattached)"
            } else {
                ""
            };
            let _ = writeln!(out, "ublk {} {}{how}", served.block_path(), served.export);
        }
    }
    if !args.nbd {
        mounted(&mut out);
        let _ = writeln!(out, "control socket {}", control.path().display());
        for name in exports.names() {
            let _ = writeln!(out, "  {name}");
        }
        let _ = out.flush();
        // Until killed: the mount and the control socket serve from their own threads.
        loop {
            std::thread::park();
        }
    }
    let tcp = Server::bind_tcp(exports.clone(), args.listen.as_str())?;
    let _ = writeln!(
        out,
        "serving {} volume(s) on nbd://{}/VG/LV",
        exports.len(),
        tcp.local_addr()
    );
    let unix = match &args.socket {
        Some(path) => {
            let server = Server::bind_unix(exports.clone(), path)?;
            let _ = writeln!(
                out,
                "serving on nbd+unix:///VG/LV?socket={}",
                path.display()
            );
            Some(server)
        }
        None => None,
    };
    mounted(&mut out);
    let _ = writeln!(out, "control socket {}", control.path().display());
    for name in exports.names() {
        let _ = writeln!(out, "  {name}");
    }
    if hints {
        let addr = tcp.local_addr().to_string();
        let (host, port) = addr.rsplit_once(':').unwrap_or((&addr, ""));
        let lv = exports
            .names()
            .into_iter()
            .next()
            .unwrap_or_else(|| "VG/LV".into());
        let state = control_path
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let hints = [
            (
                format!("nbdinfo --list nbd://{addr}"),
                "every LV with its size",
            ),
            (
                format!("nbdcopy nbd://{addr}/{lv} copy.img"),
                "read an LV into a file",
            ),
            (
                format!("qemu-img info nbd://{addr}/{lv}"),
                "qemu: -drive file=nbd://...",
            ),
            (
                format!("mkdir -p mnt && nbdfuse mnt nbd://{addr}/{lv} &"),
                "mnt/nbd is the LV as a file",
            ),
            (
                format!("sudo nbd-client {host} {port} /dev/nbd0 -N {lv}"),
                "the kernel's NBD client",
            ),
            (
                format!("tessera --state-dir {state} lv extend {lv} -L +16M"),
                "resized online",
            ),
            (
                format!("tessera --state-dir {state} dm ls"),
                "the daemon's mapped devices",
            ),
        ];
        let width = hints.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "\nReach the LVs from another terminal (Ctrl-C here stops the server):"
        );
        for (command, what) in hints {
            let _ = writeln!(out, "  {command:width$}  # {what}");
        }
    }
    let _ = out.flush();
    tcp.wait();
    drop(unix);
    drop(fuse);
    drop(control);
    Ok(true)
}
