//! What a statement does to its session beyond its transaction, read from its
//! SQL text with a cheap scan (a false alarm costs a reset, never a leak).

/// Session state a statement may leave on its backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    /// SET / RESET / set_config outside a transaction block's LOCAL scope.
    pub settings: bool,
    /// The settings they name, lower-cased (what the front door reads back).
    pub names: Vec<String>,
    /// A statement that may change any setting (RESET ALL, DISCARD ALL,
    /// set_config with a name that is not a literal).
    pub all_settings: bool,
    /// The first statement seen whose state outlives its transaction and pins
    /// the backend in transaction mode: LISTEN, a session advisory lock, a
    /// temporary table, a cursor WITH HOLD, SET ROLE or SESSION AUTHORIZATION.
    pub pins: Option<&'static str>,
    /// A statement that may end such state (UNLISTEN, an unlock, DROP, CLOSE,
    /// RESET ROLE…).
    pub unpins: bool,
    /// SQL-level PREPARE / EXECUTE / DEALLOCATE (the first seen).
    pub sql_prepared: Option<&'static str>,
    /// DISCARD (ALL, PLANS, …).
    pub discard: bool,
    /// DISCARD ALL: the backend's prepared statements are gone.
    pub deallocates: bool,
}

impl Effects {
    /// Whether the backend must be reset before another client gets it.
    pub(crate) fn dirty(&self) -> bool {
        self.settings || self.pins.is_some() || self.discard || self.sql_prepared.is_some()
    }

    /// Whether, once the transaction ended, the front door reads what the
    /// backend's session holds (its settings, what pins it); `pinned` when
    /// the backend is pinned already.
    pub(crate) fn needs_probe(&self, pinned: bool) -> bool {
        self.settings || self.pins.is_some() || self.discard || (pinned && self.unpins)
    }

    /// A statement changes setting `name` (None: any setting).
    fn named(&mut self, name: Option<String>) {
        self.settings = true;
        match name {
            Some(name) if !self.names.contains(&name) => self.names.push(name),
            Some(_) => {}
            None => self.all_settings = true,
        }
    }

    fn pin(&mut self, what: &'static str) {
        self.pins = self.pins.or(Some(what));
    }

    pub(crate) fn merge(&mut self, other: &Effects) {
        self.settings |= other.settings;
        self.all_settings |= other.all_settings;
        for name in &other.names {
            if !self.names.contains(name) {
                self.names.push(name.clone());
            }
        }
        self.pins = self.pins.or(other.pins);
        self.unpins |= other.unpins;
        self.discard |= other.discard;
        self.deallocates |= other.deallocates;
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
/// deallocate, discard, drop, close.
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
        b'd' => has(i, b"deallocate") || has(i, b"discard") || has(i, b"drop"),
        b'c' => has(i, b"close"),
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
    set_config_names(&lower, &mut e);
    if ["pg_advisory_lock", "pg_try_advisory_lock"]
        .iter()
        .any(|f| lower.contains(f))
    {
        e.pins = Some("pg_advisory_lock");
    }
    if lower.contains("advisory_unlock") {
        e.unpins = true;
    }
    for statement in without_comments(&lower).split(';') {
        statement_effects(statement, &mut e);
    }
    e
}

/// The setting a lower-cased SET or RESET statement names (None: ALL, or
/// what is not read here).
fn setting_name(statement: &str, session: bool) -> Option<String> {
    let rest = statement.trim_start();
    let rest = rest.split_once(char::is_whitespace)?.1.trim_start();
    let rest = if session {
        rest.split_once(char::is_whitespace)?.1.trim_start()
    } else {
        rest
    };
    let name = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.split('"').next()?.to_owned()
    } else {
        rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$'))
            .next()?
            .to_owned()
    };
    let after = rest[name.len().min(rest.len())..].trim_start();
    Some(match name.as_str() {
        "" | "all" => return None,
        "time" if after.starts_with("zone") => "timezone".into(),
        "names" => "client_encoding".into(),
        "schema" => "search_path".into(),
        "xml" => "xmloption".into(),
        _ => name,
    })
}

/// The names of `set_config(name, …)` calls in lower-cased `sql`, into `e`
/// (a name that is not a literal: any setting).
fn set_config_names(sql: &str, e: &mut Effects) {
    for (at, _) in sql.match_indices("set_config") {
        let rest = sql[at + "set_config".len()..].trim_start();
        let Some(args) = rest.strip_prefix('(') else {
            continue;
        };
        let literal = args
            .trim_start()
            .strip_prefix('\'')
            .and_then(|r| r.split_once('\''))
            .map(|(name, _)| name.to_owned());
        e.named(literal);
    }
}

/// What one lower-cased statement may leave on the session, into `e`.
fn statement_effects(statement: &str, e: &mut Effects) {
    let mut w = words(statement);
    let Some(first) = w.next() else { return };
    let second = w.next();
    match (first.as_str(), second.as_deref()) {
        ("set", Some("local" | "transaction" | "constraints")) => {}
        ("set", Some("role")) => e.pin("SET ROLE"),
        ("set", Some("session")) => {
            if w.next().as_deref() == Some("authorization") {
                e.pin("SET SESSION AUTHORIZATION");
            } else {
                e.named(setting_name(statement, true));
            }
        }
        ("reset", Some("role" | "session")) => e.unpins = true,
        ("set", _) => e.named(setting_name(statement, false)),
        ("reset", _) => e.named(setting_name(statement, false)),
        ("listen", _) => e.pin("LISTEN"),
        ("unlisten" | "drop" | "close", _) => e.unpins = true,
        ("prepare", Some("transaction")) => {}
        ("prepare", _) => e.sql_prepared = e.sql_prepared.or(Some("PREPARE")),
        ("execute", _) => e.sql_prepared = e.sql_prepared.or(Some("EXECUTE")),
        ("deallocate", _) => e.sql_prepared = e.sql_prepared.or(Some("DEALLOCATE")),
        ("discard", kind) => {
            e.discard = true;
            e.unpins = true;
            // DISCARD ALL resets every setting too.
            if kind == Some("all") {
                e.deallocates = true;
                e.named(None);
            }
        }
        ("create", _)
            if statement
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w == "temp" || w == "temporary") =>
        {
            e.pin("CREATE TEMP");
        }
        ("declare", _) if statement.contains("with hold") => e.pin("DECLARE … WITH HOLD"),
        _ => {}
    }
}

/// What still pins a backend, as one text: the names of the kinds of state
/// left, comma-separated ('' when none).
const PINNED: &str = "concat_ws(', ', \
     CASE WHEN EXISTS (SELECT FROM pg_listening_channels()) THEN 'LISTEN' END, \
     CASE WHEN EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) \
     THEN 'advisory lock' END, \
     CASE WHEN EXISTS (SELECT FROM pg_class WHERE relnamespace = pg_my_temp_schema()) \
     THEN 'temporary table' END, \
     CASE WHEN EXISTS (SELECT FROM pg_cursors WHERE is_holdable) THEN 'cursor WITH HOLD' END, \
     CASE WHEN current_setting('role') <> 'none' OR session_user::text <> \
     (SELECT usename FROM pg_stat_activity WHERE pid = pg_backend_pid()) THEN 'role' END)";

/// The query that reads, once a client's transaction ended, the settings its
/// statements may have changed (one row each the session set: name, value)
/// and what pins the backend (a last row named ''). Named settings are read
/// with current_setting (custom ones such as `app.tenant` are not in
/// pg_settings); any setting, from pg_settings.
pub(crate) fn probe(effects: &Effects) -> String {
    let settings = if effects.all_settings {
        "SELECT lower(name), current_setting(name) FROM pg_settings WHERE source = 'session' \
         AND name NOT IN ('role', 'session_authorization') UNION ALL "
            .to_owned()
    } else if effects.names.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = effects
            .names
            .iter()
            .map(|n| format!("'{}'", n.replace('\'', "''")))
            .collect();
        format!(
            "SELECT n, v FROM (SELECT n, current_setting(n, true) AS v, \
             (SELECT source FROM pg_settings WHERE lower(name) = n) AS source \
             FROM unnest(ARRAY[{}]) AS n) s \
             WHERE v IS NOT NULL AND coalesce(source, 'session') = 'session' UNION ALL ",
            names.join(", ")
        )
    };
    format!("{settings}SELECT '', {PINNED}")
}

/// What puts a dirty backend back as the pool opened it, keeping poolplane's
/// own prepared statements.
const RESET: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL; \
     CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// The reset for a backend a client left with `effects`: with SQL-level
/// prepared statements (session mode) or a DISCARD, every prepared statement
/// goes too (the front door then forgets what the backend had).
pub(crate) fn reset(effects: &Effects) -> String {
    if effects.sql_prepared.is_some() || effects.deallocates {
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
        assert_eq!(effects("SET search_path = a").names, ["search_path"]);
        assert_eq!(
            effects("set session statement_timeout to '5s'; SET TIME ZONE 'UTC'").names,
            ["statement_timeout", "timezone"]
        );
        assert_eq!(effects("SET \"MyApp.x\" = 1").names, ["myapp.x"]);
        assert_eq!(effects("RESET lock_timeout").names, ["lock_timeout"]);
        assert!(effects("RESET ALL").all_settings);
        assert_eq!(
            effects("SELECT set_config('search_path', 'a, b', false)").names,
            ["search_path"]
        );
        assert!(effects("SELECT set_config($1, $2, false)").all_settings);
        assert!(effects("select set_config('x.y', '1', false)").settings);
        assert!(!effects("SET LOCAL statement_timeout = 5").dirty());
        assert!(!effects("BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").dirty());
        assert_eq!(effects("SET ROLE app").pins, Some("SET ROLE"));
        assert_eq!(
            effects("set session authorization app").pins,
            Some("SET SESSION AUTHORIZATION")
        );
        assert_eq!(effects("LISTEN ch").pins, Some("LISTEN"));
        assert_eq!(
            effects("SELECT pg_advisory_lock(1)").pins,
            Some("pg_advisory_lock")
        );
        assert!(!effects("SELECT pg_advisory_xact_lock(1)").dirty());
        assert_eq!(
            effects("CREATE TEMP TABLE t (a int)").pins,
            Some("CREATE TEMP")
        );
        assert!(effects("create temporary table t (a int)").pins.is_some());
        assert!(
            effects("DECLARE c CURSOR WITH HOLD FOR SELECT 1")
                .pins
                .is_some()
        );
        assert!(!effects("DECLARE c CURSOR FOR SELECT 1").dirty());
        assert_eq!(
            effects("PREPARE p AS SELECT 1").sql_prepared,
            Some("PREPARE")
        );
        assert_eq!(effects("EXECUTE p").sql_prepared, Some("EXECUTE"));
        let all = effects("DISCARD ALL");
        assert!(all.discard && all.deallocates && all.settings && all.unpins);
        let temp = effects("discard temp");
        assert!(temp.discard && !temp.deallocates);
        assert!(!effects("PREPARE TRANSACTION 'x'").dirty());
        for sql in [
            "UNLISTEN *",
            "SELECT pg_advisory_unlock(1)",
            "DROP TABLE t",
            "CLOSE c",
            "RESET ROLE",
        ] {
            let e = effects(sql);
            assert!(e.unpins && !e.dirty(), "{sql}");
            assert!(e.needs_probe(true) && !e.needs_probe(false), "{sql}");
        }
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
