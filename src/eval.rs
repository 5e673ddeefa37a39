//! Eval suites: one case a JSONL line (a prompt or a conversation, the expected answer and how to
//! check it), parsed with every field checked, and the checks themselves — what `ferrite eval`
//! applies to each model's greedy answer.

use anyhow::Result;
use serde_json::{Map, Value};

/// How an answer is judged against `expect`.
#[derive(Debug)]
pub enum Check {
    /// The answer, trimmed, equals `expect`, trimmed.
    Exact(String),
    /// The answer contains `expect`.
    Contains(String),
    /// The regular expression matches somewhere in the answer.
    Regex(regex::Regex),
    /// The answer is JSON valid under the schema (see [`json_answer`]).
    JsonSchema(Box<jsonschema::Validator>),
    /// The answer picks `choices[expect]` (see [`picked_choice`]).
    Choice { choices: Vec<String>, expect: usize },
}

impl Check {
    /// The check's name in a suite.
    pub fn name(&self) -> &'static str {
        match self {
            Check::Exact(_) => "exact",
            Check::Contains(_) => "contains",
            Check::Regex(_) => "regex",
            Check::JsonSchema(_) => "json_schema",
            Check::Choice { .. } => "choice",
        }
    }
}

/// How the prompt reaches the model.
#[derive(Debug, Clone, PartialEq)]
pub enum CasePrompt {
    /// One user turn (through the chat template unless the run is raw).
    Text(String),
    /// A conversation of (role, content) through the chat template.
    Messages(Vec<(String, String)>),
}

/// One case of a suite.
#[derive(Debug)]
pub struct Case {
    /// The line's "id", else its line number.
    pub id: Value,
    pub prompt: CasePrompt,
    /// A system prompt for this case (chat only).
    pub system: Option<String>,
    /// What is expected, as written (for reports).
    pub expect: String,
    pub check: Check,
    pub ignore_case: bool,
    /// Tokens to generate at most (None: the run's default).
    pub max_tokens: Option<i32>,
}

/// The fields a case may have.
pub const FIELDS: &[&str] = &["id", "prompt", "messages", "system", "expect", "check", "choices", "schema", "ignore_case", "max_tokens"];

/// The checks a case may name.
pub const CHECKS: &[&str] = &["exact", "contains", "regex", "json_schema", "choice"];

/// Parses a suite (JSONL; blank lines and lines starting with `//` are skipped). Any bad line is
/// an error naming it: an eval with a broken case would report a wrong accuracy.
pub fn parse_suite(text: &str) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with("//") {
            continue;
        }
        let case = parse_case(n + 1, t).map_err(|e| crate::bad_input!("suite line {}: {e}", n + 1))?;
        cases.push(case);
    }
    if cases.is_empty() {
        crate::bail_input!("the suite has no cases (one JSON object a line: {{\"prompt\", \"expect\", \"check\"}})");
    }
    Ok(cases)
}

fn parse_case(line_no: usize, line: &str) -> Result<Case, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(o) = v else { return Err("not a JSON object".into()) };
    if let Some(k) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!("unknown field \"{k}\" (fields: {})", FIELDS.join(", ")));
    }
    let id = o.get("id").cloned().unwrap_or(Value::from(line_no));
    let prompt = match (o.get("prompt"), o.get("messages")) {
        (Some(_), Some(_)) => return Err("give \"prompt\" or \"messages\", not both".into()),
        (Some(Value::String(s)), None) => CasePrompt::Text(s.clone()),
        (None, Some(Value::Array(ms))) if !ms.is_empty() => {
            let mut out = Vec::new();
            for m in ms {
                let (Some(Value::String(role)), Some(Value::String(content))) = (m.get("role"), m.get("content")) else {
                    return Err("each message needs string \"role\" and \"content\"".into());
                };
                out.push((role.clone(), content.clone()));
            }
            CasePrompt::Messages(out)
        }
        (Some(_), None) => return Err("\"prompt\" must be a string".into()),
        (None, Some(_)) => return Err("\"messages\" must be a non-empty array".into()),
        (None, None) => return Err("no \"prompt\" or \"messages\"".into()),
    };
    let system = match o.get("system") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("\"system\" must be a string".into()),
    };
    let ignore_case = match o.get("ignore_case") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("\"ignore_case\" must be true or false".into()),
    };
    let max_tokens = match o.get("max_tokens") {
        None => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => Some(n.min(i32::MAX as i64) as i32),
            _ => return Err("\"max_tokens\" must be a positive integer".into()),
        },
    };
    let name = match o.get("check") {
        None => "exact",
        Some(Value::String(s)) if CHECKS.contains(&s.as_str()) => s.as_str(),
        Some(c) => return Err(format!("\"check\": {c} is not one of {}", CHECKS.join(", "))),
    };
    let (check, expect) = check(name, &o, ignore_case)?;
    if name != "choice" && o.contains_key("choices") {
        return Err("\"choices\" belongs to \"check\": \"choice\"".into());
    }
    if name != "json_schema" && o.contains_key("schema") {
        return Err("\"schema\" belongs to \"check\": \"json_schema\"".into());
    }
    Ok(Case { id, prompt, system, expect, check, ignore_case, max_tokens })
}

fn expect_str(o: &Map<String, Value>) -> Result<String, String> {
    match o.get("expect") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err("\"expect\" is empty".into()),
        Some(_) => Err("\"expect\" must be a string".into()),
        None => Err("no \"expect\"".into()),
    }
}

fn check(name: &str, o: &Map<String, Value>, ignore_case: bool) -> Result<(Check, String), String> {
    Ok(match name {
        "exact" => {
            let e = expect_str(o)?;
            (Check::Exact(e.trim().to_string()), e)
        }
        "contains" => {
            let e = expect_str(o)?;
            (Check::Contains(e.clone()), e)
        }
        "regex" => {
            let e = expect_str(o)?;
            let re = regex::RegexBuilder::new(&e)
                .case_insensitive(ignore_case)
                .size_limit(1 << 20)
                .build()
                .map_err(|err| format!("\"expect\" is not a regular expression: {}", err.to_string().replace('\n', " ")))?;
            (Check::Regex(re), e)
        }
        "json_schema" => {
            // the schema in "schema", or "expect" itself when it is an object
            let schema = match (o.get("schema"), o.get("expect")) {
                (Some(s), None) | (None, Some(s)) => s,
                (Some(_), Some(_)) => return Err("give the schema in \"schema\" or in \"expect\", not both".into()),
                (None, None) => return Err("no \"schema\"".into()),
            };
            if !schema.is_object() && !schema.is_boolean() {
                return Err("the schema must be a JSON object".into());
            }
            let v = jsonschema::validator_for(schema).map_err(|e| format!("bad schema: {e}"))?;
            (Check::JsonSchema(Box::new(v)), schema.to_string())
        }
        "choice" => {
            let Some(Value::Array(cs)) = o.get("choices") else { return Err("\"check\": \"choice\" needs \"choices\": [...]".into()) };
            let mut choices = Vec::new();
            for c in cs {
                match c.as_str().map(str::trim) {
                    Some(s) if !s.is_empty() => choices.push(s.to_string()),
                    _ => return Err("\"choices\" must be non-empty strings".into()),
                }
            }
            if choices.len() < 2 {
                return Err("\"choices\" needs at least two".into());
            }
            let e = expect_str(o)?;
            let Some(expect) = choices.iter().position(|c| c.to_lowercase() == e.trim().to_lowercase()) else {
                return Err(format!("\"expect\" {e:?} is not one of \"choices\""));
            };
            (Check::Choice { choices, expect }, e)
        }
        _ => unreachable!("checked against CHECKS"),
    })
}

impl Case {
    /// Whether `answer` passes this case.
    pub fn passes(&self, answer: &str) -> bool {
        let fold = |s: &str| if self.ignore_case { s.to_lowercase() } else { s.to_string() };
        match &self.check {
            Check::Exact(e) => fold(answer.trim()) == fold(e),
            Check::Contains(e) => fold(answer).contains(&fold(e)),
            Check::Regex(re) => re.is_match(answer),
            Check::JsonSchema(v) => json_answer(answer).is_some_and(|j| v.is_valid(&j)),
            Check::Choice { choices, expect } => picked_choice(answer, choices) == Some(*expect),
        }
    }
}

/// The JSON value of an answer: the whole answer (trimmed), else the first Markdown code block
/// in it (```json … ```), as chat models often wrap JSON in one and talk around it.
pub fn json_answer(answer: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str(answer.trim()) {
        return Some(v);
    }
    let (_, rest) = answer.split_once("```")?;
    // the fence's info string ("json") ends its line
    let (_, body) = rest.split_once('\n')?;
    let body = body.split_once("```").map(|(b, _)| b).unwrap_or(body);
    serde_json::from_str(body.trim()).ok()
}

/// Whether `hay[at..at + len]` is a whole word: no letter or digit right before or after it.
fn whole_word(hay: &str, at: usize, len: usize) -> bool {
    let before = hay[..at].chars().next_back().is_none_or(|c| !c.is_alphanumeric());
    let after = hay[at + len..].chars().next().is_none_or(|c| !c.is_alphanumeric());
    before && after
}

/// The choice an answer picks, case-insensitively: the one it starts with (past quotes,
/// brackets and other punctuation; the longest if several), else the only choice it names as a
/// whole word anywhere. None when it names none, or several without starting with one.
pub fn picked_choice(answer: &str, choices: &[String]) -> Option<usize> {
    let a = answer.to_lowercase();
    let lower: Vec<String> = choices.iter().map(|c| c.to_lowercase()).collect();
    let start = a.trim_start_matches(|c: char| c.is_whitespace() || (!c.is_alphanumeric() && c != '-' && c != '+'));
    let at = a.len() - start.len();
    let first = lower
        .iter()
        .enumerate()
        .filter(|(_, c)| start.starts_with(c.as_str()) && whole_word(&a, at, c.len()))
        .max_by_key(|(_, c)| c.len())
        .map(|(i, _)| i);
    if first.is_some() {
        return first;
    }
    let named: Vec<usize> = lower
        .iter()
        .enumerate()
        .filter(|(_, c)| a.match_indices(c.as_str()).any(|(i, m)| whole_word(&a, i, m.len())))
        .map(|(i, _)| i)
        .collect();
    match named[..] {
        [one] => Some(one),
        _ => None,
    }
}

/// The Wilson score interval of `passed` out of `total` at 95 % (z = 1.96): sound at small
/// counts and at 0 % or 100 %, where the normal approximation collapses to a point.
pub fn wilson_interval(passed: usize, total: usize) -> (f64, f64) {
    if total == 0 {
        return (0.0, 1.0);
    }
    let (n, p, z) = (total as f64, passed as f64 / total as f64, 1.959_963_984_540_054f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(line: &str) -> Case {
        parse_case(1, line).unwrap()
    }

    #[test]
    fn checks_judge_answers() {
        let c = case(r#"{"prompt": "2+2?", "expect": "4"}"#);
        assert!(c.passes(" 4\n") && !c.passes("4."));
        let c = case(r#"{"prompt": "p", "expect": "paris", "check": "contains", "ignore_case": true}"#);
        assert!(c.passes("It is Paris.") && !c.passes("Lyon"));
        let c = case(r#"{"prompt": "p", "expect": "^\\s*\\d+\\s*$", "check": "regex"}"#);
        assert!(c.passes(" 42 ") && !c.passes("forty-two"));
        let c = case(
            r#"{"prompt": "p", "check": "json_schema", "schema": {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}}"#,
        );
        assert!(c.passes(r#"{"a": 1}"#) && c.passes("```json\n{\"a\": 2}\n```") && !c.passes(r#"{"a": "x"}"#) && !c.passes("a: 1"));
        assert!(c.passes("Here:\n```json\n{\"a\": 3}\n```\nThis object has a key") && !c.passes("```\n{\"a\": 3"));
        let c = case(r#"{"prompt": "p", "check": "choice", "choices": ["A", "B", "C"], "expect": "b"}"#);
        assert!(c.passes("B") && c.passes("(B) because") && c.passes("The answer is B.") && !c.passes("A or B") && !c.passes("none"));
    }

    #[test]
    fn choices_prefer_the_start_then_a_single_mention() {
        let cs: Vec<String> = ["yes", "no", "not sure"].iter().map(|s| s.to_string()).collect();
        assert_eq!(picked_choice("Not sure, maybe", &cs), Some(2));
        assert_eq!(picked_choice("\"No.\"", &cs), Some(1));
        assert_eq!(picked_choice("I would say yes", &cs), Some(0));
        assert_eq!(picked_choice("yesterday", &cs), None);
        assert_eq!(picked_choice("I say yes and no", &cs), None);
    }

    #[test]
    fn bad_cases_name_their_problem() {
        for (line, want) in [
            (r#"{"prompt": "p"}"#, "no \"expect\""),
            (r#"{"prompt": "p", "expect": "x", "check": "fuzzy"}"#, "not one of"),
            (r#"{"prompt": "p", "expect": "(", "check": "regex"}"#, "not a regular expression"),
            (r#"{"prompt": "p", "expect": "D", "check": "choice", "choices": ["A", "B"]}"#, "not one of \"choices\""),
            (r#"{"prompt": "p", "expect": "x", "colour": 1}"#, "unknown field"),
            (r#"{"prompt": "p", "check": "json_schema", "schema": {"type": 12}}"#, "bad schema"),
            (r#"{"expect": "x"}"#, "no \"prompt\""),
        ] {
            let e = parse_case(3, line).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
        assert!(parse_suite("\n// nothing\n").is_err());
    }

    #[test]
    fn wilson_intervals_are_sane() {
        let (lo, hi) = wilson_interval(10, 10);
        assert!(lo > 0.69 && lo < 0.73 && (hi - 1.0).abs() < 1e-12, "{lo} {hi}");
        let (lo, hi) = wilson_interval(5, 10);
        assert!((lo - 0.2366).abs() < 1e-3 && (hi - 0.7634).abs() < 1e-3, "{lo} {hi}");
    }
}
