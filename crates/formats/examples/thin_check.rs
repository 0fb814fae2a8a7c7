//! Checks dm-thin pool metadata in an image file or on a device, as `thin_check` does, and
//! prints every problem found. Exit status 0 when the metadata is clean, 1 when not, 2 when
//! it cannot be read.
//!
//! Usage: thin_check METADATA [--quiet]

use std::sync::Arc;
use std::time::Instant;

use tessera_block::{FileDevice, OpenOptions, SharedDevice};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: thin_check METADATA [--quiet]");
        std::process::exit(2);
    };
    let quiet = args.any(|a| a == "--quiet");
    let device: SharedDevice = match FileDevice::open(
        &path,
        OpenOptions {
            read_only: true,
            direct: false,
        },
    ) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let start = Instant::now();
    let report = match tessera_formats::thin::check(&device, &mut |_, _| {}) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let elapsed = start.elapsed();
    for p in &report.problems {
        println!("{path}: {p}");
    }
    if report.nr_problems as usize > report.problems.len() {
        println!("{path}: ... {} problems in all", report.nr_problems);
    }
    if !quiet {
        eprintln!(
            "{path}: {} devices, {} mappings, {} metadata blocks read, {} problems, {:.3} s",
            report.nr_devices,
            report.nr_mappings,
            report.metadata_blocks_read,
            report.nr_problems,
            elapsed.as_secs_f64()
        );
    }
    std::process::exit(if report.is_clean() { 0 } else { 1 });
}
