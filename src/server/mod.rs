//! `ferrite serve`'s HTTP server (axum on tokio): OpenAI-compatible routes over the
//! many-sequences engine, which runs on its own thread; requests reach it through an
//! [`EngineHandle`] and their tokens come back through channels. Routes, status codes and field
//! names follow OpenAI's API and llama-server's extras (`tools/server/README.md` of llama.cpp),
//! so clients and scripts written for either work unchanged.

// Handlers answer errors as ready responses (axum's idiom); their size is not a concern here.
#![allow(clippy::result_large_err)]

pub mod openai;
pub mod tools;

use axum::body::Bytes;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferrite::engine::{Engine, EngineHandle, SeqEvent, SeqId, SeqParams};
use openai::Kind;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The server's settings (from `ferrite serve`'s flags).
pub struct Config {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// Requests that may wait for a slot beyond the running ones; more get 503.
    pub max_queue: usize,
    /// Longest a request that does not stream may take before it is cancelled (503).
    pub timeout: Duration,
    pub metrics: bool,
    /// The model's name in `/v1/models` and in answers.
    pub model_name: String,
    pub model_path: String,
    /// Largest request body accepted (413 beyond).
    pub body_limit: usize,
    pub log_json: bool,
    pub defaults: SeqParams,
    pub n_parallel: usize,
}

/// Shared by every handler.
struct App {
    cfg: Config,
    /// Set once the model is loaded: until then every route but `/health` answers 503.
    engine: OnceLock<EngineHandle>,
    /// Requests admitted (running or waiting for a slot).
    in_flight: AtomicUsize,
    /// Sequences of requests in flight, for shutdown.
    live: Mutex<std::collections::HashSet<SeqId>>,
    requests: AtomicU64,
    next_id: AtomicU64,
    /// Each slot's context, known once the model is loaded.
    n_ctx: AtomicU32,
    /// How the chat template's model writes tool calls, known once the model is loaded.
    tool_format: OnceLock<tools::Format>,
}

type St = Arc<App>;

/// Tokens a response carried, for the access log.
#[derive(Clone, Copy)]
struct Tokens(usize);

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An OpenAI error answer.
fn err(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(openai::error(message, kind, status.as_u16()))).into_response()
}

fn bad_request(message: &str) -> Response {
    err(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

fn unavailable(message: &str) -> Response {
    let mut r = err(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", message);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The answer for an error that ended a sequence: the request's fault (400) or the server's.
fn engine_error(e: &anyhow::Error) -> Response {
    let msg = ferrite::error::one_line(e);
    match ferrite::error::exit_code(e) {
        2 => bad_request(&msg),
        130 => unavailable("the server is shutting down"),
        _ => err(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &msg),
    }
}

fn engine(st: &App) -> Result<&EngineHandle, Response> {
    st.engine.get().ok_or_else(|| unavailable("Loading model"))
}

/// Runs `f` on the engine's thread and awaits its result.
async fn on_engine<T: Send + 'static>(st: &App, f: impl FnOnce(&mut Engine) -> T + Send + 'static) -> Result<T, Response> {
    let e = engine(st)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let gone = || err(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the engine has stopped");
    e.call(Box::new(move |eng| {
        let _ = tx.send(f(eng));
    }))
    .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

fn parse_json(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| bad_request(&format!("the request body is not valid JSON: {e}")))
}

/// A request's place among those admitted; leaves on drop.
struct Admitted(St);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn admit(st: &St) -> Result<Admitted, Response> {
    let cap = st.cfg.n_parallel + st.cfg.max_queue;
    if st.in_flight.fetch_add(1, Ordering::SeqCst) >= cap {
        st.in_flight.fetch_sub(1, Ordering::SeqCst);
        return Err(unavailable(&format!(
            "the server is busy: {} requests running or waiting (at most {cap}); retry later",
            st.cfg.n_parallel + st.cfg.max_queue
        )));
    }
    Ok(Admitted(st.clone()))
}

/// A submitted sequence: cancelled when dropped before it ended (a client that went away, a
/// timeout), which frees its cells at the engine's next step.
struct Live {
    st: St,
    id: SeqId,
    done: bool,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.st.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        if !self.done {
            if let Some(e) = self.st.engine.get() {
                e.cancel(self.id);
            }
            // the request's own access-log line may never come (its handler was dropped)
            if self.st.cfg.log_json {
                stderrln!("{}", json!({ "event": "cancelled", "seq": self.id, "reason": "client gone or timed out" }));
            } else {
                stderrln!("ferrite: sequence {} cancelled: its client went away or it timed out", self.id);
            }
        }
    }
}

async fn chat(State(st): State<St>, body: Bytes) -> Response {
    generate(st, Kind::Chat, body).await
}

async fn completions(State(st): State<St>, body: Bytes) -> Response {
    generate(st, Kind::Completion, body).await
}

async fn generate(st: St, kind: Kind, body: Bytes) -> Response {
    match generate_inner(st, kind, body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn generate_inner(st: St, kind: Kind, body: Bytes) -> Result<Response, Response> {
    let handle = engine(&st)?.clone();
    let v = parse_json(&body)?;
    let ordered = || serde_json::from_slice::<ferrite::grammar::json_schema::Json>(&body).ok();
    let mut parsed = openai::parse(kind, &v, &ordered, &st.cfg.defaults, st.tool_format.get().copied().unwrap_or(tools::Format::Generic))
        .map_err(|e| bad_request(&e))?;
    // the grammar is bound to the vocabulary before the answer starts, so a bad one is a 400
    if let Some(c) = parsed.req.params.constraint.take() {
        let g = on_engine(&st, move |e| c.compile(e.tokenizer())).await?.map_err(|e| engine_error(&e))?;
        parsed.req.params.sampling.grammar = Some(g);
    }
    st.requests.fetch_add(1, Ordering::Relaxed);
    let admitted = admit(&st)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<SeqEvent>();
    let id = handle
        .submit_with(
            parsed.req,
            Box::new(move |_, ev| {
                let _ = tx.send(ev);
            }),
        )
        .map_err(|e| engine_error(&e))?;
    st.live.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
    let mut live = Live { st: st.clone(), id, done: false };
    let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
    let rid = format!("{prefix}-{}", st.next_id.fetch_add(1, Ordering::Relaxed));
    let (created, model) = (now_s(), st.cfg.model_name.clone());
    let want_logprobs = parsed.want_logprobs;

    if !parsed.stream {
        let wait = async {
            while let Some(ev) = rx.recv().await {
                if let SeqEvent::Done(r) = ev {
                    return Some(r);
                }
            }
            None
        };
        let done = match tokio::time::timeout(st.cfg.timeout, wait).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(err(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the engine has stopped")),
            Err(_) => return Err(unavailable(&format!("the request took longer than --timeout ({} s)", st.cfg.timeout.as_secs()))),
        };
        live.done = true;
        drop(admitted);
        let f = done.map_err(|e| engine_error(&e))?;
        let mut r = Json(openai::response(kind, &rid, created, &model, &f, want_logprobs, parsed.tools.as_ref())).into_response();
        r.extensions_mut().insert(Tokens(f.tokens.len()));
        return Ok(r);
    }

    // Streaming: a task turns the sequence's events into SSE events; when the client goes away
    // the response body (the receiver) is dropped, the task's next send fails, and dropping
    // `live` cancels the sequence.
    let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel::<Result<Event, Infallible>>();
    let include_usage = parsed.include_usage;
    let tools = parsed.tools;
    tokio::spawn(async move {
        // the whole guards move into the task (not only the fields it touches)
        let (_admitted, mut live) = (admitted, live);
        let send = |v: Value| out_tx.send(Ok(Event::default().data(v.to_string()))).is_ok();
        if kind == Kind::Chat && !send(openai::chunk(kind, &rid, created, &model, None, None, Value::Null)) {
            return;
        }
        // log-probabilities of tokens whose text has not gone out yet, and the characters sent
        let (mut pending, mut sent) = (Vec::new(), 0usize);
        let take = |pending: &mut Vec<_>, sent: usize| openai::logprobs(kind, want_logprobs, &std::mem::take(pending), sent);
        while let Some(ev) = rx.recv().await {
            match ev {
                SeqEvent::Logprob(lp) => pending.push(lp),
                // with tools the answer is JSON to read back whole: it goes out at the end
                SeqEvent::Text(_) if tools.is_some() => {}
                SeqEvent::Text(t) => {
                    let lps = take(&mut pending, sent);
                    sent += t.chars().count();
                    if !send(openai::chunk(kind, &rid, created, &model, Some(&t), None, lps)) {
                        return;
                    }
                }
                SeqEvent::Done(r) => {
                    live.done = true;
                    match r {
                        Ok(f) if tools.is_some() => {
                            let (msg, reason) = openai::message(&f, tools.as_ref(), &rid);
                            let delta = match msg.get("tool_calls") {
                                Some(calls) => {
                                    let mut calls = calls.clone();
                                    for (i, c) in calls.as_array_mut().into_iter().flatten().enumerate() {
                                        c["index"] = json!(i);
                                    }
                                    json!({ "tool_calls": calls })
                                }
                                None => json!({ "content": msg["content"] }),
                            };
                            send(openai::delta_chunk(&rid, created, &model, delta, None));
                            send(openai::delta_chunk(&rid, created, &model, json!({}), Some(reason)));
                            if include_usage {
                                send(openai::usage_chunk(kind, &rid, created, &model, &f));
                            }
                        }
                        Ok(f) => {
                            let lps = if pending.is_empty() { Value::Null } else { take(&mut pending, sent) };
                            send(openai::chunk(kind, &rid, created, &model, None, Some(openai::finish_reason(f.stop_reason)), lps));
                            if include_usage {
                                send(openai::usage_chunk(kind, &rid, created, &model, &f));
                            }
                        }
                        Err(e) => {
                            let status = engine_error(&e).status().as_u16();
                            send(openai::error(&ferrite::error::one_line(&e), "server_error", status));
                        }
                    }
                    let _ = out_tx.send(Ok(Event::default().data("[DONE]")));
                    return;
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(out_rx);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response())
}

async fn health(State(st): State<St>) -> Response {
    match st.engine.get() {
        Some(_) => Json(json!({ "status": "ok" })).into_response(),
        None => unavailable("Loading model"),
    }
}

async fn models(State(st): State<St>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{ "id": st.cfg.model_name, "object": "model", "created": now_s(), "owned_by": "ferrite", "meta": { "path": st.cfg.model_path, "n_ctx": st.n_ctx.load(Ordering::Relaxed) } }],
    }))
    .into_response()
}

async fn tokenize(State(st): State<St>, body: Bytes) -> Result<Response, Response> {
    let v = parse_json(&body)?;
    let Some(text) = v.get("content").and_then(Value::as_str).map(String::from) else {
        return Err(bad_request("'content' is required: a string"));
    };
    let add_special = v.get("add_special").and_then(Value::as_bool).unwrap_or(false);
    let parse_special = v.get("parse_special").and_then(Value::as_bool).unwrap_or(true);
    let with_pieces = v.get("with_pieces").and_then(Value::as_bool).unwrap_or(false);
    let r = on_engine(&st, move |e| {
        let tok = e.tokenizer();
        tok.encode(&text, add_special, parse_special).map(|ids| {
            if with_pieces {
                let pieces: Vec<Value> =
                    ids.iter().map(|&id| json!({ "id": id, "piece": String::from_utf8_lossy(&tok.token_to_piece(id, true)) })).collect();
                json!({ "tokens": pieces })
            } else {
                json!({ "tokens": ids })
            }
        })
    })
    .await?;
    r.map(|v| Json(v).into_response()).map_err(|e| engine_error(&e))
}

async fn detokenize(State(st): State<St>, body: Bytes) -> Result<Response, Response> {
    let v = parse_json(&body)?;
    let ids: Option<Vec<u32>> =
        v.get("tokens").and_then(Value::as_array).map(|a| a.iter().filter_map(|t| t.as_u64()).map(|t| t as u32).collect());
    let Some(ids) = ids.filter(|ids| ids.len() == v["tokens"].as_array().map_or(0, Vec::len)) else {
        return Err(bad_request("'tokens' is required: an array of token ids"));
    };
    let r = on_engine(&st, move |e| {
        let n = e.tokenizer().n_vocab() as u32;
        match ids.iter().find(|&&t| t >= n) {
            Some(bad) => Err(format!("token id {bad} is outside the vocabulary ({n} tokens)")),
            None => Ok(e.tokenizer().decode(&ids, true)),
        }
    })
    .await?;
    r.map(|text| Json(json!({ "content": text })).into_response()).map_err(|e| bad_request(&e))
}

async fn props(State(st): State<St>) -> Result<Response, Response> {
    let template = on_engine(&st, |e| e.template().map(|t| t.text().to_string())).await?;
    let s = &st.cfg.defaults.sampling;
    Ok(Json(json!({
        "default_generation_settings": {
            "n_ctx": st.n_ctx.load(Ordering::Relaxed),
            "params": {
                "n_predict": st.cfg.defaults.max_tokens, "temperature": s.temp, "top_k": s.top_k, "top_p": s.top_p,
                "min_p": s.min_p, "repeat_penalty": s.repeat_penalty, "presence_penalty": s.presence_penalty,
                "frequency_penalty": s.frequency_penalty, "stop": st.cfg.defaults.stop,
            },
        },
        "total_slots": st.cfg.n_parallel,
        "model_path": st.cfg.model_path,
        "chat_template": template.unwrap_or_default(),
        "build_info": ferrite::build_info::long_version().lines().next().unwrap_or_default(),
    }))
    .into_response())
}

async fn slots(State(st): State<St>) -> Result<Response, Response> {
    let busy = on_engine(&st, |e| e.slot_busy()).await?;
    let n_ctx = st.n_ctx.load(Ordering::Relaxed);
    Ok(Json(busy.iter().enumerate().map(|(i, b)| json!({ "id": i, "n_ctx": n_ctx, "is_processing": b })).collect::<Vec<_>>())
        .into_response())
}

/// `GET /lora-adapters`: the adapters loaded and their scales for requests that name none
/// (llama-server's route).
async fn lora_adapters(State(st): State<St>) -> Result<Response, Response> {
    let list = on_engine(&st, |e| {
        e.dec
            .adapters()
            .iter()
            .zip(&e.lora_defaults)
            .enumerate()
            .map(|(i, ((a, _), s))| json!({ "id": i, "path": a.path, "scale": s }))
            .collect::<Vec<_>>()
    })
    .await?;
    Ok(Json(list).into_response())
}

/// `POST /lora-adapters` with `[{"id", "scale"}]`: the scales for requests that name none
/// (adapters not listed: 0, as in a request's own `"lora"`).
async fn set_lora_adapters(State(st): State<St>, body: Bytes) -> Result<Response, Response> {
    let v = parse_json(&body)?;
    let named = openai::lora_list(&v).map_err(|e| bad_request(&e))?;
    let set = on_engine(&st, move |e| e.lora_scales(&named).map(|scales| e.lora_defaults = scales)).await?;
    set.map_err(|m| bad_request(&ferrite::error::one_line(&m)))?;
    lora_adapters(State(st)).await
}

async fn metrics(State(st): State<St>) -> Result<Response, Response> {
    if !st.cfg.metrics {
        return Err(err(StatusCode::NOT_IMPLEMENTED, "not_supported_error", "this server was started without --metrics"));
    }
    let (stats, active, queued) = on_engine(&st, |e| (e.stats.clone(), e.n_active(), e.n_queued())).await?;
    let busy = stats.busy.as_secs_f64();
    let rate = |n: u64| if busy > 0.0 { n as f64 / busy } else { 0.0 };
    let lines = [
        ("requests_total", "counter", "Completion requests received.", st.requests.load(Ordering::Relaxed) as f64),
        ("prompt_tokens_total", "counter", "Prompt tokens processed.", stats.prompt_tokens as f64),
        ("prompt_tokens_cached_total", "counter", "Prompt tokens whose cells a slot kept (not computed).", stats.reused_tokens as f64),
        ("tokens_predicted_total", "counter", "Generated tokens.", stats.generated_tokens as f64),
        ("engine_steps_total", "counter", "Engine steps (batched decodes).", stats.steps as f64),
        ("engine_busy_seconds_total", "counter", "Seconds the engine spent decoding.", busy),
        (
            "tokens_per_second",
            "gauge",
            "Prompt and generated tokens per second of engine time.",
            rate(stats.prompt_tokens + stats.generated_tokens),
        ),
        ("predicted_tokens_seconds", "gauge", "Generated tokens per second of engine time.", rate(stats.generated_tokens)),
        ("requests_processing", "gauge", "Requests in a slot.", active as f64),
        ("requests_deferred", "gauge", "Requests waiting for a slot.", queued as f64),
        ("slots_total", "gauge", "Slots (sequences decoded together).", st.cfg.n_parallel as f64),
    ];
    let mut out = String::new();
    for (name, kind, help, v) in lines {
        out.push_str(&format!("# HELP ferrite:{name} {help}\n# TYPE ferrite:{name} {kind}\nferrite:{name} {v}\n"));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    err(StatusCode::NOT_FOUND, "not_found_error", &format!("no route {method} {}", uri.path()))
}

/// Compares without stopping at the first difference (the time taken does not tell how much of
/// a key was right).
fn same_key(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= (x ^ b.get(i).copied().unwrap_or(!x)) as usize;
    }
    diff == 0
}

/// Before a request is read: its key (when the server has one), and a body announced larger
/// than the cap, refused from its Content-Length without reading it (a body without one is cut
/// at the cap as it is read, `DefaultBodyLimit`).
async fn gate(State(st): State<St>, req: HttpRequest, next: Next) -> Response {
    let open = matches!(req.uri().path(), "/health" | "/v1/health");
    if let (Some(key), false) = (&st.cfg.api_key, open) {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_key(g.as_bytes(), key.as_bytes())) {
            return err(StatusCode::UNAUTHORIZED, "authentication_error", "Invalid API Key");
        }
    }
    let announced = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > st.cfg.body_limit as u64) {
        let msg = format!("the request body is {} bytes; at most {} are accepted", announced.unwrap_or(0), st.cfg.body_limit);
        let mut r = err(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", &msg);
        // the body stays unread: the connection cannot carry another request
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    next.run(req).await
}

/// One line per request on stderr: method, route, status, tokens, milliseconds.
async fn access_log(State(st): State<St>, req: HttpRequest, next: Next) -> Response {
    let (method, path, t0) = (req.method().clone(), req.uri().path().to_string(), Instant::now());
    let r = next.run(req).await;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let tokens = r.extensions().get::<Tokens>().map(|t| t.0);
    let status = r.status().as_u16();
    if st.cfg.log_json {
        stderrln!(
            "{}",
            json!({ "method": method.as_str(), "path": path, "status": status, "tokens": tokens, "ms": (ms * 10.0).round() / 10.0 })
        );
    } else {
        let tokens = tokens.map_or("-".to_string(), |t| t.to_string());
        stderrln!("ferrite: {method} {path} {status} tokens={tokens} {ms:.1} ms");
    }
    r
}

fn router(st: St) -> Router {
    let limit = st.cfg.body_limit;
    // OpenAI's routes answer with and without the /v1 prefix, as llama-server's do
    let openai =
        [("/health", get(health)), ("/models", get(models)), ("/chat/completions", post(chat)), ("/completions", post(completions))];
    let router = openai.into_iter().fold(Router::new(), |r, (path, m)| r.route(path, m.clone()).route(&format!("/v1{path}"), m));
    router
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/props", get(props))
        .route("/slots", get(slots))
        .route("/lora-adapters", get(lora_adapters).post(set_lora_adapters))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(st.clone(), gate))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            err(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error while handling the request")
        }))
        .layer(middleware::from_fn_with_state(st.clone(), access_log))
        .with_state(st)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Binds, loads the engine with `build` on its thread (answering 503 meanwhile), serves until
/// Ctrl-C or SIGTERM, then stops accepting, gives requests in flight a few seconds, cancels the
/// rest and returns.
pub fn run<F>(cfg: Config, build: F) -> anyhow::Result<()>
where
    F: FnOnce() -> anyhow::Result<Engine> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| ferrite::bad_input!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr()?;
        let loopback = local.ip().is_loopback();
        let addr_shown = local.to_string();
        if !loopback && cfg.api_key.is_none() {
            stderrln!("ferrite: warning: serving on {addr} without --api-key: anyone who can reach it can use it");
        }
        let st: St = Arc::new(App {
            cfg,
            engine: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            live: Mutex::new(Default::default()),
            requests: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            n_ctx: AtomicU32::new(0),
            tool_format: OnceLock::new(),
        });
        let (fail_tx, mut fail_rx) = tokio::sync::mpsc::unbounded_channel::<anyhow::Error>();
        {
            let st = st.clone();
            std::thread::Builder::new().name("ferrite-load".into()).spawn(move || match EngineHandle::spawn(build) {
                Ok((handle, thread)) => {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let _ = handle.call(Box::new(move |e| {
                        let format = e.template().map_or(tools::Format::Generic, |t| tools::Format::of_template(t.text()));
                        let _ = tx.send((e.dec.n_ctx(), format));
                    }));
                    let (n_ctx, format) = rx.recv().unwrap_or((0, tools::Format::Generic));
                    st.n_ctx.store(n_ctx, Ordering::Relaxed);
                    let _ = st.tool_format.set(format);
                    let _ = st.engine.set(handle);
                    stderrln!("ferrite: listening on http://{addr_shown} ({} slots of {n_ctx} tokens)", st.cfg.n_parallel);
                    if let Err(e) = thread.join() {
                        let _ = fail_tx.send(e);
                    }
                }
                Err(e) => {
                    let _ = fail_tx.send(e);
                }
            })?;
        }
        let app = router(st.clone());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut stopped = stop_rx.clone();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        let server = tokio::spawn(async move { server.await });
        let failure = tokio::select! {
            _ = shutdown_signal() => None,
            e = fail_rx.recv() => e,
        };
        stderrln!("ferrite: shutting down");
        let _ = stop_tx.send(true);
        // requests in flight get a few seconds to finish; then their sequences are cancelled
        let grace = Instant::now();
        while st.in_flight.load(Ordering::SeqCst) > 0 && grace.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(e) = st.engine.get() {
            for id in st.live.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                e.cancel(*id);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_compare_whole() {
        assert!(super::same_key(b"secret", b"secret"));
        assert!(!super::same_key(b"secret", b"secreT"));
        assert!(!super::same_key(b"secret", b"secret2"));
        assert!(!super::same_key(b"", b"x"));
    }
}
