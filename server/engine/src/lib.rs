//! poolplane's engine: advanced PostgreSQL connection pools, their registry and the
//! control database, embeddable in-process.
//!
//! # Modules, in dependency order
//!
//! Each module uses only modules listed before it (a test in this file reads the
//! sources and fails on a `use crate::…` that points down the list). Leaf types
//! live in the module that owns their concept; the registry sits above the pools,
//! the store and the optimizer and drives them; the recorder and the metric
//! catalogue read the registry from above.
//!
//! 1. [`config`]: `AdvancedPoolConfig`, its presets and `validate()`.
//! 2. [`query`]: values and results of SQL run for a remote caller.
//! 3. [`conninfo`]: a database target parsed once (URL or key=value), its TLS
//!    options and the key of the server it reaches.
//! 4. [`tls`]: outgoing TLS (rustls) with libpq's `sslmode` meanings.
//! 5. [`allowlist`]: the targets pools may connect to.
//! 6. [`embedded_pg`]: a private PostgreSQL cluster run from the system's binaries.
//! 7. [`secrets`]: passwords sealed at rest.
//! 8. [`budget`]: one connection budget per PostgreSQL server, split among its pools.
//! 9. `error`: the engine's [`Error`].
//! 10. [`events`]: what happened to a pool, broadcast to subscribers.
//! 11. [`pool`]: `AdvancedConnectionPool` — gate, statement cache, lifecycle,
//!     health, sizing, stats, SQL.
//! 12. [`loadtest`]: `PoolLoadTester` and its grades.
//! 13. [`store`]: the control database — definitions, history, config changes.
//! 14. [`optimizer`]: recommendations, the budget's cap and the plan that applies them.
//! 15. [`registry`]: `ConnectionPoolService`, the named pools and their changes.
//! 16. [`recorder`]: the metrics recorder writing the history.
//! 17. [`metrics`]: the one metric catalogue (Prometheus and OTLP read it).

pub mod allowlist;
pub mod budget;
pub mod config;
pub mod conninfo;
pub mod embedded_pg;
mod error;
pub mod events;
pub mod loadtest;
pub mod metrics;
pub mod optimizer;
pub mod pool;
pub mod query;
pub mod recorder;
pub mod registry;
pub mod secrets;
pub mod store;
pub mod tls;

pub use allowlist::TargetAllowlist;
pub use config::{AdvancedPoolConfig, ConfigErrors, FieldChange, FieldViolation};
pub use conninfo::{ConnInfo, Secret};
pub use embedded_pg::{EmbeddedPg, EmbeddedPgError, EmbeddedPgOptions, EmbeddedTls};
pub use error::{AcquireLimit, Error, ErrorKind, RequestViolation, describe_pg_error};
pub use events::{PoolEvent, PoolEventKind};
pub use loadtest::{
    Grade, LoadTestLimits, LoadTestOptions, LoadTestProgress, LoadTestResults, PoolLoadTester,
};
pub use optimizer::{OptimizationReport, PoolOptimization, Recommendation, Severity};
pub use pool::{
    AdvancedConnectionPool, HealthStatus, PoolStats, PooledConnection, StatementCacheStats,
    Transaction,
};
pub use recorder::{MetricsRecorder, RecorderOptions, RecorderStatus};
pub use registry::{ConnectionPoolService, PerformanceSummary, PoolInfo};
pub use secrets::{SecretsError, SecretsKey};
pub use store::config_changes::{ChangeOrigin, ConfigChangeRecord};
pub use store::history::{HourSummary, MetricsPoint, ScalingRecord};
pub use store::{
    ControlStore, PoolDefinition, default_data_dir, default_secrets_key_file, establish_connection,
};

#[cfg(test)]
mod module_order {
    //! The dependency order of the module list above, checked on the sources.

    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    /// The modules as the doc lists them: `1. [`config`]` or `9. `error``.
    fn listed(lib: &str) -> Vec<String> {
        lib.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("//! ")?;
                let (number, rest) = rest.split_once(". ")?;
                number.parse::<u32>().ok()?;
                let name = rest.trim_start_matches('[').strip_prefix('`')?;
                Some(name.split('`').next()?.to_owned())
            })
            .collect()
    }

    /// The crate-root names `lib.rs` re-exports, with the module each comes from.
    fn reexports(lib: &str) -> HashMap<String, String> {
        let mut names = HashMap::new();
        let text = lib.replace('\n', " ");
        for item in text.split(';') {
            let Some(at) = item.find("pub use ") else {
                continue;
            };
            let path = &item[at + "pub use ".len()..];
            let module = path.split("::").next().unwrap_or_default().to_owned();
            let inner = path.split_once('{').map_or(path, |(_, list)| list);
            for name in inner.split([',', '}', ':']) {
                let name = name.trim();
                if name.starts_with(|c: char| c.is_ascii_uppercase())
                    || name.starts_with("describe")
                {
                    names.insert(name.to_owned(), module.clone());
                }
            }
        }
        names
    }

    /// The first segment of every `crate::` path in `text` (inside braces too).
    fn crate_paths(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            out.push(first_segment(&item));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                out.push(first_segment(&item));
            } else {
                out.push(first_segment(rest));
            }
        }
        out.retain(|s| !s.is_empty());
        out
    }

    fn first_segment(path: &str) -> String {
        path.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    }

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_module_uses_only_modules_listed_before_it() {
        let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
        let order = listed(&lib);
        let declared: Vec<String> = lib
            .lines()
            .filter_map(|l| l.trim_start_matches("pub ").strip_prefix("mod "))
            .filter_map(|l| l.strip_suffix(';').map(str::to_owned))
            .collect();
        let mut sorted_order = order.clone();
        sorted_order.sort();
        let mut sorted_declared = declared.clone();
        sorted_declared.sort();
        assert_eq!(
            sorted_order, sorted_declared,
            "the doc lists every module once"
        );
        let names = reexports(&lib);
        let rank = |module: &str| order.iter().position(|m| m == module);
        let mut files = Vec::new();
        sources(&src(), &mut files);
        let mut violations = Vec::new();
        for file in files {
            let relative = file.strip_prefix(src()).expect("under src");
            let module = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .expect("utf-8")
                .trim_end_matches(".rs")
                .to_owned();
            if module == "lib" {
                continue;
            }
            let own = rank(&module).unwrap_or_else(|| panic!("{module} is not listed"));
            let source = std::fs::read_to_string(&file).expect("source");
            // Comments (doc links among them) are not dependencies.
            let code: Vec<&str> = source
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            for used in crate_paths(&code.join("\n")) {
                let target = names.get(&used).cloned().unwrap_or(used);
                let Some(theirs) = rank(&target) else {
                    continue;
                };
                if theirs > own {
                    violations.push(format!("{} uses crate::{target}", relative.display()));
                }
            }
        }
        assert!(
            violations.is_empty(),
            "uses pointing down the list: {violations:#?}"
        );
    }

    #[test]
    fn the_checker_sees_a_use_pointing_down() {
        let paths = crate_paths(
            "use crate::{AdvancedPoolConfig, pool::{A, B}, Error};\nx = crate::registry::X;",
        );
        assert_eq!(paths, ["AdvancedPoolConfig", "pool", "Error", "registry"]);
        let lib = "//! 1. [`config`]: a.\n//! 9. `error`: b.\npub use config::{AdvancedPoolConfig, ConfigErrors};\npub use error::{Error, describe_pg_error};";
        assert_eq!(listed(lib), ["config", "error"]);
        let names = reexports(lib);
        assert_eq!(
            names.get("AdvancedPoolConfig").map(String::as_str),
            Some("config")
        );
        assert_eq!(names.get("Error").map(String::as_str), Some("error"));
    }
}

#[cfg(test)]
mod function_length {
    //! No function in server/ or client/ runs over 80 lines, unless a comment
    //! `// long: <why>` stands right above it.

    use std::path::{Path, PathBuf};

    const LIMIT: usize = 80;

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    rust_files(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// `(name, first line, length)` of every function in `source` longer than
    /// `limit` lines without a `// long:` comment above it. A function runs from
    /// its `fn` line to the first line that closes it at its own indentation.
    fn long_functions(source: &str, limit: usize) -> Vec<(String, usize, usize)> {
        let lines: Vec<&str> = source.lines().collect();
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            let indent = line.len() - code.len();
            let Some(name) = fn_name(code) else { continue };
            if code.trim_end().ends_with('}') {
                continue; // a one-line body
            }
            let Some(open) = (i..lines.len()).find(|&j| {
                let l = lines[j].trim_end();
                l.ends_with('{') || l.ends_with(';')
            }) else {
                continue;
            };
            if lines[open].trim_end().ends_with(';') {
                continue; // a declaration without a body
            }
            let close = format!("{}}}", " ".repeat(indent));
            let Some(end) = (open + 1..lines.len()).find(|&j| lines[j].trim_end() == close) else {
                continue;
            };
            let length = end - i + 1;
            let excused = i > 0
                && lines[..i]
                    .iter()
                    .rev()
                    .take(3)
                    .any(|l| l.trim_start().starts_with("// long:"));
            if length > limit && !excused {
                out.push((name, i + 1, length));
            }
        }
        out
    }

    fn fn_name(code: &str) -> Option<String> {
        let mut rest = code;
        for prefix in [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "const ",
            "async ",
            "unsafe ",
        ] {
            rest = rest.strip_prefix(prefix).unwrap_or(rest);
        }
        for prefix in ["async ", "unsafe "] {
            rest = rest.strip_prefix(prefix).unwrap_or(rest);
        }
        let rest = rest.strip_prefix("fn ")?;
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        (!name.is_empty()).then_some(name)
    }

    #[test]
    fn no_function_in_server_or_client_runs_over_80_lines() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = Vec::new();
        rust_files(&root.join("server"), &mut files);
        rust_files(&root.join("client"), &mut files);
        assert!(files.len() > 20, "the sources were found: {}", files.len());
        let mut long = Vec::new();
        for file in files {
            let source = std::fs::read_to_string(&file).expect("source");
            for (name, line, length) in long_functions(&source, LIMIT) {
                long.push(format!("{}:{line} {name}: {length} lines", file.display()));
            }
        }
        assert!(long.is_empty(), "functions over {LIMIT} lines: {long:#?}");
    }

    #[test]
    fn the_length_check_sees_a_long_function_and_its_excuse() {
        let body = "    let x = 1;\n".repeat(5);
        let long = format!("pub async fn big() {{\n{body}}}\nfn small() {{}}\n");
        assert_eq!(long_functions(&long, 4), [("big".to_owned(), 1, 7)]);
        let excused = format!("// long: one match arm per variant\n{long}");
        assert!(long_functions(&excused, 4).is_empty());
        let nested = format!("impl X {{\n    fn inner(&self) {{\n{body}    }}\n}}\n");
        assert_eq!(long_functions(&nested, 4), [("inner".to_owned(), 2, 7)]);
    }
}
