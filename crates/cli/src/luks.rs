//! `tessera luks`: LUKS1 and LUKS2 encrypted devices, interchangeable with cryptsetup:
//! open (in a running `tessera serve`, or with --kernel as dm-crypt), close, format, key
//! slots added, removed and killed, and the header dumped as luksDump prints it.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tessera_cipher::{Argon2Variant, Hash, Kdf, KdfLimits, SecretBytes};
use tessera_daemon::Client;
use tessera_engine::{Engine, LuksOpenOptions};
use tessera_formats::luks::{AddKeyOptions, FormatOptions, RemoveKeyOptions};

pub const ABOUT: &str = "\
Passphrases come from --key-file FILE (the whole file, as cryptsetup reads it; '-' is standard
input) or, on a terminal, from a prompt that does not echo. Every key slot is tried unless
--key-slot says which. KDF costs read from a header are checked before any work: a header
asking for more than 4 GiB of memory or absurd iteration counts is refused as damaged.

`luks open` unlocks a device inside a running `tessera serve`: the plaintext is exported over
NBD as NAME, and what lies inside comes up with it (a PV's VG and its LVs are served as VG/LV,
as an encrypted install's GPT > LUKS2 > LVM stack). With --kernel (root) it loads dm-crypt as
cryptsetup would, as /dev/mapper/NAME.

Examples:
  tessera luks format disk.img3 --key-file key           # LUKS2, aes-xts-plain64, argon2id
  tessera --devices 'disk.img' serve &
  tessera luks open disk.img3 cryptroot --key-file key   # then vg0/root is served too
  tessera show                                           # what is inside, through the daemon
  tessera luks add-key disk.img3 --key-file key --new-key-file key2
  tessera luks dump disk.img3
  tessera luks close cryptroot";

#[derive(Subcommand)]
pub enum LuksCommand {
    /// Unlock DEVICE and serve its plaintext as NAME in the running daemon (or, with
    /// --kernel, as the kernel's /dev/mapper/NAME).
    Open {
        device: String,
        name: String,
        #[command(flatten)]
        key: KeyArgs,
        /// Try only this key slot.
        #[arg(short = 'S', long)]
        key_slot: Option<u32>,
        /// Serve (or map) the plaintext read-only.
        #[arg(short, long)]
        read_only: bool,
        /// Load dm-crypt into the kernel (root) instead of the daemon.
        #[arg(long)]
        kernel: bool,
    },
    /// Close NAME: the daemon stops serving it (and the LVs on it) and forgets its key; with
    /// --kernel, the kernel's device goes.
    Close {
        name: String,
        #[arg(long)]
        kernel: bool,
    },
    /// Write a new LUKS header (cryptsetup's defaults: LUKS2, aes-xts-plain64 with a 512-bit
    /// key, sha256, argon2id costing about 2 s here with up to 1 GiB, data at 16 MiB).
    Format(FormatArgs),
    /// Add a key slot for a new passphrase, after an existing one unlocks the device.
    AddKey {
        device: String,
        /// The existing passphrase.
        #[command(flatten)]
        key: KeyArgs,
        /// The new passphrase's file ('-' is standard input); else a prompt.
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<String>,
        /// The slot to fill (default: the first free one).
        #[arg(short = 'S', long)]
        key_slot: Option<u32>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Remove the key slot a passphrase opens.
    RemoveKey {
        device: String,
        #[command(flatten)]
        key: KeyArgs,
        /// Remove the last key slot too (the data can then never be opened again).
        #[arg(short, long)]
        force: bool,
    },
    /// Wipe key slot SLOT without its passphrase.
    KillSlot {
        device: String,
        slot: u32,
        /// Kill the last key slot too.
        #[arg(short, long)]
        force: bool,
    },
    /// Print the header as `cryptsetup luksDump` does (no key material).
    Dump { device: String },
}

#[derive(Args, Clone)]
pub struct KeyArgs {
    /// Read the passphrase from FILE ('-' is standard input).
    #[arg(short = 'd', long, value_name = "FILE")]
    key_file: Option<String>,
}

#[derive(Args, Clone)]
pub struct KdfArgs {
    /// The key derivation function: argon2id (default for LUKS2), argon2i or pbkdf2.
    #[arg(long)]
    pbkdf: Option<String>,
    /// PBKDF2 iterations or Argon2 time cost, instead of timing the KDF.
    #[arg(long)]
    pbkdf_force_iterations: Option<u32>,
    /// Argon2 memory in KiB (default: up to 1 GiB, half of the machine's memory at most).
    #[arg(long)]
    pbkdf_memory: Option<u32>,
    /// Argon2 threads (default: up to 4).
    #[arg(long)]
    pbkdf_parallel: Option<u32>,
    /// How long unlocking should take, in milliseconds, when the cost is timed (2000).
    #[arg(long, default_value_t = 2000)]
    iter_time: u64,
    /// The hash of PBKDF2 (and, in LUKS1, of the header): sha256 (default), sha1, sha512.
    #[arg(long)]
    hash: Option<String>,
}

#[derive(Args)]
pub struct FormatArgs {
    device: String,
    #[command(flatten)]
    key: KeyArgs,
    /// luks2 (default) or luks1.
    #[arg(long = "type", default_value = "luks2")]
    kind: String,
    /// The data cipher, as dm-crypt names it.
    #[arg(short, long, default_value = "aes-xts-plain64")]
    cipher: String,
    /// The volume key's size in bits (default 512 for xts, 256 otherwise).
    #[arg(short = 's', long)]
    key_size: Option<u32>,
    /// Encryption sector size in bytes: 512 (default), 1024, 2048, 4096 (LUKS2).
    #[arg(long)]
    sector_size: Option<u32>,
    /// A label (LUKS2).
    #[arg(long)]
    label: Option<String>,
    /// The header's UUID (default: a new random one).
    #[arg(long)]
    uuid: Option<String>,
    /// The key slot for the passphrase (default 0).
    #[arg(short = 'S', long)]
    key_slot: Option<u32>,
    /// Where the data starts, in 512-byte sectors (default 32768 = 16 MiB for LUKS2, 4096 =
    /// 2 MiB for LUKS1).
    #[arg(long)]
    offset: Option<u64>,
    #[command(flatten)]
    kdf: KdfArgs,
    /// Overwrite a device that holds another format (or LUKS already).
    #[arg(short, long)]
    force: bool,
}

/// A passphrase from `--key-file` (whole file) or a prompt without echo on a terminal.
fn passphrase(file: Option<&str>, prompt: &str) -> Result<SecretBytes> {
    match file {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the passphrase from standard input")?;
            let key = SecretBytes::from_slice(&buf);
            buf.fill(0);
            Ok(key)
        }
        Some(path) => {
            let mut buf = std::fs::read(path).with_context(|| format!("key file {path}"))?;
            let key = SecretBytes::from_slice(&buf);
            buf.fill(0);
            Ok(key)
        }
        None => {
            if !std::io::stdin().is_terminal() {
                bail!("no passphrase: give --key-file FILE ('-' for standard input), or run on a terminal to be asked");
            }
            let mut text = rpassword::prompt_password(prompt).context("reading the passphrase")?;
            let key = SecretBytes::from_slice(text.as_bytes());
            // The prompt's String is ours to wipe.
            // SAFETY: zero bytes keep the String valid UTF-8.
            unsafe { text.as_bytes_mut().fill(0) };
            Ok(key)
        }
    }
}

/// The KDF for a new key slot: the one asked for, with forced costs or timed to take about
/// `iter_time` ms here (cryptsetup's benchmark, roughly: one run measured, then scaled).
fn kdf(args: &KdfArgs, luks1: bool) -> Result<Kdf> {
    let hash = Hash::parse(args.hash.as_deref().unwrap_or("sha256"))?;
    let name = args
        .pbkdf
        .as_deref()
        .unwrap_or(if luks1 { "pbkdf2" } else { "argon2id" });
    let variant = match name {
        "pbkdf2" => None,
        "argon2i" => Some(Argon2Variant::I),
        "argon2id" => Some(Argon2Variant::Id),
        other => bail!("--pbkdf {other}: argon2id, argon2i or pbkdf2"),
    };
    if luks1 && variant.is_some() {
        bail!("LUKS1 key slots use pbkdf2 only");
    }
    let target = args.iter_time.max(1) as f64 / 1000.0;
    let kdf = match variant {
        None => {
            let iterations = match args.pbkdf_force_iterations {
                Some(n) => n,
                None => {
                    let probe = 100_000;
                    let took = time_kdf(&Kdf::Pbkdf2 {
                        hash,
                        iterations: probe,
                    })?;
                    ((probe as f64 * target / took) as u32).max(1000)
                }
            };
            Kdf::Pbkdf2 { hash, iterations }
        }
        Some(variant) => {
            let memory_kib = args.pbkdf_memory.unwrap_or_else(default_argon_memory);
            let lanes = args.pbkdf_parallel.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(4) as u32)
            });
            let time = match args.pbkdf_force_iterations {
                Some(n) => n,
                None => {
                    let took = time_kdf(&Kdf::Argon2 {
                        variant,
                        time: 1,
                        memory_kib,
                        lanes,
                    })?;
                    // cryptsetup's least time cost for Argon2 is 4.
                    ((target / took) as u32).max(4)
                }
            };
            Kdf::Argon2 {
                variant,
                time,
                memory_kib,
                lanes,
            }
        }
    };
    kdf.check(&KdfLimits::default())?;
    Ok(kdf)
}

/// Up to 1 GiB, and at most half of the machine's memory, as cryptsetup picks.
fn default_argon_memory() -> u32 {
    // SAFETY: sysconf only reads.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let half_kib = (pages.max(0) as u64 * page.max(0) as u64 / 2 / 1024) as u32;
    half_kib.clamp(32 * 1024, 1024 * 1024)
}

fn time_kdf(kdf: &Kdf) -> Result<f64> {
    let mut out = [0u8; 32];
    let start = Instant::now();
    kdf.derive(b"tessera timing run", &[0x5a; 32], &mut out)?;
    Ok(start.elapsed().as_secs_f64().max(1e-6))
}

pub fn run(engine: &Engine, socket: &Path, command: LuksCommand) -> Result<bool> {
    match command {
        LuksCommand::Open {
            device,
            name,
            key,
            key_slot,
            read_only,
            kernel,
        } => {
            let pass = passphrase(
                key.key_file.as_deref(),
                &format!("Enter passphrase for {device}: "),
            )?;
            let opts = LuksOpenOptions {
                key_slot,
                limits: KdfLimits::default(),
            };
            if kernel {
                let k = engine.luks_open_kernel(&device, &pass, &name, read_only, &opts)?;
                println!(
                    "{device}: key slot {} opened it as /dev/mapper/{name} ({}:{}), {} sectors",
                    k.key_slot, k.major, k.minor, k.size_sectors
                );
                return Ok(true);
            }
            let Some(mut client) = Client::connect(socket)? else {
                bail!(
                    "no tessera daemon is listening on {}: start `tessera serve` first (it serves what `luks open` unlocks), or use --kernel (root)",
                    socket.display()
                );
            };
            let reply = client.luks_open(&device, &name, &pass, key_slot, read_only)?;
            print!("{}", reply.output);
            Ok(true)
        }
        LuksCommand::Close { name, kernel } => {
            if kernel {
                engine.luks_close_kernel(&name)?;
                println!("/dev/mapper/{name} removed");
                return Ok(true);
            }
            let Some(mut client) = Client::connect(socket)? else {
                bail!(
                    "no tessera daemon is listening on {}: nothing is open",
                    socket.display()
                );
            };
            print!("{}", client.luks_close(&name)?.output);
            Ok(true)
        }
        LuksCommand::Format(args) => format(engine, args),
        LuksCommand::AddKey {
            device,
            key,
            new_key_file,
            key_slot,
            kdf: kdf_args,
        } => {
            let existing = passphrase(
                key.key_file.as_deref(),
                &format!("Enter any existing passphrase for {device}: "),
            )?;
            let new = passphrase(
                new_key_file.as_deref(),
                "Enter new passphrase for key slot: ",
            )?;
            let Some(header) = engine.luks_header(&device)? else {
                bail!("{device}: holds no LUKS header");
            };
            let luks1 = header.version == 1;
            let pbkdf = kdf(&kdf_args, luks1)?;
            let slot = engine.luks_add_key(
                &device,
                &existing,
                &new,
                &AddKeyOptions {
                    key_slot,
                    pbkdf: Some(pbkdf),
                    limits: KdfLimits::default(),
                },
            )?;
            println!("{device}: key slot {slot} added");
            Ok(true)
        }
        LuksCommand::RemoveKey { device, key, force } => {
            let pass = passphrase(
                key.key_file.as_deref(),
                &format!("Enter passphrase to be deleted from {device}: "),
            )?;
            let slot = engine.luks_remove_key(
                &device,
                &pass,
                &RemoveKeyOptions {
                    force,
                    limits: KdfLimits::default(),
                },
            )?;
            println!("{device}: key slot {slot} removed");
            Ok(true)
        }
        LuksCommand::KillSlot {
            device,
            slot,
            force,
        } => {
            engine.luks_kill_slot(&device, slot, force)?;
            println!("{device}: key slot {slot} wiped");
            Ok(true)
        }
        LuksCommand::Dump { device } => {
            print!("{}", engine.luks_dump(&device)?);
            Ok(true)
        }
    }
}

fn format(engine: &Engine, args: FormatArgs) -> Result<bool> {
    let version = match args.kind.as_str() {
        "luks2" | "2" => 2,
        "luks1" | "1" | "luks" => 1,
        other => bail!("--type {other}: luks2 or luks1"),
    };
    let pbkdf = kdf(&args.kdf, version == 1)?;
    let pass = passphrase(
        args.key.key_file.as_deref(),
        &format!("Enter passphrase for {}: ", args.device),
    )?;
    let spec = tessera_cipher::CipherSpec::parse(&args.cipher)?;
    let key_bytes = match args.key_size {
        Some(bits) if bits % 8 == 0 => (bits / 8) as usize,
        Some(bits) => bail!("--key-size {bits}: a whole number of bytes, in bits (256, 512)"),
        None => *spec.key_sizes().last().unwrap_or(&32),
    };
    spec.check_key_bytes(key_bytes)?;
    let mut opts = FormatOptions {
        version,
        cipher: args.cipher.clone(),
        key_bytes: key_bytes as u32,
        pbkdf: Some(pbkdf),
        ..FormatOptions::default()
    };
    if let Some(h) = &args.kdf.hash {
        opts.hash = Hash::parse(h)?;
    }
    if let Some(s) = args.sector_size {
        opts.sector_bytes = s;
    }
    opts.label = args.label.clone().unwrap_or_default();
    opts.uuid = args.uuid.clone();
    if let Some(slot) = args.key_slot {
        opts.key_slot = slot;
    }
    if let Some(offset) = args.offset {
        opts.data_offset_bytes = Some(offset * 512);
    }
    let meta = engine.luks_format(&args.device, &pass, &opts, args.force)?;
    println!(
        "{}: LUKS{} {} ({}-bit key, {}), uuid {}, data from byte {}",
        args.device,
        meta.version(),
        meta.cipher(),
        key_bytes * 8,
        pbkdf.name(),
        meta.uuid(),
        meta.data_offset_bytes()
    );
    Ok(true)
}
