//! OpenAI tool calling: tools go to the model, its calls come back in `tool_calls` (never in
//! `content`), in one of these formats, chosen from the chat template:
//!
//! - **Native** (the template renders a `tools` variable itself): Hermes/Qwen
//!   (`<tool_call>{"name", "arguments"}</tool_call>`), Llama 3.x (a bare
//!   `{"name", "parameters"}` object, maybe after `<|python_tag|>`), Mistral
//!   (`[TOOL_CALLS][{"name", "arguments"}, …]`). The template gets the tools; the answer is
//!   parsed for that family's calls; `tool_choice` "required" or a named tool is enforced by a
//!   grammar of exactly that markup around the calls' JSON schema ("auto" leaves the model free).
//! - **Generic** (any other template; llama.cpp's fallback in `common/chat.cpp`, in our own
//!   words): the tools are described in a system message and the answer is held by a JSON-schema
//!   grammar to tool calls or a plain reply (`{"response": …}`), tool calls only, or one named
//!   tool. Earlier tool turns are written back in that JSON: an assistant's `tool_calls` as
//!   `{"tool_call(s)": …}`, `tool` results as a user turn `{"tool_response": …}` (templates that
//!   only alternate user and assistant accept that).

use super::openai::BadRequest;
use ferrite::chat::Message;
use ferrite::grammar::json_schema::Json;
use ferrite::grammar::Constraint;
use serde_json::{json, Value};

/// How a template's model writes tool calls (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Generic,
    Hermes,
    Llama3,
    Mistral,
}

impl Format {
    /// The format of a chat template's source: native when it renders `tools` and its markup
    /// names a known family, else generic.
    pub fn of_template(text: &str) -> Format {
        if !text.contains("tools") {
            Format::Generic
        } else if text.contains("<tool_call>") {
            Format::Hermes
        } else if text.contains("[TOOL_CALLS]") {
            Format::Mistral
        } else if text.contains("<|python_tag|>") || text.contains("<|start_header_id|>") {
            Format::Llama3
        } else {
            Format::Generic
        }
    }
}

/// The tools of a request and how the model may use them.
#[derive(Clone, Debug)]
pub struct Tools {
    tools: Vec<Tool>,
    choice: Choice,
    parallel: bool,
    format: Format,
    /// The request's `tools`, as given (what a native template renders).
    given: Value,
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
    /// Calls, and any text the model wrote around them.
    Calls(Vec<Call>, String),
    Text(String),
}

/// The request's `tools`, `tool_choice` and `parallel_tool_calls`; None without tools or with
/// `tool_choice` "none". `ordered` is the body with objects in their written order.
pub fn parse(o: &serde_json::Map<String, Value>, ordered: &dyn Fn() -> Option<Json>, format: Format) -> Result<Option<Tools>, BadRequest> {
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
    // Llama 3.x writes one call per answer
    let parallel = parallel && format != Format::Llama3;
    let t = Tools { tools, choice, parallel, format, given: Value::Array(list.clone()) };
    // the grammar must build (a parameter schema may use what is not supported)
    t.constraint().map_err(|e| format!("tools: {e}"))?;
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

    /// The JSON schema of one call: `{"name", "arguments"}` (Llama 3.x: `"parameters"`).
    fn call_schema(&self) -> Json {
        let args = if self.format == Format::Llama3 { "parameters" } else { "arguments" };
        let calls: Vec<Json> = self
            .callable()
            .into_iter()
            .map(|t| {
                obj(vec![
                    ("type", Json::Str("object".into())),
                    ("properties", obj(vec![("name", obj(vec![("const", Json::Str(t.name.clone()))])), (args, t.parameters.clone())])),
                    ("required", strs(&["name", args])),
                ])
            })
            .collect();
        if calls.len() == 1 {
            calls.into_iter().next().unwrap_or(Json::Null)
        } else {
            obj(vec![("anyOf", Json::Arr(calls))])
        }
    }

    /// What holds the answer: the generic format's JSON schema; for native formats a grammar of
    /// the family's markup around the calls when a call is required (none for "auto").
    pub fn constraint(&self) -> Result<Option<Constraint>, String> {
        let gbnf = |schema: &Json| -> Result<String, String> {
            let g = ferrite::grammar::json_schema::to_gbnf(schema).map_err(|e| ferrite::error::one_line(&e))?;
            // the schema's root becomes a rule of the wrapping grammar
            Ok(g.lines()
                .map(|l| l.strip_prefix("root ::= ").map_or(l.to_string(), |b| format!("tool-call-json ::= {b}")))
                .collect::<Vec<_>>()
                .join("\n"))
        };
        if self.format == Format::Generic {
            gbnf(&self.schema())?;
            return Ok(Some(Constraint::JsonSchema(self.schema().dump())));
        }
        if self.choice == Choice::Auto {
            // still check that the schemas convert, so a bad one is refused up front
            gbnf(&self.call_schema())?;
            return Ok(None);
        }
        let root = match self.format {
            Format::Hermes => {
                let one = r#""<tool_call>\n" tool-call-json "</tool_call>""#;
                if self.parallel {
                    format!("root ::= {one} (\"\\n\" {one})*\n{}", gbnf(&self.call_schema())?)
                } else {
                    format!("root ::= {one}\n{}", gbnf(&self.call_schema())?)
                }
            }
            Format::Llama3 => format!("root ::= tool-call-json\n{}", gbnf(&self.call_schema())?),
            _ => {
                let mut list = vec![("type", Json::Str("array".into())), ("items", self.call_schema()), ("minItems", Json::Num(1.into()))];
                if !self.parallel {
                    list.push(("maxItems", Json::Num(1.into())));
                }
                format!("root ::= \"[TOOL_CALLS]\" tool-call-json\n{}", gbnf(&obj(list))?)
            }
        };
        Ok(Some(Constraint::Gbnf(root)))
    }

    /// The tools for the template to render (native formats), else None.
    pub fn for_template(&self) -> Option<Value> {
        (self.format != Format::Generic).then(|| self.given.clone())
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The JSON schema the generic format's answer must follow.
    fn schema(&self) -> Json {
        let call = self.call_schema();
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
    /// the existing one's text) for the generic format; native templates describe them.
    pub fn prepare(&self, mut messages: Vec<Message>) -> Vec<Message> {
        if self.format != Format::Generic {
            return messages;
        }
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
        match self.format {
            Format::Generic => self.read_generic(text, id_base),
            f => read_native(f, text, id_base),
        }
    }

    fn read_generic(&self, text: &str, id_base: &str) -> Answer {
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
        Answer::Calls(out, String::new())
    }
}

/// One call's JSON object (`{"name", "arguments"}` or `{"name", "parameters"}`).
fn call_of(v: &Value, id: String) -> Option<Call> {
    let name = v.get("name")?.as_str()?;
    let args = v.get("arguments").or_else(|| v.get("parameters"))?;
    // some models write the arguments as JSON text
    let arguments = match args {
        Value::String(s) if serde_json::from_str::<Value>(s).is_ok_and(|a| a.is_object()) => s.clone(),
        a => a.to_string(),
    };
    Some(Call { id, name: name.to_string(), arguments })
}

/// Calls in a native family's markup; text around them is kept as content.
fn read_native(format: Format, text: &str, id_base: &str) -> Answer {
    let id = |i: usize| format!("call_{id_base}_{i}");
    match format {
        Format::Hermes => {
            let (mut calls, mut rest, mut at) = (Vec::new(), String::new(), 0);
            while let Some(open) = text[at..].find("<tool_call>") {
                let start = at + open;
                let body_start = start + "<tool_call>".len();
                let Some(close) = text[body_start..].find("</tool_call>") else { break };
                let body = &text[body_start..body_start + close];
                match serde_json::from_str::<Value>(body.trim()).ok().and_then(|v| call_of(&v, id(calls.len()))) {
                    Some(c) => {
                        rest.push_str(&text[at..start]);
                        calls.push(c);
                    }
                    None => rest.push_str(&text[at..body_start + close + "</tool_call>".len()]),
                }
                at = body_start + close + "</tool_call>".len();
            }
            rest.push_str(&text[at..]);
            if calls.is_empty() {
                Answer::Text(text.to_string())
            } else {
                Answer::Calls(calls, rest.trim().to_string())
            }
        }
        Format::Llama3 => {
            let t = text.trim();
            let t = t.strip_prefix("<|python_tag|>").unwrap_or(t).trim();
            match serde_json::from_str::<Value>(t).ok().and_then(|v| call_of(&v, id(0))) {
                Some(c) => Answer::Calls(vec![c], String::new()),
                None => Answer::Text(text.to_string()),
            }
        }
        Format::Mistral => {
            let Some(at) = text.find("[TOOL_CALLS]") else { return Answer::Text(text.to_string()) };
            let list = text[at + "[TOOL_CALLS]".len()..].trim();
            let Ok(Value::Array(items)) = serde_json::from_str::<Value>(list) else { return Answer::Text(text.to_string()) };
            let calls: Option<Vec<Call>> = items.iter().enumerate().map(|(i, v)| call_of(v, id(i))).collect();
            match calls {
                Some(c) if !c.is_empty() => Answer::Calls(c, text[..at].trim().to_string()),
                _ => Answer::Text(text.to_string()),
            }
        }
        Format::Generic => Answer::Text(text.to_string()),
    }
}

/// An assistant message that called tools, written back as the model would have written the
/// calls in `format`.
pub fn assistant_calls_text(calls: &Value, format: Format) -> Result<String, BadRequest> {
    let list = parse_calls(calls)?;
    Ok(match format {
        Format::Generic if list.len() == 1 => json!({ "tool_call": list[0] }).to_string(),
        Format::Generic => json!({ "tool_calls": list }).to_string(),
        Format::Hermes => list.iter().map(|c| format!("<tool_call>\n{c}\n</tool_call>")).collect::<Vec<_>>().join("\n"),
        Format::Llama3 => {
            list.iter().map(|c| json!({ "name": c["name"], "parameters": c["arguments"] }).to_string()).collect::<Vec<_>>().join("\n")
        }
        Format::Mistral => format!("[TOOL_CALLS]{}", Value::Array(list)),
    })
}

/// A `tool` message (a call's result) as the message the template reads it in: a user turn of
/// JSON for the generic format, the template's own `tool` role for native ones.
pub fn tool_result(id: Option<&str>, content: &str, format: Format) -> Message {
    match format {
        Format::Generic => Message::user(json!({ "tool_response": { "tool_call_id": id, "content": content } }).to_string()),
        _ => Message::new("tool", content),
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

/// The calls of an assistant message (OpenAI's `tool_calls`) as `{"name", "arguments"}`.
fn parse_calls(calls: &Value) -> Result<Vec<Value>, BadRequest> {
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
    Ok(out)
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
        parse(body.as_object().unwrap(), &ordered, Format::Generic).unwrap().unwrap()
    }

    #[test]
    fn answers_are_read_back() {
        let t = tools(json!({}));
        let a = t.read_answer(r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}"#, "1");
        assert_eq!(
            a,
            Answer::Calls(
                vec![Call { id: "call_1_0".into(), name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() }],
                String::new()
            )
        );
        assert_eq!(t.read_answer(r#"{"response": "Hello"}"#, "1"), Answer::Text("Hello".into()));
        assert_eq!(t.read_answer("{\"tool_calls\": [", "1"), Answer::Text("{\"tool_calls\": [".into()));
    }

    #[test]
    fn native_formats_are_read_back() {
        let hermes = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let Answer::Calls(calls, text) = read_native(Format::Hermes, hermes, "x") else { panic!("no calls") };
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str(), text.as_str()),
            ("get_weather", r#"{"city":"Paris"}"#, "Let me check.")
        );
        let llama = "<|python_tag|>{\"name\": \"get_time\", \"parameters\": {\"zone\": \"UTC\"}}";
        let Answer::Calls(calls, _) = read_native(Format::Llama3, llama, "x") else { panic!("no calls") };
        assert_eq!(calls[0].name, "get_time");
        let mistral = "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {\"k\": 1}}]";
        let Answer::Calls(calls, _) = read_native(Format::Mistral, mistral, "x") else { panic!("no calls") };
        assert_eq!(calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        // no calls, or broken ones: the text as it is
        assert_eq!(read_native(Format::Hermes, "Hello", "x"), Answer::Text("Hello".into()));
        assert_eq!(read_native(Format::Mistral, "[TOOL_CALLS][{", "x"), Answer::Text("[TOOL_CALLS][{".into()));
    }

    #[test]
    fn formats_come_from_the_template() {
        assert_eq!(Format::of_template("{% for m in messages %}{{ m.content }}{% endfor %}"), Format::Generic);
        assert_eq!(Format::of_template("{% if tools %}<tool_call>{% endif %}"), Format::Hermes);
        assert_eq!(Format::of_template("{% if tools %}[TOOL_CALLS]{% endif %}"), Format::Mistral);
        assert_eq!(Format::of_template("{% if tools %}<|start_header_id|>ipython{% endif %}"), Format::Llama3);
    }

    #[test]
    fn required_calls_get_each_family_s_grammar() {
        for format in [Format::Generic, Format::Hermes, Format::Llama3, Format::Mistral] {
            let mut t = tools(json!({"tool_choice": "required"}));
            t.format = format;
            let g = match t.constraint().unwrap().unwrap() {
                Constraint::Gbnf(g) => g,
                Constraint::JsonSchema(s) => ferrite::grammar::json_schema::gbnf_from_text(&s).unwrap(),
            };
            ferrite::grammar::Grammar::check(&g).unwrap_or_else(|e| panic!("{format:?}: {e}\n{g}"));
            let markup = match format {
                Format::Hermes => "<tool_call>",
                Format::Mistral => "[TOOL_CALLS]",
                Format::Llama3 => "parameters",
                Format::Generic => "tool_call",
            };
            assert!(g.contains(markup), "{format:?}: {g}");
            t.choice = Choice::Auto;
            assert_eq!(t.constraint().unwrap().is_none(), format != Format::Generic, "{format:?}");
        }
    }

    #[test]
    fn choices_shape_the_grammar() {
        let g = |extra: Value| match tools(extra).constraint().unwrap() {
            Some(Constraint::JsonSchema(s)) => ferrite::grammar::json_schema::gbnf_from_text(&s).unwrap(),
            other => panic!("{other:?}"),
        };
        assert!(g(json!({})).contains("response"));
        assert!(g(json!({"parallel_tool_calls": true})).contains("tool_calls"));
        assert!(!g(json!({"tool_choice": "required"})).contains("response"));
        let named = g(json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}));
        assert!(named.contains("get_time") && !named.contains("get_weather"), "{named}");
        assert!(g(json!({})).contains("tool_call\\\""));
    }
}
