//! PostgreSQL connection URIs with libpq's meaning (PostgreSQL 15 documentation, §34.1.1.2
//! "Connection URIs"): several hosts and ports, Unix sockets, `hostaddr`, the URI's parts as
//! parameters, strict percent-decoding; and the URL the driver is given, written so that
//! tokio-postgres reads the same.

use std::fmt::Write;
use std::net::IpAddr;

use super::percent::{decode, encode};
use super::ConfigError;

/// Where PostgreSQL's Unix socket is when a URI names no host. libpq's default is a build-time
/// setting: Debian's and most distributions' packages put it in `/var/run/postgresql`, upstream
/// builds in `/tmp`.
pub(crate) fn default_socket_directory() -> &'static str {
    if std::path::Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql"
    } else {
        "/tmp"
    }
}

/// libpq's `target_session_attrs`: what a server must be for a connection to be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionAttrs {
    /// Any server (the default).
    #[default]
    Any,
    /// One that accepts writes (`transaction_read_only` is off): the primary.
    ReadWrite,
    /// One that does not accept writes (a standby, or a server made read-only).
    ReadOnly,
    /// One that is not in recovery: the primary.
    Primary,
    /// One that is in recovery: a standby.
    Standby,
    /// A standby if any host is one, else any server.
    PreferStandby,
}

impl SessionAttrs {
    fn parse(value: &str) -> Result<Self, ConfigError> {
        Ok(match value {
            "any" => SessionAttrs::Any,
            "read-write" => SessionAttrs::ReadWrite,
            "read-only" => SessionAttrs::ReadOnly,
            "primary" => SessionAttrs::Primary,
            "standby" => SessionAttrs::Standby,
            "prefer-standby" => SessionAttrs::PreferStandby,
            _ => {
                return Err(ConfigError::new(
                    "target_session_attrs",
                    format!(
                        "must be any, read-write, read-only, primary, standby or prefer-standby (got {value:?})"
                    ),
                ))
            }
        })
    }

    /// The parameter's value, as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

/// One host of a URI, resolved: a TCP host name (or address) or a Unix socket directory, its port,
/// and the address to connect to instead of resolving the name (`hostaddr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Host {
    /// A host name, an IP address, or a socket directory (starts with `/`).
    pub(crate) name: String,
    /// `None`: the default, 5432.
    pub(crate) port: Option<u16>,
    pub(crate) hostaddr: Option<IpAddr>,
}

impl Host {
    /// The port, 5432 when the URI gave none.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn port(&self) -> u16 {
        self.port.unwrap_or(5432)
    }
}

/// A PostgreSQL URI as libpq reads it: its hosts, credentials, database, how to choose among the
/// hosts, and the other parameters for the driver (decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    scheme: String,
    pub(crate) hosts: Vec<Host>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    pub(crate) session_attrs: SessionAttrs,
    pub(crate) load_balance: bool,
    /// The other parameters, decoded, in the order given.
    params: Vec<(String, String)>,
}

/// The URI's own parts, before the parameters that may replace them.
struct Parts {
    hosts: Option<String>,
    ports: Option<String>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
}

/// Builds a [`Target`] from a URI's base (`scheme://[userspec@][hostspec][/dbname]`) and its
/// parameters (decoded, without the pool's own and the TLS ones).
pub(crate) struct TargetBuilder {
    scheme: String,
    parts: Parts,
    hostaddrs: Option<String>,
    session_attrs: SessionAttrs,
    load_balance: bool,
    params: Vec<(String, String)>,
}

impl TargetBuilder {
    /// Reads the URI's base.
    pub(crate) fn from_base(base: &str) -> Result<Self, ConfigError> {
        let (scheme, rest) = base
            .split_once("://")
            .ok_or_else(|| ConfigError::new("url", "is not a database URL"))?;
        // userspec ends at the last `@` before the path: libpq looks for `@` up to the first `/`.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (userspec, hostspec) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userspec {
            None => (None, None),
            Some(userspec) => {
                let (user, password) = match userspec.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (userspec, None),
                };
                let user = decode("user", user)?;
                let password = password.map(|p| decode("password", p)).transpose()?;
                // An empty user name is no user name (libpq): the driver's default applies.
                ((!user.is_empty()).then_some(user), password)
            }
        };
        let (hosts, ports) = split_hostspec(hostspec)?;
        let dbname = match path.strip_prefix('/') {
            Some(dbname) if !dbname.is_empty() => Some(decode("dbname", dbname)?),
            _ => None,
        };
        Ok(TargetBuilder {
            scheme: scheme.to_owned(),
            parts: Parts {
                hosts,
                ports,
                user,
                password,
                dbname,
            },
            hostaddrs: None,
            session_attrs: SessionAttrs::Any,
            load_balance: false,
            params: Vec::new(),
        })
    }

    /// Takes a parameter (decoded). The URI's parts given as parameters replace the URI's own,
    /// as libpq's do.
    pub(crate) fn param(&mut self, key: &str, value: String) -> Result<(), ConfigError> {
        match key {
            "host" => self.parts.hosts = Some(value),
            "hostaddr" => self.hostaddrs = Some(value),
            "port" => self.parts.ports = Some(value),
            "user" => self.parts.user = (!value.is_empty()).then_some(value),
            "password" => self.parts.password = Some(value),
            "dbname" => self.parts.dbname = (!value.is_empty()).then_some(value),
            "target_session_attrs" => self.session_attrs = SessionAttrs::parse(&value)?,
            "load_balance_hosts" => {
                self.load_balance = match value.as_str() {
                    "disable" => false,
                    "random" => true,
                    _ => {
                        return Err(ConfigError::new(
                            "load_balance_hosts",
                            format!("must be disable or random (got {value:?})"),
                        ))
                    }
                }
            }
            // libpq's alias for JDBC users.
            "ssl" if value == "true" => self.params.push(("sslmode".into(), "require".into())),
            _ => self.params.push((key.to_owned(), value)),
        }
        Ok(())
    }

    /// The hosts, matched with their ports and addresses as libpq matches them.
    pub(crate) fn build(self) -> Result<Target, ConfigError> {
        let parts = self.parts;
        let names: Vec<String> = match &parts.hosts {
            Some(hosts) => hosts.split(',').map(str::to_owned).collect(),
            None => Vec::new(),
        };
        let hostaddrs: Vec<Option<IpAddr>> = match &self.hostaddrs {
            Some(list) => list
                .split(',')
                .map(|addr| {
                    if addr.is_empty() {
                        return Ok(None);
                    }
                    addr.parse().map(Some).map_err(|_| {
                        ConfigError::new(
                            "hostaddr",
                            format!("{addr:?} is not an IPv4 or IPv6 address"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let count = if names.is_empty() {
            hostaddrs.len().max(1)
        } else {
            names.len()
        };
        if !hostaddrs.is_empty() && hostaddrs.len() != count {
            return Err(ConfigError::new(
                "hostaddr",
                format!(
                    "gives {} addresses for {count} hosts: give one per host",
                    hostaddrs.len()
                ),
            ));
        }
        let ports: Vec<Option<u16>> = match &parts.ports {
            Some(list) => list.split(',').map(port).collect::<Result<_, _>>()?,
            None => vec![None],
        };
        if ports.len() != 1 && ports.len() != count {
            return Err(ConfigError::new(
                "port",
                format!(
                    "gives {} ports for {count} hosts: give one for all, or one per host",
                    ports.len()
                ),
            ));
        }
        let mut hosts = Vec::with_capacity(count);
        for i in 0..count {
            let hostaddr = hostaddrs.get(i).copied().flatten();
            let name = names.get(i).cloned().unwrap_or_default();
            let name = match (name.is_empty(), hostaddr) {
                // libpq: an empty host is the default socket directory, unless an address is
                // given; then that address is the host.
                (true, Some(addr)) => addr.to_string(),
                (true, None) => default_socket_directory().to_owned(),
                (false, _) => name,
            };
            if name.contains('\0') {
                return Err(ConfigError::new("host", "contains a NUL character"));
            }
            if hostaddr.is_some() && name.starts_with('/') {
                return Err(ConfigError::new(
                    "hostaddr",
                    "cannot go with a Unix socket directory as the host",
                ));
            }
            let port = if ports.len() == 1 { ports[0] } else { ports[i] };
            hosts.push(Host {
                name,
                port,
                hostaddr,
            });
        }
        Ok(Target {
            scheme: self.scheme,
            hosts,
            user: parts.user,
            password: parts.password,
            dbname: parts.dbname,
            session_attrs: self.session_attrs,
            load_balance: self.load_balance,
            params: self.params,
        })
    }
}

impl Target {
    /// Adds a parameter for the driver (the TLS mode the pool decided).
    pub(crate) fn push_param(&mut self, key: &str, value: &str) {
        self.params.push((key.to_owned(), value.to_owned()));
    }

    /// The URL the driver is given for all the hosts (what `driver_url` shows), or for host
    /// `only`: each part percent-encoded, so tokio-postgres reads exactly these hosts, ports,
    /// credentials and parameters. Host selection (`target_session_attrs`,
    /// `load_balance_hosts`) is the pool's, not in it.
    pub(crate) fn url(&self, only: Option<usize>) -> String {
        let mut url = format!("{}://", self.scheme);
        let password_param = match (&self.user, &self.password) {
            (Some(user), password) => {
                url.push_str(&encode(user));
                if let Some(password) = password {
                    url.push(':');
                    url.push_str(&encode(password));
                }
                url.push('@');
                false
            }
            (None, password) => password.is_some(),
        };
        let hosts: Vec<&Host> = match only {
            Some(i) => self.hosts.get(i).into_iter().collect(),
            None => self.hosts.iter().collect(),
        };
        let mut first = true;
        for host in &hosts {
            if !first {
                url.push(',');
            }
            first = false;
            match host.name.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => {
                    let _ = write!(url, "[{v6}]");
                }
                _ => url.push_str(&encode(&host.name)),
            }
            if let Some(port) = host.port {
                let _ = write!(url, ":{port}");
            }
        }
        if let Some(dbname) = &self.dbname {
            url.push('/');
            url.push_str(&encode(dbname));
        }
        let mut query: Vec<(String, String)> = Vec::new();
        if hosts.iter().any(|host| host.hostaddr.is_some()) {
            let addrs: Vec<String> = hosts
                .iter()
                .map(|host| host.hostaddr.map(|a| a.to_string()).unwrap_or_default())
                .collect();
            query.push(("hostaddr".into(), addrs.join(",")));
        }
        if password_param {
            if let Some(password) = &self.password {
                query.push(("password".into(), password.clone()));
            }
        }
        query.extend(self.params.iter().cloned());
        for (i, (key, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&encode(key));
            url.push('=');
            // A list of addresses keeps its commas: tokio-postgres splits them after decoding.
            url.push_str(&encode(value));
        }
        url
    }
}

/// A URI's hostspec: `host[:port][,...]`, each host percent-decoded (IPv6 in brackets). `None`
/// where the URI gives no host or no port at all.
fn split_hostspec(hostspec: &str) -> Result<(Option<String>, Option<String>), ConfigError> {
    if hostspec.is_empty() {
        return Ok((None, None));
    }
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for entry in hostspec.split(',') {
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(|| {
                ConfigError::new("host", "has a `[` without its `]` (an IPv6 address)")
            })?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    ConfigError::new("host", "has text after an IPv6 address's `]`")
                })?),
            };
            (inside.to_owned(), port)
        } else {
            match entry.split_once(':') {
                Some((host, port)) => (decode("host", host)?, Some(port)),
                None => (decode("host", entry)?, None),
            }
        };
        hosts.push(host);
        ports.push(
            port.map(|p| decode("port", p))
                .transpose()?
                .unwrap_or_default(),
        );
    }
    let hosts = hosts.join(",");
    let ports = if ports.iter().all(String::is_empty) {
        None
    } else {
        Some(ports.join(","))
    };
    Ok((Some(hosts), ports))
}

/// One port of a list: empty is the default; otherwise 1 to 65535.
fn port(text: &str) -> Result<Option<u16>, ConfigError> {
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(Some(port)),
        _ => Err(ConfigError::new(
            "port",
            format!("{text:?} is not a port number (1 to 65535)"),
        )),
    }
}
