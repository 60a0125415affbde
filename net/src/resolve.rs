//! Turning `host:port` into socket addresses when a node dials or binds: IP literals as
//! they are (IPv6 in brackets, `[::1]:7101`), names through a hosts-style override when one
//! is set, else the system resolver. Every dial resolves again, so a name that moves (a
//! restarted pod) is followed on the next reconnect.
//!
//! The override is the process's environment, set once by the binary
//! (`FIRETOWER_HOSTS_FILE`, in `/etc/hosts` format): it lets a test, or a host without
//! DNS for the cluster's names, map them without root.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

/// Name → addresses, in the file's order.
pub type Hosts = HashMap<String, Vec<IpAddr>>;

static HOSTS: OnceLock<Hosts> = OnceLock::new();

/// Sets the process's override; only the first call counts (false after that).
pub fn set_hosts(hosts: Hosts) -> bool {
    HOSTS.set(hosts).is_ok()
}

/// Reads an `/etc/hosts`-style text: `IP NAME [NAME…]` per line, `#` comments. Lines that
/// are not that are an error naming the line (a typo should not fall through to DNS).
pub fn parse_hosts(text: &str) -> Result<Hosts, String> {
    let mut hosts = Hosts::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let ip: IpAddr = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("line {}: {line:?} does not start with an IP", i + 1))?;
        let mut named = false;
        for name in words {
            hosts.entry(name.to_ascii_lowercase()).or_default().push(ip);
            named = true;
        }
        if !named {
            return Err(format!("line {}: {line:?} names no host", i + 1));
        }
    }
    Ok(hosts)
}

/// Splits `host:port` (`[v6]:port` for IPv6).
fn split(addr: &str) -> io::Result<(&str, u16)> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr:?} is not HOST:PORT"),
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

/// Checks that `addr` is `host:port` (a name, an IPv4 address or a bracketed IPv6 one, and
/// a port), without resolving it; the error says what is wrong.
pub fn check(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, _) = split(addr).map_err(|e| e.to_string())?;
    let name_ok = host.split('.').all(|label| {
        !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if !name_ok {
        return Err(format!(
            "{addr:?}: {host:?} is neither an IP address nor a host name"
        ));
    }
    Ok(())
}

/// The addresses `addr` stands for now.
pub async fn lookup(addr: &str) -> io::Result<Vec<SocketAddr>> {
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        return Ok(vec![socket]);
    }
    let (host, port) = split(addr)?;
    if let Some(ips) = HOSTS
        .get()
        .and_then(|hosts| hosts.get(&host.to_ascii_lowercase()))
    {
        return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if found.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host}: no address"),
        ));
    }
    Ok(found)
}

/// Connects to the first of `addr`'s addresses that answers.
pub async fn connect_tcp(addr: &str) -> io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for socket in lookup(addr).await? {
        match tokio::net::TcpStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, addr.to_string())))
}

/// The accept queue every listener asks for (the kernel caps it at `net.core.somaxconn`).
/// `TcpListener::bind` asks for 128: 10,000 clients reconnecting at once after an edge
/// restart overflowed it, and the kernel dropped their handshakes, each retried a second
/// later (measured: 10,000 connects took 1.1–1.3 s instead of 0.4 s).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` (a name binds its first address) with an accept queue of
/// [`LISTEN_BACKLOG`], the address reusable at once after a restart.
pub async fn bind_tcp(addr: &str) -> io::Result<tokio::net::TcpListener> {
    let socket_addr = first(addr).await?;
    let socket = if socket_addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(socket_addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The first address `addr` stands for.
pub async fn first(addr: &str) -> io::Result<SocketAddr> {
    lookup(addr)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_text_maps_every_name_of_a_line() {
        let hosts = parse_hosts("# cluster\n127.0.0.2 meta-1 Meta-One\n::1 six # v6\n\n").unwrap();
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(hosts["meta-1"], vec![v4]);
        assert_eq!(hosts["meta-one"], vec![v4]);
        assert_eq!(hosts["six"], vec!["::1".parse::<IpAddr>().unwrap()]);
        assert!(parse_hosts("meta-1 127.0.0.2\n")
            .unwrap_err()
            .starts_with("line 1"));
        assert!(parse_hosts("127.0.0.2\n")
            .unwrap_err()
            .contains("names no host"));
    }

    #[tokio::test]
    async fn literals_resolve_to_themselves_and_bad_addresses_are_refused() {
        assert_eq!(
            lookup("[::1]:7101").await.unwrap(),
            vec!["[::1]:7101".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            lookup("127.0.0.3:9").await.unwrap(),
            vec!["127.0.0.3:9".parse::<SocketAddr>().unwrap()]
        );
        for good in ["meta-1:7101", "a.b.example:1", "[::1]:80", "10.0.0.1:9"] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for bad in [
            "nohost",
            ":80",
            "host:port",
            "host:70000",
            "a..b:1",
            "a b:1",
            "[::1:80",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        for bad in ["nohost", ":80", "host:port", "host:70000"] {
            assert_eq!(
                lookup(bad).await.unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad}"
            );
        }
        assert!(lookup("localhost:80")
            .await
            .unwrap()
            .iter()
            .all(|a| a.ip().is_loopback()));
    }
}
