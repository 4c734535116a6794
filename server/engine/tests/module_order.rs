//! The dependency order of the module list in `src/lib.rs`, checked on the
//! sources: every module uses only modules listed before it.

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
            if name.starts_with(|c: char| c.is_ascii_uppercase()) || name.starts_with("describe") {
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
