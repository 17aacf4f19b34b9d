//! Data-parallel training under `mpirun` (built with the `mpi` feature; OpenMPI from Debian's
//! packages): two ranks on this machine over loopback against one process.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sinapse::nn::Module;
use sinapse::spec::TrainedModel;

/// The repository root (specs and data paths are relative to it).
fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// `mpirun -np 2 sinapse ARGS`, started (root may run it: CI runs as root).
fn mpirun(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "-np", "2", env!("CARGO_BIN_EXE_sinapse")])
        .args(args)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("mpirun (Debian: apt-get install openmpi-bin)")
}

/// `sinapse ARGS` alone.
fn alone(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sinapse")).args(args).current_dir(root()).output().expect("run sinapse")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Waits for `child` at most `limit`; kills it and fails past that (a hang is a failure).
fn finish(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            child.kill().ok();
            let out = child.wait_with_output().expect("output");
            panic!("mpirun still running after {limit:?}: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// The line `test accuracy: X`.
fn accuracy_line(out: &str) -> String {
    out.lines().find(|l| l.starts_with("test accuracy: ")).unwrap_or_else(|| panic!("no test accuracy in {out}")).into()
}

/// Largest difference between the two model directories' tensors, relative to the largest
/// magnitude of each tensor.
fn weight_difference(a: &Path, b: &Path) -> f32 {
    let (a, b) = (TrainedModel::load(a).expect("load a"), TrainedModel::load(b).expect("load b"));
    let (sa, sb) = (a.model.state_dict(), b.model.state_dict());
    assert_eq!(sa.len(), sb.len());
    let mut worst = 0.0f32;
    for ((name, ta), (name_b, tb)) in sa.iter().zip(&sb) {
        assert_eq!(name, name_b);
        let (va, vb) = (ta.to_vec(), tb.to_vec());
        let scale = va.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        for (x, y) in va.iter().zip(&vb) {
            worst = worst.max((x - y).abs() / scale);
        }
    }
    worst
}

/// The same job trained by two ranks and by one process: the weights agree to float rounding
/// (the gradient sums are added in another order), and so does every test figure.
fn same_answer(spec: &str, extra: &[&str], tolerance: f32) {
    let dir = tempdir(spec);
    let (one, two) = (dir.join("one"), dir.join("two"));
    let mut args = vec!["train", spec, "--out"];
    let single = alone(&[&args[..], &[one.to_str().unwrap()], extra].concat());
    assert!(single.status.success(), "{}", text(&single));
    args.push(two.to_str().unwrap());
    args.push("--distributed");
    let dist = finish(mpirun(&[&args[..], extra].concat(), &[]), Duration::from_secs(300));
    let (s, d) = (text(&single), text(&dist));
    assert!(dist.status.success(), "{d}");
    assert!(d.contains("distributed: 2 processes over mpi"), "{d}");
    // Only rank 0 speaks: one save line, one result.
    assert_eq!(d.matches("saved model").count(), 1, "{d}");
    assert_eq!(accuracy_line(&s), accuracy_line(&d), "one process:\n{s}\ntwo ranks:\n{d}");
    // Every epoch's training and validation figures (the loss and metric summed over the
    // ranks) as one process measured them.
    let (h1, h2) = (history(&one), history(&two));
    assert_eq!(h1.len(), h2.len(), "epochs");
    for (a, b) in h1.iter().zip(&h2) {
        for (col, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{spec}: history column {col}: {x} vs {y}");
        }
    }
    let diff = weight_difference(&one, &two);
    eprintln!("{spec}: largest weight difference {diff:e} of the tensor's largest value");
    assert!(diff < tolerance, "{spec}: weights differ by {diff} (relative)");
    std::fs::remove_dir_all(&dir).ok();
}

/// The per-epoch columns of `history.csv` that do not depend on timing: training loss and
/// metric, validation loss and metric (0 where absent).
fn history(dir: &Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(dir.join("history.csv")).expect("history.csv");
    text.lines().skip(1).map(|l| l.split(',').skip(2).take(4).map(|v| v.parse().unwrap_or(0.0)).collect()).collect()
}

fn tempdir(name: &str) -> PathBuf {
    let stem = Path::new(name).file_stem().unwrap().to_string_lossy().into_owned();
    let dir = std::env::temp_dir().join(format!("sinapse-dist-{stem}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn iris_on_two_ranks_matches_one_process() {
    // 81 training rows in batches of 16: the last batch has one row, so rank 1's part of it
    // is empty and it adds zeros.
    same_answer("models/iris.toml", &[], 1e-5);
}

#[test]
fn mnist_mlp_on_two_ranks_matches_one_process() {
    same_answer("models/mnist_mlp.toml", &["--epochs", "3"], 1e-5);
}

/// The processes mpirun started for the job (its children), with their ranks.
fn ranks_of(mpirun: u32) -> Vec<(u32, usize)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The parent pid is the second field after the command name in parentheses.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid != mpirun {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let rank = env
            .split(|&b| b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("OMPI_COMM_WORLD_RANK="))
            .and_then(|r| r.parse().ok());
        if let Some(rank) = rank {
            found.push((pid, rank));
        }
    }
    found
}

/// Starts a long 2-rank training and returns mpirun and rank 1's pid once both ranks run
/// and the first epoch is done (rank 0's live file for the dashboard has a record): the
/// collectives from then on are the training steps' all-reduces.
// The child goes back to the caller, which waits for it (clippy cannot see that).
#[allow(clippy::zombie_processes)]
fn start_long_job(env: &[(&str, &str)], out: &Path) -> (Child, u32) {
    let mut child = mpirun(
        &["train", "models/mnist_mlp.toml", "--epochs", "200", "--out", out.to_str().unwrap(), "--distributed"],
        env,
    );
    let start = Instant::now();
    let live = out.with_file_name(format!("{}.live.json", out.file_name().unwrap().to_string_lossy()));
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            panic!("the job ended before its first epoch: {}", text(&out));
        }
        let ranks = ranks_of(child.id());
        let trained = std::fs::read_to_string(&live).is_ok_and(|t| t.contains("\"epoch\":1"));
        if let (Some(&(pid, _)), true) = (ranks.iter().find(|(_, r)| *r == 1), trained) {
            return (child, pid);
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("the ranks never started: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_rank_that_dies_ends_the_job_naming_it() {
    let dir = tempdir("dies");
    let (child, rank1) = start_long_job(&[], &dir.join("model"));
    send_signal(rank1, "KILL");
    let out = finish(child, Duration::from_secs(60));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("rank 1") && t.contains("signal 9"), "the error names the rank: {t}");
    assert!(!dir.join("model").exists(), "no model written by a failed job");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_rank_that_stalls_ends_the_job_after_the_timeout() {
    // Rank 1 stopped (SIGSTOP) never joins the next all-reduce; rank 0 gives up after 2 s.
    let dir = tempdir("stalls");
    let (child, rank1) = start_long_job(&[("SINAPSE_DIST_TIMEOUT", "2")], &dir.join("model"));
    send_signal(rank1, "STOP");
    let out = finish(child, Duration::from_secs(60));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("rank 0 of 2: all-reduce") && t.contains("got no answer from the other ranks in 2 s"),
        "the error says which collective timed out: {t}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Sends signal `sig` to `pid` with kill(1).
fn send_signal(pid: u32, sig: &str) {
    let status = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().expect("kill");
    assert!(status.success());
}
