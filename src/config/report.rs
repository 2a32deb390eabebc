//! Reading the merged figment: every unknown key (serde stops at the first), typed
//! extraction section by section (so one bad section does not hide another's problems),
//! where a key's value came from (default, file and line, env variable), and the
//! effective-config listing printed by `holdfast check`.

use std::path::Path;

use figment::value::{Dict, Tag, Value};
use figment::{Figment, Profile, Provider, Source};
use serde::de::DeserializeOwned;

use super::raw::{RawConfig, SCHEMA};
use super::{ConfigError, Problem};

/// One line of `holdfast check`: a key, its effective value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveEntry {
    pub key: String,
    pub value: String,
    pub origin: String,
}

/// A step of a key path: `rewrite[1].to` is `Key(rewrite) Index(1) Key(to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            segs.push(Seg::Key(rest[..open].to_owned()));
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                if let Ok(i) = rest[1..close].parse() {
                    segs.push(Seg::Index(i));
                }
                rest = &rest[close + 1..];
            }
        } else {
            segs.push(Seg::Key(rest.to_owned()));
        }
    }
    segs
}

/// The schema path of a table (`rewrite[]` for every element of `rewrite`).
pub(super) fn schema_keys(table_path: &str) -> Option<&'static [&'static str]> {
    SCHEMA
        .iter()
        .find(|(p, _)| *p == table_path)
        .map(|(_, keys)| *keys)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Distance between two short ASCII strings, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Walks the merged data and reports every key the schema does not know.
fn unknown_keys(
    figment: &Figment,
    dict: &Dict,
    schema_path: &str,
    key_path: &str,
    out: &mut Vec<Problem>,
) {
    let Some(known) = schema_keys(schema_path) else {
        return;
    };
    for (key, value) in dict {
        let full = join(key_path, key);
        if !known.contains(&key.as_str()) {
            let hint = known
                .iter()
                .filter(|k| edit_distance(k, key) <= 2)
                .min_by_key(|k| edit_distance(k, key))
                .map(|k| format!("; did you mean `{}`?", join(key_path, k)))
                .unwrap_or_default();
            let section = if schema_path.is_empty() {
                "top level".to_owned()
            } else {
                format!("[{}]", schema_path.trim_end_matches("[]"))
            };
            out.push(Problem {
                key: full.clone(),
                message: format!(
                    "unknown key{hint} (known keys in {section}: {})",
                    known.join(", ")
                ),
                origin: origin_of_tag(figment, value.tag(), &full),
            });
            continue;
        }
        let child_schema = join(schema_path, key);
        match value {
            Value::Dict(_, child) => unknown_keys(figment, child, &child_schema, &full, out),
            Value::Array(_, items) => {
                let element_schema = format!("{child_schema}[]");
                for (i, item) in items.iter().enumerate() {
                    if let Value::Dict(_, child) = item {
                        unknown_keys(
                            figment,
                            child,
                            &element_schema,
                            &format!("{full}[{i}]"),
                            out,
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

/// Extracts one section; its problems (other than unknown keys, reported by the walk) are
/// collected and the section falls back to its default so the others are still checked.
fn section<T: DeserializeOwned + Default>(
    figment: &Figment,
    name: &str,
    out: &mut Vec<Problem>,
) -> T {
    match figment.extract_inner::<T>(name) {
        Ok(value) => value,
        Err(error) => {
            for e in error {
                if matches!(e.kind, figment::error::Kind::UnknownField(..)) {
                    continue;
                }
                // figment appends the `extract_inner` key at the end of the path.
                let mut path = e.path.clone();
                if path.len() > 1 && path.last().map(String::as_str) == Some(name) {
                    path.pop();
                }
                if path.first().map(String::as_str) != Some(name) {
                    path.insert(0, name.to_owned());
                }
                let key = dotted(&path);
                let origin = match &e.metadata {
                    Some(md) => describe_origin(md, &key),
                    None => origin_of(figment, &key),
                };
                out.push(Problem {
                    key,
                    message: e.kind.to_string(),
                    origin,
                });
            }
            T::default()
        }
    }
}

/// `["rewrite", "1", "to"]` → `rewrite[1].to`.
fn dotted(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

/// Wrappers so `section` can default the `rewrite` and `route` arrays like any table.
#[derive(Default, serde::Deserialize)]
#[serde(transparent)]
struct Rewrites(Vec<super::raw::RawRewrite>);

#[derive(Default, serde::Deserialize)]
#[serde(transparent)]
struct Routes(Vec<super::raw::RawRoute>);

/// Reads the merged data into a `RawConfig`, collecting every problem found on the way.
/// A file that is not TOML at all is an immediate error (the parser names the line).
pub fn extract(figment: &Figment) -> Result<(RawConfig, Vec<Problem>), ConfigError> {
    let data = figment.data().map_err(|error| ConfigError {
        problems: error
            .into_iter()
            .map(|e| Problem {
                key: dotted(&e.path),
                message: e.kind.to_string(),
                origin: e.metadata.as_ref().and_then(|md| describe_origin(md, "")),
            })
            .collect(),
    })?;
    let mut problems = Vec::new();
    if let Some(dict) = data.get(&Profile::Default) {
        unknown_keys(figment, dict, "", "", &mut problems);
    }
    let raw = RawConfig {
        listen: section(figment, "listen", &mut problems),
        admin: section(figment, "admin", &mut problems),
        upstream: section(figment, "upstream", &mut problems),
        websocket: section(figment, "websocket", &mut problems),
        restart: section(figment, "restart", &mut problems),
        policy: section(figment, "policy", &mut problems),
        rewrite: section::<Rewrites>(figment, "rewrite", &mut problems).0,
        shutdown: section(figment, "shutdown", &mut problems),
        resume: section(figment, "resume", &mut problems),
        route: section::<Routes>(figment, "route", &mut problems).0,
    };
    Ok((raw, problems))
}

/// The value stored at `key` (deepest existing node), for its tag.
fn find<'v>(root: &'v Value, segs: &[Seg]) -> &'v Value {
    let mut node = root;
    for seg in segs {
        let next = match (seg, node) {
            (Seg::Key(k), Value::Dict(_, dict)) => dict.get(k),
            (Seg::Index(i), Value::Array(_, items)) => items.get(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    node
}

/// Where the value of `key` came from: `proxy.toml:12`, `env HOLDFAST_…`; `None` for defaults.
pub fn origin_of(figment: &Figment, key: &str) -> Option<String> {
    let segs = parse_path(key);
    let Some(Seg::Key(top)) = segs.first() else {
        return None;
    };
    let root = figment.find_value(top).ok()?;
    let value = find(&root, &segs[1..]);
    origin_of_tag(figment, value.tag(), key)
}

fn origin_of_tag(figment: &Figment, tag: Tag, key: &str) -> Option<String> {
    figment
        .get_metadata(tag)
        .and_then(|md| describe_origin(md, key))
}

fn describe_origin(md: &figment::Metadata, key: &str) -> Option<String> {
    match &md.source {
        Some(Source::File(path)) => Some(match locate_line(path, key) {
            Some(line) => format!("{}:{line}", path.display()),
            None => path.display().to_string(),
        }),
        _ if md.name.contains("environment") => {
            // Env values are whole keys: name the variable of the key's top two levels
            // that actually holds it (`upstream.endpoints[0]` lives in …__ENDPOINTS).
            let segs: Vec<String> = parse_path(key)
                .into_iter()
                .filter_map(|s| match s {
                    Seg::Key(k) => Some(k.to_ascii_uppercase()),
                    Seg::Index(_) => None,
                })
                .collect();
            Some(format!("env HOLDFAST_{}", segs.join("__")))
        }
        _ if md.name.contains("TOML") => Some("inline TOML".to_owned()),
        _ => None,
    }
}

/// The line of `key` in a TOML file, found with toml_edit's spans.
fn locate_line(path: &Path, key: &str) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc = toml_edit::ImDocument::parse(text.as_str()).ok()?;
    let offset = locate_offset(doc.as_table(), &parse_path(key))?;
    Some(text[..offset].matches('\n').count() + 1)
}

fn locate_offset(root: &toml_edit::Table, segs: &[Seg]) -> Option<usize> {
    use toml_edit::{Item, Value as TV};
    #[derive(Clone, Copy)]
    enum Node<'a> {
        Table(&'a toml_edit::Table),
        Inline(&'a toml_edit::InlineTable),
        Array(&'a toml_edit::Array),
        Tables(&'a toml_edit::ArrayOfTables),
        Leaf,
    }
    fn of_value(v: &TV) -> Node<'_> {
        match v {
            TV::InlineTable(t) => Node::Inline(t),
            TV::Array(a) => Node::Array(a),
            _ => Node::Leaf,
        }
    }
    fn of_item(item: &Item) -> Node<'_> {
        match item {
            Item::Table(t) => Node::Table(t),
            Item::ArrayOfTables(a) => Node::Tables(a),
            Item::Value(v) => of_value(v),
            Item::None => Node::Leaf,
        }
    }
    let mut node = Node::Table(root);
    let mut best = None;
    for seg in segs {
        let step = match (seg, node) {
            (Seg::Key(k), Node::Table(t)) => t
                .get_key_value(k)
                .map(|(key, item)| (key.span(), of_item(item))),
            (Seg::Key(k), Node::Inline(t)) => t
                .get_key_value(k)
                .map(|(key, item)| (key.span(), of_item(item))),
            (Seg::Index(i), Node::Tables(a)) => a.get(*i).map(|t| (t.span(), Node::Table(t))),
            (Seg::Index(i), Node::Array(a)) => a.get(*i).map(|v| (v.span(), of_value(v))),
            _ => None,
        };
        let Some((span, next)) = step else { break };
        if let Some(span) = span {
            best = Some(span.start);
        }
        node = next;
    }
    best
}

/// Every effective key with its value and origin, in schema order.
pub fn effective(figment: &Figment) -> Vec<EffectiveEntry> {
    let mut out = Vec::new();
    if let Some(dict) = figment
        .data()
        .ok()
        .and_then(|mut d| d.remove(&Profile::Default))
    {
        for (key, value) in &dict {
            walk_effective(figment, value, key, &mut out);
        }
    }
    out
}

fn walk_effective(figment: &Figment, value: &Value, key: &str, out: &mut Vec<EffectiveEntry>) {
    match value {
        Value::Dict(_, dict) => {
            for (k, v) in dict {
                walk_effective(figment, v, &join(key, k), out);
            }
        }
        Value::Array(_, items) if items.iter().any(|i| matches!(i, Value::Dict(..))) => {
            for (i, item) in items.iter().enumerate() {
                walk_effective(figment, item, &format!("{key}[{i}]"), out);
            }
        }
        _ => out.push(EffectiveEntry {
            key: key.to_owned(),
            value: serde_json::to_string(value).unwrap_or_default(),
            origin: origin_of_tag(figment, value.tag(), key)
                .unwrap_or_else(|| "default".to_owned()),
        }),
    }
}
