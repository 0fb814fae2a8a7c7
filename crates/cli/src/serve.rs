//! `tessera serve`: finds the VGs on the devices, activates their LVs in user space and
//! exports each over NBD as `VG/LV`. LVs of types tessera cannot map yet are listed and
//! skipped with a warning; the rest of the VG is served.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use tessera_engine::{activate, Engine};
use tessera_export::{Export, ExportSet, Server, DEFAULT_TCP_ADDR};
use tessera_mapper::TargetRegistry;

#[derive(Args)]
pub struct ServeArgs {
    /// TCP address to listen on (loopback unless told otherwise; port 0 picks a free one).
    #[arg(long, default_value = DEFAULT_TCP_ADDR)]
    listen: String,
    /// Also listen on this Unix socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Open every device read-only and refuse writes from clients.
    #[arg(long)]
    read_only: bool,
}

pub fn run(engine: &Engine, args: &ServeArgs) -> Result<bool> {
    let scan = engine.scan_with(!args.read_only)?;
    for p in &scan.problems {
        eprintln!("tessera: warning: {p}");
    }
    let exports = ExportSet::new();
    let registry = Arc::new(TargetRegistry::new());
    for state in scan.vgs.values() {
        for lv in state.vg.lvs.iter().filter(|lv| lv.is_visible()) {
            let name = format!("{}/{}", state.vg.name, lv.name);
            if !lv.is_plain() {
                let kind = lv.segments.first().map(|s| s.type_name()).unwrap_or("?");
                eprintln!(
                    "tessera: warning: skipping {name}: LVs of type {kind} cannot be served yet"
                );
                continue;
            }
            match activate::activate_lv(&scan, state, &lv.name, registry.clone()) {
                Ok(device) => {
                    let export = Export::new(Arc::new(device))
                        .read_only(args.read_only)
                        .description(format!("LV {name}"));
                    exports.insert(name, export)?;
                }
                Err(e) => eprintln!("tessera: warning: skipping {name}: {e}"),
            }
        }
    }
    if exports.is_empty() {
        bail!("no logical volume to serve on the devices scanned");
    }
    // A closed stdout (a supervisor that stopped reading) must not stop the service, so
    // these lines ignore write errors.
    use std::io::Write;
    let mut out = std::io::stdout();
    let tcp = Server::bind_tcp(exports.clone(), args.listen.as_str())?;
    let _ = writeln!(
        out,
        "serving {} LV(s) on nbd://{}/VG/LV",
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
    for name in exports.names() {
        let _ = writeln!(out, "  {name}");
    }
    let _ = out.flush();
    tcp.wait();
    drop(unix);
    Ok(true)
}
