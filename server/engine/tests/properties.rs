//! Property tests: any connection string parses or is refused with a reason, never
//! a panic, and no rendering of a parsed target ever shows its password; any
//! config validates or is refused naming fields.

use poolplane::conninfo::{ConnInfo, REDACTED};
use poolplane::{AdvancedPoolConfig, Secret};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A password that is easy to find: a marker no generated host, user or name
/// holds (they are lowercase), then anything printable.
fn password() -> impl Strategy<Value = String> {
    "[ -~]{0,24}".prop_map(|tail| format!("ZQXPW{tail}"))
}

fn word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,11}"
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn key_value_quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', r"\\").replace('\'', r"\'"))
}

/// A URL or key=value string holding `password` in one of the ways users write it.
fn target_with(password: String) -> impl Strategy<Value = (String, String)> {
    (word(), word(), word(), 1u16..=65535, 0usize..5).prop_map(
        move |(user, host, db, port, form)| {
            let text = match form {
                0 => format!(
                    "postgres://{user}:{}@{host}:{port}/{db}",
                    percent_encode(&password)
                ),
                1 => format!(
                    "postgresql://{user}@{host}/{db}?pass%77ord={}&application_name={user}",
                    percent_encode(&password)
                ),
                2 => format!(
                    "host={host} port={port} user={user} password={} dbname={db}",
                    key_value_quote(&password)
                ),
                3 => format!(
                    "user={user} password={} host={host} dbname={db}",
                    password
                        .chars()
                        .flat_map(|c| match c {
                            ' ' | '\\' | '\'' => vec!['\\', c],
                            c => vec![c],
                        })
                        .collect::<String>()
                ),
                _ => format!(
                    "postgres://{host}:{port}/{db}?user={user}&password={}",
                    percent_encode(&password)
                ),
            };
            (text, password.clone())
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_string_parses_or_is_refused_without_panic(text in "\\PC{0,200}") {
        match ConnInfo::parse(&text) {
            Ok(info) => {
                let _ = info.to_string();
                let _ = info.without_password();
                let _ = info.targets();
                let _ = info.server_key();
            }
            Err(reason) => prop_assert!(!reason.to_string().is_empty()),
        }
        let _ = poolplane::conninfo::redact(&text);
    }

    #[test]
    fn url_like_strings_never_panic(
        text in "(postgres|postgresql)://[a-z:@/?&=%,\\[\\]0-9. ]{0,80}"
    ) {
        let _ = ConnInfo::parse(&text).map(|info| info.to_string());
    }

    #[test]
    fn no_rendering_shows_the_password(
        (text, password) in password().prop_flat_map(target_with)
    ) {
        let info = ConnInfo::parse(&text)
            .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(info.password().map(Secret::expose), Some(password.as_bytes()));
        for shown in [
            info.to_string(),
            format!("{info:?}"),
            info.without_password(),
            poolplane::conninfo::redact(&text),
            info.server_key().to_string(),
        ] {
            prop_assert!(!shown.contains("ZQXPW"), "{} shows {}", text, shown);
        }
        prop_assert!(info.to_string().contains(REDACTED));
        // What is stored, with the password put back, is the same target.
        let stored = ConnInfo::parse(&info.without_password())
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .with_password(info.password().cloned());
        let expected = info.pg_config().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(stored.pg_config().ok(), Some(expected));
    }

    #[test]
    fn refusals_never_quote_the_password(
        password in password(),
        junk in "[a-z%&=?/@:]{1,12}",
    ) {
        let text = format!("postgres://u:{password}@h{junk}/d?{junk}");
        if let Err(reason) = ConnInfo::parse(&text) {
            prop_assert!(!reason.to_string().contains("ZQXPW"), "{}", reason);
        }
        prop_assert!(!poolplane::conninfo::redact(&text).contains("ZQXPW"));
    }

    #[test]
    fn any_config_validates_or_names_its_fields(
        max in any::<u32>(),
        min in any::<u32>(),
        secs in proptest::array::uniform6(any::<u64>()),
        cache in any::<u32>(),
        checks in any::<u32>(),
        thresholds in (any::<f64>(), any::<f64>()),
        factors in (any::<f64>(), any::<f64>()),
        recycle in any::<u64>(),
        idle_ms in any::<u64>(),
        query in "\\PC{0,40}",
        warmup in proptest::collection::vec("\\PC{0,20}", 0..40),
    ) {
        let config = AdvancedPoolConfig {
            max_connections: max,
            min_connections: min,
            acquire_timeout_secs: secs[0],
            idle_timeout_secs: secs[1],
            max_lifetime_secs: secs[2],
            health_check_interval_secs: secs[3],
            health_check_timeout_secs: secs[4],
            min_scale_interval_secs: secs[5],
            statement_cache_capacity: cache,
            max_failed_health_checks: checks,
            load_threshold_high: thresholds.0,
            load_threshold_low: thresholds.1,
            scale_up_factor: factors.0,
            scale_down_factor: factors.1,
            recycle_threshold_queries: recycle,
            validation_idle_threshold_ms: idle_ms,
            validation_query: query,
            connection_warmup_queries: warmup,
            ..AdvancedPoolConfig::default()
        };
        match config.validate() {
            Ok(()) => {
                // What bb8 and the pool rely on.
                prop_assert!((1..=poolplane::config::MAX_CONNECTIONS).contains(&config.max_connections));
                prop_assert!(config.min_connections <= config.max_connections);
                prop_assert!(config.acquire_timeout_secs > 0 && config.max_lifetime_secs > 0);
                prop_assert!(config.statement_cache_capacity <= poolplane::config::MAX_STATEMENT_CACHE_CAPACITY);
                prop_assert!(config.scale_up_factor.is_finite());
                let _ = config.initial_size();
            }
            Err(errors) => {
                prop_assert!(!errors.0.is_empty());
                for violation in &errors.0 {
                    prop_assert!(!violation.field.is_empty() && !violation.description.is_empty());
                }
            }
        }
    }
}
