//! `sinapse dashboard [--runs runs/] [--port 8080]`: a local page to watch training.
//!
//! The server (tiny_http, bound to 127.0.0.1 only) serves one page, with its script and
//! style inside it (nothing is fetched from the internet), and `/api/runs`: every run under
//! the runs folder as JSON, read afresh on each request. The page asks for it every second
//! and redraws what changed, so a run that `sinapse train` is writing (its
//! `NAME.live.json`, rewritten after every epoch) gains a point per epoch without a reload.
//! A run folder that is deleted disappears; one that is half-written or malformed is shown
//! with its error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use sinapse::nn::Module;
use sinapse::spec::ModelCard;
use sinapse::train::EpochRecord;

/// Options of `sinapse dashboard`.
#[derive(Args)]
pub struct DashboardArgs {
    /// The folder holding the runs (model directories and the live files of runs in progress).
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Port on 127.0.0.1 (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

/// The page: markup, style and script in one file, compiled into the binary.
const PAGE: &str = include_str!("dashboard.html");

/// Suffix of the file `sinapse train` rewrites after every epoch of a run in progress.
pub const LIVE_SUFFIX: &str = ".live.json";

/// What a run in progress has written so far (`runs/NAME.live.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LiveRun {
    /// `training`, `finished` or `failed`.
    pub status: String,
    /// Process writing it (to tell a run that died from one in progress).
    pub pid: u32,
    /// The spec file.
    pub spec: String,
    /// The network and training settings, one line.
    pub summary: String,
    /// `accuracy`, `mae` or `mse`.
    pub metric: String,
    /// Epochs the run will train.
    pub epochs: usize,
    /// The epochs done.
    pub records: Vec<EpochRecord>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// One run as the page shows it.
#[derive(Debug, Serialize)]
struct RunView {
    name: String,
    /// `finished`, `training`, `stopped`, `failed` or `error`.
    status: String,
    /// Seconds since the Unix epoch of the run's last write.
    updated: f64,
    summary: Option<String>,
    metric: Option<String>,
    epochs: Option<usize>,
    records: Vec<EpochRecord>,
    confusion: Option<Confusion>,
    error: Option<String>,
}

impl RunView {
    fn failed(name: String, updated: f64, error: String) -> RunView {
        RunView {
            name,
            status: "error".into(),
            updated,
            summary: None,
            metric: None,
            epochs: None,
            records: Vec::new(),
            confusion: None,
            error: Some(error),
        }
    }
}

/// A confusion matrix: counts of true (rows) against predicted (columns) classes.
#[derive(Debug, Serialize)]
struct Confusion {
    classes: Vec<String>,
    counts: Vec<Vec<u64>>,
}

/// Runs the command: serves until interrupted.
pub fn run(args: DashboardArgs) -> Result<()> {
    let server = tiny_http::Server::http(("127.0.0.1", args.port))
        .map_err(|e| anyhow::anyhow!("dashboard: cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    let addr = server.server_addr().to_ip().context("dashboard: the server has no IP address")?;
    outln!("dashboard: http://{addr}/ (runs in {}); Ctrl-C to stop", args.runs.display());
    let mut summaries = Summaries::default();
    for request in server.incoming_requests() {
        // Only pages of this machine may read it: a page elsewhere that points its own name at
        // 127.0.0.1 (DNS rebinding) sends its own name as the Host. (Any port: a tunnel or a
        // proxy may forward another one.)
        let host = request.headers().iter().find(|h| h.field.equiv("Host")).map(|h| h.value.as_str().to_string());
        let local = host.as_deref().is_some_and(is_local_host);
        let route = if local { request.url().split('?').next().unwrap_or("") } else { "forbidden" };
        let (body, kind, code) = match route {
            "forbidden" => (b"forbidden: ask for 127.0.0.1 or localhost".to_vec(), "text/plain; charset=utf-8", 403),
            "/" | "/index.html" => (PAGE.as_bytes().to_vec(), "text/html; charset=utf-8", 200),
            "/api/runs" => match serde_json::to_vec(&scan(&args.runs, &mut summaries)) {
                Ok(json) => (json, "application/json", 200),
                Err(e) => (e.to_string().into_bytes(), "text/plain; charset=utf-8", 500),
            },
            _ => (b"not found".to_vec(), "text/plain; charset=utf-8", 404),
        };
        let header = tiny_http::Header::from_bytes("Content-Type", kind).expect("a valid header");
        let no_cache = tiny_http::Header::from_bytes("Cache-Control", "no-store").expect("a valid header");
        let response =
            tiny_http::Response::from_data(body).with_status_code(code).with_header(header).with_header(no_cache);
        // A browser that went away mid-answer is no reason to stop serving.
        let _ = request.respond(response);
    }
    Ok(())
}

/// Whether a Host header names this machine: `localhost`, `127.0.0.1` or `[::1]`, with any
/// port, in any case.
fn is_local_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    ["localhost", "127.0.0.1", "[::1]"].iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Every run under `dir`, by name: model directories (with `model.toml` or `history.csv`) and
/// live files; a live file wins over a directory of the same name (the run is retraining it).
fn scan(dir: &Path, summaries: &mut Summaries) -> Vec<RunView> {
    let mut runs = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            let error = format!("{}: {e}", dir.display());
            return vec![RunView::failed(dir.display().to_string(), 0.0, error)];
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        // Hidden entries: the temporaries of atomic saves.
        if file_name.starts_with('.') {
            continue;
        }
        if let Some(name) = file_name.strip_suffix(LIVE_SUFFIX) {
            // A live file older than the model directory of its name is left from a run
            // that ended without removing it (killed after its save): the directory wins.
            let dir = dir.join(name);
            if !(dir.join("model.toml").exists() && modified(&dir.join("model.toml")) > modified(&path)) {
                runs.insert(name.to_string(), live_run(name, &path));
            }
        } else if path.join("model.toml").exists() || path.join("history.csv").exists() {
            runs.entry(file_name.clone()).or_insert_with(|| model_dir_run(&file_name, &path, summaries));
        }
    }
    runs.into_values().collect()
}

/// Seconds since the Unix epoch of `path`'s last change (0 when unknown).
fn modified(path: &Path) -> f64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A run in progress (or one that ended without saving) from its live file.
fn live_run(name: &str, path: &Path) -> RunView {
    let updated = modified(path);
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return RunView::failed(name.into(), updated, format!("{}: {e}", path.display())),
    };
    let live: LiveRun = match serde_json::from_str(&text) {
        Ok(l) => l,
        Err(e) => return RunView::failed(name.into(), updated, format!("{}: {e}", path.display())),
    };
    let status =
        if live.status == "training" && !process_alive(live.pid) { "stopped".to_string() } else { live.status };
    let error = live
        .error
        .or_else(|| (status == "stopped").then(|| format!("process {} ended before the run finished", live.pid)));
    RunView {
        name: name.into(),
        status,
        updated,
        summary: Some(format!("{} · {}", live.spec, live.summary)),
        metric: Some(live.metric),
        epochs: Some(live.epochs),
        records: live.records,
        confusion: None,
        error,
    }
}

/// Whether process `pid` still runs.
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = i32::try_from(pid) else { return false };
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The one-line summaries of saved models, by `model.toml` path and its modification time:
/// the page asks every second, and rebuilding a network to describe it is not free.
type Summaries = std::collections::HashMap<PathBuf, (f64, String)>;

/// A finished run from its model directory.
fn model_dir_run(name: &str, dir: &Path, summaries: &mut Summaries) -> RunView {
    let card_path = dir.join("model.toml");
    let updated = modified(&card_path).max(modified(&dir.join("history.csv")));
    let card = std::fs::read_to_string(&card_path)
        .map_err(|e| format!("{}: {e}", card_path.display()))
        .and_then(|t| ModelCard::parse(&t, &card_path).map_err(|e| e.to_string()));
    let card = match card {
        Ok(c) => c,
        Err(e) => return RunView::failed(name.into(), updated, e),
    };
    let (records, metric) = match read_history(&dir.join("history.csv")) {
        Ok(h) => h,
        Err(e) => return RunView::failed(name.into(), updated, e),
    };
    let confusion = match read_confusion(&dir.join("confusion.csv")) {
        Ok(c) => c,
        Err(e) => return RunView::failed(name.into(), updated, e),
    };
    RunView {
        name: name.into(),
        status: "finished".into(),
        updated,
        summary: Some(match summaries.get(&card_path) {
            Some((when, text)) if *when == modified(&card_path) => text.clone(),
            _ => {
                let text = summary_of(&card);
                summaries.insert(card_path.clone(), (modified(&card_path), text.clone()));
                text
            }
        }),
        metric: Some(metric),
        epochs: Some(card.spec.epochs),
        records,
        confusion,
        error: None,
    }
}

/// A setting's value as a spec writes it: numbers as the f32 they are (`0.9`, not
/// `0.8999999761581421`), text without quotes.
fn setting(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => n.as_f64().map_or(n.to_string(), |f| (f as f32).to_string()),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A spec's optimizer and schedule, one line: `sgd (lr 0.1) · 15 epochs, batch 128`.
fn training_of(spec: &sinapse::spec::ModelSpec) -> String {
    let optimizer = serde_json::to_value(&spec.optimizer).ok();
    let optimizer = match optimizer.as_ref().and_then(|v| v.as_object()) {
        Some(fields) => {
            let kind = fields.get("type").and_then(|t| t.as_str()).unwrap_or("optimizer");
            let settings: Vec<String> = fields
                .iter()
                .filter(|(k, _)| k.as_str() != "type")
                .map(|(k, v)| format!("{k} {}", setting(v)))
                .collect();
            format!("{kind} ({})", settings.join(", "))
        }
        None => "optimizer".into(),
    };
    format!("{optimizer} · {} epochs, batch {}", spec.epochs, spec.batch_size)
}

/// A spec's network and training before the data is read: its layers as written
/// (`linear(units 256), relu, ..`), the optimizer, epochs and batch size.
pub fn spec_summary(spec: &sinapse::spec::ModelSpec) -> String {
    let layers: Vec<String> = serde_json::to_value(&spec.layers)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l.as_object())
        .map(|fields| {
            let kind = fields.get("type").and_then(|t| t.as_str()).unwrap_or("layer");
            let settings: Vec<String> = fields
                .iter()
                .filter(|(k, v)| k.as_str() != "type" && !v.is_null())
                .map(|(k, v)| format!("{k} {}", setting(v)))
                .collect();
            if settings.is_empty() {
                kind.to_string()
            } else {
                format!("{kind}({})", settings.join(", "))
            }
        })
        .collect();
    format!("{} · {}", layers.join(", "), training_of(spec))
}

/// A trained network and its training, one line: `Sequential(..): N parameters · sgd (lr
/// 0.1) · 15 epochs, batch 128`.
fn summary(model: &dyn Module, spec: &sinapse::spec::ModelSpec) -> String {
    format!("{}: {} parameters · {}", model.describe(), model.num_parameters(), training_of(spec))
}

/// [`summary`] of a saved model's card (the network rebuilt from it, on the CPU).
fn summary_of(card: &ModelCard) -> String {
    match card.spec.build_model(&card.input_shape, &card.task, &mut sinapse::Rng::seed(card.spec.seed)) {
        Ok(model) => summary(&model, &card.spec),
        Err(e) => format!("(the network could not be rebuilt: {e})"),
    }
}

/// `history.csv` as records, with its metric's name: an error naming the file and line when
/// it is not what `sinapse train` writes.
fn read_history(path: &Path) -> std::result::Result<(Vec<EpochRecord>, String), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().ok_or_else(|| format!("{}: empty", path.display()))?;
    let columns: Vec<&str> = header.split(',').collect();
    let metric = match columns.as_slice() {
        ["epoch", "lr", "train_loss", m, "val_loss", _, "seconds", "samples_per_sec"] if m.starts_with("train_") => {
            m["train_".len()..].to_string()
        }
        _ => return Err(format!("{}: line 1: not a Sinapse history header: {header}", path.display())),
    };
    let mut records = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |what: &str| format!("{}: line {}: {what}: {line}", path.display(), i + 2);
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 8 {
            return Err(bad(&format!("{} fields, expected 8", f.len())));
        }
        let num = |s: &str| s.parse::<f64>().map_err(|_| bad(&format!("{s:?} is not a number")));
        let opt = |s: &str| if s.is_empty() { Ok(None) } else { num(s).map(|v| Some(v as f32)) };
        records.push(EpochRecord {
            epoch: f[0].parse().map_err(|_| bad("the epoch is not a count"))?,
            lr: num(f[1])? as f32,
            train_loss: num(f[2])? as f32,
            train_metric: num(f[3])? as f32,
            val_loss: opt(f[4])?,
            val_metric: opt(f[5])?,
            seconds: num(f[6])?,
            samples_per_sec: num(f[7])?,
        });
    }
    Ok((records, metric))
}

/// `confusion.csv` (a header of class names, then one row per true class: its name and
/// counts), when the run has one.
fn read_confusion(path: &Path) -> std::result::Result<Option<Confusion>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
    let bad = |line: usize, what: String| format!("{}: line {line}: {what}", path.display());
    let header = reader.headers().map_err(|e| bad(1, e.to_string()))?.clone();
    let classes: Vec<String> = header.iter().skip(1).map(str::to_string).collect();
    let mut counts = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|e| bad(i + 2, e.to_string()))?;
        if row.len() != classes.len() + 1 {
            return Err(bad(i + 2, format!("{} fields, expected {}", row.len(), classes.len() + 1)));
        }
        let values =
            row.iter().skip(1).map(|v| v.parse::<u64>().map_err(|_| bad(i + 2, format!("{v:?} is not a count"))));
        counts.push(values.collect::<std::result::Result<Vec<_>, _>>()?);
    }
    if counts.len() != classes.len() {
        return Err(bad(1, format!("{} rows for {} classes", counts.len(), classes.len())));
    }
    Ok(Some(Confusion { classes, counts }))
}

/// Writes the live file of a run in progress after every epoch (atomically: a reader sees
/// the last whole version), for the dashboard.
pub struct LiveWriter {
    path: PathBuf,
    run: LiveRun,
}

impl LiveWriter {
    /// The live file for a run saved to `out`: `out`'s name with [`LIVE_SUFFIX`], beside it.
    pub fn new(out: &Path, spec: &Path, summary: String, metric: &str, epochs: usize) -> LiveWriter {
        let name = out.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
        let path = out.with_file_name(format!("{name}{LIVE_SUFFIX}"));
        let run = LiveRun {
            status: "training".into(),
            pid: std::process::id(),
            spec: spec.display().to_string(),
            summary,
            metric: metric.into(),
            epochs,
            records: Vec::new(),
            error: None,
        };
        LiveWriter { path, run }
    }

    /// Rewrites the file; a failure is a note (the dashboard is a view; training goes on).
    fn write(&self) {
        let result = (|| -> std::io::Result<()> {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let tmp = self.path.with_extension(format!("tmp-{}", std::process::id()));
            std::fs::write(&tmp, serde_json::to_vec(&self.run)?)?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = result {
            crate::output::note(format_args!("note: the dashboard's file {}: {e}", self.path.display()));
        }
    }

    /// The run failed: the file says why.
    pub fn failed(&mut self, error: String) {
        self.run.status = "failed".into();
        self.run.error = Some(error);
        self.write();
    }

    /// The run is saved in its model directory: the live file goes.
    pub fn finished(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl sinapse::train::Observer for LiveWriter {
    fn on_fit_start(&mut self, _cfg: &sinapse::train::FitConfig, _batches: usize) {
        self.write();
    }

    fn on_epoch(&mut self, record: &EpochRecord, _epochs: usize) {
        self.run.records.push(record.clone());
        self.write();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sinapse-dashboard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const HEADER: &str = "epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,seconds,samples_per_sec\n";

    #[test]
    fn only_this_machines_names_are_local_hosts() {
        for ok in ["localhost:8080", "LOCALHOST:9000", "127.0.0.1:8080", "127.0.0.1", "[::1]:80", "localhost"] {
            assert!(is_local_host(ok), "{ok}");
        }
        for bad in ["attacker.example:8080", "localhost.attacker.example", "127.0.0.1.nip.io:8080", "", "[::1"] {
            assert!(!is_local_host(bad), "{bad}");
        }
    }

    #[test]
    fn history_reads_back_and_names_a_bad_line() {
        let dir = scratch("history");
        let path = dir.join("history.csv");
        std::fs::write(&path, format!("{HEADER}1,0.1,0.9,0.7,0.8,0.75,1.5,1000\n2,0.1,0.5,0.8,,,1.4,1100\n")).unwrap();
        let (records, metric) = read_history(&path).unwrap();
        assert_eq!(metric, "accuracy");
        assert_eq!(records.len(), 2);
        assert_eq!((records[0].val_loss, records[1].val_loss), (Some(0.8), None));
        assert_eq!(records[1].train_loss, 0.5);
        // Half-written: the last line cut short.
        std::fs::write(&path, format!("{HEADER}1,0.1,0.9,0.7,0.8,0.75,1.5,1000\n2,0.1,0.5")).unwrap();
        let e = read_history(&path).unwrap_err();
        assert!(e.contains("line 3") && e.contains("3 fields, expected 8"), "{e}");
        std::fs::write(&path, "epoch,loss\n1,2\n").unwrap();
        assert!(read_history(&path).unwrap_err().contains("line 1: not a Sinapse history header"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn confusion_reads_back_and_checks_its_shape() {
        let dir = scratch("confusion");
        let path = dir.join("confusion.csv");
        assert!(read_confusion(&path).unwrap().is_none(), "no file: no matrix");
        std::fs::write(&path, "true\\predicted,cat,dog\ncat,5,1\ndog,0,7\n").unwrap();
        let c = read_confusion(&path).unwrap().unwrap();
        assert_eq!((c.classes, c.counts), (vec!["cat".to_string(), "dog".into()], vec![vec![5, 1], vec![0, 7]]));
        std::fs::write(&path, "true\\predicted,cat,dog\ncat,5,x\ndog,0,7\n").unwrap();
        assert!(read_confusion(&path).unwrap_err().contains("line 2: \"x\" is not a count"));
        std::fs::write(&path, "true\\predicted,cat,dog\ncat,5,1\n").unwrap();
        assert!(read_confusion(&path).unwrap_err().contains("1 rows for 2 classes"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn scan_shows_each_run_or_its_error() {
        let dir = scratch("scan");
        // A live run whose process is gone, a malformed live file, a model directory whose
        // card is garbage, and folders that are no runs (hidden temporaries, other files).
        let mut live = LiveWriter::new(&dir.join("gone"), Path::new("spec.toml"), "net".into(), "accuracy", 5);
        live.run.pid = u32::MAX; // no such process
        live.write();
        std::fs::write(dir.join("cut.live.json"), "{\"status\": \"train").unwrap();
        std::fs::create_dir_all(dir.join("bad")).unwrap();
        std::fs::write(dir.join("bad").join("model.toml"), "not a card").unwrap();
        // A live file left behind by a run that saved its model later: the directory wins.
        std::fs::write(dir.join("saved.live.json"), "{}").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir_all(dir.join("saved")).unwrap();
        std::fs::write(dir.join("saved").join("model.toml"), "still not a card").unwrap();
        std::fs::create_dir_all(dir.join(".tmp-save")).unwrap();
        std::fs::create_dir_all(dir.join("pictures")).unwrap();
        let runs = scan(&dir, &mut Summaries::default());
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["bad", "cut", "gone", "saved"]);
        assert_eq!(runs[3].status, "error");
        assert!(runs[3].error.as_deref().unwrap().contains("saved/model.toml"), "{:?}", runs[3].error);
        assert_eq!(runs[0].status, "error");
        assert!(runs[0].error.as_deref().unwrap().contains("model.toml"), "{:?}", runs[0].error);
        assert_eq!(runs[1].status, "error");
        assert!(runs[1].error.as_deref().unwrap().contains("cut.live.json"));
        assert_eq!(runs[2].status, "stopped");
        assert!(runs[2].error.as_deref().unwrap().contains("ended before the run finished"));
        // A folder that is not there is one error, not a failure.
        let missing = scan(&dir.join("nowhere"), &mut Summaries::default());
        assert_eq!((missing.len(), missing[0].status.as_str()), (1, "error"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
