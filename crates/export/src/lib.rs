//! tessera's NBD server: the front door through which volumes reach qemu, the kernel's NBD
//! client, nbdkit's and libnbd's tools, or anything else that speaks NBD.
//!
//! - [`ExportSet`]: export names mapped to devices, changeable while clients are connected.
//! - [`Server`]: listens on TCP ([`DEFAULT_TCP_ADDR`], loopback) or a Unix socket, a thread
//!   per client and a small pool of workers per client, so that clients with many requests
//!   in flight (qemu, fio at QD16) are served in parallel.
//! - [`serve_stream`]: one client over any byte stream.
//! - [`proto`]: the wire format as pure functions, fuzzed by `fuzz/fuzz_targets/nbd_*.rs`.
//!
//! The server speaks fixed newstyle negotiation only (options LIST, INFO, GO, EXPORT_NAME,
//! STRUCTURED_REPLY, ABORT; anything else gets `NBD_REP_ERR_UNSUP`) and advertises FLUSH,
//! FUA, TRIM, WRITE_ZEROES, FAST_ZERO and MULTI_CONN: every write goes straight to the shared
//! device, so a FLUSH on any connection covers writes from all of them. Nothing the network
//! sends can make it panic: malformed requests get an NBD error, and a stream that can no
//! longer be trusted (bad magic, a truncated header, an oversized write) is closed without
//! affecting other clients.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tessera_block::{FileDevice, OpenOptions};
//! use tessera_export::{Export, ExportSet, Server, DEFAULT_TCP_ADDR};
//!
//! let exports = ExportSet::new();
//! let disk = FileDevice::open("disk.img", OpenOptions::default())?;
//! exports.insert("disk", Export::new(Arc::new(disk)).description("scratch disk"))?;
//! let server = Server::bind_tcp(exports.clone(), DEFAULT_TCP_ADDR)?;
//! // nbdinfo --list nbd://127.0.0.1 now shows "disk"; later:
//! exports.remove("disk");
//! server.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod conn;
mod exports;
pub mod proto;
mod server;

use thiserror::Error;

pub use conn::serve_stream;
pub use exports::{Export, ExportSet};
pub use proto::ProtocolError;
pub use server::{ListenAddr, Server, ServerConfig, DEFAULT_TCP_ADDR};

/// What can go wrong setting up exports or serving a client.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("export name is {len} bytes long; NBD allows at most 4096")]
    NameTooLong { len: usize },
    #[error("the description of export '{name}' is {len} bytes long; NBD allows at most 4096")]
    DescriptionTooLong { name: String, len: usize },
    #[error("connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}
