//! tessera's daemon as a library: the server behind `tessera serve` and a typed client for
//! its versioned control protocol, so that the `tessera` command and other front ends (a
//! D-Bus or REST service) drive a daemon the same way.
//!
//! - [`Daemon`]: the VGs' LVs and the MD arrays found on an [`tessera_engine::Engine`]'s
//!   devices, activated in user space as mapped devices and exported ([`Daemon::exports`],
//!   which tessera's NBD server and FUSE mount serve), plus the devices made with
//!   `dm create`. [`Daemon::handle`] answers one [`Request`]: dmsetup's verbs, MD array
//!   start, stop and reload, and LV changes, which the daemon commits itself and follows
//!   with suspend, load and resume, so a served LV is resized online.
//! - [`listen`] / [`Daemon::listen`]: the control socket, JSON over a Unix socket, one
//!   request per line and one [`Reply`] per line, owner-only.
//! - [`Client`]: one method per request ([`Client::dm_create`], [`Client::lv_change`],
//!   [`Client::md_assemble`]...), each returning the reply or the daemon's refusal as a
//!   [`DaemonError`].
//!
//! Every request carries the protocol [`VERSION`] its sender speaks. A daemon serves
//! requests of its own major version up to its minor version and refuses the rest with an
//! error naming both versions ([`DaemonError::VersionRefused`]), so old and new tools can
//! tell what went wrong.
//!
//! A request on the wire, and what a daemon makes of it:
//!
//! ```
//! use tessera_daemon::{decode, envelope, DaemonError, Request, VERSION};
//!
//! let request = Request::DmCreate {
//!     name: "zeros".into(),
//!     table: "0 2048 zero".into(),
//! };
//! let line = envelope(&request, VERSION);
//! assert!(line.contains(r#""command":"dm_create""#));
//! assert!(line.contains(r#""version":[1,4,0]"#));
//! assert!(matches!(decode(&line), Ok(Request::DmCreate { name, .. }) if name == "zeros"));
//!
//! // A client of a newer minor version is told which versions meet.
//! let newer = envelope(&Request::DmLs, [VERSION[0], VERSION[1] + 1, 0]);
//! let refused = decode(&newer).unwrap_err();
//! assert!(matches!(refused, DaemonError::VersionRefused { .. }));
//! assert!(refused.to_string().contains("1.5.0") && refused.to_string().contains("1.4.0"));
//! ```
//!
//! Talking to a running daemon (`tessera serve` prints its control socket):
//!
//! ```
//! use tessera_daemon::{socket_path, Client, DaemonError};
//!
//! let state_dir = std::env::temp_dir().join("no-tessera-daemon-here");
//! let socket = socket_path(None, &state_dir);
//! match Client::connect(&socket)? {
//!     Some(mut client) => {
//!         client.dm_create("zeros", "0 2048 zero")?;
//!         print!("{}", client.dm_ls()?.output);
//!         match client.dm_remove("ghost") {
//!             Err(DaemonError::Refused(why)) => eprintln!("refused: {why}"),
//!             other => drop(other?),
//!         }
//!     }
//!     None => println!("no daemon listens on {}", socket.display()),
//! }
//! # Ok::<(), DaemonError>(())
//! ```

mod client;
mod control;
mod daemon;
mod error;

pub use client::Client;
pub use control::{
    decode, envelope, listen, socket_path, version_string, version_supported, ControlSocket,
    LvChange, Reply, Request, MAX_REQUEST_BYTES, NOT_SERVED, SOCKET_NAME, VERSION,
};
pub use daemon::{apply_lv_change, Daemon};
pub use error::{DaemonError, Result};
