//! A database target parsed once: a postgres:// URL or a libpq key=value string
//! becomes a [`ConnInfo`] holding every option but the password, and the password
//! in its own [`Secret`] type, whose `Debug` and `Display` print `***`. Every URL
//! shown anywhere is rendered from the structure, never cleaned up by scanning text;
//! the password reaches tokio-postgres only as bytes, never through its parser, so
//! no parse error can quote it.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::path::PathBuf;

use tokio_postgres::config::SslMode as DriverSslMode;

/// What a redacted password is replaced with.
pub const REDACTED: &str = "***";

/// The longest connection string accepted, in bytes.
pub const MAX_CONNINFO_LEN: usize = 4096;

/// Bytes that are never shown: a password. `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// Wraps a password.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into().into_boxed_slice())
    }

    /// The password itself: for the database driver and the encryption at rest only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Whether the password is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Why a connection string was refused. The reason names options, never values
/// (a mistyped URL may put part of a password where a value is expected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConnInfoError(String);

impl ConnInfoError {
    fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// An error with this reason (which must not quote a value).
    pub(crate) fn from_reason(reason: impl Into<String>) -> Self {
        Self::new(reason)
    }
}

/// How the string was written; a rendering keeps the form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Url(&'static str),
    KeyValue,
}

/// A database target: every libpq option by name, the password apart.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    form: Form,
    /// Options in the order given (a repeated one keeps its first place and its
    /// last value), password excluded.
    params: Vec<(String, String)>,
    password: Option<Secret>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnInfo").field(&self.to_string()).finish()
    }
}

/// The host part of one target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name or an IP address literal, reached over TCP.
    Tcp(String),
    /// A Unix-domain socket directory.
    Unix(PathBuf),
}

/// One place a connection may go (a multi-host string has several).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The host as named.
    pub host: Option<Host>,
    /// The address connected to instead of resolving `host` (libpq's hostaddr).
    pub hostaddr: Option<IpAddr>,
    /// The port (5432 unless given).
    pub port: u16,
}

impl Target {
    /// The target as shown in messages: `host:port` or the socket directory.
    pub fn describe(&self) -> String {
        match (&self.hostaddr, &self.host) {
            (Some(IpAddr::V6(ip)), _) => format!("[{ip}]:{}", self.port),
            (Some(ip), _) => format!("{ip}:{}", self.port),
            (None, Some(Host::Unix(dir))) => format!("unix socket in {}", dir.display()),
            (None, Some(Host::Tcp(name))) if name.contains(':') => {
                format!("[{name}]:{}", self.port)
            }
            (None, Some(Host::Tcp(name))) => format!("{name}:{}", self.port),
            (None, None) => format!("(no host):{}", self.port),
        }
    }
}

/// Which PostgreSQL server(s) a target reaches: its places in order. Two targets
/// with equal keys share a connection budget. Shown as `host:port[,host:port…]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ServerKey(Vec<Target>);

impl ServerKey {
    /// The key of `targets`.
    pub fn of(targets: Vec<Target>) -> Self {
        Self(targets)
    }
}

impl fmt::Display for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, target) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&target.describe())?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ConnInfo {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, ConnInfoError> {
        Self::parse(s)
    }
}

impl ConnInfo {
    /// Parses a `postgres://` / `postgresql://` URL or a libpq key=value string.
    pub fn parse(text: &str) -> Result<Self, ConnInfoError> {
        if text.len() > MAX_CONNINFO_LEN {
            return Err(ConnInfoError::new(format!(
                "is longer than {MAX_CONNINFO_LEN} bytes"
            )));
        }
        if text.trim().is_empty() {
            return Err(ConnInfoError::new("must not be empty"));
        }
        let info = match ["postgresql://", "postgres://"]
            .into_iter()
            .find_map(|scheme| text.strip_prefix(scheme).map(|rest| (scheme, rest)))
        {
            Some((scheme, rest)) => parse_url(&scheme[..scheme.len() - 3], rest)?,
            None => parse_key_value(text)?,
        };
        info.check()?;
        Ok(info)
    }

    fn empty(form: Form) -> Self {
        Self {
            form,
            params: Vec::new(),
            password: None,
        }
    }

    fn set(&mut self, key: &str, value: String) {
        if key == "password" {
            self.password = Some(Secret::new(value));
            return;
        }
        match self.params.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.params.push((key.to_owned(), value)),
        }
    }

    /// Checks what tokio-postgres would accept, and that nothing a password
    /// could have spilled into (an unencoded `@`) is left in a host or a name.
    fn check(&self) -> Result<(), ConnInfoError> {
        for key in ["host", "dbname"] {
            if self.param(key).is_some_and(|v| v.contains('@')) {
                return Err(ConnInfoError::new(format!(
                    "`{key}` holds an '@': percent-encode '@' in a password as %40"
                )));
            }
        }
        self.pg_config().map(|_| ())
    }

    /// The value of option `key` (never the password; see [`ConnInfo::password`]).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every option but the password, in order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The password, if one is given.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The same target with `password` (e.g. decrypted from the control database).
    pub fn with_password(mut self, password: Option<Secret>) -> Self {
        self.password = password;
        self
    }

    /// The connection string with no password at all: what the control database
    /// stores beside the encrypted password.
    pub fn without_password(&self) -> String {
        self.render(None)
    }

    /// The tokio-postgres config: every option but the password and the TLS files
    /// goes through tokio-postgres's parser (so it refuses what it does not know,
    /// by name), `sslmode` is mapped from libpq's modes (see [`SslMode`]), the
    /// password is set as bytes.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConnInfoError> {
        let tls = TlsSettings::of(self)?;
        let mut text = String::new();
        for (key, value) in &self.params {
            if !TLS_OPTIONS.contains(&key.as_str()) {
                push_key_value(&mut text, key, value);
            }
        }
        let mut config: tokio_postgres::Config = text
            .parse()
            .map_err(|e: tokio_postgres::Error| ConnInfoError::new(option_error(&e)))?;
        config.ssl_mode(tls.mode.driver_mode());
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        Ok(config)
    }

    /// Every place a connection may go, in order.
    pub fn targets(&self) -> Result<Vec<Target>, ConnInfoError> {
        let list = |key: &str| -> Vec<&str> {
            self.param(key)
                .map(|v| v.split(',').collect())
                .unwrap_or_default()
        };
        let hosts = list("host");
        let addrs = list("hostaddr");
        let ports = list("port");
        let count = hosts.len().max(addrs.len());
        let mut targets = Vec::with_capacity(count);
        for i in 0..count {
            let host = hosts.get(i).filter(|h| !h.is_empty()).map(|h| {
                if h.starts_with('/') {
                    Host::Unix(PathBuf::from(h))
                } else {
                    Host::Tcp(h.to_ascii_lowercase())
                }
            });
            let hostaddr = match addrs.get(i).filter(|a| !a.is_empty()) {
                Some(a) => Some(
                    a.parse()
                        .map_err(|_| ConnInfoError::new("`hostaddr` is not an IP address"))?,
                ),
                None => None,
            };
            let port = match ports.get(i).or(if ports.len() == 1 {
                ports.first()
            } else {
                None
            }) {
                Some(p) if !p.is_empty() => p
                    .parse()
                    .map_err(|_| ConnInfoError::new("`port` is not a port number"))?,
                _ => 5432,
            };
            targets.push(Target {
                host,
                hostaddr,
                port,
            });
        }
        Ok(targets)
    }

    /// Which PostgreSQL server(s) this points at: equal for two targets that
    /// reach the same servers.
    pub fn server_key(&self) -> ServerKey {
        ServerKey::of(self.targets().unwrap_or_default())
    }

    /// `text` with every occurrence of the password replaced by `***`: for messages
    /// from elsewhere (a driver, a server) that might quote it.
    pub fn scrub(&self, text: &str) -> String {
        match &self.password {
            Some(password) if !password.is_empty() => {
                let plain = String::from_utf8_lossy(password.expose());
                text.replace(plain.as_ref(), REDACTED)
            }
            _ => text.to_owned(),
        }
    }

    fn render(&self, password: Option<&str>) -> String {
        match self.form {
            Form::Url(scheme) => self.render_url(scheme, password),
            Form::KeyValue => {
                let mut pairs: Vec<(&str, &str)> = self.params().collect();
                if let (Some(shown), Some(_)) = (password, &self.password) {
                    let at = pairs
                        .iter()
                        .position(|(k, _)| *k == "user")
                        .map_or(pairs.len(), |i| i + 1);
                    pairs.insert(at, ("password", shown));
                }
                let mut out = String::new();
                for (key, value) in pairs {
                    push_key_value(&mut out, key, value);
                }
                out
            }
        }
    }

    fn render_url(&self, scheme: &str, password: Option<&str>) -> String {
        let mut out = format!("{scheme}://");
        let user = self.param("user");
        let password = password.filter(|_| self.password.is_some());
        if user.is_some() || password.is_some() {
            out.push_str(&encode(user.unwrap_or("")));
            if let Some(password) = password {
                out.push(':');
                out.push_str(password);
            }
            out.push('@');
        }
        let hosts: Vec<&str> = self
            .param("host")
            .map(|h| h.split(',').collect())
            .unwrap_or_default();
        let ports: Vec<&str> = self
            .param("port")
            .map(|p| p.split(',').collect())
            .unwrap_or_default();
        // host:port pairs in the authority when they line up; query options if not.
        let in_authority = !hosts.is_empty()
            && hosts.iter().all(|h| !h.starts_with('/') && !h.is_empty())
            && (ports.is_empty() || ports.len() == hosts.len());
        if in_authority {
            for (i, host) in hosts.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if host.contains(':') {
                    let _ = write!(out, "[{host}]");
                } else {
                    out.push_str(&encode(host));
                }
                if let Some(port) = ports.get(i).filter(|p| !p.is_empty()) {
                    out.push(':');
                    out.push_str(&encode(port));
                }
            }
        }
        if let Some(dbname) = self.param("dbname") {
            out.push('/');
            out.push_str(&encode(dbname));
        }
        let mut first = true;
        for (key, value) in &self.params {
            let authority = matches!(key.as_str(), "user" | "dbname")
                || (in_authority && matches!(key.as_str(), "host" | "port"));
            if authority {
                continue;
            }
            out.push(if first { '?' } else { '&' });
            first = false;
            let _ = write!(out, "{}={}", encode(key), encode(value));
        }
        out
    }
}

/// Renders the target with its password as `***`.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(Some(REDACTED)))
    }
}

/// A tokio-postgres parse error of the password-free options, in words: it names
/// an option (`unknown option `x``, `invalid value for option `port``).
fn option_error(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => cause.to_string(),
        None => error.to_string(),
    }
}

fn push_key_value(out: &mut String, key: &str, value: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(key);
    out.push('=');
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        out.push_str(value);
    } else {
        out.push('\'');
        for c in value.chars() {
            if c == '\'' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('\'');
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Percent-decodes `text` as UTF-8 (`what` names the part, for the error).
fn decode(text: &str, what: &str) -> Result<String, ConnInfoError> {
    decode_bytes(text, what).and_then(|bytes| {
        String::from_utf8(bytes)
            .map_err(|_| ConnInfoError::new(format!("{what} is not UTF-8 once percent-decoded")))
    })
}

fn decode_bytes(text: &str, what: &str) -> Result<Vec<u8>, ConnInfoError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConnInfoError::new(format!("{what} holds a '%' that is not %XX")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// `scheme://[user[:password]@][host[:port][,...]][/dbname][?key=value&...]`, with
/// libpq's reading: the user info ends at the first '@' before any '/'.
fn parse_url(scheme: &'static str, rest: &str) -> Result<ConnInfo, ConnInfoError> {
    let mut info = ConnInfo::empty(Form::Url(scheme));
    let mut rest = rest;
    if let Some(at) = rest
        .find(['@', '/'])
        .filter(|&i| rest.as_bytes()[i] == b'@')
    {
        let userinfo = &rest[..at];
        rest = &rest[at + 1..];
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            info.set("user", decode(user, "the user name")?);
        }
        if let Some(password) = password {
            info.password = Some(Secret::new(decode_bytes(password, "the password")?));
        }
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, mut rest) = rest.split_at(authority_end);
    if !authority.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for chunk in authority.split(',') {
            let (host, port) = if let Some(inner) = chunk.strip_prefix('[') {
                let close = inner
                    .find(']')
                    .ok_or_else(|| ConnInfoError::new("an IPv6 host has no closing ']'"))?;
                let after = &inner[close + 1..];
                let port = match after.strip_prefix(':') {
                    Some(port) => port,
                    None if after.is_empty() => "",
                    None => return Err(ConnInfoError::new("text after an IPv6 host")),
                };
                (inner[..close].to_owned(), port)
            } else {
                let (host, port) = chunk.split_once(':').unwrap_or((chunk, ""));
                (decode(host, "a host")?, port)
            };
            hosts.push(host);
            ports.push(decode(port, "a port")?);
        }
        info.set("host", hosts.join(","));
        if ports.iter().any(|p| !p.is_empty()) {
            info.set("port", ports.join(","));
        }
    }
    if let Some(path) = rest.strip_prefix('/') {
        let end = path.find('?').unwrap_or(path.len());
        if end > 0 {
            info.set("dbname", decode(&path[..end], "the database name")?);
        }
        rest = &path[end..];
    }
    if let Some(query) = rest.strip_prefix('?') {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| ConnInfoError::new("a query parameter has no '='"))?;
            let key = decode(key, "a parameter name")?;
            if key.is_empty() {
                return Err(ConnInfoError::new("a query parameter has no name"));
            }
            if key == "password" {
                info.password = Some(Secret::new(decode_bytes(value, "the password")?));
            } else {
                let value = decode(value, "a parameter value")?;
                info.set(&key, value);
            }
        }
    }
    Ok(info)
}

/// libpq's `key = value` pairs separated by spaces; a value is single-quoted
/// (`\'` and `\\` escape) or runs to the next space (a backslash escapes the next
/// character, a space included).
fn parse_key_value(text: &str) -> Result<ConnInfo, ConnInfoError> {
    let mut info = ConnInfo::empty(Form::KeyValue);
    let mut chars = text.chars().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    };
    loop {
        skip_ws(&mut chars);
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        skip_ws(&mut chars);
        if chars.next() != Some('=') {
            return Err(ConnInfoError::new(
                "is neither a postgres:// URL nor key=value pairs (a word without '=')",
            ));
        }
        skip_ws(&mut chars);
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(ConnInfoError::new(format!(
                            "the quoted value of `{}` is not closed",
                            shown_key(&key)
                        )));
                    }
                    Some('\'') => break,
                    Some('\\') => {
                        if let Some(c) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(ConnInfoError::new(format!(
                    "`{}` has no value",
                    shown_key(&key)
                )));
            }
        }
        info.set(&key, value);
    }
    if info.params.is_empty() && info.password.is_none() {
        return Err(ConnInfoError::new("must not be empty"));
    }
    Ok(info)
}

/// An option name as shown in an error: names are short words; anything else is
/// not echoed.
fn shown_key(key: &str) -> &str {
    let plausible = key.len() <= 40 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plausible { key } else { "an option" }
}

/// Renders `conninfo` with its password as `***`; a string that does not parse is
/// not shown at all.
pub fn redact(conninfo: &str) -> String {
    match ConnInfo::parse(conninfo) {
        Ok(info) => info.to_string(),
        Err(_) => "(a connection string that does not parse)".to_owned(),
    }
}

/// The password in `conninfo`, if it parses and has one.
pub fn password(conninfo: &str) -> Option<String> {
    let info = ConnInfo::parse(conninfo).ok()?;
    info.password()
        .map(|p| String::from_utf8_lossy(p.expose()).into_owned())
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plaintext first; TLS if the server insists.
    Allow,
    /// TLS if the server offers it (libpq's default), no verification.
    Prefer,
    /// TLS or nothing; verified as `verify-ca` only if `sslrootcert` is given.
    Require,
    /// TLS, the server's chain verified against the roots, not its name.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    /// The mode named `value`; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// What tokio-postgres is told (`allow` starts plaintext: see `tls::PgTls`).
    pub fn driver_mode(self) -> DriverSslMode {
        match self {
            Self::Disable | Self::Allow => DriverSslMode::Disable,
            Self::Prefer => DriverSslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => DriverSslMode::Require,
        }
    }
}

/// The options of a target that poolplane handles itself (tokio-postgres does not
/// know them): they are taken out before the rest goes to its parser.
pub const TLS_OPTIONS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file.
    File(PathBuf),
    /// The platform's roots (`sslrootcert=system`).
    System,
}

/// A target's TLS settings, as its connection string gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode` (default `prefer`).
    pub mode: SslMode,
    /// `sslrootcert`.
    pub root_cert: Option<RootCert>,
    /// `sslcert` and `sslkey`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsSettings {
    /// The settings of `info`; an unknown `sslmode`, or `sslcert` without `sslkey`
    /// (or the reverse), is refused by name.
    pub fn of(info: &ConnInfo) -> Result<Self, ConnInfoError> {
        let mode = match info.param("sslmode") {
            None => SslMode::Prefer,
            Some(value) => SslMode::parse(value).ok_or_else(|| {
                ConnInfoError::from_reason(
                    "invalid value for option `sslmode`: use disable, allow, prefer, require, \
                     verify-ca or verify-full",
                )
            })?,
        };
        let root_cert = info.param("sslrootcert").map(|v| match v {
            "system" => RootCert::System,
            path => RootCert::File(PathBuf::from(path)),
        });
        let client_cert = match (info.param("sslcert"), info.param("sslkey")) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConnInfoError::from_reason("`sslcert` needs `sslkey`"));
            }
            (None, Some(_)) => {
                return Err(ConnInfoError::from_reason("`sslkey` needs `sslcert`"));
            }
        };
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(ConnInfoError::from_reason(
                "`sslmode` verify-ca and verify-full need `sslrootcert` (a file, or `system`)",
            ));
        }
        Ok(Self {
            mode,
            root_cert,
            client_cert,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> String {
        ConnInfo::parse(text).expect("parses").to_string()
    }

    #[test]
    fn url_password_is_redacted() {
        assert_eq!(
            shown("postgres://app:s3cret@db.example:5432/app?sslmode=disable"),
            "postgres://app:***@db.example:5432/app?sslmode=disable"
        );
        assert_eq!(
            shown("postgres://host/db?user=a&password=s3cret"),
            "postgres://a:***@host/db"
        );
        assert_eq!(shown("postgres://app@host/db"), "postgres://app@host/db");
        assert_eq!(
            shown("postgresql://app:x@h1:5432,h2:5433/db?target_session_attrs=read-write"),
            "postgresql://app:***@h1:5432,h2:5433/db?target_session_attrs=read-write"
        );
    }

    #[test]
    fn a_question_mark_in_a_url_password() {
        let info = ConnInfo::parse("postgres://app:pa?ss@h/db").expect("parses");
        assert_eq!(info.password().map(Secret::expose), Some(&b"pa?ss"[..]));
        assert_eq!(info.to_string(), "postgres://app:***@h/db");
        assert_eq!(info.param("host"), Some("h"));
        assert_eq!(info.param("dbname"), Some("db"));
    }

    #[test]
    fn a_percent_encoded_parameter_name() {
        let info = ConnInfo::parse("postgres://app@h/db?pass%77ord=s3cret").expect("parses");
        assert_eq!(info.password().map(Secret::expose), Some(&b"s3cret"[..]));
        assert!(!info.to_string().contains("s3cret"), "{info}");
    }

    #[test]
    fn an_escaped_space_in_key_value_form() {
        let info = ConnInfo::parse(r"host=h user=u password=abc\ def=x dbname=d").expect("parses");
        assert_eq!(info.password().map(Secret::expose), Some(&b"abc def=x"[..]));
        let text = info.to_string();
        assert_eq!(text, "host=h user=u password=*** dbname=d");
        assert!(!text.contains("def=x"));
    }

    #[test]
    fn key_value_password_is_redacted() {
        assert_eq!(
            shown("host=127.0.0.1 user=app password=s3cret dbname=app"),
            "host=127.0.0.1 user=app password=*** dbname=app"
        );
        assert_eq!(
            shown("host=h password = 'has space \\' quote' user=u"),
            "host=h user=u password=***"
        );
        assert_eq!(shown("host=h user=u"), "host=h user=u");
    }

    #[test]
    fn an_unencoded_at_in_a_password_is_refused_without_echo() {
        let error = ConnInfo::parse("postgresql://app:p@ss@host/db").unwrap_err();
        assert!(error.to_string().contains("%40"), "{error}");
        assert!(!error.to_string().contains("ss@"), "{error}");
    }

    #[test]
    fn errors_never_echo_values() {
        for bad in [
            "postgres://app:s3cret@host:port5/db",
            "postgres://app:s3cret@host/db?nope=s3cret",
            "host=h password='s3cret",
            "garbage password s3cret",
            "postgres://app:s3cret@h/db?sslmode=s3cret",
        ] {
            let error = ConnInfo::parse(bad).unwrap_err().to_string();
            assert!(!error.contains("s3cret"), "{bad}: {error}");
            assert!(!redact(bad).contains("s3cret"), "{bad}");
        }
    }

    #[test]
    fn unknown_options_are_refused_by_name() {
        let error = ConnInfo::parse("postgres://h/db?frobnicate=1").unwrap_err();
        assert!(error.to_string().contains("frobnicate"), "{error}");
    }

    #[test]
    fn the_password_reaches_the_driver_config() {
        let info = ConnInfo::parse("postgres://app:p%40ss@h:6000/db").expect("parses");
        let config = info.pg_config().expect("valid");
        assert_eq!(config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(config.get_user(), Some("app"));
        assert_eq!(config.get_ports(), &[6000]);
        assert_eq!(config.get_dbname(), Some("db"));
    }

    #[test]
    fn stored_form_has_no_password_and_round_trips() {
        for text in [
            "postgres://app:s3cret@h:6000/db?application_name=a%20b",
            "host=h port=6000 user=app password='s e' dbname=db",
            "postgres://app:s3cret@[::1]:5432/db",
            "postgres://app:s3cret@%2Ftmp%2Fpg/db",
        ] {
            let info = ConnInfo::parse(text).expect("parses");
            let stored = info.without_password();
            assert!(
                !stored.contains("s3cret") && !stored.contains("password"),
                "{stored}"
            );
            let back = ConnInfo::parse(&stored)
                .expect("the stored form parses")
                .with_password(info.password().cloned());
            assert_eq!(back.pg_config().ok(), info.pg_config().ok(), "{text}");
        }
    }

    #[test]
    fn targets_name_hosts_ports_and_sockets() {
        let info = ConnInfo::parse("postgres://u@a:1,b/db").expect("parses");
        let targets = info.targets().expect("targets");
        assert_eq!(targets[0].describe(), "a:1");
        assert_eq!(targets[1].describe(), "b:5432");
        let unix = ConnInfo::parse("host=/var/run/postgresql dbname=x").expect("parses");
        assert_eq!(
            unix.targets().expect("targets")[0].host,
            Some(Host::Unix("/var/run/postgresql".into()))
        );
        let addr = ConnInfo::parse("host=db.example hostaddr=10.1.2.3 port=6432").expect("parses");
        assert_eq!(
            addr.targets().expect("targets")[0].describe(),
            "10.1.2.3:6432"
        );
    }

    #[test]
    fn scrub_replaces_the_password_in_free_text() {
        let info = ConnInfo::parse("postgres://app:s3cret@host/db").expect("parses");
        assert_eq!(info.scrub("auth failed for s3cret"), "auth failed for ***");
        assert_eq!(
            password("postgres://app:s3cret@host/db").as_deref(),
            Some("s3cret")
        );
    }

    #[test]
    fn too_long_is_refused() {
        let long = format!("postgres://h/{}", "d".repeat(MAX_CONNINFO_LEN));
        assert!(ConnInfo::parse(&long).is_err());
    }
}
