//! Serves one file over NBD until killed: `serve_file FILE PORT [ADDR]`. The export is named
//! after the file's base name and is also the default export. Used by bench/nbd.sh.

use std::sync::Arc;

use anyhow::{bail, Context};
use tessera_block::{FileDevice, OpenOptions};
use tessera_export::{Export, ExportSet, Server, ServerConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (file, port, addr) = match args.as_slice() {
        [file, port] => (file, port, "127.0.0.1"),
        [file, port, addr] => (file, port, addr.as_str()),
        _ => bail!("usage: serve_file FILE PORT [ADDR]"),
    };
    let port: u16 = port.parse().context("PORT must be a number")?;
    let device = FileDevice::open(file, OpenOptions::default())?;
    let name = std::path::Path::new(file)
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let exports = ExportSet::new();
    exports.insert(name.clone(), Export::new(Arc::new(device)))?;
    let mut config = ServerConfig::default();
    if let Ok(w) = std::env::var("TESSERA_NBD_WORKERS") {
        config.workers_per_connection = w.parse().context("TESSERA_NBD_WORKERS")?;
    }
    let server = Server::bind_tcp_with(exports, (addr, port), config)?;
    eprintln!("serving {file} as '{name}' on {}", server.local_addr());
    server.wait();
    Ok(())
}
