//! NBD URIs as the NBD URI specification writes them (`doc/uri.md` in NetworkBlockDevice/nbd):
//! `nbd://HOST[:PORT]/EXPORT` over TCP and `nbd+unix:///EXPORT?socket=PATH` over a Unix
//! socket. tessera also reads two query parameters of its own: `timeout=SECONDS` (how long
//! a request may wait for the server, reconnecting included) and `connections=N` (most
//! connections to open when the server allows several).

use std::fmt;
use std::time::Duration;

/// The default NBD port.
pub const DEFAULT_PORT: u16 = 10809;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp { host: String, port: u16 },
    Unix { socket: String },
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::Unix { socket } => f.write_str(socket),
        }
    }
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub address: Address,
    pub export: String,
    pub timeout: Option<Duration>,
    pub connections: Option<usize>,
}

/// True if `s` names an NBD export rather than a path.
pub fn is_nbd_uri(s: &str) -> bool {
    let lower = s.get(..6).map(str::to_ascii_lowercase);
    lower.as_deref() == Some("nbd://")
        || s.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("nbd+"))
        || s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("nbds:"))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("'{s}' has a malformed %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' does not decode to UTF-8"))
}

impl NbdUri {
    /// Parses `nbd://` and `nbd+unix://` URIs; TLS (`nbds`) and vsock are refused by name.
    pub fn parse(uri: &str) -> Result<NbdUri, String> {
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| format!("'{uri}' is not a URI (nbd://HOST:PORT/EXPORT)"))?;
        let scheme = scheme.to_ascii_lowercase();
        let unix = match scheme.as_str() {
            "nbd" | "nbd+tcp" => false,
            "nbd+unix" => true,
            "nbds" | "nbds+tcp" | "nbds+unix" | "nbds+vsock" => {
                return Err(format!("'{uri}': NBD over TLS is not supported by tessera"))
            }
            "nbd+vsock" => return Err(format!("'{uri}': NBD over vsock is not supported")),
            _ => {
                return Err(format!(
                    "'{uri}': unknown scheme '{scheme}', not an NBD URI"
                ))
            }
        };
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = percent_decode(path)?;

        let mut socket = None;
        let mut timeout = None;
        let mut connections = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            match key {
                "socket" => socket = Some(value),
                "timeout" => {
                    let secs: f64 = value
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e6)
                        .ok_or_else(|| {
                            format!("'{uri}': timeout '{value}' is not a number of seconds")
                        })?;
                    timeout = Some(Duration::from_secs_f64(secs));
                }
                "connections" => {
                    let n: usize = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| format!("'{uri}': connections '{value}' is not 1 to 64"))?;
                    connections = Some(n);
                }
                // The URI specification leaves other parameters to implementations (TLS
                // ones among them); they change nothing here.
                _ => {}
            }
        }

        let address = if unix {
            if !authority.is_empty() {
                return Err(format!(
                    "'{uri}': nbd+unix:// takes no host (nbd+unix:///EXPORT?socket=PATH)"
                ));
            }
            let socket = socket
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("'{uri}': nbd+unix:// needs ?socket=PATH"))?;
            Address::Unix { socket }
        } else {
            let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("'{uri}': unclosed [ in the host"))?;
                (host.to_string(), after.strip_prefix(':'))
            } else {
                match authority.split_once(':') {
                    Some((h, p)) => (h.to_string(), Some(p)),
                    None => (authority.to_string(), None),
                }
            };
            let host = if host.is_empty() {
                "localhost".to_string()
            } else {
                host
            };
            let port = match port {
                None | Some("") => DEFAULT_PORT,
                Some(p) => p
                    .parse()
                    .map_err(|_| format!("'{uri}': port '{p}' is not a number from 1 to 65535"))?,
            };
            if port == 0 {
                return Err(format!("'{uri}': port 0 is not a port"));
            }
            Address::Tcp { host, port }
        };
        Ok(NbdUri {
            address,
            export,
            timeout,
            connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_unix_uris() {
        let u = NbdUri::parse("nbd://127.0.0.1:10810/disk%201").unwrap();
        assert_eq!(
            u.address,
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 10810
            }
        );
        assert_eq!(u.export, "disk 1");
        let u = NbdUri::parse("nbd://[::1]/").unwrap();
        assert_eq!(u.address.to_string(), "[::1]:10809");
        assert_eq!(u.export, "");
        let u = NbdUri::parse("nbd+unix:///vg/lv?socket=/run/x.sock&timeout=2.5&connections=3")
            .unwrap();
        assert_eq!(
            u.address,
            Address::Unix {
                socket: "/run/x.sock".into()
            }
        );
        assert_eq!(u.export, "vg/lv");
        assert_eq!(u.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(u.connections, Some(3));
    }

    #[test]
    fn bad_uris_say_why() {
        for (uri, says) in [
            ("nbds://h/e", "TLS"),
            ("nbd+unix:///e", "socket="),
            ("nbd://h:99999/e", "port"),
            ("nbd://h/e?timeout=x", "timeout"),
            ("nbd://h/%zz", "%-escape"),
            ("http://h/e", "scheme"),
        ] {
            let e = NbdUri::parse(uri).unwrap_err();
            assert!(e.contains(says), "{uri}: {e}");
        }
        assert!(is_nbd_uri("nbd://x/y") && is_nbd_uri("NBD+unix:///y?socket=s"));
        assert!(!is_nbd_uri("/dev/nbd0") && !is_nbd_uri("nbd.img"));
    }
}
