//! `tessera show` and `tessera scan`: what discovery found, as a tree (disk > partition >
//! array > PV > VG > LV > LUKS or filesystem) or as one line per device, with the problems
//! named at the end; `--json` for both.

use anyhow::Result;
use clap::Args;
use tessera_engine::discover::{Node, Report};
use tessera_engine::Engine;

#[derive(Args)]
pub struct ShowArgs {
    /// The same as JSON: `{"devices": [node...], "problems": [...]}`, each node with kind,
    /// name, size_bytes, format, summary, state, detail, problems and children.
    #[arg(long)]
    json: bool,
    /// Read the devices in this process even when a daemon listens.
    #[arg(long)]
    local: bool,
}

/// The stack: the running daemon's (with what it opened), or read here.
fn report(engine: &Engine, socket: &std::path::Path, args: &ShowArgs) -> Result<Report> {
    if !args.local {
        if let Some(mut client) = tessera_daemon::Client::connect(socket)? {
            let reply = client.show()?;
            return Ok(serde_json::from_value(reply.data)?);
        }
    }
    Ok(engine.discover()?)
}

pub const SHOW_ABOUT: &str = "\
Each device is probed by every format tessera knows (partition tables, MD, LVM2, LUKS,
filesystems and swap); partitions are probed as devices of their own, MD arrays are put
together from their members and read in user space (degraded where the level allows), and
the VGs on every PV are read with their LVs' contents. Nothing is written.
An array or VG over several devices shows under each of them. While a `tessera serve`
listens on the control socket, the stack is the daemon's: the LUKS volumes it opened
(`tessera luks open`) show with what is inside them; --local reads the devices here instead.

States: clean, degraded, failed (arrays); active, spare, stale, faulty (members);
complete, partial (VGs); empty (nothing found on the device).

Examples:
  tessera show
  tessera --devices 'disks/*.img' show --json";

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut i = 0;
    while value >= 1024.0 && i + 1 < units.len() {
        value /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[i])
    }
}

fn headline(node: &Node) -> String {
    let mut line = format!("{}  {}", node.name, human(node.size_bytes));
    if let Some(state) = &node.state {
        line.push_str(&format!("  [{state}]"));
    }
    if !node.summary.is_empty() {
        line.push_str(&format!("  {}", node.summary));
    }
    line
}

fn print_tree(node: &Node, prefix: &str, last: bool, top: bool) {
    let (branch, next) = match (top, last) {
        (true, _) => ("", String::new()),
        (false, true) => ("└─ ", format!("{prefix}   ")),
        (false, false) => ("├─ ", format!("{prefix}│  ")),
    };
    println!("{prefix}{branch}{}", headline(node));
    for problem in &node.problems {
        println!("{next}  ! {problem}");
    }
    if let Some(note) = content_note(node) {
        println!("{next}  - {note}");
    }
    for (i, child) in node.children.iter().enumerate() {
        print_tree(child, &next, i + 1 == node.children.len(), false);
    }
}

/// Formats a RAID member shows in its array's data area (its problems say nothing of
/// them: they are most likely the array's own content), named so the user knows they are
/// there.
fn content_note(node: &Node) -> Option<String> {
    let c = node.detail.get("conflict")?;
    if c.get("array_content")? != &serde_json::Value::Bool(true) {
        return None;
    }
    let formats = c.get("formats")?.as_array()?;
    let others: Vec<String> = formats
        .iter()
        .skip(1)
        .filter_map(|f| {
            let what = f.get("what")?.as_str()?;
            let at = f.get("offsets")?.get(0)?.as_u64()?;
            Some(format!("{what} at byte {at}"))
        })
        .collect();
    Some(format!(
        "also shows {} in the array's data area: the array's own content when the \
         array shows it too, else leftover from before the array (clear it on the \
         array, never on the member)",
        others.join(", ")
    ))
}

fn print_problems(report: &Report) {
    if report.problems.is_empty() {
        return;
    }
    println!();
    println!("Problems:");
    for p in &report.problems {
        println!("  {p}");
    }
}

pub fn show(engine: &Engine, socket: &std::path::Path, args: &ShowArgs) -> Result<bool> {
    let report = report(engine, socket, args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(true);
    }
    if report.devices.is_empty() {
        println!("No devices found.");
    }
    for node in &report.devices {
        print_tree(node, "", true, true);
    }
    print_problems(&report);
    Ok(true)
}

/// `tessera scan`: each device, partition, array and LV once, one line each.
pub fn scan(engine: &Engine, socket: &std::path::Path, args: &ShowArgs) -> Result<bool> {
    let report = report(engine, socket, args)?;
    let mut seen = std::collections::HashSet::new();
    let rows: Vec<&Node> = report
        .walk()
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| seen.insert((n.kind, n.name.clone())))
        .collect();
    if args.json {
        let flat: Vec<serde_json::Value> = rows
            .iter()
            .map(|n| {
                serde_json::json!({
                    "kind": n.kind, "name": n.name, "size_bytes": n.size_bytes,
                    "format": n.format, "state": n.state, "summary": n.summary,
                    "problems": n.problems,
                })
            })
            .collect();
        let out = serde_json::json!({ "devices": flat, "problems": report.problems });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(true);
    }
    let width = rows.iter().map(|n| n.name.len()).max().unwrap_or(4).max(4);
    let fmt_width = rows
        .iter()
        .map(|n| n.format.as_deref().unwrap_or("-").len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<width$}  {:<9}  {:<9}  {:<fmt_width$}  {:<9}  WHAT",
        "NAME", "KIND", "SIZE", "FORMAT", "STATE"
    );
    for n in rows {
        println!(
            "{:<width$}  {:<9}  {:<9}  {:<fmt_width$}  {:<9}  {}",
            n.name,
            n.kind,
            human(n.size_bytes),
            n.format.as_deref().unwrap_or("-"),
            n.state.as_deref().unwrap_or("-"),
            n.summary
        );
    }
    print_problems(&report);
    Ok(true)
}
