//! The source layout keeps the promises the README's Architecture section makes:
//! no file over 800 lines, every file says what it owns in a `//!` header, no
//! import cycle between the top-level modules of `src/`, and nothing on the
//! proxy's path uses the built-in origin or the demo.
//!
//! A module's dependencies are the `crate::name` paths in its files (comments
//! left out), which is every way one module of this crate can name another.
//! Files inside one folder (`src/proxy/*.rs`) are parts of one module and may
//! refer to each other. Run alone: `cargo test --test layout`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    rust_files(&src(), &mut out);
    out.sort();
    assert!(out.len() > 10, "found only {} files under src/", out.len());
    out
}

/// The top-level module a file belongs to (`src/proxy/worker.rs` -> `proxy`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// The text with `//` comments removed (a `//` inside a string literal cuts the
/// line short, which can only hide a dependency in text, never invent one).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The items `lib.rs` re-exports at the crate root (`pub use proxy::Proxy;`),
/// each with the module it comes from: `crate::Proxy` names `proxy`.
fn root_reexports() -> BTreeMap<String, String> {
    let lib = code_of(&std::fs::read_to_string(src().join("lib.rs")).unwrap());
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(path) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let path = path.trim_end_matches(';');
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        let items = items.trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let name = item.split(" as ").last().unwrap_or(item).trim();
            let name = name.rsplit("::").next().unwrap_or(name);
            if !name.is_empty() {
                out.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    out
}

fn ident_at(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The first name of each path in a `{ a::X, b::{Y, Z} }` group (`s` starts
/// just after its `{`).
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = vec![ident_at(s)];
    let mut depth = 0;
    for (i, ch) in s.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => heads.push(ident_at(&s[i + 1..])),
            _ => {}
        }
    }
    heads.retain(|h| !h.is_empty());
    heads
}

/// Every module named in `code` through `crate::name`, `$crate::name`,
/// `crate::{name::.., ..}`, an item the crate root re-exports (`crate::Proxy`),
/// or, in a file whose parent is the crate root (`root_child`), `super::name`.
fn named_modules(
    code: &str,
    root_child: bool,
    reexports: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    let mut names = Vec::new();
    let prefixes: &[&str] = if root_child {
        &["crate::", "super::"]
    } else {
        &["crate::"]
    };
    for prefix in prefixes {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().next_back();
            let after = &rest[i + prefix.len()..];
            // `crate::` preceded by a letter or `_` is part of a longer name.
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                match after.strip_prefix('{') {
                    Some(group) => names.extend(group_heads(group)),
                    None => names.push(ident_at(after)),
                }
            }
            rest = after;
        }
    }
    names
        .into_iter()
        .filter(|n| !n.is_empty() && n != "super" && n != "self")
        .map(|n| reexports.get(&n).cloned().unwrap_or(n))
        .collect()
}

/// Top-level module -> the top-level modules it names (`main` and `lib` are the
/// crate's roots, not modules).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let reexports = root_reexports();
    assert!(
        reexports.contains_key("Proxy"),
        "lib.rs re-exports: {reexports:?}"
    );
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files() {
        let module = module_of(&path);
        if module == "main" || module == "lib" {
            continue;
        }
        let rel = path.strip_prefix(src()).unwrap();
        // `src/admin.rs` and `src/proxy/mod.rs` sit right under the crate root.
        let root_child = rel.components().count() == 1 || rel.ends_with("mod.rs");
        let code = code_of(&std::fs::read_to_string(&path).unwrap());
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(
            named_modules(&code, root_child, &reexports)
                .into_iter()
                .filter(|d| *d != module),
        );
    }
    graph
}

/// A cycle through `start`, if there is one, as the path of modules.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    walk(graph, start, start, &mut path, &mut seen).then_some(path)
}

fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(m) = todo.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn no_file_is_over_800_lines() {
    let long: Vec<String> = files()
        .iter()
        .filter_map(|p| {
            let lines = std::fs::read_to_string(p).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", p.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

#[test]
fn every_file_says_what_it_owns() {
    let bare: Vec<String> = files()
        .iter()
        .filter(|p| !std::fs::read_to_string(p).unwrap().starts_with("//!"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(bare.is_empty(), "no //! header: {bare:?}");
}

#[test]
fn no_import_cycle_between_modules() {
    let graph = graph();
    assert!(
        graph.len() > 5,
        "only {} modules found: {graph:?}",
        graph.len()
    );
    assert!(
        graph["proxy"].contains("http") && graph["proxy"].contains("io"),
        "the dependency reader misses the proxy's imports: {:?}",
        graph["proxy"]
    );
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_from(&graph, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
}

#[test]
fn the_proxy_path_does_not_use_the_origin() {
    let graph = graph();
    let used = reachable(&graph, "proxy");
    assert!(used.contains("http"), "proxy reaches {used:?}");
    assert!(
        !used.contains("origin"),
        "the proxy reaches the built-in origin: {used:?}"
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle_from(&graph, "a"), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        cycle_from(&graph, "a"),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let reexports: BTreeMap<String, String> = [("Proxy".to_string(), "proxy".to_string())].into();
    assert_eq!(
        named_modules(
            "use crate::http::X; $crate::log::f(); my_crate::z; crate::",
            false,
            &reexports
        ),
        ["http", "log"].map(String::from).into()
    );
    // Brace groups, root re-exports, and `super::` in a file under the root.
    assert_eq!(
        named_modules(
            "use crate::{io::{A, B}, runtime::C}; fn f(_: &crate::Proxy) {} super::admin::x",
            true,
            &reexports
        ),
        ["admin", "io", "proxy", "runtime"].map(String::from).into()
    );
}
