//! Typed reads of the JSON request fields `batch` lines and the server's bodies share: numbers,
//! integers with a floor, booleans, and `stop` (a string or a list of them), each error naming the field.

use serde_json::{Map, Value};

/// A number, if present (null counts as absent).
pub fn num(o: &Map<String, Value>, k: &str) -> Result<Option<f64>, String> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(format!("\"{k}\" must be a number")),
    }
}

/// An integer of at least `min`, if present.
pub fn int(o: &Map<String, Value>, k: &str, min: i64) -> Result<Option<i64>, String> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(x) if x >= min => Ok(Some(x)),
            _ => Err(format!("\"{k}\" must be an integer of at least {min}")),
        },
        Some(_) => Err(format!("\"{k}\" must be an integer")),
    }
}

/// A boolean, if present.
pub fn boolean(o: &Map<String, Value>, k: &str) -> Result<Option<bool>, String> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("\"{k}\" must be true or false")),
    }
}

/// `stop`: a string or an array of strings, none empty (an empty one would stop before the first
/// token); None when absent.
pub fn stop(o: &Map<String, Value>) -> Result<Option<Vec<String>>, String> {
    let list = match o.get("stop") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(String::from).ok_or("\"stop\" must be a string or an array of strings"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("\"stop\" must be a string or an array of strings".into()),
    };
    if list.iter().any(String::is_empty) {
        return Err("an empty stop string would stop before the first token".into());
    }
    Ok(Some(list))
}
