//! Connection strings: redacting the password of a postgres:// URL or a key=value
//! conninfo so that it can be shown, logged or returned.

/// What a redacted password is replaced with.
pub const REDACTED: &str = "***";

/// Returns `conninfo` with its password (if any) replaced by `***`.
///
/// Handles `postgres://` / `postgresql://` URLs (`user:password@` and a `password=`
/// query parameter) and libpq key=value strings (`password=…`, quoted or not). A string
/// of neither form is returned whole only if it holds no `password`; otherwise every
/// character after `password` is hidden, so nothing unparsed can leak.
pub fn redact(conninfo: &str) -> String {
    if let Some(rest) = conninfo
        .strip_prefix("postgres://")
        .map(|r| ("postgres://", r))
        .or_else(|| {
            conninfo
                .strip_prefix("postgresql://")
                .map(|r| ("postgresql://", r))
        })
    {
        return redact_url(rest.0, rest.1);
    }
    match redact_key_value(conninfo) {
        Some(redacted) => redacted,
        None => match conninfo.to_ascii_lowercase().find("password") {
            Some(at) => format!("{}password{REDACTED}", &conninfo[..at]),
            None => conninfo.to_owned(),
        },
    }
}

/// Replaces every occurrence of the password of `conninfo` in `text` by `***`: for
/// messages (errors from a driver, a server's log line) that may quote the password.
pub fn redact_in(text: &str, conninfo: &str) -> String {
    match password(conninfo) {
        Some(password) if !password.is_empty() => text.replace(&password, REDACTED),
        _ => text.to_owned(),
    }
}

/// Checks that `conninfo` parses as a postgres:// URL or key=value conninfo; the
/// error says why (without the string itself, which may hold a password).
pub fn check(conninfo: &str) -> Result<(), String> {
    conninfo
        .parse::<tokio_postgres::Config>()
        .map(|_| ())
        .map_err(|e| format!("is neither a postgres:// URL nor a key=value conninfo ({e})"))
}

/// The password in `conninfo`, if it has one.
pub fn password(conninfo: &str) -> Option<String> {
    let config: tokio_postgres::Config = conninfo.parse().ok()?;
    config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

fn redact_url(scheme: &str, rest: &str) -> String {
    let query_at = rest.find('?').unwrap_or(rest.len());
    let (before_query, query) = rest.split_at(query_at);
    let mut out = String::with_capacity(rest.len() + scheme.len());
    out.push_str(scheme);
    match before_query.rfind('@') {
        Some(at) => {
            let userinfo = &before_query[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&before_query[at..]);
        }
        None => out.push_str(before_query),
    }
    if let Some(params) = query.strip_prefix('?') {
        out.push('?');
        let redacted: Vec<String> = params
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                    format!("{key}={REDACTED}")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&redacted.join("&"));
    }
    out
}

/// Redacts a libpq key=value string; `None` when it does not parse as one.
fn redact_key_value(conninfo: &str) -> Option<String> {
    let mut out = String::with_capacity(conninfo.len());
    let mut chars = conninfo.char_indices().peekable();
    let mut pairs = 0;
    loop {
        while let Some((_, c)) = chars.peek() {
            if c.is_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        let Some(&(key_start, _)) = chars.peek() else {
            break;
        };
        let mut key_end = key_start;
        while let Some(&(i, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key_end = i + c.len_utf8();
            chars.next();
        }
        let key = &conninfo[key_start..key_end];
        while let Some((_, c)) = chars.peek() {
            if c.is_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        if key.is_empty() || chars.next().map(|(_, c)| c) != Some('=') {
            return None;
        }
        while let Some((_, c)) = chars.peek() {
            if c.is_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        let mut value = String::new();
        if chars.peek().map(|(_, c)| *c) == Some('\'') {
            chars.next();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => value.push(chars.next()?.1),
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return None;
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if pairs > 0 {
            out.push(' ');
        }
        pairs += 1;
        out.push_str(key);
        out.push('=');
        if key.eq_ignore_ascii_case("password") {
            out.push_str(REDACTED);
        } else if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '\'') {
            out.push('\'');
            out.push_str(&value.replace('\\', "\\\\").replace('\'', "\\'"));
            out.push('\'');
        } else {
            out.push_str(&value);
        }
    }
    (pairs > 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db.example:5432/app?sslmode=disable"),
            "postgres://app:***@db.example:5432/app?sslmode=disable"
        );
        assert_eq!(
            redact("postgresql://app:p@ss@host/db"),
            "postgresql://app:***@host/db"
        );
        assert_eq!(
            redact("postgres://host/db?user=a&password=s3cret"),
            "postgres://host/db?user=a&password=***"
        );
        assert_eq!(redact("postgres://app@host/db"), "postgres://app@host/db");
    }

    #[test]
    fn key_value_password_is_redacted() {
        assert_eq!(
            redact("host=127.0.0.1 user=app password=s3cret dbname=app"),
            "host=127.0.0.1 user=app password=*** dbname=app"
        );
        assert_eq!(
            redact("host=h password = 'has space \\' quote' user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(redact("host=h user=u"), "host=h user=u");
    }

    #[test]
    fn unparsable_string_hides_everything_after_password() {
        let redacted = redact("garbage password s3cret");
        assert!(!redacted.contains("s3cret"), "{redacted}");
    }

    #[test]
    fn redact_in_replaces_the_password_in_free_text() {
        let url = "postgres://app:s3cret@host/db";
        assert_eq!(
            redact_in("auth failed for s3cret", url),
            "auth failed for ***"
        );
        assert_eq!(password(url).as_deref(), Some("s3cret"));
    }
}
