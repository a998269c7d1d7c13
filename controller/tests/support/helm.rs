//! A strict renderer for the subset of Helm's Go templates that
//! `charts/cairn` uses, so the chart is rendered and checked in every test run
//! on machines without `helm` (when `helm` is on PATH, chart.rs also compares
//! this renderer's output with `helm template`).
//!
//! Supported: text with `{{- ... -}}` trimming and comments; actions with
//! pipelines; `if`/`else if`/`else`, `with`/`else`, `define`, `end`; fields of
//! `.`/`$` (`.Values`, `.Release`, `.Chart`), `.Files.Get`; the functions
//! `include toYaml nindent indent quote default trunc trimSuffix printf
//! required contains not eq ne`. Anything else is an error, never silently wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(String),
    If(Vec<(String, Vec<Node>)>, Vec<Node>),
    With(String, Vec<Node>, Vec<Node>),
}

/// A chart loaded from disk.
pub struct Chart {
    dir: PathBuf,
    defines: BTreeMap<String, Vec<Node>>,
    templates: Vec<(String, Vec<Node>)>,
    /// Chart.yaml.
    pub meta: Value,
    /// values.yaml.
    pub values: Value,
}

/// Split template text into text and action pieces, applying trim markers.
fn lex(src: &str) -> Result<Vec<(bool, String)>, String> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let after = &rest[start + 2..];
        let (trim_prev, body_start) = match after.strip_prefix("- ") {
            Some(_) => (true, 2),
            None if after.starts_with("-\n") => (true, 2),
            None => (false, 0),
        };
        if trim_prev {
            text = text.trim_end().to_string();
        }
        out.push((false, text));
        let body_src = &after[body_start..];
        let end = body_src
            .find("}}")
            .ok_or_else(|| "unclosed {{".to_string())?;
        let mut body = &body_src[..end];
        trim_next = false;
        if let Some(b) = body.strip_suffix(" -") {
            body = b;
            trim_next = true;
        } else if body.ends_with("\n-") {
            body = &body[..body.len() - 1];
            trim_next = true;
        }
        let body = body.trim();
        if !(body.starts_with("/*") && body.ends_with("*/")) {
            out.push((true, body.to_string()));
        }
        rest = &body_src[end + 2..];
    }
    let mut text = rest.to_string();
    if trim_next {
        text = text.trim_start().to_string();
    }
    out.push((false, text));
    Ok(out)
}

/// Build the node tree; `define` blocks go into `defines`.
fn parse(
    pieces: &[(bool, String)],
    pos: &mut usize,
    defines: &mut BTreeMap<String, Vec<Node>>,
) -> Result<(Vec<Node>, String), String> {
    let mut nodes = Vec::new();
    while *pos < pieces.len() {
        let (is_action, s) = &pieces[*pos];
        *pos += 1;
        if !is_action {
            if !s.is_empty() {
                nodes.push(Node::Text(s.clone()));
            }
            continue;
        }
        let word = s.split_whitespace().next().unwrap_or("");
        match word {
            "end" | "else" => return Ok((nodes, s.clone())),
            "if" => {
                let mut branches = Vec::new();
                let mut cond = s["if".len()..].trim().to_string();
                let otherwise;
                loop {
                    let (body, term) = parse(pieces, pos, defines)?;
                    branches.push((cond.clone(), body));
                    if term == "end" {
                        otherwise = Vec::new();
                        break;
                    } else if let Some(c) = term.strip_prefix("else if ") {
                        cond = c.trim().to_string();
                    } else if term == "else" {
                        let (body, term) = parse(pieces, pos, defines)?;
                        if term != "end" {
                            return Err(format!("expected end, found {term}"));
                        }
                        otherwise = body;
                        break;
                    } else {
                        return Err(format!("unexpected {term} in if"));
                    }
                }
                nodes.push(Node::If(branches, otherwise));
            }
            "with" => {
                let p = s["with".len()..].trim().to_string();
                let (body, term) = parse(pieces, pos, defines)?;
                let otherwise = if term == "else" {
                    let (b, t) = parse(pieces, pos, defines)?;
                    if t != "end" {
                        return Err(format!("expected end, found {t}"));
                    }
                    b
                } else if term == "end" {
                    Vec::new()
                } else {
                    return Err(format!("unexpected {term} in with"));
                };
                nodes.push(Node::With(p, body, otherwise));
            }
            "define" => {
                let name = s["define".len()..].trim().trim_matches('"').to_string();
                let (body, term) = parse(pieces, pos, defines)?;
                if term != "end" {
                    return Err(format!("define {name}: expected end"));
                }
                defines.insert(name, body);
            }
            "range" | "block" | "template" | "break" | "continue" => {
                return Err(format!("unsupported action {{{{ {s} }}}}"))
            }
            _ => nodes.push(Node::Action(s.clone())),
        }
    }
    Ok((nodes, String::new()))
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn to_text(v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => return Err(format!("cannot print {other} as text (use toYaml)")),
    })
}

/// Tokens of a command: words, quoted strings and parenthesised groups.
fn tokens(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '`' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                if c == '"' && chars[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            if j >= chars.len() {
                return Err(format!("unterminated string in {s}"));
            }
            out.push(chars[i..=j].iter().collect());
            i = j + 1;
        } else if c == '(' {
            let mut depth = 0;
            let mut j = i;
            loop {
                if j >= chars.len() {
                    return Err(format!("unbalanced ( in {s}"));
                }
                match chars[j] {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            out.push(chars[i..=j].iter().collect());
            i = j + 1;
        } else {
            let mut j = i;
            while j < chars.len() && !chars[j].is_whitespace() && chars[j] != '(' {
                j += 1;
            }
            out.push(chars[i..j].iter().collect());
            i = j;
        }
    }
    Ok(out)
}

/// Split a pipeline on `|` outside strings and parentheses.
fn split_pipeline(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let (mut depth, mut quote) = (0, None::<char>);
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '`') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, '|') if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts.into_iter().map(|p| p.trim().to_string()).collect()
}

struct Scope<'a> {
    dot: &'a Value,
    root: &'a Value,
}

impl Chart {
    /// Load `dir` (Chart.yaml, values.yaml, templates/).
    pub fn load(dir: &Path) -> Result<Chart, String> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        let meta: Value =
            serde_yaml::from_str(&read(&dir.join("Chart.yaml"))?).map_err(|e| e.to_string())?;
        let values: Value =
            serde_yaml::from_str(&read(&dir.join("values.yaml"))?).map_err(|e| e.to_string())?;
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        let mut defines = BTreeMap::new();
        let mut templates = Vec::new();
        for p in names {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            if name == "NOTES.txt" {
                continue;
            }
            let pieces = lex(&read(&p)?).map_err(|e| format!("{name}: {e}"))?;
            let mut pos = 0;
            let (nodes, term) =
                parse(&pieces, &mut pos, &mut defines).map_err(|e| format!("{name}: {e}"))?;
            if !term.is_empty() {
                return Err(format!("{name}: unexpected {{{{ {term} }}}}"));
            }
            if !name.starts_with('_') {
                templates.push((name, nodes));
            }
        }
        Ok(Chart {
            dir: dir.to_path_buf(),
            defines,
            templates,
            meta,
            values,
        })
    }

    /// Render every template with `values` merged over the defaults; returns
    /// (template name, rendered text).
    pub fn render(
        &self,
        overrides: &Value,
        release: &str,
        namespace: &str,
    ) -> Result<Vec<(String, String)>, String> {
        let mut values = self.values.clone();
        merge(&mut values, overrides);
        let m = &self.meta;
        let root = serde_json::json!({
            "Values": values,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm",
                        "IsInstall": true, "IsUpgrade": false},
            "Chart": {"Name": m["name"], "Version": m["version"], "AppVersion": m["appVersion"]},
        });
        let scope = Scope {
            dot: &root,
            root: &root,
        };
        self.templates
            .iter()
            .map(|(name, nodes)| {
                let mut out = String::new();
                self.exec(nodes, &scope, &mut out)
                    .map_err(|e| format!("{name}: {e}"))?;
                Ok((name.clone(), out))
            })
            .collect()
    }

    fn exec(&self, nodes: &[Node], s: &Scope, out: &mut String) -> Result<(), String> {
        for n in nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => out.push_str(&to_text(&self.pipeline(p, s)?)?),
                Node::If(branches, otherwise) => {
                    let mut done = false;
                    for (cond, body) in branches {
                        if truthy(&self.pipeline(cond, s)?) {
                            self.exec(body, s, out)?;
                            done = true;
                            break;
                        }
                    }
                    if !done {
                        self.exec(otherwise, s, out)?;
                    }
                }
                Node::With(p, body, otherwise) => {
                    let v = self.pipeline(p, s)?;
                    if truthy(&v) {
                        let inner = Scope {
                            dot: &v,
                            root: s.root,
                        };
                        self.exec(body, &inner, out)?;
                    } else {
                        self.exec(otherwise, s, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn pipeline(&self, p: &str, s: &Scope) -> Result<Value, String> {
        let mut piped: Option<Value> = None;
        for cmd in split_pipeline(p) {
            piped = Some(self.command(&cmd, piped, s)?);
        }
        piped.ok_or_else(|| format!("empty pipeline {p:?}"))
    }

    fn arg(&self, t: &str, s: &Scope) -> Result<Value, String> {
        if let Some(inner) = t.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
            return self.pipeline(inner, s);
        }
        if t.starts_with('"') {
            return serde_json::from_str(t).map_err(|e| format!("bad string {t}: {e}"));
        }
        if let Some(raw) = t.strip_prefix('`').and_then(|t| t.strip_suffix('`')) {
            return Ok(Value::String(raw.into()));
        }
        if let Ok(n) = t.parse::<i64>() {
            return Ok(n.into());
        }
        if t == "true" || t == "false" {
            return Ok(Value::Bool(t == "true"));
        }
        let (base, path) = if t == "." {
            (s.dot, "")
        } else if let Some(p) = t.strip_prefix('$') {
            (s.root, p)
        } else if t.starts_with('.') {
            (s.dot, t)
        } else {
            return Err(format!("unknown word {t:?}"));
        };
        let mut v = base;
        for key in path.split('.').filter(|k| !k.is_empty()) {
            v = match v {
                Value::Object(o) => o.get(key).unwrap_or(&Value::Null),
                Value::Null => &Value::Null,
                other => return Err(format!("{t}: cannot take .{key} of {other}")),
            };
        }
        Ok(v.clone())
    }

    fn command(&self, cmd: &str, piped: Option<Value>, s: &Scope) -> Result<Value, String> {
        let toks = tokens(cmd)?;
        let (head, rest) = toks.split_first().ok_or("empty command")?;
        if head == ".Files.Get" {
            let name = self.arg(rest.first().ok_or(".Files.Get needs a name")?, s)?;
            let name = to_text(&name)?;
            return std::fs::read_to_string(self.dir.join(&name))
                .map(Value::String)
                .map_err(|e| format!(".Files.Get {name}: {e}"));
        }
        let is_func = !head.starts_with(['.', '$', '"', '`', '(']) && head.parse::<i64>().is_err();
        if !is_func {
            if !rest.is_empty() || piped.is_some() {
                return Err(format!("{cmd:?}: a value takes no arguments"));
            }
            return self.arg(head, s);
        }
        let mut args = rest
            .iter()
            .map(|t| self.arg(t, s))
            .collect::<Result<Vec<_>, _>>()?;
        args.extend(piped);
        let text = |i: usize| -> Result<String, String> {
            to_text(
                args.get(i)
                    .ok_or_else(|| format!("{head}: missing argument {i}"))?,
            )
        };
        let int = |i: usize| -> Result<usize, String> {
            args.get(i)
                .and_then(Value::as_u64)
                .map(|n| n as usize)
                .ok_or_else(|| format!("{head}: argument {i} must be a number"))
        };
        let want = |n: usize| -> Result<(), String> {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!("{head} takes {n} arguments, got {}", args.len()))
            }
        };
        Ok(match head.as_str() {
            "include" => {
                want(2)?;
                let name = text(0)?;
                let body = self
                    .defines
                    .get(&name)
                    .ok_or_else(|| format!("include: no template {name:?}"))?;
                let mut out = String::new();
                let inner = Scope {
                    dot: &args[1],
                    root: s.root,
                };
                self.exec(body, &inner, &mut out)?;
                Value::String(out)
            }
            "toYaml" => {
                want(1)?;
                let y = serde_yaml::to_string(&args[0]).map_err(|e| e.to_string())?;
                Value::String(y.trim_end_matches('\n').to_string())
            }
            "nindent" | "indent" => {
                want(2)?;
                let pad = " ".repeat(int(0)?);
                let body = text(1)?
                    .split('\n')
                    .map(|l| format!("{pad}{l}"))
                    .collect::<Vec<_>>()
                    .join("\n");
                Value::String(if head == "nindent" {
                    format!("\n{body}")
                } else {
                    body
                })
            }
            "quote" => {
                want(1)?;
                Value::String(serde_json::to_string(&text(0)?).map_err(|e| e.to_string())?)
            }
            "default" => {
                want(2)?;
                if truthy(&args[1]) {
                    args[1].clone()
                } else {
                    args[0].clone()
                }
            }
            "trunc" => {
                want(2)?;
                Value::String(text(1)?.chars().take(int(0)?).collect())
            }
            "trimSuffix" => {
                want(2)?;
                let (suf, t) = (text(0)?, text(1)?);
                Value::String(t.strip_suffix(suf.as_str()).unwrap_or(&t).to_string())
            }
            "printf" => {
                let fmt = text(0)?;
                let mut out = String::new();
                let mut n = 1;
                let mut chars = fmt.chars();
                while let Some(c) = chars.next() {
                    if c != '%' {
                        out.push(c);
                        continue;
                    }
                    match chars.next() {
                        Some('s' | 'd' | 'v') => {
                            out.push_str(&text(n)?);
                            n += 1;
                        }
                        Some('%') => out.push('%'),
                        other => return Err(format!("printf: unsupported verb %{other:?}")),
                    }
                }
                want(n)?;
                Value::String(out)
            }
            "required" => {
                want(2)?;
                if !truthy(&args[1]) {
                    return Err(format!("required: {}", text(0)?));
                }
                args[1].clone()
            }
            "contains" => {
                want(2)?;
                Value::Bool(text(1)?.contains(text(0)?.as_str()))
            }
            "not" => {
                want(1)?;
                Value::Bool(!truthy(&args[0]))
            }
            "eq" | "ne" => {
                want(2)?;
                Value::Bool((args[0] == args[1]) == (head == "eq"))
            }
            other => return Err(format!("unsupported function {other:?}")),
        })
    }
}

/// Merge `over` into `base` (maps deeply, everything else replaced), as
/// Helm merges `--set`/`-f` values over values.yaml.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The YAML documents of rendered templates (empty ones dropped).
pub fn documents(rendered: &[(String, String)]) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (name, text) in rendered {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v: Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| format!("{name}: rendered YAML does not parse: {e}\n{text}"))?;
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    Ok(docs)
}
