//! The module graph stays one-way: no cycle among the top-level modules of `src/`.
//!
//! A module is the first path component under `src/` (`src/app.rs` is `app`, everything in
//! `src/ws/` is `ws`); an edge is any `crate::name` reference in code (comments are not
//! code), including grouped imports (`use crate::{a, b::c}`) and `super::` paths that climb
//! to the crate root. `lib.rs` (the module map) and `main.rs` (the binary) are not modules.
//!
//! The test prints the graph bottom-up (each module after everything it uses), so
//! `cargo test --test layering -- --nocapture` shows the layering; any cycle fails it,
//! naming the modules involved and one file per edge. `LAYERING_SRC=<dir>` checks another
//! tree (an older checkout, to compare).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file relative to `src/`: `ws/session/mod.rs` is `[ws, session]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().expect("a file name");
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// Code without its comments (line comments, doc comments and block comments).
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else if rest.starts_with('"') {
            // Strings are code, but a "//" inside one is not a comment.
            let end = string_end(rest);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
        } else {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The length of the string literal at the start of `s` (quotes included).
fn string_end(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Top-level modules a file's code names.
fn references(code: &str, module: &[String]) -> BTreeSet<String> {
    let ident = r"[A-Za-z_][A-Za-z0-9_]*";
    let mut found = BTreeSet::new();
    let single = regex::Regex::new(&format!(r"\bcrate::({ident})")).unwrap();
    for c in single.captures_iter(code) {
        found.insert(c[1].to_owned());
    }
    let grouped = regex::Regex::new(r"\bcrate::\{([^}]*)\}").unwrap();
    for c in grouped.captures_iter(code) {
        for item in c[1].split(',') {
            let first = item.trim().split("::").next().unwrap_or("").trim();
            if !first.is_empty() && first != "self" {
                found.insert(first.to_owned());
            }
        }
    }
    // `super::` chains that climb out of the file's top-level module reach the crate root.
    let supers = regex::Regex::new(&format!(r"\b((?:super::)+)({ident})")).unwrap();
    for c in supers.captures_iter(code) {
        let climbs = c[1].len() / "super::".len();
        if climbs >= module.len() {
            found.insert(c[2].to_owned());
        }
    }
    found
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| {
            let relative = f.strip_prefix(src).ok()?;
            let first = module_path(relative).into_iter().next()?;
            (first != "lib" && first != "main").then_some(first)
        })
        .collect();
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for file in &files {
        let relative = file.strip_prefix(src).expect("under src/");
        let module = module_path(relative);
        let Some(top) = module.first().filter(|m| modules.contains(*m)) else {
            continue;
        };
        let code = strip_comments(&std::fs::read_to_string(file).expect("readable source"));
        for target in references(&code, &module) {
            if &target != top && modules.contains(&target) {
                graph
                    .get_mut(top)
                    .expect("every module has an entry")
                    .entry(target)
                    .or_insert_with(|| relative.display().to_string());
            }
        }
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph[v].keys() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

/// Modules bottom-up: each after everything it uses (cycles are broken arbitrarily).
fn bottom_up(graph: &Graph) -> Vec<String> {
    let mut placed: Vec<String> = Vec::new();
    let mut left: BTreeSet<&String> = graph.keys().collect();
    while !left.is_empty() {
        let ready: Vec<&String> = left
            .iter()
            .copied()
            .filter(|m| graph[*m].keys().all(|d| placed.contains(d)))
            .collect();
        // In a cycle nothing is ready: take the module with the fewest unplaced uses.
        let next = if ready.is_empty() {
            vec![
                *left
                    .iter()
                    .min_by_key(|m| graph[**m].keys().filter(|d| !placed.contains(d)).count())
                    .expect("not empty"),
            ]
        } else {
            ready
        };
        for m in next {
            left.remove(m);
            placed.push(m.clone());
        }
    }
    placed
}

#[test]
fn top_level_modules_form_no_cycle() {
    let src = std::env::var_os("LAYERING_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let graph = graph(&src);
    println!("module graph of {}, bottom-up:", src.display());
    for module in bottom_up(&graph) {
        let uses: Vec<&str> = graph[&module].keys().map(String::as_str).collect();
        println!("  {module:<10} -> {}", uses.join(", "));
    }
    let found = cycles(&graph);
    for component in &found {
        println!("cycle among: {}", component.join(", "));
        for from in component {
            for (to, file) in &graph[from] {
                if component.contains(to) {
                    println!("  {from} -> {to}  (src/{file})");
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the top-level modules of src/ must not import each other in a cycle (see above)"
    );
}

#[test]
fn references_are_found_in_every_form() {
    let code = "use crate::a::X;\nuse crate::{b, c::Y, self};\nfn f() { super::super::d::g(); super::e::h(); }";
    let depth_two = vec!["m".to_owned(), "n".to_owned()];
    let found = references(code, &depth_two);
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["a", "b", "c", "d"],
        "super::e from depth two stays inside the module"
    );
    assert_eq!(
        strip_comments("a // crate::x\n/* crate::y */ \"//\" b"),
        "a \n \"//\" b"
    );
}
