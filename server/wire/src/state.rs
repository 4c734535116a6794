//! What a statement does to its session beyond its transaction, read from its
//! SQL text with a cheap scan (a false alarm costs a reset, never a leak).

/// Session state a statement may leave on its backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    /// SET / RESET / set_config outside a transaction block's LOCAL scope.
    pub settings: bool,
    /// SET ROLE, SET SESSION AUTHORIZATION.
    pub role: bool,
    /// LISTEN.
    pub listen: bool,
    /// A session-level advisory lock.
    pub advisory: bool,
    /// A temporary table, view or sequence.
    pub temp: bool,
    /// A cursor WITH HOLD.
    pub hold: bool,
    /// SQL-level PREPARE / EXECUTE / DEALLOCATE (the first seen).
    pub sql_prepared: Option<&'static str>,
    /// DISCARD (ALL, PLANS, …).
    pub discard: bool,
}

impl Effects {
    /// Whether the backend must be reset before another client gets it.
    pub(crate) fn dirty(&self) -> bool {
        self.settings
            || self.role
            || self.listen
            || self.advisory
            || self.temp
            || self.hold
            || self.discard
            || self.sql_prepared.is_some()
    }

    pub(crate) fn merge(&mut self, other: Effects) {
        self.settings |= other.settings;
        self.role |= other.role;
        self.listen |= other.listen;
        self.advisory |= other.advisory;
        self.temp |= other.temp;
        self.hold |= other.hold;
        self.discard |= other.discard;
        self.sql_prepared = self.sql_prepared.or(other.sql_prepared);
    }
}

/// The words of a statement, lower-cased, comments skipped (enough for its
/// first few keywords).
fn words(statement: &str) -> impl Iterator<Item = String> + '_ {
    statement
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
}

/// Strips `--` and `/* */` comments (not inside quotes: a false alarm at worst).
fn without_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
            out.push(' ');
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
            out.push(' ');
        } else {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Whether `sql` holds (in any case) one of the words a session-changing
/// statement has: set, listen, advisory, temp, hold, prepare, execute,
/// deallocate, discard.
fn mentions_any(sql: &[u8]) -> bool {
    let has = |i: usize, word: &[u8]| {
        sql.len() - i >= word.len() && sql[i..i + word.len()].eq_ignore_ascii_case(word)
    };
    (0..sql.len()).any(|i| match sql[i] | 0x20 {
        b's' => has(i, b"set"),
        b'l' => has(i, b"listen"),
        b'a' => has(i, b"advisory"),
        b't' => has(i, b"temp"),
        b'h' => has(i, b"hold"),
        b'p' => has(i, b"prepare"),
        b'e' => has(i, b"execute"),
        b'd' => has(i, b"deallocate") || has(i, b"discard"),
        _ => false,
    })
}

/// What `sql` (one or more statements) may leave on the session.
pub(crate) fn effects(sql: &str) -> Effects {
    let mut e = Effects::default();
    // Cheap exit, in one pass without an allocation: none of the words that
    // matter ("reset" holds "set"; "role" comes with SET or RESET).
    if !mentions_any(sql.as_bytes()) {
        return e;
    }
    let lower = sql.to_ascii_lowercase();
    if lower.contains("set_config") {
        e.settings = true;
    }
    if ["pg_advisory_lock", "pg_try_advisory_lock"]
        .iter()
        .any(|f| lower.contains(f))
    {
        e.advisory = true;
    }
    for statement in without_comments(&lower).split(';') {
        let mut w = words(statement);
        let Some(first) = w.next() else { continue };
        let second = w.next();
        match (first.as_str(), second.as_deref()) {
            ("set", Some("local" | "transaction" | "constraints")) => {}
            ("set", Some("role")) | ("reset", Some("role")) => e.role = true,
            ("set", Some("session")) => {
                if w.next().as_deref() == Some("authorization") {
                    e.role = true;
                } else {
                    e.settings = true;
                }
            }
            ("reset", Some("session")) => e.role = true,
            ("set" | "reset", _) => e.settings = true,
            ("listen", _) => e.listen = true,
            ("prepare", Some("transaction")) => {}
            ("prepare", _) => e.sql_prepared = e.sql_prepared.or(Some("PREPARE")),
            ("execute", _) => e.sql_prepared = e.sql_prepared.or(Some("EXECUTE")),
            ("deallocate", _) => e.sql_prepared = e.sql_prepared.or(Some("DEALLOCATE")),
            ("discard", _) => e.discard = true,
            ("create", _)
                if statement
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|w| w == "temp" || w == "temporary") =>
            {
                e.temp = true;
            }
            ("declare", _) if statement.contains("with hold") => e.hold = true,
            _ => {}
        }
    }
    e
}

/// What puts a dirty backend back as the pool opened it, keeping poolplane's
/// own prepared statements.
const RESET: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL; \
     CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// The reset for a backend a client left with `effects`: with SQL-level
/// prepared statements (session mode) or a DISCARD, every prepared statement
/// goes too (the front door then forgets what the backend had).
pub(crate) fn reset(effects: &Effects) -> String {
    if effects.sql_prepared.is_some() || effects.discard {
        format!("{RESET}; DEALLOCATE ALL")
    } else {
        RESET.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_session_state_is_seen() {
        assert!(effects("SET search_path = a").settings);
        assert!(effects("select set_config('x.y', '1', false)").settings);
        assert!(!effects("SET LOCAL statement_timeout = 5").dirty());
        assert!(!effects("BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").dirty());
        assert!(effects("SET ROLE app").role);
        assert!(effects("set session authorization app").role);
        assert!(effects("LISTEN ch").listen);
        assert!(effects("SELECT pg_advisory_lock(1)").advisory);
        assert!(!effects("SELECT pg_advisory_xact_lock(1)").dirty());
        assert!(effects("CREATE TEMP TABLE t (a int)").temp);
        assert!(effects("create temporary table t (a int)").temp);
        assert!(effects("DECLARE c CURSOR WITH HOLD FOR SELECT 1").hold);
        assert_eq!(
            effects("PREPARE p AS SELECT 1").sql_prepared,
            Some("PREPARE")
        );
        assert_eq!(effects("EXECUTE p").sql_prepared, Some("EXECUTE"));
        assert!(effects("DISCARD ALL").discard);
        assert!(!effects("PREPARE TRANSACTION 'x'").dirty());
    }

    #[test]
    fn ordinary_statements_are_clean() {
        for sql in [
            "SELECT 1",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3",
            "INSERT INTO settings VALUES ('reset')",
            "-- SET x = 1\nSELECT 2",
            "BEGIN",
            "END",
        ] {
            assert!(!effects(sql).dirty(), "{sql}");
        }
    }
}
