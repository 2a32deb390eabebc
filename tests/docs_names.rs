//! Every code name the documentation mentions must still exist in src/.
//!
//! Read: README.md and docs/*.md. A *span* is text between two backticks on one line
//! (fenced blocks are read the same way; they rarely contain backticks). A span names code
//! of this crate, and is checked, when it is one of:
//!
//! 1. **A source path**: it ends in `.rs`, or it starts with `src/`. Paths that start with
//!    `src/` or with another top-level directory of the repository (`tests/`, `bench/`, …)
//!    are resolved from the repository root; any other (`ws/session.rs`, `ring.rs`) from
//!    src/. The file or directory must exist.
//! 2. **A path with `::`** (`a::b::c`, optionally followed by `(…)` or `!`) whose first
//!    segment is not an external crate: std, core, alloc, futures, tungstenite, or a
//!    dependency named in Cargo.toml. A path that starts with `crate::` or `holdfast::` is
//!    resolved from the crate root. Otherwise:
//!    * the leading lowercase segments are modules. The first may be any module of the
//!      crate (docs write `session::Session` as well as `ws::session::Session`); each next
//!      one must be a child of the one before (a file `x.rs`, `x/mod.rs` or a folder `x/`).
//!    * the segment after the modules, if any, must be defined in the last module's own
//!      file (`x.rs` or `x/mod.rs`): a fn, struct, enum, trait, type, const, static, union,
//!      `mod` or `macro_rules!`, or a name re-exported there by `pub use`. Without a module
//!      in front (`Type::member`), the first segment must be a type (struct, enum, trait,
//!      type alias, union) defined anywhere in src.
//!    * the segment after a type (`Type::member`) must be defined in a file that defines or
//!      implements that type: a fn, const, type, enum variant or struct field. Segments
//!      after that one are not checked.
//!
//!    A first segment that is both a module of this crate and an external crate (`http`) is
//!    checked as this crate's; when that fails it is taken to mean the external crate.
//! 3. **A call without a path**, `name()`: a fn of that name must be defined in src.
//!
//! Anything else (bare names such as `WsConn`, config keys, metric names, commands) is not
//! checked: bare words are too often names from other crates or from the configuration.
//! Definitions are found line by line in rustfmt-formatted code (CI runs `cargo fmt
//! --check`): an enum's variants and a struct's fields are the lines one indent deeper than
//! the item, up to its closing brace at the item's own indent.
//!
//! Every stale name is printed with its file and line, and the test fails if there is any.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use regex::Regex;

/// Crates that are not dependencies in Cargo.toml but are named in the docs.
const EXTERNAL: &[&str] = &["std", "core", "alloc", "futures", "tungstenite"];

/// One source file's definitions.
#[derive(Default)]
struct FileDefs {
    /// Items (fn, struct, enum, …), `pub use` re-exports, variants and fields.
    names: HashSet<String>,
    /// Names of the types (struct, enum, trait, type alias, union) defined here.
    types: HashSet<String>,
    /// Names of the types that an `impl` block in this file implements (or implements for).
    impls: HashSet<String>,
    /// Names of fns defined here.
    fns: HashSet<String>,
}

struct Crate {
    root: PathBuf,
    src: PathBuf,
    files: HashMap<PathBuf, FileDefs>,
    external: HashSet<String>,
}

impl Crate {
    fn load(root: &Path) -> Crate {
        let src = root.join("src");
        let mut paths = Vec::new();
        rust_files(&src, &mut paths);
        let files = paths
            .into_iter()
            .map(|p| {
                let text = fs::read_to_string(&p).unwrap();
                let defs = definitions(&text);
                (p, defs)
            })
            .collect();
        let mut external: HashSet<String> = EXTERNAL.iter().map(|s| s.to_string()).collect();
        external.extend(dependencies(
            &fs::read_to_string(root.join("Cargo.toml")).unwrap(),
        ));
        Crate {
            root: root.to_owned(),
            src,
            files,
            external,
        }
    }

    /// The directories whose `x.rs`, `x/mod.rs` or `x/` is a module named `name`.
    fn modules_named(&self, name: &str) -> Vec<PathBuf> {
        let mut dirs = vec![self.src.clone()];
        let mut found = Vec::new();
        while let Some(dir) = dirs.pop() {
            if self.child_module(&dir, name).is_some() {
                found.push(dir.clone());
            }
            for entry in fs::read_dir(&dir).unwrap().flatten() {
                if entry.path().is_dir() {
                    dirs.push(entry.path());
                }
            }
        }
        found
    }

    /// The folder of module `name` inside `dir` (where its children live), if it exists.
    fn child_module(&self, dir: &Path, name: &str) -> Option<PathBuf> {
        if matches!(name, "mod" | "lib" | "main") {
            return None;
        }
        let folder = dir.join(name);
        (dir.join(format!("{name}.rs")).is_file() || folder.is_dir()).then_some(folder)
    }

    /// The module's own file(s): `x.rs` or `x/mod.rs` (src/lib.rs and src/main.rs for the
    /// crate root).
    fn own_files(&self, folder: &Path) -> Vec<&FileDefs> {
        let candidates = if folder == self.src {
            vec![self.src.join("lib.rs"), self.src.join("main.rs")]
        } else {
            vec![folder.with_extension("rs"), folder.join("mod.rs")]
        };
        candidates
            .iter()
            .filter_map(|p| self.files.get(p))
            .collect()
    }

    fn is_type(&self, name: &str) -> bool {
        self.files.values().any(|f| f.types.contains(name))
    }

    /// `member` is defined in a file that defines or implements type `ty`.
    fn has_member(&self, ty: &str, member: &str) -> bool {
        self.files
            .values()
            .any(|f| (f.types.contains(ty) || f.impls.contains(ty)) && f.names.contains(member))
    }

    /// Why `segments` (a `::` path) names nothing in src, or `None` if it resolves.
    fn resolve_path(&self, segments: &[&str]) -> Option<String> {
        let is_module = |s: &str| s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
        let first = segments[0];
        if !is_module(first) {
            if !self.is_type(first) {
                return Some(format!("no type `{first}` in src"));
            }
            return self.resolve_members(first, &segments[1..]);
        }
        let starts = self.modules_named(first);
        if starts.is_empty() {
            return Some(format!("no module `{first}` in src"));
        }
        let mut last_problem = None;
        for start in starts {
            match self.resolve_from(&start.join(first), &segments[1..]) {
                None => return None,
                Some(problem) => last_problem = Some(problem),
            }
        }
        last_problem
    }

    /// Resolves `rest` inside the module whose folder is `folder`.
    fn resolve_from(&self, folder: &Path, rest: &[&str]) -> Option<String> {
        let Some((&next, after)) = rest.split_first() else {
            return None; // the path is all modules, and they exist
        };
        if let Some(child) = self.child_module(folder, next) {
            return self.resolve_from(&child, after);
        }
        let module = match folder.strip_prefix(&self.src) {
            Ok(p) if !p.as_os_str().is_empty() => {
                let parts: Vec<_> = p.iter().map(|c| c.to_string_lossy()).collect();
                parts.join("::")
            }
            _ => "crate".to_string(),
        };
        if !self
            .own_files(folder)
            .iter()
            .any(|f| f.names.contains(next))
        {
            return Some(format!("`{next}` is not defined in module `{module}`"));
        }
        self.resolve_members(next, after)
    }

    /// The first of `members` must be defined where `ty` is defined or implemented; a
    /// segment after that (`Type::member::x`) is rare in prose and not checked.
    fn resolve_members(&self, ty: &str, members: &[&str]) -> Option<String> {
        let member = members.first()?;
        (!self.has_member(ty, member))
            .then(|| format!("`{member}` is not defined where `{ty}` is defined or implemented"))
    }

    fn resolve_file(&self, span: &str) -> Option<String> {
        let first = span.split('/').next().unwrap_or("");
        let from_root = first == "src" || (span.contains('/') && self.root.join(first).is_dir());
        let path = if from_root {
            self.root.join(span)
        } else {
            self.src.join(span)
        };
        (!path.exists()).then(|| {
            let shown = path.strip_prefix(&self.root).unwrap_or(&path);
            format!("{} does not exist", shown.display())
        })
    }

    /// Why the span is stale, or `None` if it resolves or is not a crate name.
    fn check(&self, span: &str, patterns: &Patterns) -> Option<String> {
        if patterns.file.is_match(span) {
            return self.resolve_file(span);
        }
        if let Some(call) = patterns.call.captures(span) {
            let name = &call[1];
            let defined = self.files.values().any(|f| f.fns.contains(name));
            return (!defined).then(|| format!("no fn `{name}` in src"));
        }
        let path = patterns.path.captures(span)?;
        let segments: Vec<&str> = path.get(1).unwrap().as_str().split("::").collect();
        if matches!(segments[0], "crate" | "holdfast") {
            return self.resolve_from(&self.src, &segments[1..]);
        }
        let external = self.external.contains(segments[0]);
        let crate_module = !self.modules_named(segments[0]).is_empty();
        if external && !crate_module {
            return None;
        }
        let problem = self.resolve_path(&segments)?;
        (!external).then_some(problem)
    }
}

struct Patterns {
    span: Regex,
    file: Regex,
    call: Regex,
    path: Regex,
}

impl Patterns {
    fn new() -> Patterns {
        Patterns {
            span: Regex::new(r"`([^`]+)`").unwrap(),
            file: Regex::new(r"^(?:[\w.-]+/)*[\w.-]+\.rs$|^src(?:/[\w.-]+)*/?$").unwrap(),
            call: Regex::new(r"^([a-z_][a-z0-9_]*)\(\)$").unwrap(),
            path: Regex::new(r"^([A-Za-z_]\w*(?:::[A-Za-z_]\w*)+)(?:\(.*\)|!)?$").unwrap(),
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Dependency names (as crates: `-` becomes `_`) from every dependency table of Cargo.toml.
fn dependencies(manifest: &str) -> Vec<String> {
    let key = Regex::new(r"^([A-Za-z0-9_-]+)\s*=").unwrap();
    let mut in_deps = false;
    let mut names = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line.trim_end_matches(']').ends_with("dependencies");
        } else if let Some(c) = key.captures(line).filter(|_| in_deps) {
            names.push(c[1].replace('-', "_"));
        }
    }
    names
}

/// `<T: Bound> Type<T>` → `Type<T>`: the impl's own generic parameters dropped.
fn without_generics(head: &str) -> &str {
    if !head.starts_with('<') {
        return head;
    }
    let mut depth = 0;
    for (i, c) in head.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => {
                depth -= 1;
                if depth == 0 {
                    return head[i + 1..].trim_start();
                }
            }
            _ => {}
        }
    }
    head
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The definitions in one rustfmt-formatted source file.
fn definitions(text: &str) -> FileDefs {
    let item = Regex::new(
        r#"^(?:pub(?:\([^)]*\))?\s+)?(?:(?:async|const|unsafe|extern(?:\s+"\w+")?)\s+)*(fn|struct|enum|trait|type|const|static|union|mod)\s+([A-Za-z_]\w*)"#,
    )
    .unwrap();
    let macro_def = Regex::new(r"^macro_rules!\s*([A-Za-z_]\w*)").unwrap();
    let impl_block = Regex::new(r"^(?:unsafe\s+)?impl\b(.*)").unwrap();
    let ident = Regex::new(r"[A-Za-z_]\w*").unwrap();
    let variant = Regex::new(r"^([A-Z]\w*)\b").unwrap();
    let field = Regex::new(r"^(?:pub(?:\([^)]*\))?\s+)?([a-z_]\w*)\s*:").unwrap();

    let mut defs = FileDefs::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let code = line.trim();
        if let Some(c) = item.captures(code) {
            let (kind, name) = (&c[1], c[2].to_string());
            match kind {
                "fn" => {
                    defs.fns.insert(name.clone());
                }
                "struct" | "enum" | "trait" | "type" | "union" => {
                    defs.types.insert(name.clone());
                }
                _ => {}
            }
            // An enum's variants and a struct's fields: the lines one indent deeper, up to
            // the closing brace at the item's own indent.
            if matches!(kind, "enum" | "struct" | "union") && code.ends_with('{') {
                let depth = indent(line);
                let members = if kind == "enum" { &variant } else { &field };
                let mut j = i + 1;
                while j < lines.len() && !(indent(lines[j]) == depth && lines[j].trim() == "}") {
                    if indent(lines[j]) == depth + 4
                        && let Some(m) = members.captures(lines[j].trim())
                    {
                        defs.names.insert(m[1].to_string());
                    }
                    j += 1;
                }
            }
            defs.names.insert(name);
        } else if let Some(c) = macro_def.captures(code) {
            defs.names.insert(c[1].to_string());
        } else if let Some(c) = impl_block.captures(code) {
            // `impl<T> Trait for Type<T> {` implements `Type`; `impl Type {` too.
            let head = c[1].split('{').next().unwrap_or("");
            let head = head.split(" where ").next().unwrap_or(head);
            let target = head.rsplit(" for ").next().unwrap_or(head);
            let target = without_generics(target.trim()).trim_start_matches('&');
            let path = target.split('<').next().unwrap_or(target).trim();
            if let Some(name) = path
                .rsplit("::")
                .next()
                .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '_'))
            {
                defs.impls.insert(name.to_string());
            }
        } else if code.starts_with("pub use") || code.starts_with("pub(crate) use") {
            // A re-export, possibly over several lines: every name in it up to the `;`.
            let mut j = i;
            loop {
                for m in ident.find_iter(lines[j]) {
                    defs.names.insert(m.as_str().to_string());
                }
                if lines[j].contains(';') || j + 1 == lines.len() {
                    break;
                }
                j += 1;
            }
        }
        i += 1;
    }
    defs
}

/// The documents checked: README.md and docs/*.md, in a stable order.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut docs: BTreeSet<PathBuf> = BTreeSet::new();
    docs.insert(root.join("README.md"));
    for entry in fs::read_dir(root.join("docs")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "md") {
            docs.insert(entry.path());
        }
    }
    docs.into_iter().collect()
}

#[test]
fn every_code_name_in_the_docs_exists_in_src() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let krate = Crate::load(root);
    let patterns = Patterns::new();
    let mut stale = Vec::new();
    let mut checked = 0;
    for doc in documents(root) {
        let text = fs::read_to_string(&doc).unwrap();
        let shown = doc.strip_prefix(root).unwrap().display().to_string();
        for (n, line) in text.lines().enumerate() {
            for span in patterns.span.captures_iter(line) {
                let span = span[1].trim();
                let names_code = patterns.file.is_match(span)
                    || patterns.call.is_match(span)
                    || patterns.path.is_match(span);
                checked += usize::from(names_code);
                if let Some(problem) = krate.check(span, &patterns) {
                    stale.push(format!("{shown}:{}: `{span}`: {problem}", n + 1));
                }
            }
        }
    }
    for line in &stale {
        println!("{line}");
    }
    println!("{checked} code names checked, {} stale", stale.len());
    assert!(
        stale.is_empty(),
        "{} code names in the docs no longer exist in src (listed above)",
        stale.len()
    );
}

#[test]
fn the_rules_classify_spans_as_documented() {
    let p = Patterns::new();
    for file in [
        "src/ws/session.rs",
        "ws/conn.rs",
        "src/ring/",
        "tests/hold.rs",
    ] {
        assert!(p.file.is_match(file), "{file}");
    }
    for call in ["send_data()", "malloc_trim()"] {
        assert!(p.call.is_match(call), "{call}");
    }
    for path in [
        "ws::woken::Gate",
        "holdfast::App",
        "Ending::Policy(TokenExpired)",
    ] {
        assert!(p.path.is_match(path), "{path}");
    }
    for other in [
        "WsConn",
        "restart.codes",
        "holdfast_holds_total",
        "cargo test",
        "a :: b",
    ] {
        let any = p.file.is_match(other) || p.call.is_match(other) || p.path.is_match(other);
        assert!(!any, "{other}");
    }
    let defs = definitions(
        "pub enum Ending {\n    /// doc\n    Shutdown,\n    Policy(Kind),\n}\n\
         pub(crate) struct Shared {\n    pub config: u8,\n    tls: u8,\n}\n\
         impl<'a> Drop for Shared {\n    pub async fn run(&self) {}\n}\n\
         impl<S: AsyncRead + Unpin> WsConn<S> {\n}\n",
    );
    assert!(defs.impls.contains("WsConn"));
    for name in [
        "Ending", "Shutdown", "Policy", "Shared", "config", "tls", "run",
    ] {
        assert!(
            defs.names.contains(name) || defs.fns.contains(name),
            "{name}"
        );
    }
    assert!(defs.impls.contains("Shared") && defs.types.contains("Ending"));
}
