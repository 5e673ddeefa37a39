//! The OpenAI wire format: request bodies of `/v1/chat/completions` and `/v1/completions` into
//! engine requests (unknown fields ignored, as OpenAI's own server and llama-server do; known ones
//! checked), and the response objects and stream chunks out.

use super::tools::{self, Answer, Format, Tools};
use crate::cli::fields::{boolean, int, num};
use ferrite::chat::Message;
use ferrite::engine::{Finished, Logprob, Prompt, Request, SeqParams, TokenLogprob};
use ferrite::grammar::json_schema::{self, Json};
use ferrite::grammar::Constraint;
use ferrite::sampling::LogitBias;
use ferrite::session::StopReason;
use serde_json::{json, Value};

/// Which endpoint a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// A parsed request: what the engine runs and how to answer.
pub struct Parsed {
    pub req: Request,
    pub stream: bool,
    pub include_usage: bool,
    /// Answers carry `logprobs` (else null).
    pub want_logprobs: bool,
    /// The request's tools: the answer is read back into `tool_calls`.
    pub tools: Option<Tools>,
}

/// A request error: the message of a 400 answer.
pub type BadRequest = String;

/// A message's content: a string, or an array of parts of which only text is understood.
fn content(v: &Value) -> Result<String, BadRequest> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some(other), _) => return Err(format!("message content of type \"{other}\" is not supported (text only)")),
                    _ => return Err("each content part needs a \"type\" and, for text, a \"text\"".into()),
                }
            }
            Ok(text)
        }
        _ => Err("\"content\" must be a string or an array of text parts".into()),
    }
}

/// Parses a request body (already JSON) against the server's defaults.
pub fn parse(
    kind: Kind,
    body: &Value,
    ordered: &dyn Fn() -> Option<Json>,
    defaults: &SeqParams,
    format: Format,
) -> Result<Parsed, BadRequest> {
    let Value::Object(o) = body else { return Err("the request body must be a JSON object".into()) };
    let prompt = match kind {
        Kind::Chat => {
            let Some(Value::Array(ms)) = o.get("messages") else {
                return Err("\"messages\" is required: an array of {\"role\", \"content\"}".into());
            };
            if ms.is_empty() {
                return Err("\"messages\" is empty".into());
            }
            let mut out: Vec<Message> = Vec::with_capacity(ms.len());
            for (i, m) in ms.iter().enumerate() {
                let Some(role) = m.get("role").and_then(Value::as_str) else {
                    return Err(format!("messages[{i}]: \"role\" must be a string"));
                };
                let text = content(m.get("content").unwrap_or(&Value::Null)).map_err(|e| format!("messages[{i}]: {e}"))?;
                match (role, m.get("tool_calls").filter(|c| !c.is_null())) {
                    // earlier tool turns, in the format the model answers in (see tools.rs)
                    ("assistant", Some(calls)) => {
                        let calls = tools::assistant_calls_text(calls, format).map_err(|e| format!("messages[{i}]: {e}"))?;
                        out.push(Message::assistant(if text.is_empty() { calls } else { format!("{text}\n{calls}") }))
                    }
                    ("tool", _) => {
                        let result = tools::tool_result(m.get("tool_call_id").and_then(Value::as_str), &text, format);
                        match out.last_mut() {
                            // results of several calls: one user turn (generic format)
                            Some(last)
                                if result.role == "user" && last.role == "user" && last.content.starts_with("{\"tool_response\"") =>
                            {
                                last.content = format!("{}\n{}", last.content, result.content)
                            }
                            _ => out.push(result),
                        }
                    }
                    _ => out.push(Message::new(role, text)),
                }
            }
            Prompt::Messages(out)
        }
        Kind::Completion => match o.get("prompt") {
            Some(Value::String(s)) => Prompt::Text { text: s.clone(), raw: true },
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                Prompt::Text { text: a[0].as_str().unwrap_or_default().into(), raw: true }
            }
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => {
                let ids = a.iter().map(|v| v.as_u64().unwrap_or(u64::MAX).min(u32::MAX as u64) as u32).collect();
                Prompt::Tokens(ids)
            }
            Some(Value::Array(_)) => return Err("\"prompt\" must be a string, one string in an array, or an array of token ids".into()),
            _ => return Err("\"prompt\" is required: a string".into()),
        },
    };
    let mut p = defaults.clone();
    if let Some(n) = int(o, "n", 1)? {
        if n != 1 {
            return Err("\"n\" must be 1 (one choice per request)".into());
        }
    }
    // max_completion_tokens is OpenAI's current name, max_tokens the older one, n_predict
    // llama-server's
    for k in ["n_predict", "max_tokens", "max_completion_tokens"] {
        if let Some(n) = int(o, k, -1)? {
            p.max_tokens = n.min(i32::MAX as i64) as i32;
        }
    }
    let s = &mut p.sampling;
    if let Some(t) = num(o, "temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err("\"temperature\" must be between 0 and 2".into());
        }
        s.temp = t as f32;
    }
    if let Some(t) = num(o, "top_p")? {
        s.top_p = t as f32;
    }
    if let Some(t) = num(o, "min_p")? {
        s.min_p = t as f32;
    }
    if let Some(k) = int(o, "top_k", 0)? {
        s.top_k = k.min(i32::MAX as i64) as i32;
    }
    if let Some(x) = num(o, "repeat_penalty")? {
        s.repeat_penalty = x as f32;
    }
    for (k, slot) in [("presence_penalty", &mut s.presence_penalty), ("frequency_penalty", &mut s.frequency_penalty)] {
        if let Some(x) = num(o, k)? {
            if !(-2.0..=2.0).contains(&x) {
                return Err(format!("\"{k}\" must be between -2 and 2"));
            }
            *slot = x as f32;
        }
    }
    if let Some(seed) = o.get("seed").filter(|v| !v.is_null()) {
        match seed.as_i64() {
            Some(x) if x >= 0 => s.seed = Some(x as u64),
            Some(-1) => s.seed = None,
            _ => return Err("\"seed\" must be a non-negative integer".into()),
        }
    }
    match o.get("logit_bias") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let token: u32 = k.parse().map_err(|_| format!("logit_bias: key \"{k}\" is not a token id"))?;
                let bias = v.as_f64().ok_or_else(|| format!("logit_bias: the bias of {k} must be a number"))?;
                if !(-100.0..=100.0).contains(&bias) {
                    return Err(format!("logit_bias: the bias of {k} must be between -100 and 100"));
                }
                s.logit_bias.push(LogitBias { token, bias: bias as f32 });
            }
        }
        Some(_) => return Err("\"logit_bias\" must be an object of token id to bias".into()),
    }
    s.validate().map_err(|e| ferrite::error::one_line(&e))?;
    p.logprobs = match kind {
        // chat: "logprobs": true, then "top_logprobs": 0..=20 alternatives
        Kind::Chat => {
            let top = int(o, "top_logprobs", 0)?;
            match boolean(o, "logprobs")? {
                Some(true) => Some(top.unwrap_or(0)),
                _ if top.is_some() => return Err("\"top_logprobs\" needs \"logprobs\": true".into()),
                _ => None,
            }
        }
        // legacy completions: "logprobs": 0..=5 alternatives
        Kind::Completion => match o.get("logprobs") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(0),
            Some(_) => int(o, "logprobs", 0)?,
        },
    }
    .map(|n| n.min(u32::MAX as i64) as u32);
    let most = if kind == Kind::Chat { 20 } else { 5 };
    if p.logprobs.is_some_and(|n| n > most) {
        let field = if kind == Kind::Chat { "top_logprobs" } else { "logprobs" };
        return Err(format!("\"{field}\" must be between 0 and {most}"));
    }
    if let Some(stop) = crate::cli::fields::stop(o)? {
        p.stop = stop;
    }
    let stream = boolean(o, "stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => boolean(so, "include_usage")?.unwrap_or(false),
        Some(_) => return Err("\"stream_options\" must be an object".into()),
    };
    p.stream = stream;
    if let Some(c) = boolean(o, "cache_prompt")? {
        p.cache_prompt = c;
    }
    match o.get("lora") {
        None | Some(Value::Null) => {}
        Some(v) => p.lora = Some(lora_list(v)?),
    }
    if o.contains_key("grammar") || o.contains_key("json_schema") || o.contains_key("response_format") {
        p.constraint = constraint(o, ordered)?;
    }
    let mut prompt = prompt;
    let tools = tools::parse(o, ordered, format)?;
    if let Some(t) = &tools {
        let Prompt::Messages(ms) = prompt else { return Err("\"tools\" are for /v1/chat/completions".into()) };
        if p.constraint.is_some()
            && (o.get("response_format").is_some_and(|r| r.get("type").and_then(Value::as_str) != Some("text"))
                || o.contains_key("grammar")
                || o.contains_key("json_schema"))
        {
            return Err("\"tools\" cannot be combined with \"response_format\", \"grammar\" or \"json_schema\"".into());
        }
        prompt = Prompt::Messages(t.prepare(ms));
        p.constraint = t.constraint()?;
        p.tools = t.for_template();
        // native markup may be special tokens ([TOOL_CALLS], <|python_tag|>): keep their text
        p.show_special |= t.format() != tools::Format::Generic;
    }
    let want_logprobs = p.logprobs.is_some();
    Ok(Parsed { req: Request { prompt, params: p }, stream, include_usage, want_logprobs, tools })
}

/// OpenAI's finish_reason for a stop reason.
pub fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::Length => "length",
        _ => "stop",
    }
}

pub fn usage(f: &Finished) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.tokens.len(),
        "total_tokens": f.prompt_tokens + f.tokens.len(),
        "prompt_tokens_details": { "cached_tokens": f.cached_tokens },
    })
}

/// The assistant message of a chat answer and its finish reason: with tools, the calls the
/// answer makes (`content` null, or the text around them; finish reason `tool_calls`) or its
/// reply text.
pub fn message(f: &Finished, tools: Option<&Tools>, id: &str) -> (Value, &'static str) {
    let reason = finish_reason(f.stop_reason);
    match tools.map(|t| t.read_answer(&f.text, id)) {
        Some(Answer::Calls(calls, text)) => {
            let content = if text.is_empty() { Value::Null } else { Value::String(text) };
            (json!({ "role": "assistant", "content": content, "tool_calls": tools::calls_json(&calls, false) }), "tool_calls")
        }
        Some(Answer::Text(t)) => (json!({ "role": "assistant", "content": t }), reason),
        None => (json!({ "role": "assistant", "content": f.text }), reason),
    }
}

/// The whole answer of a request that does not stream.
pub fn response(kind: Kind, id: &str, created: u64, model: &str, f: &Finished, want: bool, tools: Option<&Tools>) -> Value {
    let reason = finish_reason(f.stop_reason);
    match kind {
        Kind::Chat => {
            let (msg, reason) = message(f, tools, id);
            json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{ "index": 0, "message": msg, "logprobs": logprobs(kind, want, &f.logprobs, 0), "finish_reason": reason }],
                "usage": usage(f),
            })
        }
        Kind::Completion => json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{ "index": 0, "text": f.text, "logprobs": logprobs(kind, want, &f.logprobs, 0), "finish_reason": reason }],
            "usage": usage(f),
        }),
    }
}

/// The request's constraint: OpenAI's `response_format` (`text`, `json_object`, or
/// `json_schema` with `{"schema": …}`), or llama-server's `grammar` (GBNF) or `json_schema`
/// fields; at most one of them. Schemas are read from `ordered` (the body with its objects in
/// their written order), so answers list properties in the schema's order.
fn constraint(o: &serde_json::Map<String, Value>, ordered: &dyn Fn() -> Option<Json>) -> Result<Option<Constraint>, BadRequest> {
    let given: Vec<&str> =
        ["grammar", "json_schema", "response_format"].into_iter().filter(|k| o.get(*k).is_some_and(|v| !v.is_null())).collect();
    if given.len() > 1 {
        return Err(format!("give one of \"grammar\", \"json_schema\" and \"response_format\", not {}", given.join(" and ")));
    }
    let Some(&field) = given.first() else { return Ok(None) };
    let body = ordered().ok_or("the request body is not valid JSON")?;
    let at = |path: &[&str]| -> Option<Json> {
        let mut v = &body;
        for k in path {
            v = v.get(k)?;
        }
        Some(v.clone())
    };
    let schema = |s: Json| -> Result<Option<Constraint>, BadRequest> {
        let text = s.dump();
        json_schema::gbnf_from_text(&text).map_err(|e| format!("{field}: {}", ferrite::error::one_line(&e)))?;
        Ok(Some(Constraint::JsonSchema(text)))
    };
    match field {
        "grammar" => match o.get("grammar") {
            Some(Value::String(g)) => Ok(Some(Constraint::Gbnf(g.clone()))),
            _ => Err("\"grammar\" must be a string (GBNF)".into()),
        },
        "json_schema" => schema(at(&["json_schema"]).unwrap_or(Json::Null)),
        _ => {
            let kind = o.get("response_format").and_then(|r| r.get("type")).and_then(Value::as_str);
            match kind {
                Some("text") => Ok(None),
                Some("json_object") => match at(&["response_format", "schema"]) {
                    Some(s) => schema(s),
                    None => schema(Json::Obj(vec![("type".into(), Json::Str("object".into()))])),
                },
                Some("json_schema") => {
                    let s = at(&["response_format", "json_schema", "schema"]).or_else(|| at(&["response_format", "schema"]));
                    match s {
                        Some(s) => schema(s),
                        None => Err("response_format: \"json_schema\" needs {\"schema\": {...}}".into()),
                    }
                }
                _ => Err("response_format: \"type\" must be \"text\", \"json_object\" or \"json_schema\"".into()),
            }
        }
    }
}

/// llama-server's adapter list `[{"id": N, "scale": X}]` (a request's `"lora"`, or the body of
/// `POST /lora-adapters`).
pub fn lora_list(v: &Value) -> Result<Vec<(usize, f32)>, BadRequest> {
    let Some(items) = v.as_array() else {
        return Err("\"lora\" must be a list of {\"id\", \"scale\"}".into());
    };
    let mut out = Vec::new();
    for item in items {
        let Some(o) = item.as_object() else {
            return Err("\"lora\" must be a list of {\"id\", \"scale\"}".into());
        };
        let id = int(o, "id", 0)?.ok_or("lora: every entry needs an \"id\"")?;
        let scale = num(o, "scale")?.ok_or("lora: every entry needs a \"scale\"")?;
        if !scale.is_finite() || scale.abs() > 1e6 {
            return Err(format!("lora: the scale of adapter {id} is out of range"));
        }
        out.push((usize::try_from(id).unwrap_or(usize::MAX), scale as f32));
    }
    Ok(out)
}

/// OpenAI's `logprobs` of a choice (null unless the request asked): chat's
/// `{"content": [{token, logprob, bytes, top_logprobs}]}`, or the legacy completion's
/// `{tokens, token_logprobs, top_logprobs, text_offset}` with offsets (in characters of the
/// generated text) from `offset`.
pub fn logprobs(kind: Kind, want: bool, entries: &[TokenLogprob], offset: usize) -> Value {
    if !want {
        return Value::Null;
    }
    let text = |l: &Logprob| String::from_utf8_lossy(&l.bytes).into_owned();
    let one = |l: &Logprob| json!({ "token": text(l), "logprob": l.logprob, "bytes": l.bytes });
    match kind {
        Kind::Chat => json!({ "content": entries.iter().map(|e| {
            let mut v = one(&e.chosen);
            v["top_logprobs"] = e.top.iter().map(one).collect();
            v
        }).collect::<Vec<_>>() }),
        Kind::Completion => {
            let mut at = offset;
            let offsets: Vec<usize> = entries
                .iter()
                .map(|e| {
                    let here = at;
                    at += text(&e.chosen).chars().count();
                    here
                })
                .collect();
            json!({
                "tokens": entries.iter().map(|e| text(&e.chosen)).collect::<Vec<_>>(),
                "token_logprobs": entries.iter().map(|e| e.chosen.logprob).collect::<Vec<_>>(),
                "top_logprobs": entries.iter().map(|e| e.top.iter().map(|l| (text(l), json!(l.logprob))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
    }
}

/// One stream chunk: text (or, for chat, the opening role), the finish reason on the last, and
/// the log-probabilities of the tokens since the last chunk where asked (`logprobs`, else null).
pub fn chunk(kind: Kind, id: &str, created: u64, model: &str, text: Option<&str>, finish: Option<&str>, logprobs: Value) -> Value {
    match kind {
        Kind::Chat => {
            let delta = match (text, finish) {
                (Some(t), _) => json!({ "content": t }),
                (None, None) => json!({ "role": "assistant", "content": "" }),
                (None, Some(_)) => json!({}),
            };
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
            })
        }
        Kind::Completion => json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{ "index": 0, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish }],
        }),
    }
}

/// A chat stream chunk carrying `delta` as it is (tool-call deltas).
pub fn delta_chunk(id: &str, created: u64, model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
    })
}

/// The usage chunk that ends a stream with `stream_options.include_usage` (no choices).
pub fn usage_chunk(kind: Kind, id: &str, created: u64, model: &str, f: &Finished) -> Value {
    let object = if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
    json!({ "id": id, "object": object, "created": created, "model": model, "choices": [], "usage": usage(f) })
}

/// An OpenAI error object.
pub fn error(message: &str, kind: &str, code: u16) -> Value {
    json!({ "error": { "message": message, "type": kind, "code": code } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> SeqParams {
        SeqParams::new(-1, Default::default())
    }

    #[test]
    fn chat_requests_parse_and_bad_fields_are_named() {
        let ok = parse(
            Kind::Chat,
            &json!({"model": "x", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 5, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}, "logit_bias": {"7": -100}}),
            &|| None,
            &defaults(),
            Format::Generic,
        )
        .unwrap();
        assert!(ok.stream && ok.include_usage);
        assert_eq!(ok.req.params.max_tokens, 5);
        assert_eq!(ok.req.params.sampling.logit_bias.len(), 1);
        assert!(matches!(&ok.req.prompt, Prompt::Messages(m) if m[0].content == "hi"));
        for (body, needle) in [
            (json!({"messages": []}), "empty"),
            (json!({}), "\"messages\" is required"),
            (json!({"messages": [{"role": "user", "content": "x"}], "n": 2}), "\"n\" must be 1"),
            (json!({"messages": [{"role": "user", "content": "x"}], "temperature": 9}), "temperature"),
            (json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}), "max_tokens"),
            (json!({"messages": [{"role": 3, "content": "x"}]}), "messages[0]"),
            (json!({"messages": [{"role": "user", "content": "x"}], "stop": [""]}), "empty stop"),
            (json!([1, 2]), "JSON object"),
        ] {
            let e = parse(Kind::Chat, &body, &|| None, &defaults(), Format::Generic).err().unwrap_or_default();
            assert!(e.contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn completion_prompts_take_strings_and_token_ids() {
        let p = parse(Kind::Completion, &json!({"prompt": [1, 2, 3]}), &|| None, &defaults(), Format::Generic).unwrap();
        assert!(matches!(p.req.prompt, Prompt::Tokens(ref t) if t == &[1, 2, 3]));
        let p = parse(Kind::Completion, &json!({"prompt": ["once"]}), &|| None, &defaults(), Format::Generic).unwrap();
        assert!(matches!(p.req.prompt, Prompt::Text { raw: true, .. }));
        assert!(parse(Kind::Completion, &json!({"prompt": 5}), &|| None, &defaults(), Format::Generic).is_err());
    }
}
