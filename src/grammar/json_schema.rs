//! JSON schemas turned into GBNF grammars: the answer is JSON valid under the schema.
//!
//! The shape of the grammar follows llama.cpp's `common/json-schema-to-grammar.cpp` (its
//! primitive rules, bounded whitespace `space ::= | " " | "\n"{1,2} [ \t]{0,20}`, properties in
//! the schema's order with required ones first, no properties beyond those listed unless
//! `additionalProperties` allows them, integer bounds as digit ranges); the code is ours. One
//! difference: no whitespace may follow the whole document, so the answer ends where its JSON
//! does (llama.cpp lets the model pad it with up to two newlines and twenty tabs).
//!
//! Supported: `type` (one or a list), `const`, `enum`, `anyOf`/`oneOf`, `allOf` (of objects:
//! merged), local `$ref` (`#/$defs/…`, `#/definitions/…`, recursion included), objects
//! (`properties`, `required`, `additionalProperties`), arrays (`items`, `prefixItems`,
//! `minItems`, `maxItems`), strings (`minLength`, `maxLength`, `format` date, time, date-time,
//! uuid), integers with `minimum`/`maximum`/`exclusiveMinimum`/`exclusiveMaximum`, numbers,
//! booleans, null. Not supported (refused with a message rather than silently ignored):
//! `pattern`, remote `$ref`; `number` bounds are not enforced (as in llama.cpp).

use anyhow::Result;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;

/// Deepest schema nesting followed (hostile schemas must not exhaust the stack).
const MAX_DEPTH: usize = 64;
/// Most rules a schema may produce.
const MAX_RULES: usize = 20_000;

/// JSON with objects in their written order (a schema's property order is the answer's).
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// The value of `key` in an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Num(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64)),
            _ => None,
        }
    }

    /// Compact JSON text.
    pub fn dump(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => b.to_string(),
            Json::Num(n) => n.to_string(),
            Json::Str(s) => serde_json::to_string(s).unwrap_or_default(),
            Json::Arr(a) => format!("[{}]", a.iter().map(Json::dump).collect::<Vec<_>>().join(",")),
            Json::Obj(m) => {
                let kv: Vec<String> =
                    m.iter().map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap_or_default(), v.dump())).collect();
                format!("{{{}}}", kv.join(","))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Num(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Num(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Json, E> {
                serde_json::Number::from_f64(n).map(Json::Num).ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::Str(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::Str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Json, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Json::Arr(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Json, A::Error> {
                let mut v: Vec<(String, Json)> = Vec::new();
                while let Some((k, x)) = a.next_entry::<String, Json>()? {
                    match v.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = x,
                        None => v.push((k, x)),
                    }
                }
                Ok(Json::Obj(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `text` as a JSON schema (objects keep their order).
pub fn parse_schema(text: &str) -> Result<Json> {
    let v: Json = serde_json::from_str(text).map_err(|e| crate::bad_input!("the JSON schema is not JSON: {e}"))?;
    if !matches!(v, Json::Obj(_) | Json::Bool(true)) {
        crate::bail_input!("a JSON schema must be an object");
    }
    Ok(v)
}

/// The GBNF grammar of the JSON documents valid under the schema `text`.
pub fn gbnf_from_text(text: &str) -> Result<String> {
    to_gbnf(&parse_schema(text)?)
}

/// The GBNF grammar of the JSON documents valid under `schema`.
pub fn to_gbnf(schema: &Json) -> Result<String> {
    let mut c = Converter { root: schema, rules: BTreeMap::new(), refs: BTreeMap::new() };
    let name = c.visit(schema, "root", 0)?;
    if name != "root" {
        c.rules.insert("root".into(), name);
    }
    // Nothing may follow the document: without the whitespace a nested value may end with, the
    // model must end where the JSON does (else it may pad it with newlines and tabs).
    if let Some(body) = c.rules.get("root").cloned() {
        let body = match PRIMITIVES.iter().find(|(n, _, _)| *n == body) {
            Some((_, def, _)) => def.to_string(),
            None => body,
        };
        if let Some(trimmed) = body.strip_suffix(" space") {
            c.rules.insert("root".into(), trimmed.to_string());
        }
    }
    Ok(c.rules.iter().map(|(k, v)| format!("{k} ::= {v}\n")).collect())
}

/// The primitive rules (name, body, rules it uses).
const PRIMITIVES: &[(&str, &str, &[&str])] = &[
    ("space", r#"| " " | "\n"{1,2} [ \t]{0,20}"#, &[]),
    ("boolean", r#"("true" | "false") space"#, &["space"]),
    ("null", r#""null" space"#, &["space"]),
    ("char", r#"[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})"#, &[]),
    ("integral-part", r#"[0] | [1-9] [0-9]{0,15}"#, &[]),
    ("decimal-part", r#"[0-9]{1,16}"#, &[]),
    ("integer", r#"("-"? integral-part) space"#, &["integral-part", "space"]),
    (
        "number",
        r#"("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space"#,
        &["integral-part", "decimal-part", "space"],
    ),
    ("string", r#""\"" char* "\"" space"#, &["char", "space"]),
    ("value", r#"object | array | string | number | boolean | null"#, &["object", "array", "string", "number", "boolean", "null"]),
    ("object", r#""{" space ( string ":" space value ("," space string ":" space value)* )? "}" space"#, &["string", "value", "space"]),
    ("array", r#""[" space ( value ("," space value)* )? "]" space"#, &["value", "space"]),
    ("date", r#"[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )"#, &[]),
    (
        "time",
        r#"( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )"#,
        &[],
    ),
    ("date-string", r#""\"" date "\"" space"#, &["date", "space"]),
    ("time-string", r#""\"" time "\"" space"#, &["time", "space"]),
    ("date-time-string", r#""\"" date "T" time "\"" space"#, &["date", "time", "space"]),
    ("uuid", r#""\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\"" space"#, &["space"]),
];

/// `s` as a GBNF string literal.
fn literal(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `item` repeated `min..=max` times (unbounded when `max` is None), separated by `sep`.
fn repetition(item: &str, min: u64, max: Option<u64>, sep: Option<&str>) -> String {
    let bounds = |lo: u64, hi: Option<u64>| match hi {
        Some(h) if h == lo => format!("{{{lo}}}"),
        Some(h) => format!("{{{lo},{h}}}"),
        None => format!("{{{lo},}}"),
    };
    if max == Some(0) {
        return String::new();
    }
    let Some(sep) = sep else {
        return format!("({item}){}", bounds(min, max));
    };
    let rest = format!("({sep} {item}){}", bounds(min.saturating_sub(1), max.map(|m| m - 1)));
    if min == 0 {
        format!("({item} {rest})?")
    } else {
        format!("{item} {rest}")
    }
}

/// Decimal digit strings of one length from `lo` to `hi` (same length, lo <= hi) as GBNF.
fn same_length(lo: &[u8], hi: &[u8]) -> String {
    if lo.is_empty() {
        return String::new();
    }
    let class = |a: u8, b: u8| if a == b { format!("\"{}\"", a as char) } else { format!("[{}-{}]", a as char, b as char) };
    let n = lo.len() - 1;
    let any = |k: usize| if k == 0 { String::new() } else { format!(" [0-9]{{{k}}}") };
    if lo[0] == hi[0] {
        let rest = same_length(&lo[1..], &hi[1..]);
        return format!("{}{}", class(lo[0], lo[0]), if rest.is_empty() { rest } else { format!(" {rest}") });
    }
    if lo[1..].iter().all(|&d| d == b'0') && hi[1..].iter().all(|&d| d == b'9') {
        return format!("{}{}", class(lo[0], hi[0]), any(n));
    }
    let mut alts = Vec::new();
    let nines = vec![b'9'; n];
    let zeros = vec![b'0'; n];
    let tail = |t: String| if t.is_empty() { t } else { format!(" {t}") };
    alts.push(format!("{}{}", class(lo[0], lo[0]), tail(same_length(&lo[1..], &nines))));
    if hi[0] - lo[0] > 1 {
        alts.push(format!("{}{}", class(lo[0] + 1, hi[0] - 1), any(n)));
    }
    alts.push(format!("{}{}", class(hi[0], hi[0]), tail(same_length(&zeros, &hi[1..]))));
    format!("({})", alts.join(" | "))
}

/// The integers from `lo` to `hi` (0 <= lo <= hi), written without leading zeros, as GBNF.
fn nonneg_range(lo: u64, hi: u64) -> String {
    let mut alts = Vec::new();
    let digits = |x: u64| x.to_string().len();
    for len in digits(lo)..=digits(hi) {
        let first = if len == 1 { 0 } else { 10u64.pow(len as u32 - 1) };
        let last = 10u64.saturating_pow(len as u32).saturating_sub(1);
        let (a, b) = (lo.max(first), hi.min(last));
        if a <= b {
            alts.push(same_length(a.to_string().as_bytes(), b.to_string().as_bytes()));
        }
    }
    format!("({})", alts.join(" | "))
}

/// The integers in `lo..=hi` as GBNF (bounds within ±(10^16 - 1), the grammar's 16 digits).
fn int_range(lo: i64, hi: i64) -> String {
    let neg = |a: i64, b: i64| format!("\"-\" {}", nonneg_range(a.unsigned_abs(), b.unsigned_abs()));
    if lo >= 0 {
        nonneg_range(lo as u64, hi as u64)
    } else if hi < 0 {
        neg(hi, lo)
    } else {
        format!("({} | {})", neg(-1, lo), nonneg_range(0, hi as u64))
    }
}

struct Converter<'a> {
    root: &'a Json,
    rules: BTreeMap<String, String>,
    /// `$ref` targets already given a rule.
    refs: BTreeMap<String, String>,
}

impl Converter<'_> {
    /// Adds rule `name ::= body`, under another name if `name` is taken by another body.
    fn add(&mut self, name: &str, body: String) -> Result<String> {
        let base: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
        let mut key = base.clone();
        let mut i = 0;
        while let Some(existing) = self.rules.get(&key) {
            if *existing == body {
                return Ok(key);
            }
            i += 1;
            key = format!("{base}{i}");
        }
        if self.rules.len() >= MAX_RULES {
            crate::bail_input!("the JSON schema makes more than {MAX_RULES} grammar rules");
        }
        self.rules.insert(key.clone(), body);
        Ok(key)
    }

    fn primitive(&mut self, name: &str) -> String {
        if let Some((_, body, deps)) = PRIMITIVES.iter().find(|(n, _, _)| *n == name) {
            if !self.rules.contains_key(name) {
                self.rules.insert(name.to_string(), body.to_string());
                for d in *deps {
                    self.primitive(d);
                }
            }
        }
        name.to_string()
    }

    fn visit(&mut self, s: &Json, name: &str, depth: usize) -> Result<String> {
        if depth > MAX_DEPTH {
            crate::bail_input!("the JSON schema nests deeper than {MAX_DEPTH} levels");
        }
        let sub = |k: &str| if name == "root" { k.to_string() } else { format!("{name}-{k}") };
        let body = match s {
            Json::Bool(true) => self.primitive("value"),
            Json::Obj(_) => self.body(s, name, &sub, depth)?,
            _ => crate::bail_input!("JSON schema at '{name}': a schema must be an object"),
        };
        // a rule named `root` must exist; primitives are already rules
        if name == "root" || !self.rules.contains_key(&body) {
            self.add(name, body)
        } else {
            Ok(body)
        }
    }

    fn body(&mut self, s: &Json, name: &str, sub: &dyn Fn(&str) -> String, depth: usize) -> Result<String> {
        let at = |what: &str| format!("JSON schema at '{name}': {what}");
        if let Some(r) = s.get("$ref") {
            let r = r.as_str().ok_or_else(|| crate::bad_input!("{}", at("$ref must be a string")))?.to_string();
            return self.reference(&r, depth);
        }
        if let Some(c) = s.get("const") {
            self.primitive("space");
            return Ok(format!("{} space", literal(&c.dump())));
        }
        if let Some(e) = s.get("enum") {
            let Json::Arr(vals) = e else { crate::bail_input!("{}", at("enum must be an array")) };
            if vals.is_empty() {
                crate::bail_input!("{}", at("enum is empty: nothing could match"));
            }
            self.primitive("space");
            let alts: Vec<String> = vals.iter().map(|v| literal(&v.dump())).collect();
            return Ok(format!("({}) space", alts.join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Json::Arr(alts)) = s.get(key) {
                let mut names = Vec::new();
                for (i, a) in alts.iter().enumerate() {
                    names.push(self.visit(a, &sub(&i.to_string()), depth + 1)?);
                }
                if names.is_empty() {
                    crate::bail_input!("{}", at(&format!("{key} is empty")));
                }
                return Ok(names.join(" | "));
            }
        }
        if let Some(Json::Arr(parts)) = s.get("allOf") {
            // objects merged: their properties and required lists together
            let mut props: Vec<(String, Json)> = Vec::new();
            let mut required: Vec<Json> = Vec::new();
            for p in parts {
                let p = match p.get("$ref").and_then(Json::as_str) {
                    Some(r) => self.resolve(r)?.clone(),
                    None => p.clone(),
                };
                if let Some(Json::Obj(m)) = p.get("properties") {
                    props.extend(m.iter().cloned());
                }
                if let Some(Json::Arr(r)) = p.get("required") {
                    required.extend(r.iter().cloned());
                }
            }
            let merged = Json::Obj(vec![
                ("type".into(), Json::Str("object".into())),
                ("properties".into(), Json::Obj(props)),
                ("required".into(), Json::Arr(required)),
            ]);
            return self.body(&merged, name, sub, depth);
        }
        if s.get("pattern").is_some() {
            crate::bail_input!("{}", at("'pattern' is not supported yet"));
        }
        let types: Vec<String> = match s.get("type") {
            None => Vec::new(),
            Some(Json::Str(t)) => vec![t.clone()],
            Some(Json::Arr(ts)) => ts.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
            Some(_) => crate::bail_input!("{}", at("type must be a string or a list of strings")),
        };
        if types.len() > 1 {
            let mut names = Vec::new();
            for t in &types {
                let mut one = match s {
                    Json::Obj(m) => m.clone(),
                    _ => Vec::new(),
                };
                one.retain(|(k, _)| k != "type");
                one.push(("type".into(), Json::Str(t.clone())));
                names.push(self.visit(&Json::Obj(one), &sub(t), depth + 1)?);
            }
            return Ok(names.join(" | "));
        }
        let t = types.first().map(String::as_str).unwrap_or_else(|| {
            if s.get("properties").is_some() || s.get("additionalProperties").is_some() {
                "object"
            } else if s.get("items").is_some() || s.get("prefixItems").is_some() {
                "array"
            } else {
                ""
            }
        });
        let count = |k: &str| -> Result<Option<u64>> {
            match s.get(k) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n) if n >= 0 => Ok(Some(n as u64)),
                    _ => crate::bail_input!("JSON schema at '{name}': {k} must be a count (0 or more)"),
                },
            }
        };
        Ok(match t {
            "" => {
                if s.get("type").is_none() && matches!(s, Json::Obj(m) if m.is_empty()) && name == "root" {
                    // `{}` asks for a JSON object, as llama.cpp reads it
                    self.primitive("object")
                } else {
                    self.primitive("value")
                }
            }
            "null" => self.primitive("null"),
            "boolean" => self.primitive("boolean"),
            "number" => self.primitive("number"),
            "integer" => {
                let bound =
                    |k: &str| s.get(k).map(|v| v.as_i64().ok_or_else(|| crate::bad_input!("{}", at(&format!("{k} must be an integer")))));
                let limit = 9_999_999_999_999_999i64;
                let mut lo = bound("minimum").transpose()?;
                let mut hi = bound("maximum").transpose()?;
                if let Some(x) = bound("exclusiveMinimum").transpose()? {
                    lo = Some(lo.map_or(x + 1, |l| l.max(x + 1)));
                }
                if let Some(x) = bound("exclusiveMaximum").transpose()? {
                    hi = Some(hi.map_or(x - 1, |h| h.min(x - 1)));
                }
                if lo.is_none() && hi.is_none() {
                    return Ok(self.primitive("integer"));
                }
                let (lo, hi) = (lo.unwrap_or(-limit).max(-limit), hi.unwrap_or(limit).min(limit));
                if lo > hi {
                    crate::bail_input!("{}", at("no integer lies between minimum and maximum"));
                }
                self.primitive("space");
                format!("{} space", int_range(lo, hi))
            }
            "string" => {
                if let Some(f) = s.get("format").and_then(Json::as_str) {
                    match f {
                        "date" | "time" | "date-time" => return Ok(self.primitive(&format!("{f}-string"))),
                        "uuid" => return Ok(self.primitive("uuid")),
                        _ => {}
                    }
                }
                let (min, max) = (count("minLength")?.unwrap_or(0), count("maxLength")?);
                if min == 0 && max.is_none() {
                    return Ok(self.primitive("string"));
                }
                if max.is_some_and(|m| m < min) {
                    crate::bail_input!("{}", at("maxLength is below minLength"));
                }
                self.primitive("char");
                self.primitive("space");
                format!("\"\\\"\" {} \"\\\"\" space", repetition("char", min, max, None))
            }
            "array" => {
                let (min, max) = (count("minItems")?.unwrap_or(0), count("maxItems")?);
                if max.is_some_and(|m| m < min) {
                    crate::bail_input!("{}", at("maxItems is below minItems"));
                }
                self.primitive("space");
                if let Some(Json::Arr(tuple)) = s.get("prefixItems") {
                    let mut parts = Vec::new();
                    for (i, item) in tuple.iter().enumerate() {
                        parts.push(self.visit(item, &sub(&format!("tuple-{i}")), depth + 1)?);
                    }
                    return Ok(format!("\"[\" space {} \"]\" space", parts.join(" \",\" space ")));
                }
                let item = match s.get("items") {
                    Some(i) => self.visit(i, &sub("item"), depth + 1)?,
                    None => self.primitive("value"),
                };
                format!("\"[\" space {} \"]\" space", repetition(&item, min, max, Some("\",\" space")))
            }
            "object" => self.object(s, name, sub, depth)?,
            other => crate::bail_input!("{}", at(&format!("unknown type '{other}'"))),
        })
    }

    fn object(&mut self, s: &Json, name: &str, sub: &dyn Fn(&str) -> String, depth: usize) -> Result<String> {
        let props: Vec<(String, Json)> = match s.get("properties") {
            Some(Json::Obj(m)) => m.clone(),
            Some(_) => crate::bail_input!("JSON schema at '{name}': properties must be an object"),
            None => Vec::new(),
        };
        let required: Vec<String> = match s.get("required") {
            Some(Json::Arr(r)) => r.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        let additional = match s.get("additionalProperties") {
            None | Some(Json::Bool(false)) => None,
            Some(Json::Bool(true)) => Some(Json::Bool(true)),
            Some(a) => Some(a.clone()),
        };
        if props.is_empty() && s.get("additionalProperties").is_none() {
            return Ok(self.primitive("object"));
        }
        self.primitive("space");
        // key-value rules, required properties first (in the schema's order), then optional ones
        let mut req = Vec::new();
        let mut opt = Vec::new();
        for (k, v) in &props {
            let value = self.visit(v, &sub(k), depth + 1)?;
            let kv = self.add(&format!("{}-kv", sub(k)), format!("{} space \":\" space {value}", literal(&serde_json::to_string(k)?)))?;
            if required.contains(k) {
                req.push(kv);
            } else {
                opt.push(kv);
            }
        }
        if let Some(a) = &additional {
            self.primitive("string");
            let value = self.visit(a, &sub("additional-value"), depth + 1)?;
            let kv = self.add(&format!("{}-kv", sub("additional")), format!("string \":\" space {value}"))?;
            opt.push(format!("({kv} (\",\" space {kv})*)"));
        }
        // optional properties: any of them, in order; `rest[i]` = what may follow optional i
        let mut rest: Vec<String> = vec![String::new(); opt.len()];
        for i in (0..opt.len()).rev() {
            let next: Vec<String> = (i + 1..opt.len()).map(|j| format!("\",\" space {}{}", opt[j], rest[j])).collect();
            rest[i] = if next.is_empty() { String::new() } else { format!(" ({})?", next.join(" | ")) };
        }
        let optional_after = |lead: &str| -> String {
            if opt.is_empty() {
                return String::new();
            }
            let alts: Vec<String> = (0..opt.len()).map(|i| format!("{lead}{}{}", opt[i], rest[i])).collect();
            format!(" ({})?", alts.join(" | "))
        };
        let inner =
            if req.is_empty() { optional_after("") } else { format!(" {}{}", req.join(" \",\" space "), optional_after("\",\" space ")) };
        Ok(format!("\"{{\" space{inner} \"}}\" space"))
    }

    fn resolve(&self, r: &str) -> Result<&Json> {
        let Some(path) = r.strip_prefix("#/") else {
            crate::bail_input!("JSON schema: only local references (#/...) are supported, not {r:?}");
        };
        let mut at = self.root;
        for part in path.split('/') {
            let part = part.replace("~1", "/").replace("~0", "~");
            at = match at {
                Json::Obj(_) => at.get(&part),
                Json::Arr(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            }
            .ok_or_else(|| crate::bad_input!("JSON schema: reference {r:?} points nowhere"))?;
        }
        Ok(at)
    }

    fn reference(&mut self, r: &str, depth: usize) -> Result<String> {
        if let Some(name) = self.refs.get(r) {
            return Ok(name.clone());
        }
        let target = self.resolve(r)?.clone();
        let name = format!("ref-{}", r.rsplit('/').next().unwrap_or("x"));
        // reserve the rule's name first, so a recursive schema refers to it
        let key = self.add(&name, format!("\"placeholder for {r}\""))?;
        self.refs.insert(r.to_string(), key.clone());
        let body = match &target {
            Json::Obj(_) => {
                let sub = |k: &str| format!("{key}-{k}");
                self.body(&target, &key, &sub, depth + 1)?
            }
            Json::Bool(true) => self.primitive("value"),
            _ => crate::bail_input!("JSON schema: {r:?} is not a schema"),
        };
        self.rules.insert(key.clone(), body);
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_ranges() {
        assert_eq!(nonneg_range(0, 9), "([0-9])");
        assert_eq!(nonneg_range(5, 25), "([5-9] | ([1] [0-9] | \"2\" [0-5]))".replace("[1]", "\"1\""));
        let g = to_gbnf(&parse_schema(r#"{"type":"integer","minimum":-12,"maximum":130}"#).unwrap()).unwrap();
        assert!(g.contains("root ::="), "{g}");
    }

    #[test]
    fn objects_keep_the_schema_order() {
        let g = gbnf_from_text(
            r#"{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}},"required":["zeta","alpha"]}"#,
        )
        .unwrap();
        let root = g.lines().find(|l| l.starts_with("root ::=")).unwrap();
        assert!(root.find("zeta").unwrap() < root.find("alpha").unwrap(), "{g}");
    }
}
