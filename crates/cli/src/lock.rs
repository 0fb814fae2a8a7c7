//! `tessera lock`: the locks of shared VGs (lvmlockd's sanlock leases): what this host
//! holds, what the others hold, and joining or leaving a VG's lockspace.

use anyhow::Result;
use clap::Subcommand;
use tessera_engine::modules::lvm2::shared::VgLockStatus;
use tessera_engine::Engine;

pub const ABOUT: &str = "\
A shared VG (`vg create --shared`, or lvm2's `vgcreate --shared`) is locked as lvmlockd locks it
with sanlock: each host runs a sanlock daemon (SANLOCK_RUN_DIR names its directory) and joins
the VG's lockspace lvm_VG with its own host id (--host-id or TESSERA_HOST_ID, 1-2000). Changes
take the VG lock (VGLK); serving an LV takes its lease (shared with --read-only).";

#[derive(Subcommand)]
pub enum LockCommand {
    /// The shared VGs: lockspace, hosts joined, and who holds GLLK, VGLK and each LV lease.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Join VG's lockspace with this host's id (as `vgchange --lockstart`).
    Start { vg: String },
    /// Leave VG's lockspace (as `vgchange --lockstop`); leases still held refuse it.
    Stop { vg: String },
}

pub fn run(engine: &Engine, cmd: LockCommand) -> Result<bool> {
    match cmd {
        LockCommand::Status { json } => {
            let status = engine.lock_status()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "shared_vgs": status }))?
                );
            } else {
                print!("{}", render(&status));
            }
        }
        LockCommand::Start { vg } => {
            let id = engine.start_lockspace(&vg)?;
            println!("Lockspace lvm_{vg} joined as host {id}.");
        }
        LockCommand::Stop { vg } => {
            if engine.leave_lockspace(&vg)? {
                println!("Lockspace lvm_{vg} left.");
            } else {
                println!("Lockspace lvm_{vg} was not joined.");
            }
        }
    }
    Ok(true)
}

fn render(status: &[VgLockStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if status.is_empty() {
        out.push_str("No shared VG found.\n");
    }
    for vg in status {
        let _ = writeln!(
            out,
            "VG {}: lock_type {} lock_args {}",
            vg.vg, vg.lock_type, vg.lock_args
        );
        if let Some(note) = &vg.note {
            let _ = writeln!(out, "  {note}");
        }
        let Some(ls) = &vg.lockspace else { continue };
        let _ = writeln!(
            out,
            "  lockspace {ls} on {}:{}; this host: {}",
            vg.lease_path.as_deref().unwrap_or("?"),
            vg.lease_offset.unwrap_or(0),
            vg.local_host_id
                .map(|id| format!("host {id}"))
                .unwrap_or_else(|| "not joined".into())
        );
        for h in &vg.hosts {
            let _ = writeln!(
                out,
                "  host {:<4} {:<40} generation {:<4} {}{}",
                h.host_id,
                h.name,
                h.generation,
                if h.joined { "joined" } else { "left" },
                if h.this_host { " (this host)" } else { "" }
            );
        }
        for l in &vg.leases {
            let holders = if l.holders.is_empty() {
                "free".to_string()
            } else {
                let names: Vec<String> = l
                    .holders
                    .iter()
                    .map(|id| {
                        let name = vg
                            .hosts
                            .iter()
                            .find(|h| h.host_id == *id)
                            .map(|h| format!(" ({})", h.name))
                            .unwrap_or_default();
                        format!("host {id}{name}")
                    })
                    .collect();
                format!("{} by {}", l.mode, names.join(", "))
            };
            let _ = writeln!(
                out,
                "  lease {:<12} at {:<10} {}{}{}",
                l.lock,
                l.offset,
                holders,
                if l.held_by_this_host {
                    " [this host]"
                } else {
                    ""
                },
                l.problem
                    .as_ref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            );
        }
    }
    out
}
