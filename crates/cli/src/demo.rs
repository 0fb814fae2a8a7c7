//! `tessera demo`: a VG over image files in a folder, made and listed, with no root and no
//! kernel modules. Running it again lists what is there.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tessera_engine::units::{parse_size, Units};
use tessera_engine::Engine;
use tessera_engine::LvCreateOptions;

use crate::report;

#[derive(Args)]
pub struct DemoArgs {
    /// Folder for the image files and tessera's state.
    #[arg(long, default_value = "tessera-demo")]
    dir: PathBuf,
    /// Number of image files (PVs).
    #[arg(long, default_value_t = 3)]
    disks: usize,
    /// Size of each image file.
    #[arg(long, default_value = "256M")]
    disk_size: String,
    /// Where to serve the LVs over NBD once they are made.
    #[arg(long, default_value = tessera_export::DEFAULT_TCP_ADDR)]
    listen: String,
    /// Make and list the VG, then stop instead of serving it.
    #[arg(long)]
    no_serve: bool,
}

pub fn run(args: &DemoArgs) -> Result<bool> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let size = match parse_size(&args.disk_size)?.amount {
        tessera_engine::units::Amount::Bytes(b) => b,
        _ => anyhow::bail!("--disk-size: expected a size such as 256M"),
    };
    let mut disks = Vec::new();
    for i in 0..args.disks {
        let path = dir.join(format!("disk{i}.img"));
        if !path.exists() {
            let f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.set_len(size)?;
            println!(
                "made image file {} ({})",
                path.display(),
                Units::default().format(size)
            );
        }
        disks.push(path.to_string_lossy().into_owned());
    }
    let pattern = dir.join("disk*.img").to_string_lossy().into_owned();
    let mut engine = Engine::new(dir.join("state"), vec![pattern.clone()]);
    engine.set_description("Write from tessera demo.");
    let scan = engine.scan()?;
    if scan.vg("demo").is_none() {
        engine.vg_create("demo", &disks, None, false)?;
        println!("created VG demo over {} image files", disks.len());
        let linear = LvCreateOptions {
            size: parse_size("64M")?,
            stripes: None,
            stripe_size_bytes: None,
            pvs: vec![],
            segtype: None,
            mirrors: None,
            region_size_bytes: None,
        };
        engine.lv_create("demo", "linear", &linear)?;
        let striped = LvCreateOptions {
            size: parse_size("128M")?,
            stripes: Some(args.disks.clamp(1, 2) as u32),
            stripe_size_bytes: Some(64 << 10),
            pvs: vec![],
            segtype: None,
            mirrors: None,
            region_size_bytes: None,
        };
        engine.lv_create("demo", "striped", &striped)?;
        println!("created LVs demo/linear (64 MiB) and demo/striped (128 MiB, 2 stripes)");
    }
    let scan = engine.scan()?;
    let opts = report::Options {
        fields: None,
        json: false,
        units: Units::default(),
        headings: true,
        separator: None,
    };
    println!("\n$ tessera --devices '{pattern}' pv list");
    print!("{}", report::pv_list(&scan, &opts)?);
    println!("\n$ tessera --devices '{pattern}' vg list");
    print!("{}", report::vg_list(&scan, &[], &opts)?);
    let seg_opts = report::Options {
        fields: Some("+seg_pe_ranges".into()),
        ..opts
    };
    println!("\n$ tessera --devices '{pattern}' lv list --segments -o +seg_pe_ranges");
    print!("{}", report::lv_list(&scan, None, false, true, &seg_opts)?);
    println!(
        "\nThe image files hold real LVM2 metadata: attach them with `losetup` and lvm2's `vgs`/`lvs` show the same VG."
    );
    if args.no_serve || !scan.problems.is_empty() {
        return Ok(scan.problems.is_empty());
    }
    println!();
    let control = tessera_daemon::socket_path(None, engine.state_dir());
    crate::serve::run(
        engine,
        &control,
        &crate::serve::ServeArgs::tcp(&args.listen),
        true,
    )
}
