//! OpenAI tool calling on any chat template: the tools are described to the model in a system
//! message, its answer is held by a JSON-schema grammar to either tool calls or a plain reply
//! (`tool_choice` "auto"), tool calls only ("required"), or one named tool, and the JSON is
//! parsed back into `tool_calls`. Calls never reach `content`.
//!
//! This is llama.cpp's "generic" tool-call format (`common/chat.cpp`), which works with every
//! template because the grammar, not the template, carries the format; the wording and schema
//! here are ours. Earlier tool turns are written back in the same JSON: an assistant's
//! `tool_calls` as `{"tool_calls": [...]}`, `tool` results as a user turn
//! `{"tool_response": ...}` (templates that only alternate user and assistant accept that).

use super::openai::BadRequest;
use ferrite::chat::Message;
use ferrite::grammar::json_schema::Json;
use serde_json::{json, Value};

/// The tools of a request and how the model may use them.
#[derive(Clone, Debug)]
pub struct Tools {
    tools: Vec<Tool>,
    choice: Choice,
    parallel: bool,
}

#[derive(Clone, Debug)]
struct Tool {
    name: String,
    description: Option<String>,
    /// The parameters' JSON schema, objects in their written order.
    parameters: Json,
}

#[derive(Clone, Debug, PartialEq)]
enum Choice {
    Auto,
    Required,
    Named(String),
}

/// One parsed call.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (OpenAI's `function.arguments`).
    pub arguments: String,
}

/// What the model answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Calls(Vec<Call>),
    Text(String),
}

/// The request's `tools`, `tool_choice` and `parallel_tool_calls`; None without tools or with
/// `tool_choice` "none". `ordered` is the body with objects in their written order.
pub fn parse(o: &serde_json::Map<String, Value>, ordered: &dyn Fn() -> Option<Json>) -> Result<Option<Tools>, BadRequest> {
    let list = match o.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) if a.is_empty() => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("\"tools\" must be an array of {\"type\": \"function\", \"function\": {...}}".into()),
    };
    let body = ordered().ok_or("the request body is not valid JSON")?;
    let Some(Json::Arr(ordered_list)) = body.get("tools") else { return Err("\"tools\" must be an array".into()) };
    let mut tools = Vec::with_capacity(list.len());
    for (i, (t, ot)) in list.iter().zip(ordered_list).enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(format!("tools[{i}]: only \"type\": \"function\" is supported"));
        }
        let Some(f) = t.get("function").filter(|f| f.is_object()) else {
            return Err(format!("tools[{i}]: \"function\" must be an object"));
        };
        let name =
            f.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).ok_or(format!("tools[{i}]: the function needs a \"name\""))?;
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') || name.len() > 64 {
            return Err(format!("tools[{i}]: the function name must be 1-64 of a-z, A-Z, 0-9, _ and -"));
        }
        if tools.iter().any(|t: &Tool| t.name == name) {
            return Err(format!("tools[{i}]: the name \"{name}\" is used twice"));
        }
        let parameters = match ot.get("function").and_then(|f| f.get("parameters")) {
            None | Some(Json::Null) => Json::Obj(vec![("type".into(), Json::Str("object".into()))]),
            Some(p @ Json::Obj(_)) => p.clone(),
            Some(_) => return Err(format!("tools[{i}]: \"parameters\" must be a JSON schema object")),
        };
        let description = f.get("description").and_then(Value::as_str).map(str::to_string);
        tools.push(Tool { name: name.to_string(), description, parameters });
    }
    let choice = match o.get("tool_choice") {
        None | Some(Value::Null) => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            "none" => return Ok(None),
            _ => {
                return Err(
                    "\"tool_choice\" must be \"auto\", \"required\", \"none\" or {\"type\": \"function\", \"function\": {\"name\"}}".into(),
                )
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or("\"tool_choice\": name the function as {\"type\": \"function\", \"function\": {\"name\": ...}}")?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(format!("\"tool_choice\" names \"{name}\", which is not among the tools"));
            }
            Choice::Named(name.to_string())
        }
    };
    // off unless asked, as llama-server (OpenAI's default is on): small models asked for a list
    // of calls tend to repeat one until max_tokens
    let parallel = match o.get("parallel_tool_calls") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("\"parallel_tool_calls\" must be true or false".into()),
    };
    let t = Tools { tools, choice, parallel };
    // the schema must make a grammar (a parameter schema may use what is not supported)
    ferrite::grammar::json_schema::to_gbnf(&t.schema()).map_err(|e| format!("tools: {}", ferrite::error::one_line(&e)))?;
    Ok(Some(t))
}

fn obj(pairs: Vec<(&str, Json)>) -> Json {
    Json::Obj(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn strs(items: &[&str]) -> Json {
    Json::Arr(items.iter().map(|s| Json::Str(s.to_string())).collect())
}

impl Tools {
    fn callable(&self) -> Vec<&Tool> {
        match &self.choice {
            Choice::Named(n) => self.tools.iter().filter(|t| &t.name == n).collect(),
            _ => self.tools.iter().collect(),
        }
    }

    /// The JSON schema the answer must follow.
    pub fn schema(&self) -> Json {
        let calls: Vec<Json> = self
            .callable()
            .into_iter()
            .map(|t| {
                obj(vec![
                    ("type", Json::Str("object".into())),
                    (
                        "properties",
                        obj(vec![("name", obj(vec![("const", Json::Str(t.name.clone()))])), ("arguments", t.parameters.clone())]),
                    ),
                    ("required", strs(&["name", "arguments"])),
                ])
            })
            .collect();
        let call = if calls.len() == 1 { calls.into_iter().next().unwrap_or(Json::Null) } else { obj(vec![("anyOf", Json::Arr(calls))]) };
        let calling = if self.parallel {
            let items = obj(vec![("type", Json::Str("array".into())), ("items", call), ("minItems", Json::Num(1.into()))]);
            obj(vec![
                ("type", Json::Str("object".into())),
                ("properties", obj(vec![("tool_calls", items)])),
                ("required", strs(&["tool_calls"])),
            ])
        } else {
            obj(vec![
                ("type", Json::Str("object".into())),
                ("properties", obj(vec![("tool_call", call)])),
                ("required", strs(&["tool_call"])),
            ])
        };
        if self.choice != Choice::Auto {
            return calling;
        }
        let reply = obj(vec![
            ("type", Json::Str("object".into())),
            ("properties", obj(vec![("response", obj(vec![("type", Json::Str("string".into()))]))])),
            ("required", strs(&["response"])),
        ]);
        obj(vec![("anyOf", Json::Arr(vec![calling, reply]))])
    }

    /// The system text that describes the tools and the answer's format.
    pub fn system_text(&self) -> String {
        let shape = if self.parallel {
            r#"{"tool_calls": [{"name": "<tool name>", "arguments": {<the tool's arguments>}}, ...]}"#
        } else {
            r#"{"tool_call": {"name": "<tool name>", "arguments": {<the tool's arguments>}}}"#
        };
        let mut s = String::from("You can call the tools listed below. Answer with one JSON object and nothing else");
        match &self.choice {
            Choice::Auto => {
                s += &format!(": to call tools, {shape}; to answer the user directly, {{\"response\": \"<your answer>\"}}.");
            }
            Choice::Required => s += &format!(", calling at least one tool: {shape}."),
            Choice::Named(n) => s += &format!(", calling the tool \"{n}\": {shape}."),
        }
        s += "\nTools:\n";
        for t in self.callable() {
            let mut d = format!("{{\"name\": {}", json!(t.name));
            if let Some(desc) = &t.description {
                d += &format!(", \"description\": {}", json!(desc));
            }
            d += &format!(", \"parameters\": {}}}\n", t.parameters.dump());
            s += &d;
        }
        s
    }

    /// `messages` with the tools described in the system message (added first, or put before
    /// the existing one's text).
    pub fn prepare(&self, mut messages: Vec<Message>) -> Vec<Message> {
        let text = self.system_text();
        match messages.first_mut() {
            Some(m) if m.role == "system" => m.content = format!("{text}\n{}", m.content),
            _ => messages.insert(0, Message::system(text)),
        }
        messages
    }

    /// The model's answer (JSON held by [`schema`](Self::schema)) as calls or text; `id_base`
    /// makes the call ids. Text that is not the expected JSON (cut short by `max_tokens`, say)
    /// is returned as it is.
    pub fn read_answer(&self, text: &str, id_base: &str) -> Answer {
        let Ok(v) = serde_json::from_str::<Value>(text.trim()) else { return Answer::Text(text.to_string()) };
        let calls: Vec<&Value> = if let Some(Value::Array(a)) = v.get("tool_calls") {
            a.iter().collect()
        } else if let Some(c) = v.get("tool_call") {
            vec![c]
        } else if let Some(Value::String(r)) = v.get("response") {
            return Answer::Text(r.clone());
        } else {
            return Answer::Text(text.to_string());
        };
        let mut out = Vec::new();
        for (i, c) in calls.into_iter().enumerate() {
            let (Some(name), Some(args)) = (c.get("name").and_then(Value::as_str), c.get("arguments")) else {
                return Answer::Text(text.to_string());
            };
            out.push(Call { id: format!("call_{id_base}_{i}"), name: name.to_string(), arguments: args.to_string() });
        }
        Answer::Calls(out)
    }
}

/// OpenAI's `tool_calls` list of a message (or, with `index`, of a stream delta).
pub fn calls_json(calls: &[Call], with_index: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } });
                if with_index {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

/// An assistant message that called tools, written back in the answer format for the template.
pub fn assistant_calls_text(calls: &Value) -> Result<String, BadRequest> {
    let Value::Array(list) = calls else { return Err("\"tool_calls\" must be an array".into()) };
    let mut out = Vec::new();
    for c in list {
        let f = c.get("function").ok_or("each tool call needs a \"function\"")?;
        let name = f.get("name").and_then(Value::as_str).ok_or("each tool call's function needs a \"name\"")?;
        // OpenAI sends the arguments as JSON text
        let args = match f.get("arguments") {
            Some(Value::String(s)) => serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.clone())),
            Some(v) => v.clone(),
            None => json!({}),
        };
        out.push(json!({ "name": name, "arguments": args }));
    }
    Ok(json!({ "tool_calls": out }).to_string())
}

/// A `tool` message (a call's result), written as the user turn the model reads it in.
pub fn tool_result_text(id: Option<&str>, content: &str) -> String {
    json!({ "tool_response": { "tool_call_id": id, "content": content } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(extra: Value) -> Tools {
        let mut body = json!({
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
            ]
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let text = body.to_string();
        let ordered = || serde_json::from_str::<Json>(&text).ok();
        parse(body.as_object().unwrap(), &ordered).unwrap().unwrap()
    }

    #[test]
    fn answers_are_read_back() {
        let t = tools(json!({}));
        let a = t.read_answer(r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}"#, "1");
        assert_eq!(
            a,
            Answer::Calls(vec![Call { id: "call_1_0".into(), name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() }])
        );
        assert_eq!(t.read_answer(r#"{"response": "Hello"}"#, "1"), Answer::Text("Hello".into()));
        assert_eq!(t.read_answer("{\"tool_calls\": [", "1"), Answer::Text("{\"tool_calls\": [".into()));
    }

    #[test]
    fn choices_shape_the_grammar() {
        let g = |extra: Value| ferrite::grammar::json_schema::to_gbnf(&tools(extra).schema()).unwrap();
        assert!(g(json!({})).contains("response"));
        assert!(g(json!({"parallel_tool_calls": true})).contains("tool_calls"));
        assert!(!g(json!({"tool_choice": "required"})).contains("response"));
        let named = g(json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}));
        assert!(named.contains("get_time") && !named.contains("get_weather"), "{named}");
        assert!(g(json!({})).contains("tool_call\\\""));
    }
}
