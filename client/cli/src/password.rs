//! Passwords the way libpq finds them, so that none has to be on the command line
//! (where `ps` and the shell history see it): a URL without one gets it from
//! `--password-stdin`, else `PGPASSWORD`, else the password file (`PGPASSFILE` or
//! `~/.pgpass`, ignored when group or others may read it, as libpq does).

use std::path::{Path, PathBuf};

/// What a connection string says about where it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: String,
    dbname: String,
    user: String,
    has_password: bool,
}

/// `url` with a password added from the first source that has one, or as given
/// when it has a password already or no source has one. `stdin` is the line read
/// for `--password-stdin`.
pub fn complete(url: &str, stdin: Option<String>) -> anyhow::Result<String> {
    let target = parse(url)?;
    if target.has_password {
        if stdin.is_some() {
            anyhow::bail!("--password-stdin: the URL has a password already");
        }
        return Ok(url.to_owned());
    }
    let password = match stdin {
        Some(p) => Some(p),
        None => std::env::var("PGPASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
            .or_else(|| pgpass_file().and_then(|file| from_pgpass(&file, &target))),
    };
    Ok(match password {
        Some(password) => with_password(url, &target, &password),
        None => url.to_owned(),
    })
}

fn default_user() -> String {
    std::env::var("PGUSER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_default()
}

/// Splits a conninfo or URL into the fields the password file matches on.
fn parse(url: &str) -> anyhow::Result<Target> {
    let mut t = Target {
        host: String::new(),
        port: String::new(),
        dbname: String::new(),
        user: String::new(),
        has_password: false,
    };
    let params: Vec<(String, String)> = if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = main.split_once('/').unwrap_or((main, ""));
        let hosts = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                t.user = decode(user);
                t.has_password = password.is_some();
                hosts
            }
            None => authority,
        };
        let first = hosts.split(',').next().unwrap_or_default();
        let (host, port) = match first.strip_prefix('[') {
            Some(v6) => {
                let (h, rest) = v6.split_once(']').unwrap_or((v6, ""));
                (
                    h.to_owned(),
                    rest.strip_prefix(':').unwrap_or_default().to_owned(),
                )
            }
            None => match first.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.to_owned()),
                None => (first.to_owned(), String::new()),
            },
        };
        t.host = decode(&host);
        t.port = port;
        t.dbname = decode(path);
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), decode(v)))
            .collect()
    } else {
        key_values(url)?
    };
    for (key, value) in params {
        match key.as_str() {
            "host" => t.host = value.split(',').next().unwrap_or_default().to_owned(),
            "port" => t.port = value.split(',').next().unwrap_or_default().to_owned(),
            "dbname" => t.dbname = value,
            "user" => t.user = value,
            "password" => t.has_password = true,
            _ => {}
        }
    }
    if t.host.is_empty() || t.host.starts_with('/') {
        t.host = "localhost".into();
    }
    if t.port.is_empty() {
        t.port = "5432".into();
    }
    if t.user.is_empty() {
        t.user = default_user();
    }
    if t.dbname.is_empty() {
        t.dbname = t.user.clone();
    }
    Ok(t)
}

/// `key=value` pairs of a conninfo string (values may be single-quoted, with `\'`
/// and `\\` escapes).
fn key_values(conninfo: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            anyhow::bail!("--url: `{key}` has no value (expected key=value)");
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => anyhow::bail!("--url: unterminated quote in `{key}`"),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// Percent-decoding (invalid escapes are kept as they are).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encoding of everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `url` with `password` in it: in the userinfo of a URL (with the user libpq
/// would use when the URL names none), as `password='…'` in a conninfo.
fn with_password(url: &str, target: &Target, password: &str) -> String {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            return match authority.rsplit_once('@') {
                Some((user, hosts)) => {
                    format!("{scheme}{user}:{}@{hosts}{tail}", encode(password))
                }
                None => format!(
                    "{scheme}{}:{}@{authority}{tail}",
                    encode(&target.user),
                    encode(password)
                ),
            };
        }
    }
    let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
    format!("{url} password='{quoted}'")
}

/// The password file libpq reads: `PGPASSFILE`, else `~/.pgpass`.
fn pgpass_file() -> Option<PathBuf> {
    match std::env::var_os("PGPASSFILE") {
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("HOME").map(|home| Path::new(&home).join(".pgpass")),
    }
}

/// The password of the first line of `file` matching `target`
/// (`host:port:database:user:password`, `*` matching anything, `\:` and `\\`
/// escaped). A file that group or others may read is ignored, with a warning.
fn from_pgpass(file: &Path, target: &Target) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "warning: password file {} has group or world access; permissions should be \
             u=rw (0600) or less: ignored",
            file.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = pgpass_fields(line);
            let [host, port, db, user, password] = fields.as_slice() else {
                return None;
            };
            let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
            (matches(host, &target.host)
                && matches(port, &target.port)
                && matches(db, &target.dbname)
                && matches(user, &target.user))
            .then(|| password.clone())
        })
}

/// A password-file line split on unescaped colons (the password takes the rest).
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == ':' && fields.len() < 5 {
            fields.push(String::new());
            continue;
        }
        let field = fields.last_mut().expect("one field at least");
        match c {
            '\\' => field.extend(chars.next()),
            c => field.push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_conninfo_are_read_like_libpq() {
        let t = parse("postgres://app@db.example.com:6432/sales?sslmode=require").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port.as_str(),
                t.dbname.as_str(),
                t.user.as_str()
            ),
            ("db.example.com", "6432", "sales", "app")
        );
        assert!(!t.has_password);
        assert!(parse("postgres://app:pw@h/db").unwrap().has_password);
        let t = parse("host=/tmp port=5433 user='o\\'neil' dbname=x").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port.as_str(), t.user.as_str()),
            ("localhost", "5433", "o'neil")
        );
        let t = parse("postgres://u@[::1]/d").unwrap();
        assert_eq!((t.host.as_str(), t.port.as_str()), ("::1", "5432"));
    }

    #[test]
    fn the_password_goes_where_libpq_reads_it() {
        let t = parse("postgres://app@h:1/d").unwrap();
        assert_eq!(
            with_password("postgres://app@h:1/d?x=1", &t, "p@ss:w/rd"),
            "postgres://app:p%40ss%3Aw%2Frd@h:1/d?x=1"
        );
        let t = parse("postgres://h/d").unwrap();
        let url = with_password("postgres://h/d", &t, "pw");
        assert!(
            url.starts_with("postgres://") && url.ends_with(":pw@h/d"),
            "{url}"
        );
        let t = parse("host=h user=u").unwrap();
        assert_eq!(
            with_password("host=h user=u", &t, "it's"),
            "host=h user=u password='it\\'s'"
        );
    }

    #[test]
    fn pgpass_lines_match_with_wildcards_and_escapes() {
        assert_eq!(
            pgpass_fields(r"h:5432:db:us\:er:pa:ss\\"),
            ["h", "5432", "db", "us:er", "pa:ss\\"]
        );
        let dir = std::env::temp_dir().join(format!("pgpass-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:*:*:*:nope\n127.0.0.1:*:*:app:secret-1\n*:*:*:*:fallback\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let target = parse("postgres://app@127.0.0.1:5433/x").unwrap();
        assert_eq!(from_pgpass(&file, &target).as_deref(), Some("secret-1"));
        let other = parse("postgres://bob@10.0.0.1/x").unwrap();
        assert_eq!(from_pgpass(&file, &other).as_deref(), Some("fallback"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(from_pgpass(&file, &target), None, "world-readable: ignored");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
