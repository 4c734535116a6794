//! The targets pools may connect to (`--allowed-db-hosts`): host names (exact, or
//! `*.suffix`), IP addresses, CIDR blocks, each with an optional `:port`, and
//! Unix-socket directories. Checked before any connection is attempted.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::conninfo::{ConnInfo, Host, Target};

/// One allowed target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// A host name, lowercase; `wildcard`: any name ending in `.name`.
    Name {
        name: String,
        wildcard: bool,
        port: Option<u16>,
    },
    /// An address block (a single address is a /32 or /128).
    Block {
        network: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
    /// A Unix-socket directory.
    Socket(PathBuf),
}

/// A parsed allowlist. Empty (unset): every TCP target is allowed and no socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetAllowlist {
    rules: Vec<Rule>,
    set: bool,
}

/// An allowlist entry that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allowed host `{entry}`: {reason}")]
pub struct AllowlistError {
    entry: String,
    reason: &'static str,
}

impl TargetAllowlist {
    /// The list when `--allowed-db-hosts` is not given: every TCP host allowed,
    /// Unix sockets refused.
    pub fn unset() -> Self {
        Self::default()
    }

    /// Parses entries: `db.example`, `*.example.com`, `10.0.0.5`, `10.0.0.0/8`,
    /// `db.example:5432`, `[fd00::/8]:5432`, `/var/run/postgresql`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, AllowlistError> {
        let mut rules = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            rules.push(parse_rule(entry).map_err(|reason| AllowlistError {
                entry: entry.chars().take(200).collect(),
                reason,
            })?);
        }
        Ok(Self { rules, set: true })
    }

    /// Whether a list was given (else every TCP host is allowed).
    pub fn is_set(&self) -> bool {
        self.set
    }

    /// Checks every target of `info`; the first refused one is returned.
    pub fn check(&self, info: &ConnInfo) -> Result<(), String> {
        let targets = info.targets().map_err(|e| e.to_string())?;
        for target in &targets {
            if !self.allows(target) {
                return Err(target.describe());
            }
        }
        Ok(())
    }

    /// Whether one target is allowed.
    pub fn allows(&self, target: &Target) -> bool {
        if let Some(ip) = target.hostaddr {
            return self.allows_tcp(&ip.to_string(), Some(ip), target.port);
        }
        match &target.host {
            Some(Host::Unix(dir)) => self.rules.iter().any(|rule| match rule {
                Rule::Socket(allowed) => normalize(dir) == *allowed,
                _ => false,
            }),
            Some(Host::Tcp(name)) => self.allows_tcp(name, name.parse().ok(), target.port),
            // No host: nothing to connect to (the connection fails by itself).
            None => true,
        }
    }

    fn allows_tcp(&self, name: &str, ip: Option<IpAddr>, port: u16) -> bool {
        if !self.set {
            return true;
        }
        let port_ok = |allowed: &Option<u16>| allowed.is_none_or(|p| p == port);
        self.rules.iter().any(|rule| match rule {
            Rule::Name {
                name: allowed,
                wildcard,
                port: p,
            } => {
                let matches = if *wildcard {
                    name.len() > allowed.len() + 1
                        && name.ends_with(allowed.as_str())
                        && name.as_bytes()[name.len() - allowed.len() - 1] == b'.'
                } else {
                    name.eq_ignore_ascii_case(allowed)
                };
                ip.is_none() && matches && port_ok(p)
            }
            Rule::Block {
                network,
                prefix,
                port: p,
            } => ip.is_some_and(|ip| in_block(ip, *network, *prefix)) && port_ok(p),
            Rule::Socket(_) => false,
        })
    }
}

impl fmt::Display for TargetAllowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.set {
            return f.write_str("every TCP host (no Unix sockets)");
        }
        let shown: Vec<String> = self
            .rules
            .iter()
            .map(|rule| match rule {
                Rule::Name {
                    name,
                    wildcard,
                    port,
                } => format!(
                    "{}{name}{}",
                    if *wildcard { "*." } else { "" },
                    port.map(|p| format!(":{p}")).unwrap_or_default()
                ),
                Rule::Block {
                    network,
                    prefix,
                    port,
                } => format!(
                    "{network}/{prefix}{}",
                    port.map(|p| format!(":{p}")).unwrap_or_default()
                ),
                Rule::Socket(dir) => dir.display().to_string(),
            })
            .collect();
        f.write_str(&shown.join(", "))
    }
}

fn normalize(dir: &std::path::Path) -> PathBuf {
    let text = dir.to_string_lossy();
    PathBuf::from(text.trim_end_matches('/'))
}

fn parse_rule(entry: &str) -> Result<Rule, &'static str> {
    if entry.starts_with('/') {
        if entry.contains("..") {
            return Err("a socket directory must not hold `..`");
        }
        return Ok(Rule::Socket(normalize(std::path::Path::new(entry))));
    }
    // Split off a port: `[v6 or v6/len]:port`, `host:port`, `v4/len:port`.
    let (host, port) = if let Some(inner) = entry.strip_prefix('[') {
        let close = inner.find(']').ok_or("an IPv6 entry has no closing ']'")?;
        let port = match &inner[close + 1..] {
            "" => None,
            rest => Some(rest.strip_prefix(':').ok_or("text after ']'")?),
        };
        (&inner[..close], port)
    } else if entry.matches(':').count() == 1 {
        let (host, port) = entry.split_once(':').ok_or("unreachable")?;
        (host, Some(port))
    } else {
        (entry, None)
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| "the port is not a number")?),
        None => None,
    };
    if let Some((network, prefix)) = host.split_once('/') {
        let network: IpAddr = network.parse().map_err(|_| "not an IP block")?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| "the prefix length is not a number")?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err("the prefix length is too long");
        }
        return Ok(Rule::Block {
            network,
            prefix,
            port,
        });
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Rule::Block {
            network: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
            port,
        });
    }
    let (name, wildcard) = match host.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (host, false),
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !valid {
        return Err("not a host name, IP address, CIDR block or socket directory");
    }
    Ok(Rule::Name {
        name: name.to_ascii_lowercase(),
        wildcard,
        port,
    })
}

fn in_block(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    let (ip, network, bits) = match (ip, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            (u128::from(u32::from(a)), u128::from(u32::from(n)), 32u32)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        // An IPv4-mapped IPv6 address against an IPv4 block.
        (IpAddr::V6(a), IpAddr::V4(n)) => match a.to_ipv4_mapped() {
            Some(a) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
            None => return false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => return false,
    };
    let prefix = u32::from(prefix);
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (ip >> shift) == (network >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &TargetAllowlist, url: &str) -> bool {
        list.check(&ConnInfo::parse(url).expect("parses")).is_ok()
    }

    #[test]
    fn names_addresses_blocks_ports_and_sockets() {
        let list = TargetAllowlist::parse(&[
            "db.example",
            "*.rds.example.com",
            "10.0.0.0/8",
            "192.168.1.7:6432",
            "[fd00::/8]:5432",
            "/run/pg/",
        ])
        .expect("parses");
        assert!(allowed(&list, "postgres://u@db.example/x"));
        assert!(allowed(&list, "postgres://u@DB.example:7000/x"));
        assert!(allowed(&list, "postgres://u@a.rds.example.com/x"));
        assert!(!allowed(&list, "postgres://u@rds.example.com/x"));
        assert!(!allowed(&list, "postgres://u@evilrds.example.com/x"));
        assert!(allowed(&list, "postgres://u@10.2.3.4:1/x"));
        assert!(!allowed(&list, "postgres://u@11.2.3.4/x"));
        assert!(allowed(&list, "postgres://u@192.168.1.7:6432/x"));
        assert!(!allowed(&list, "postgres://u@192.168.1.7/x"));
        assert!(allowed(&list, "postgres://u@[fd00::1]/x"));
        assert!(!allowed(&list, "postgres://u@[fd00::1]:5433/x"));
        assert!(allowed(&list, "host=/run/pg dbname=x"));
        assert!(!allowed(&list, "host=/tmp dbname=x"));
        // hostaddr is where the connection goes: it is what is checked.
        assert!(!allowed(
            &list,
            "host=db.example hostaddr=127.0.0.1 dbname=x"
        ));
        // Every host of a multi-host target.
        assert!(!allowed(&list, "postgres://u@db.example,evil.example/x"));
        // A name never matches an address block (no resolution).
        assert!(!allowed(&list, "postgres://u@localhost/x"));
    }

    #[test]
    fn unset_allows_tcp_but_no_socket() {
        let list = TargetAllowlist::unset();
        assert!(allowed(&list, "postgres://u@anywhere.example/x"));
        assert!(!allowed(&list, "host=/var/run/postgresql dbname=x"));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in ["10.0.0.0/40", "host:port", "bad host", "[::1", "/a/../b"] {
            assert!(TargetAllowlist::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
