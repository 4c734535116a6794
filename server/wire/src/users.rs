//! The users file: who may log in through the front door besides each pool's
//! own database user. One user a line — name, SCRAM verifier as pg_authid stores
//! it, the pools it may use (comma-separated, or `*` for all), and optionally a
//! role on the admin console (`admin`: SHOW and PAUSE / RESUME / RECONNECT /
//! KILL; `stats`: SHOW only); `#` starts a comment.

use std::collections::HashMap;
use std::path::Path;

use crate::scram::Verifier;

/// One user of the file.
#[derive(Debug, Clone)]
pub struct User {
    pub(crate) verifier: Verifier,
    /// None: every pool.
    pools: Option<Vec<String>>,
    /// Its role on the admin console, if any.
    pub role: Option<Role>,
}

/// A user's role on the admin console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// SHOW commands only.
    Stats,
    /// Every command.
    Admin,
}

impl User {
    /// Whether the user may use `pool`.
    pub fn may_use(&self, pool: &str) -> bool {
        self.pools
            .as_ref()
            .is_none_or(|pools| pools.iter().any(|p| p == pool))
    }
}

/// The users of a users file.
#[derive(Debug, Clone, Default)]
pub struct Users {
    by_name: HashMap<String, User>,
}

/// The most users a file may hold.
pub const MAX_USERS: usize = 10_000;

impl Users {
    /// Reads and checks a users file; an error names the line, never a verifier.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("the users file cannot be read: {e}"))?;
        Self::parse(&text)
    }

    /// Parses a users file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = i + 1;
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (name, verifier, pools, role) = match fields[..] {
                [name, verifier, pools] => (name, verifier, pools, None),
                [name, verifier, pools, role] => (name, verifier, pools, Some(role)),
                _ => {
                    return Err(format!(
                        "users file line {at}: expected `user verifier pools [admin|stats]`, found {} fields",
                        fields.len()
                    ));
                }
            };
            let role = match role {
                None => None,
                Some("admin") => Some(Role::Admin),
                Some("stats") => Some(Role::Stats),
                Some(other) => {
                    return Err(format!(
                        "users file line {at}: unknown role `{other}` of `{name}` (admin or stats)"
                    ));
                }
            };
            let verifier = Verifier::parse(verifier).ok_or_else(|| {
                format!("users file line {at}: the verifier of `{name}` is not a SCRAM-SHA-256 verifier (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)")
            })?;
            let pools = (pools != "*").then(|| pools.split(',').map(str::to_owned).collect());
            if by_name
                .insert(
                    name.to_owned(),
                    User {
                        verifier,
                        pools,
                        role,
                    },
                )
                .is_some()
            {
                return Err(format!("users file line {at}: `{name}` appears twice"));
            }
            if by_name.len() > MAX_USERS {
                return Err(format!("the users file holds more than {MAX_USERS} users"));
            }
        }
        Ok(Self { by_name })
    }

    /// The user named `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_pools_and_errors() {
        let v = postgres_protocol::password::scram_sha_256(b"pw");
        let users = Users::parse(&format!(
            "# comment\napp {v} orders,billing\nops {v} * admin\n"
        ))
        .unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.get("app").unwrap().may_use("orders"));
        assert!(!users.get("app").unwrap().may_use("other"));
        assert!(users.get("ops").unwrap().may_use("anything"));
        assert_eq!(users.get("ops").unwrap().role, Some(Role::Admin));
        assert_eq!(users.get("app").unwrap().role, None);
        let e = Users::parse(&format!("x {v} * root")).unwrap_err();
        assert!(e.contains("unknown role `root`"), "{e}");
        let e = Users::parse("app md5deadbeef *").unwrap_err();
        assert!(e.contains("line 1") && !e.contains("deadbeef"), "{e}");
        let e = Users::parse(&format!("a {v} *\na {v} *")).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }
}
