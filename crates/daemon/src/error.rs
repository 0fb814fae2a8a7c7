//! What the daemon and its clients fail at. Each message is the sentence a user sees: the
//! daemon sends [`DaemonError::chain`] of its errors in a reply, and a client's refused
//! request comes back as [`DaemonError::Refused`] with that sentence.

use std::path::PathBuf;

use tessera_block::BlockError;
use tessera_engine::EngineError;
use tessera_export::ExportError;
use tessera_mapper::{MapperError, TableError};
use thiserror::Error;

use crate::control::{version_string, MAX_REQUEST_BYTES, VERSION};

/// What the daemon, its control socket or a client of it fails at.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Mapper(#[from] MapperError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Export(#[from] ExportError),
    /// I/O on the control socket or its directory; `what` says which and where.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Another daemon answers on the control socket already.
    #[error("another tessera daemon is listening on {}; stop it first or give --control", path.display())]
    SocketInUse { path: PathBuf },
    /// A request line that is not JSON.
    #[error("request is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    /// A request without its protocol version.
    #[error("request has no \"version\": expected e.g. \"version\": [1, 0, 0]")]
    NoVersion,
    /// A request whose version is not three numbers (the offending JSON value).
    #[error("request version {0} is not three numbers such as [1, 0, 0]")]
    BadVersion(serde_json::Value),
    /// A request of a protocol version this daemon does not serve: another major one, or a
    /// newer minor one.
    #[error(
        "request speaks control protocol {}, this tessera daemon speaks {} \
         (it serves major version {} up to minor {}): use a tessera of the daemon's version",
        version_string(*request), version_string(*daemon), daemon[0], daemon[1]
    )]
    VersionRefused { request: [u32; 3], daemon: [u32; 3] },
    /// A request of the right version that is not one this daemon knows, or lacks fields.
    #[error("bad request: {0}")]
    BadRequest(serde_json::Error),
    /// A request line past the limit, or cut off before its newline.
    #[error("request longer than {MAX_REQUEST_BYTES} bytes or not ended by a newline")]
    RequestTooLong,
    /// A reply that cannot be written as JSON.
    #[error("cannot encode the reply: {0}")]
    Encode(serde_json::Error),
    /// The daemon hung up before it answered.
    #[error("the daemon at {} closed the connection", path.display())]
    Closed { path: PathBuf },
    /// The daemon's answer is not a reply.
    #[error("the daemon at {} sent a bad reply: {error}", path.display())]
    BadReply {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// The daemon refused: its own sentence, as it sent it (or, on the daemon's side, the
    /// sentence it sends).
    #[error("{0}")]
    Refused(String),
    /// The daemon does not serve the VG of an LV change (reply code `not-served`): the
    /// client makes the change itself.
    #[error("{0}")]
    NotServed(String),
}

impl DaemonError {
    /// The version refusal for a request of version `request`.
    pub fn version_refused(request: [u32; 3]) -> DaemonError {
        DaemonError::VersionRefused {
            request,
            daemon: VERSION,
        }
    }

    /// The message with every cause after it, `outer: cause: cause`, as the daemon sends it
    /// and as `tessera` prints errors.
    pub fn chain(&self) -> String {
        chain(self)
    }
}

/// `error` and each of its sources, joined by ": ".
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

pub type Result<T, E = DaemonError> = std::result::Result<T, E>;

/// A sentence of the daemon's own as an error.
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err($crate::error::DaemonError::Refused(format!($($arg)*)))
    };
}
pub(crate) use refuse;
