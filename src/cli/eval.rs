//! `ferrite eval`: a user's own eval suite over several models — each answers every case
//! greedily through the many-sequences engine; the report gives per model its file size,
//! accuracy (with a 95 % interval), speed and peak memory, and names the smallest model that
//! passes `--min-accuracy`. `--json` for scripts, `--plot` for a picture of accuracy by size.

use super::{common, files, output, ContextArgs, ModelArgs};
use anyhow::Result;
use ferrite::chat::Message;
use ferrite::engine::{Engine, EngineHandle, Prompt, Request, SeqEvent, SeqId, SeqParams};
use ferrite::error::Interrupted;
use ferrite::eval::{Case, CasePrompt};
use ferrite::sampling::SamplerConfig;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The suite: JSONL, one case a line: {"prompt" | "messages", "expect", "check":
    /// exact|contains|regex|json_schema|choice, "choices", "schema", "system", "max_tokens",
    /// "ignore_case", "id"}
    #[arg(value_name = "SUITE.jsonl")]
    pub suite: PathBuf,
    /// A model to evaluate (a GGUF path or a known name); repeat for each
    #[arg(short = 'm', long = "model", value_name = "MODEL", required = true)]
    pub models: Vec<String>,
    #[command(flatten)]
    pub ctx: ContextArgs,
    /// The accuracy a model must reach to pass: a fraction (0.8) or a percentage (80%)
    #[arg(long = "min-accuracy", value_name = "X", value_parser = parse_accuracy)]
    pub min_accuracy: Option<f64>,
    /// Sequences answered together (llama.cpp's -np); each has a context of -c tokens
    #[arg(long = "parallel", default_value_t = 4, value_name = "N")]
    pub parallel: u32,
    /// Tokens to generate at most per case (a case's "max_tokens" overrides it)
    #[arg(short = 'n', long = "n-predict", default_value_t = 256, value_name = "N")]
    pub n_predict: u32,
    /// Plain completion of each prompt: no chat template
    #[arg(long)]
    pub raw: bool,
    /// System prompt of cases that bring none
    #[arg(long, visible_alias = "system-prompt", value_name = "TEXT")]
    pub system: Option<String>,
    /// Chat template of the models whose file has none (a built-in name or a Jinja file); a
    /// model's own template is always used
    #[arg(long = "chat-template", value_name = "NAME|FILE")]
    pub chat_template: Option<String>,
    /// List each failed case with the model's answer
    #[arg(long = "show-failures")]
    pub show_failures: bool,
    /// Print the report as JSON (with every case's answer) instead of a table
    #[arg(long)]
    pub json: bool,
    /// Draw accuracy against file size to FILE (SVG)
    #[arg(long = "plot", value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Only errors on stderr
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

fn parse_accuracy(s: &str) -> Result<f64, String> {
    let (num, pct) = match s.strip_suffix('%') {
        Some(n) => (n, true),
        None => (s, false),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    let v = if pct { v / 100.0 } else { v };
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{s:?}: give a fraction 0..1 or a percentage 0%..100%"));
    }
    Ok(v)
}

/// The largest suite read.
const SUITE_CAP: u64 = 64 << 20;

/// One case's outcome for one model.
struct Outcome {
    answer: String,
    passed: bool,
    completion_tokens: usize,
    /// The engine's error, when the case could not be answered (counts as failed).
    error: Option<String>,
}

/// One model's results.
struct ModelRun {
    path: PathBuf,
    size: u64,
    outcomes: Vec<Outcome>,
    passed: usize,
    seconds: f64,
    completion_tokens: usize,
    /// Peak resident memory while this model ran, and whether it is this model's alone (false:
    /// the process's peak so far, where the kernel cannot reset the mark).
    peak_rss: Option<(u64, bool)>,
}

impl ModelRun {
    fn accuracy(&self) -> f64 {
        self.passed as f64 / self.outcomes.len().max(1) as f64
    }
    fn tokens_per_second(&self) -> f64 {
        self.completion_tokens as f64 / self.seconds.max(1e-9)
    }
    fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| self.path.display().to_string())
    }
}

pub fn main(a: Args) -> Result<()> {
    common::install_interrupt();
    if a.parallel == 0 || a.parallel > ferrite::decoder::MAX_SEQ {
        ferrite::bail_input!("--parallel: {} is out of range 1..={}", a.parallel, ferrite::decoder::MAX_SEQ);
    }
    if a.n_predict == 0 {
        ferrite::bail_input!("--n-predict must be at least 1");
    }
    let suite = if a.suite.as_os_str() == "-" {
        files::utf8(files::read_stdin_capped(SUITE_CAP, "suite", "split the suite")?, "standard input")?
    } else {
        files::utf8(files::read_capped(&a.suite, SUITE_CAP, "suite", "split the suite")?, &a.suite.display().to_string())?
    };
    let cases = ferrite::eval::parse_suite(&suite)?;
    // every model is found, and the plot can be written, before any is run
    let mut paths = Vec::new();
    for m in &a.models {
        let p = ferrite::catalogue::resolve(Some(m))?;
        let size = files::check_regular(&p, u64::MAX, "model", "")?.len();
        paths.push((p, size));
    }
    if let Some(plot) = &a.plot {
        if std::fs::metadata(plot).is_ok_and(|m| !m.is_file()) {
            ferrite::bail_input!("{}: exists and is not a regular file; give a file path for the plot", plot.display());
        }
    }
    let quiet = a.quiet || a.json;
    let mut runs = Vec::new();
    for (path, size) in paths {
        let run = run_model(&a, &path, size, &cases, quiet)?;
        if !quiet {
            stderrln!(
                "eval: {}: {}/{} passed ({:.1}%), {:.1} t/s",
                run.name(),
                run.passed,
                cases.len(),
                100.0 * run.accuracy(),
                run.tokens_per_second()
            );
        }
        runs.push(run);
    }
    let chosen = smallest_passing(&runs, a.min_accuracy);
    if a.json {
        output::println(&report_json(&a, &cases, &runs, chosen).to_string())?;
    } else {
        output::print(&report_text(&a, &cases, &runs, chosen))?;
    }
    if let Some(plot) = &a.plot {
        let svg = plot_svg(&runs, a.min_accuracy)?;
        let mut f = ferrite::atomic_file::AtomicFile::create(plot)?;
        f.write_all(svg.as_bytes())?;
        f.commit()?;
        if !quiet {
            stderrln!("eval: plot written to {}", plot.display());
        }
    }
    match (a.min_accuracy, chosen) {
        (Some(min), None) => Err(anyhow::Error::new(ferrite::error::CheckFailed(format!(
            "no model reaches --min-accuracy {:.1}% (best: {:.1}%)",
            100.0 * min,
            100.0 * runs.iter().map(ModelRun::accuracy).fold(0.0, f64::max)
        )))),
        _ => Ok(()),
    }
}

/// The smallest model reaching `min` (without `min`: the smallest of those with the best
/// accuracy); ties in size go to the one given first.
fn smallest_passing(runs: &[ModelRun], min: Option<f64>) -> Option<usize> {
    let best = runs.iter().map(ModelRun::accuracy).fold(0.0, f64::max);
    let bar = min.unwrap_or(best);
    // a tiny slack: accuracy is a ratio of counts, the bar may be typed as a decimal
    runs.iter().enumerate().filter(|(_, r)| r.accuracy() + 1e-12 >= bar).min_by_key(|(i, r)| (r.size, *i)).map(|(i, _)| i)
}

/// The request for one case, as `ferrite run` would make it.
fn request(case: &Case, a: &Args) -> Request {
    let system = case.system.clone().or_else(|| a.system.clone()).filter(|_| !a.raw);
    let prompt = match (&case.prompt, system) {
        (CasePrompt::Text(t), None) => Prompt::Text { text: t.clone(), raw: a.raw },
        (CasePrompt::Text(t), Some(s)) => {
            Prompt::Messages(vec![Message { role: "system".into(), content: s }, Message { role: "user".into(), content: t.clone() }])
        }
        (CasePrompt::Messages(ms), s) => {
            let mut out: Vec<Message> = ms.iter().map(|(r, c)| Message { role: r.clone(), content: c.clone() }).collect();
            if let (Some(s), false) = (s, out.first().is_some_and(|m| m.role == "system")) {
                out.insert(0, Message { role: "system".into(), content: s });
            }
            Prompt::Messages(out)
        }
    };
    let max = case.max_tokens.unwrap_or(a.n_predict.min(i32::MAX as u32) as i32);
    Request { prompt, params: SeqParams::new(max, SamplerConfig::greedy()) }
}

fn run_model(a: &Args, path: &std::path::Path, size: u64, cases: &[Case], quiet: bool) -> Result<ModelRun> {
    let own_peak = reset_peak_rss();
    let ma = ModelArgs { model: Some(path.display().to_string()) };
    let (ca, flag, parallel, raw) = (a.ctx.clone(), a.chat_template.clone(), a.parallel, a.raw);
    let name = path.display().to_string();
    let messages = cases.iter().any(|c| matches!(c.prompt, CasePrompt::Messages(_)));
    let (handle, thread) = EngineHandle::spawn(move || {
        let loaded = common::load(&ma, &ca, quiet)?;
        // an eval compares models as they are shipped: --chat-template serves those without one
        let own = loaded.model.file.get_str("tokenizer.chat_template")?.is_some();
        let (template, reason) = common::template(&loaded.model.file, flag.as_deref().filter(|_| !own))?;
        if template.is_none() && !raw {
            if messages {
                ferrite::bail_input!("{name}: {reason}, and the suite has \"messages\" cases; give --chat-template");
            }
            if !quiet {
                stderrln!("ferrite: {name}: {reason}; running the prompts raw");
            }
        }
        let opts = ferrite::decoder::ContextOptions { n_seq: parallel, ..ca.options()? };
        let mut engine = Engine::new(loaded.model.clone(), loaded.tok.clone(), template, &opts)?;
        engine.set_interrupt(&common::INTERRUPTED);
        Ok(engine)
    })?;
    let t0 = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel::<(SeqId, SeqEvent)>();
    let mut index_of: HashMap<SeqId, usize> = HashMap::new();
    for (i, c) in cases.iter().enumerate() {
        index_of.insert(handle.submit(request(c, a), tx.clone())?, i);
    }
    drop(tx);
    drop(handle);
    let mut outcomes: Vec<Option<Outcome>> = cases.iter().map(|_| None).collect();
    let mut remaining = cases.len();
    while remaining > 0 {
        let (i, res) = match common::next_done(&rx, &index_of) {
            common::Waited::Done(i, res) => (i, res),
            common::Waited::Interrupted => return Err(anyhow::Error::new(Interrupted)),
            common::Waited::Closed => break,
        };
        remaining -= 1;
        outcomes[i] = Some(match res {
            Ok(f) => Outcome { passed: cases[i].passes(&f.text), completion_tokens: f.tokens.len(), answer: f.text, error: None },
            Err(e) if e.downcast_ref::<Interrupted>().is_some() => return Err(anyhow::Error::new(Interrupted)),
            Err(e) => Outcome { answer: String::new(), passed: false, completion_tokens: 0, error: Some(ferrite::error::one_line(&e)) },
        });
    }
    let seconds = t0.elapsed().as_secs_f64();
    let peak = peak_rss().map(|b| (b, own_peak));
    thread.join()?;
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome { answer: String::new(), passed: false, completion_tokens: 0, error: Some("no answer".into()) }))
        .collect();
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let completion_tokens = outcomes.iter().map(|o| o.completion_tokens).sum();
    Ok(ModelRun { path: path.to_path_buf(), size, outcomes, passed, seconds, completion_tokens, peak_rss: peak })
}

/// Resets the kernel's peak-RSS mark of this process to its current RSS (Linux's
/// `/proc/self/clear_refs`, value 5), so the next model's peak is its own; false where that is
/// not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// This process's peak resident memory (VmHWM) in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn report_text(a: &Args, cases: &[Case], runs: &[ModelRun], chosen: Option<usize>) -> String {
    use std::fmt::Write;
    let rows: Vec<[String; 7]> = runs
        .iter()
        .map(|r| {
            let (lo, hi) = ferrite::eval::wilson_interval(r.passed, cases.len());
            let rss = match r.peak_rss {
                Some((b, true)) => files::size(b),
                Some((b, false)) => format!("≤{}", files::size(b)),
                None => "-".into(),
            };
            [
                r.name(),
                files::size(r.size),
                format!("{}/{}", r.passed, cases.len()),
                pct(r.accuracy()),
                format!("{}–{}", pct(lo), pct(hi)),
                format!("{:.1}", r.tokens_per_second()),
                rss,
            ]
        })
        .collect();
    let head = ["model", "size", "passed", "accuracy", "95% interval", "t/s", "peak RSS"];
    let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).chain([head[c].len()]).max().unwrap_or(0);
    let widths: Vec<usize> = (0..head.len()).map(width).collect();
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (c, cell) in cells.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c == 0 {
                let _ = write!(s, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(s, "  {}{cell}", " ".repeat(pad));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut s = line(&head.map(String::from));
    for r in &rows {
        s += &line(r);
    }
    match (chosen, a.min_accuracy) {
        (Some(i), Some(min)) => {
            let _ = writeln!(s, "smallest passing (accuracy ≥ {}): {} ({})", pct(min), runs[i].name(), files::size(runs[i].size));
        }
        (Some(i), None) => {
            let _ = writeln!(
                s,
                "smallest with the best accuracy ({}): {} ({})",
                pct(runs[i].accuracy()),
                runs[i].name(),
                files::size(runs[i].size)
            );
        }
        (None, Some(min)) => {
            let _ = writeln!(s, "no model reaches {}", pct(min));
        }
        (None, None) => {}
    }
    if a.show_failures {
        for r in runs.iter().filter(|r| r.passed < cases.len()) {
            let _ = writeln!(s, "\nfailures of {}:", r.name());
            for (c, o) in cases.iter().zip(&r.outcomes).filter(|(_, o)| !o.passed) {
                let got = match &o.error {
                    Some(e) => format!("error: {e}"),
                    None => format!("answered {:?}", clip(&o.answer, 300)),
                };
                let _ = writeln!(s, "  {} ({} {:?}): {got}", c.id, c.check.name(), clip(&c.expect, 120));
            }
        }
    }
    s
}

/// At most `n` characters of `s`, with an ellipsis where cut.
fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn report_json(a: &Args, cases: &[Case], runs: &[ModelRun], chosen: Option<usize>) -> Value {
    let models: Vec<Value> = runs
        .iter()
        .map(|r| {
            let (lo, hi) = ferrite::eval::wilson_interval(r.passed, cases.len());
            let results: Vec<Value> = cases
                .iter()
                .zip(&r.outcomes)
                .map(|(c, o)| {
                    let mut v = json!({"id": c.id, "passed": o.passed, "answer": o.answer, "completion_tokens": o.completion_tokens});
                    if let Some(e) = &o.error {
                        v["error"] = json!(e);
                    }
                    v
                })
                .collect();
            json!({
                "model": r.path.display().to_string(),
                "size_bytes": r.size,
                "passed": r.passed,
                "total": cases.len(),
                "accuracy": r.accuracy(),
                "ci95": [lo, hi],
                "passes": a.min_accuracy.map(|m| r.accuracy() + 1e-12 >= m),
                "completion_tokens": r.completion_tokens,
                "seconds": r.seconds,
                "tokens_per_second": r.tokens_per_second(),
                "peak_rss_bytes": r.peak_rss.map(|p| p.0),
                "peak_rss_own": r.peak_rss.map(|p| p.1),
                "results": results,
            })
        })
        .collect();
    json!({
        "suite": a.suite.display().to_string(),
        "cases": cases.len(),
        "min_accuracy": a.min_accuracy,
        "models": models,
        "smallest_passing": chosen.map(|i| runs[i].path.display().to_string()),
    })
}

/// Accuracy (with its 95 % interval) against file size: one coloured point per model, named in
/// the legend with its numbers, and the `--min-accuracy` bar.
fn plot_svg(runs: &[ModelRun], min: Option<f64>) -> Result<String> {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let (lo, hi) = runs.iter().fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(mib(r.size)), hi.max(mib(r.size))));
        let x_range = (lo / 1.5).max(0.01)..(hi * 1.5).max(lo * 2.0);
        let mut chart = ChartBuilder::on(&root)
            .caption("accuracy by model size", ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(x_range.clone().log_scale(), 0f64..105f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("file size (MiB, log scale)")
            .y_desc("accuracy (%), 95% interval")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(plot_err)?;
        if let Some(m) = min {
            let bar = [(x_range.start, 100.0 * m), (x_range.end, 100.0 * m)];
            chart
                .draw_series(LineSeries::new(bar, RED.stroke_width(1)))
                .map_err(plot_err)?
                .label(format!("--min-accuracy {:.0}%", 100.0 * m))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        }
        for (i, r) in runs.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            let (l, h) = ferrite::eval::wilson_interval(r.passed, r.outcomes.len());
            let (x, y) = (mib(r.size), 100.0 * r.accuracy());
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(x, 100.0 * l), (x, 100.0 * h)], colour.stroke_width(2))))
                .map_err(plot_err)?;
            chart
                .draw_series(std::iter::once(Circle::new((x, y), 6, colour.filled())))
                .map_err(plot_err)?
                .label(format!("{}: {}/{} ({:.1}%), {}", r.name(), r.passed, r.outcomes.len(), y, files::size(r.size)))
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, colour.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}
