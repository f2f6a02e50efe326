//! `shared` has no module cycles: among the sibling modules of any parent (the crate root,
//! `identity`, `upload`, …), the "uses" graph of non-test code is acyclic.
//!
//! This is the check the architecture issue asks for in place of `cargo modules`: it reads the
//! source, expands `use crate::{…}` trees, follows `crate::…` and `super::…` paths, ignores
//! everything from the first `#[cfg(test)]` of a file on, and fails naming one cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/src");

/// The module path of a source file: `identity/request.rs` → `["identity", "request"]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Non-test code with line comments removed.
fn code_of(text: &str) -> String {
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a use tree such as `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

/// Absolute module paths (`crate` omitted) that the code refers to.
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    // `use` trees, which may span lines and nest braces.
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let after = &rest[i + 4..];
        let end = after.find(';').unwrap_or(after.len());
        // Only `use` items: the keyword starts its line, after an optional visibility.
        let line_start = rest[..i].rfind('\n').map_or(0, |n| n + 1);
        let lead = rest[line_start..i].trim();
        let boundary = lead.is_empty() || lead.starts_with("pub");
        if boundary {
            paths.extend(expand(&after[..end]));
        }
        rest = &after[end.min(after.len())..];
    }
    // Inline paths such as `crate::identity::TokenCache::default()`.
    for start in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(i) = rest.find(start) {
            let tail: String = rest[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            paths.push(tail);
            rest = &rest[i + start.len()..];
        }
    }
    let mut out = Vec::new();
    for p in paths {
        let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
        let abs: Vec<String> = match segs.first() {
            Some(&"crate") => segs[1..].iter().map(|s| s.to_string()).collect(),
            Some(&"super") => {
                let mut base = module.to_vec();
                let mut i = 0;
                while segs.get(i) == Some(&"super") {
                    base.pop();
                    i += 1;
                }
                base.extend(segs[i..].iter().map(|s| s.to_string()));
                base
            }
            _ => continue,
        };
        out.push(abs);
    }
    out
}

/// Sibling edges: for a reference from `module` to `target`, the pair of children of their
/// deepest common ancestor, when both are modules.
fn sibling_edge(
    module: &[String],
    target: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<(Vec<String>, Vec<String>)> {
    let common = module
        .iter()
        .zip(target)
        .take_while(|(a, b)| a == b)
        .count();
    if common >= module.len() || common >= target.len() {
        return None;
    }
    let from = module[..=common].to_vec();
    let to = target[..=common].to_vec();
    (modules.contains(&from) && modules.contains(&to)).then_some((from, to))
}

fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        n: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[at..].iter().map(|s| s.join("::")).collect();
                    cycle.push(m.join("::"));
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n) {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let root = Path::new(SRC);
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let sources: Vec<(Vec<String>, String)> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(root).unwrap();
            (module_of(rel), std::fs::read_to_string(f).unwrap())
        })
        .collect();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &sources {
        for target in references(module, &code_of(text)) {
            if let Some((from, to)) = sibling_edge(module, &target, &modules) {
                edges.entry(from).or_default().insert(to);
            }
        }
    }
    edges
}

#[test]
fn the_checker_sees_a_cycle() {
    let modules: BTreeSet<Vec<String>> = [vec!["a".into()], vec!["b".into()]].into();
    let a = references(&["a".into()], "use crate::{b::{X, Y}, c};\nfn f() {}");
    let b = references(&["b".into()], "fn g() { crate::a::f() }");
    let mut edges = BTreeMap::new();
    for (m, refs) in [("a", a), ("b", b)] {
        for t in refs {
            if let Some((f, to)) = sibling_edge(&[m.to_owned()], &t, &modules) {
                edges.entry(f).or_insert_with(BTreeSet::new).insert(to);
            }
        }
    }
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()])
    );
    assert_eq!(
        expand("x::{y::{P, Q}, z}"),
        vec!["x::y::P", "x::y::Q", "x::z"]
    );
}

#[test]
fn shared_has_no_module_cycles() {
    let edges = graph();
    assert!(
        edges.values().map(BTreeSet::len).sum::<usize>() > 10,
        "the checker found almost no edges; is it reading shared/src?"
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!("module cycle in shared: {}", cycle.join(" -> "));
    }
}
