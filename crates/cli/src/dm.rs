//! `tessera dm`: dmsetup's verbs on the mapped devices of a running `tessera serve`, through
//! its control socket. A device made with `dm create` is exported over NBD under its name.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use tessera_daemon::Client;

pub const ABOUT: &str = "\
Tables are dmsetup's syntax, one row per line: START LENGTH TARGET ARGS..., in 512-byte
sectors. Targets: linear DEV OFFSET; striped N CHUNK DEV OFFSET...; zero; error;
flakey DEV OFFSET UP DOWN [FEATURES]; delay DEV OFFSET MS [DEV OFFSET MS [DEV OFFSET MS]].
A DEV is a path as the daemon sees it (give absolute paths) or the name of another of the
daemon's mapped devices (also as /dev/mapper/NAME). LVs served by the daemon are mapped
devices named VG-LV, as lvm2 names them.

Examples:
  tessera serve --devices 'disks/*.img' &
  tessera dm create zeros --table '0 2048 zero'
  echo '0 8192 linear /srv/disks/a.img 2048' | tessera dm create part1
  tessera dm suspend part1 && tessera dm load part1 --table '0 16384 linear /srv/disks/a.img 2048' && tessera dm resume part1
  tessera dm table vg0-data
  tessera dm ls --json";

#[derive(Subcommand)]
pub enum DmCommand {
    /// Create a device from a table (--table, a file, or standard input) and make it live.
    Create {
        name: String,
        #[command(flatten)]
        table: TableSource,
    },
    /// Load a table into a device's inactive slot; `resume` makes it live.
    Load {
        name: String,
        #[command(flatten)]
        table: TableSource,
    },
    /// Hold new I/O and wait for I/O in flight to finish.
    Suspend { name: String },
    /// Make a loaded table live (if any) and let I/O run again.
    Resume { name: String },
    /// Remove a device; its NBD export goes, and clients still on it get I/O errors.
    Remove { name: String },
    /// Print the live table (or the inactive one).
    Table {
        name: String,
        #[arg(long)]
        inactive: bool,
        /// Print crypt keys; without it they are zeros, as dmsetup prints them.
        #[arg(long)]
        showkeys: bool,
    },
    /// Print each row's target status.
    Status { name: String },
    /// Send a message to the target at SECTOR (e.g. `flakey` or `delay` messages).
    Message {
        name: String,
        sector: u64,
        #[arg(required = true, allow_hyphen_values = true, num_args = 1..)]
        message: Vec<String>,
    },
    /// The device-mapper interface versions (with --kernel: the kernel's and tessera's;
    /// --interface asks the kernel about another one).
    Version {
        #[arg(long, value_name = "MAJOR.MINOR.PATCH")]
        interface: Option<String>,
    },
    /// List the devices with their size, state and export.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct TableSource {
    /// The table text (rows separated by newlines or ';').
    #[arg(long, conflicts_with = "file")]
    table: Option<String>,
    /// A file holding the table; without it and without --table, standard input.
    file: Option<PathBuf>,
}

impl TableSource {
    pub fn text(&self) -> Result<String> {
        if let Some(t) = &self.table {
            return Ok(t.replace(';', "\n"));
        }
        if let Some(f) = &self.file {
            return std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the table file {}", f.display()));
        }
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the table from standard input")?;
        Ok(text)
    }
}

pub fn run(socket: &Path, command: DmCommand) -> Result<bool> {
    let Some(mut client) = Client::connect(socket)? else {
        bail!(
            "no tessera daemon is listening on {}: start one with `tessera serve` \
             (or point --control at its socket)",
            socket.display()
        );
    };
    let mut json = false;
    let reply = match command {
        DmCommand::Create { name, table } => client.dm_create(&name, &table.text()?)?,
        DmCommand::Load { name, table } => client.dm_load(&name, &table.text()?)?,
        DmCommand::Suspend { name } => client.dm_suspend(&name)?,
        DmCommand::Resume { name } => client.dm_resume(&name)?,
        DmCommand::Remove { name } => client.dm_remove(&name)?,
        DmCommand::Table {
            name,
            inactive,
            showkeys,
        } => {
            let mut reply = client.dm_table(&name, inactive)?;
            if !showkeys {
                reply.output = mask_keys(&reply.output);
            }
            reply
        }
        DmCommand::Status { name } => client.dm_status(&name)?,
        DmCommand::Message {
            name,
            sector,
            message,
        } => client.dm_message(&name, sector, &message)?,
        DmCommand::Ls { json: j } => {
            json = j;
            client.dm_ls()?
        }
        DmCommand::Version { .. } => client.version()?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&reply.data)?);
    } else if !reply.output.is_empty() && !reply.output.ends_with('\n') {
        // A target's message answer comes without a line end.
        println!("{}", reply.output);
    } else {
        print!("{}", reply.output);
    }
    Ok(true)
}

/// A table's text with each crypt row's key replaced by zeros, as `dmsetup table` prints it
/// without `--showkeys`.
pub fn mask_keys(table: &str) -> String {
    table
        .lines()
        .map(|line| {
            let mut words = line.splitn(4, ' ');
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some(start), Some(len), Some("crypt"), Some(params)) => {
                    format!("{start} {len} crypt {}\n", tessera_crypt::mask_key(params))
                }
                _ => format!("{line}\n"),
            }
        })
        .collect()
}
