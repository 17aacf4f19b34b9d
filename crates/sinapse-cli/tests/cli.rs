//! The `sinapse` binary, run as a user would.

use std::process::Command;

fn sinapse(args: &[&str]) -> (i32, String, String) {
    sinapse_with(&[], args)
}

/// `sinapse` with these environment variables set: exit code, stdout, stderr.
fn sinapse_with(vars: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sinapse"))
        .args(args)
        .envs(vars.iter().copied())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("run sinapse");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The weights column (last field) of each trace row.
fn weights_column(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip(1)
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l[l.find('[').unwrap()..].to_string())
        .collect()
}

#[test]
fn perceptron_trace_reproduces_the_course() {
    let (code, out, _) = sinapse(&["perceptron", "--gate", "and", "--init", "1,0.2,-0.3", "--trace"]);
    assert_eq!(code, 0);
    let w = weights_column(&out);
    assert_eq!(&w[..4], &["[0, 0.2, -0.3]", "[0, 0.2, -0.3]", "[-1, -0.8, -0.3]", "[0, 0.2, 0.7]"]);
    let first = out.lines().nth(1).unwrap();
    let fields: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(&fields[..5], &["1", "(0,0)", "0", "1", "1"], "t, x, y, z, o of step 1: {first}");
    assert!(out.trim_end().lines().last().unwrap().starts_with("converged after "), "{out}");
}

#[test]
fn perceptron_learns_or_and_gives_up_on_xor() {
    let (code, out, _) = sinapse(&["perceptron", "--gate", "or"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("converged after "), "{out}");
    let (code, out, _) = sinapse(&["perceptron", "--gate", "xor", "--epochs", "50", "--init", "1,0.2,-0.3"]);
    assert_eq!(code, 0);
    assert!(out.trim_end().ends_with("]") && out.starts_with("did not converge after 50 epochs: w = ["), "{out}");
}

#[test]
fn bad_arguments_fail_with_one_line() {
    for args in [
        &["perceptron", "--gate", "nand"][..],
        &["perceptron", "--gate", "and", "--init", "1,2"],
        &["bench", "resnet"],
        &["bench", "mlp", "--cuda-graph"],
        &["train", "no/such/spec.toml"],
    ] {
        let (code, out, err) = sinapse(args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
    let (_, _, err) = sinapse(&["train", "no/such/spec.toml"]);
    assert!(err.contains("no/such/spec.toml"), "{err}");
}

/// The instruction set and test accuracy `bench NAME --epochs 1` prints under a cap.
fn capped_bench(cap: &str, name: &str) -> (String, f64) {
    let (code, out, err) =
        sinapse_with(&[("SINAPSE_CPU_CAPABILITY", cap)], &["bench", name, "--epochs", "1", "--runs", "1"]);
    assert_eq!(code, 0, "{cap} {name}: {err}");
    let isa = out.lines().find_map(|l| l.strip_prefix("vector instructions: ")).expect(&out).to_string();
    let last = out.trim_end().lines().last().unwrap();
    let acc = last.rsplit_once("test accuracy ").expect(last).1.parse().unwrap();
    (isa, acc)
}

/// The AVX2 and portable kernels (the matrix product's included) picked by the cap train the
/// benchmarks' models as the widest ones do: the same test accuracy to within 0.01 (their
/// sums round differently), where a wrong kernel would leave chance (0.1) or NaN. An unknown
/// value is an error naming the variable.
#[test]
fn the_cpu_capability_cap_runs_the_narrower_kernels() {
    #[cfg(target_arch = "x86_64")]
    let has_avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let has_avx2 = false;
    for name in ["mlp", "cnn", "lstm"] {
        let (widest, want) = capped_bench("", name);
        let mut caps = vec![("avx2", if has_avx2 { "avx2+fma" } else { widest.as_str() })];
        if name == "mlp" {
            // The portable build is the slowest (2-3x slower than AVX2): one benchmark of it.
            caps.push(("baseline", "baseline"));
        }
        for (cap, isa) in caps {
            let (got_isa, got) = capped_bench(cap, name);
            assert_eq!(got_isa, isa, "{name} under {cap}");
            assert!((got - want).abs() <= 0.01, "{name} under {cap}: accuracy {got} against {want} uncapped");
        }
    }
    let (code, out, err) = sinapse_with(&[("SINAPSE_CPU_CAPABILITY", "sse9")], &["bench", "mlp", "--epochs", "1"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(err.trim_end(), r#"error: SINAPSE_CPU_CAPABILITY: "sse9" is not avx512, avx2 or baseline"#);
    assert!(out.is_empty(), "{out}");
}

#[cfg(not(feature = "mpi"))]
#[test]
fn distributed_training_without_mpi_says_how_to_build_it() {
    let (code, out, err) = sinapse(&["train", "models/iris.toml", "--distributed"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("built without MPI") && err.contains("--features mpi"), "{err}");
    assert!(out.is_empty(), "nothing trained: {out}");
}

#[test]
fn train_prints_epochs_then_test_accuracy() {
    let out_dir = std::env::temp_dir().join(format!("sinapse-cli-train-{}", std::process::id()));
    let (code, out, err) = sinapse(&["train", "--out", out_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.trim_end().lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("epoch 15/15: loss ")), "{out}");
    for f in ["model.toml", "model.safetensors", "history.csv", "loss.png", "accuracy.png", "confusion.png"] {
        assert!(out_dir.join(f).is_file(), "{f} missing in {}", out_dir.display());
    }
    let last = lines.last().unwrap();
    let acc: f32 = last.strip_prefix("test accuracy: ").expect(last).parse().unwrap();
    assert!(acc >= 0.91, "{last}");
    assert_eq!(last.len(), "test accuracy: 0.NNNN".len());
    std::fs::remove_dir_all(&out_dir).unwrap();
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sinapse-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn iris_train_eval_predict_round_trip() {
    let dir = temp("iris");
    let model = dir.join("model");
    let (code, out, err) = sinapse(&["train", "models/iris.toml", "--out", model.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("val_loss") && out.contains("val_accuracy"), "{out}");
    assert!(out.trim_end().lines().last().unwrap().starts_with("test accuracy: "), "{out}");
    let history = std::fs::read_to_string(model.join("history.csv")).unwrap();
    assert!(history.starts_with("epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy"));

    let (code, out, err) = sinapse(&["eval", model.to_str().unwrap(), "data/iris.csv"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("macro precision") && out.contains("virginica"), "{out}");
    let acc: f32 = out.trim_end().lines().last().unwrap().strip_prefix("accuracy: ").unwrap().parse().unwrap();
    assert!(acc > 0.9, "{out}");

    let input = dir.join("new.csv");
    std::fs::write(&input, "petal_width,sepal_length,sepal_width,petal_length\n0.2,5.1,3.5,1.4\n2.3,6.7,3.0,5.2\n")
        .unwrap();
    let preds = dir.join("preds.csv");
    let (code, _, err) =
        sinapse(&["predict", model.to_str().unwrap(), input.to_str().unwrap(), "--out", preds.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&preds).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "prediction,p_setosa,p_versicolor,p_virginica");
    assert!(lines[1].starts_with("setosa,") && lines[2].starts_with("virginica,"), "{text}");
    let probs: f32 = lines[1].split(',').skip(1).map(|p| p.parse::<f32>().unwrap()).sum();
    assert!((probs - 1.0).abs() < 1e-4);

    // A column missing from the input is named.
    std::fs::write(&input, "sepal_length,sepal_width\n1,2\n").unwrap();
    let (code, _, err) = sinapse(&["predict", model.to_str().unwrap(), input.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("no column 'petal_length'"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cv_prints_folds_then_mean_and_std() {
    let (code, out, err) = sinapse(&["cv", "models/iris.toml", "--folds", "5", "--stratified"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.trim_end().lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[0].starts_with("fold 1/5: accuracy "), "{out}");
    let last = lines[5];
    assert!(
        last.starts_with("accuracy: mean 0.") && last.contains(" ± 0.") && last.ends_with(" over 5 folds"),
        "{last}"
    );
    // Without --folds or --loo the spec decides; iris's [validation] is a holdout.
    let (code, _, err) = sinapse(&["cv", "models/iris.toml"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("give --folds K or --loo"), "{err}");
}

#[test]
fn summary_and_gradcheck() {
    let (code, out, err) = sinapse(&["summary", "models/mnist_mlp.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Output Shape") && out.contains("[-1, 256]") && out.contains("Total params: 235146"), "{out}");
    let (code, out, err) = sinapse(&["gradcheck", "models/xor.toml"]);
    assert_eq!(code, 0, "{err}");
    let last = out.trim_end().lines().last().unwrap();
    assert!(last.starts_with("largest relative error: ") && last.ends_with(" 0 of 22 outside tolerance"), "{out}");
}

#[test]
fn spec_errors_name_the_offender_and_the_valid_choices() {
    let dir = temp("badspec");
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/iris.toml")).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, spec.replace("type = \"relu\"", "type = \"swish\"")).unwrap();
    let (code, _, err) = sinapse(&["train", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("swish") && err.contains("relu") && err.contains("leaky_relu") && err.contains("line "),
        "{err}"
    );
    std::fs::write(&bad, spec.replace("batch_size = 16", "batch_size = 16\nbatchsize = 3")).unwrap();
    let (_, _, err) = sinapse(&["summary", bad.to_str().unwrap()]);
    assert!(err.contains("unknown field `batchsize`") && err.contains("batch_size"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn summary_shows_convolution_and_recurrent_shapes() {
    let (code, out, err) = sinapse(&["summary", "models/mnist_cnn.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("[-1, 16, 24, 24]") && out.contains("[-1, 32, 4, 4]") && out.contains("Total params: 18378"),
        "{out}"
    );
    let (code, out, err) = sinapse(&["summary", "models/mnist_lstm.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("LSTM(28 -> 128") && out.contains("[-1, 28, 128]") && out.contains("Total params: 82186"),
        "{out}"
    );
}

#[test]
fn the_device_flag_and_spec_key() {
    let dir = temp("device");
    let out = dir.join("model");
    // `auto` is the fastest device present; the CPU always is (where `--cuda-graph` is left
    // off, so that one command serves every machine).
    let (code, text, err) =
        sinapse(&["train", "models/xor.toml", "--device", "auto", "--cuda-graph", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(text.trim_end().lines().last().unwrap().starts_with("saved model"), "{text}");
    // A device that is not there is one clear line, and nothing is written.
    let absent = dir.join("absent");
    for args in [
        &["train", "models/xor.toml", "--device", "cuda", "--out", absent.to_str().unwrap()][..],
        &["eval", out.to_str().unwrap(), "data/xor.csv", "--device", "cuda:1"],
        &["cv", "models/iris.toml", "--folds", "3", "--device", "cuda"],
        &["bench", "mlp", "--runs", "1", "--device", "cuda"],
    ] {
        let (code, _, err) = sinapse(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("cuda:") && err.contains("not available"), "{args:?}: {err}");
    }
    assert!(!absent.exists());
    // An unknown name lists the valid ones, from the flag and from the spec.
    let (code, _, err) = sinapse(&["predict", out.to_str().unwrap(), "data/xor.csv", "--device", "gpu"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown device 'gpu'") && err.contains("cuda:N"), "{err}");
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/xor.toml")).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, format!("device = \"tpu\"\n{spec}")).unwrap();
    let (code, _, err) = sinapse(&["summary", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.toml") && err.contains("unknown device 'tpu'"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The names in `dir` that start with a dot: Sinapse's temporaries.
fn hidden(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn out_is_never_something_of_the_users() {
    let dir = temp("out");
    let notes = dir.join("notes");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(notes.join("todo.txt"), "keep me").unwrap();
    let file = dir.join("file.txt");
    std::fs::write(&file, "data").unwrap();
    for (out, says) in [
        (notes.to_str().unwrap(), "is not a Sinapse model directory"),
        (file.to_str().unwrap(), "is a file"),
        ("..", "names no file or directory"),
        (".", "names no file or directory"),
    ] {
        let (code, _, err) = sinapse(&["train", "models/xor.toml", "--out", out, "--quiet"]);
        assert_eq!(code, 1, "{out}: {err}");
        assert!(err.contains(says) && err.contains("nothing was changed"), "{out}: {err}");
    }
    assert_eq!(std::fs::read_to_string(notes.join("todo.txt")).unwrap(), "keep me");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
    assert!(hidden(&dir).is_empty(), "{:?}", hidden(&dir));
    // predict --out onto a directory: refused, no temporary left.
    let model = dir.join("model");
    let (code, _, err) = sinapse(&["train", "models/xor.toml", "--out", model.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        sinapse(&["predict", model.to_str().unwrap(), "data/xor.csv", "--out", notes.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("is a directory"), "{err}");
    assert!(hidden(&dir).is_empty(), "{:?}", hidden(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_closed_pipe_ends_quietly_after_the_model_is_saved() {
    let dir = temp("pipe");
    let model = dir.join("model");
    // Training whose first line comes a second before the next: the reader is gone by then.
    let spec = spec_copy(&dir, "mnist_mlp.toml", |t| t.replace("epochs = 15", "epochs = 2"));
    for args in [
        // Longer than a pipe buffer (64 KB), so the writer meets the closed pipe.
        &["perceptron", "--gate", "xor", "--trace", "--epochs", "5000"][..],
        &["train", spec.to_str().unwrap(), "--out", model.to_str().unwrap()],
    ] {
        // The reader takes one line and goes away, as `| head -1` does.
        let mut child = Command::new(env!("CARGO_BIN_EXE_sinapse"))
            .args(args)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 8];
        std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "{args:?}: {err}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(13), "{args:?}: ends by SIGPIPE, as head's writers do");
    }
    assert!(model.join("model.safetensors").is_file(), "the model was saved");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_kill_at_any_moment_leaves_the_old_model_or_the_new_one() {
    let dir = temp("kill");
    let model = dir.join("model");
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/iris.toml")).unwrap();
    let spec = spec.replace("../data/", concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/"));
    let start = std::time::Instant::now();
    let (code, _, err) = sinapse(&["train", "models/iris.toml", "--out", model.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let full_run = start.elapsed();
    // Each trial trains with another seed (other weights) and is killed at a moment spread
    // over a whole run, the save included; the model must then load: one complete version,
    // the old or a new one (a partial directory or weights file does not load).
    for trial in 0..12u32 {
        let path = dir.join(format!("seed{trial}.toml"));
        std::fs::write(&path, spec.replacen("seed = ", &format!("seed = {}\n# was: ", 100 + trial), 1)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sinapse"))
            .args(["train", path.to_str().unwrap(), "--out", model.to_str().unwrap(), "--quiet"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full_run.mul_f64((trial as f64 + 0.5) / 12.0 * 1.1));
        let _ = child.kill(); // SIGKILL; the process may have finished already
        child.wait().unwrap();
        let (code, out, err) = sinapse(&["eval", model.to_str().unwrap(), "data/iris.csv"]);
        assert_eq!(code, 0, "trial {trial}: the model does not load: {out}{err}");
    }
    // The next run cleans up what the killed ones left.
    let (code, _, err) = sinapse(&["train", "models/iris.toml", "--out", model.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert!(hidden(&dir).is_empty(), "temporaries left: {:?}", hidden(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A copy of a bundled spec in `dir` with its data paths made absolute and `edit` applied.
fn spec_copy(dir: &std::path::Path, name: &str, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let text = std::fs::read_to_string(format!("{root}/models/{name}")).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, edit(text.replace("../data/", &format!("{root}/data/")))).unwrap();
    path
}

#[test]
fn layers_too_big_for_memory_are_refused_by_name() {
    let dir = temp("big");
    let cases = [
        ("mnist_mlp.toml", "units = 256", "units = 1000000000", "layer 0 (linear)"),
        ("mnist_lstm.toml", "hidden = 128", "hidden = 100000", "layer 1 (lstm)"),
        ("mnist_cnn.toml", "kernel = 5\n", "kernel = 5\npadding = 100000\n", "layer 1 (conv2d)"),
        ("mnist_mlp.toml", "units = 128", "units = 0", "layer 2 (linear)"),
    ];
    for (spec, from, to, layer) in cases {
        let path = spec_copy(&dir, spec, |t| t.replacen(from, to, 1));
        let start = std::time::Instant::now();
        let (code, _, err) =
            sinapse(&["train", path.to_str().unwrap(), "--quiet", "--out", dir.join("m").to_str().unwrap()]);
        assert_eq!(code, 1, "{spec} {to}: {err}");
        assert!(err.contains(layer), "{spec} {to}: {err}");
        assert!(start.elapsed().as_secs() < 20, "refused before allocating, not after");
    }
    // The same in a saved model's card.
    let model = dir.join("xor");
    let (code, _, err) = sinapse(&["train", "models/xor.toml", "--out", model.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let card = std::fs::read_to_string(model.join("model.toml")).unwrap();
    std::fs::write(model.join("model.toml"), card.replacen("units = 4", "units = 4000000000", 1)).unwrap();
    let (code, _, err) = sinapse(&["eval", model.to_str().unwrap(), "data/xor.csv"]);
    assert_eq!(code, 1);
    assert!(err.contains("layer 0 (linear)") && err.contains("needs"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn special_files_and_bad_numbers_are_errors_not_hangs_or_nan() {
    let dir = temp("special");
    // A device as the data, and a pipe as the weights file: refused at once.
    let zero = spec_copy(&dir, "iris.toml", |t| {
        t.replace(
            &t[t.find("path = ").unwrap()..][..t[t.find("path = ").unwrap()..].find('\n').unwrap()],
            "path = \"/dev/zero\"",
        )
    });
    let (code, _, err) = sinapse(&["train", zero.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 1);
    assert!(err.contains("/dev/zero") && err.contains("not a regular file"), "{err}");
    let model = dir.join("iris");
    let (code, _, err) = sinapse(&["train", "models/iris.toml", "--out", model.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let fifo = dir.join("fifo-model");
    std::fs::create_dir(&fifo).unwrap();
    std::fs::copy(model.join("model.toml"), fifo.join("model.toml")).unwrap();
    assert!(Command::new("mkfifo").arg(fifo.join("model.safetensors")).status().unwrap().success());
    let (code, _, err) = sinapse(&["eval", fifo.to_str().unwrap(), "data/iris.csv"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a regular file"), "{err}");
    // A finite value that overflows after scaling, and a scaler of std 0 in the card: errors,
    // never NaN predictions.
    let input = dir.join("new.csv");
    std::fs::write(&input, "sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n3.4e38,3.0,5.2,2.3\n")
        .unwrap();
    let (code, out, err) = sinapse(&["predict", model.to_str().unwrap(), input.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("row 2"), "{err}");
    let card = std::fs::read_to_string(model.join("model.toml")).unwrap();
    let std_line = card.lines().find(|l| l.starts_with("std = ")).unwrap();
    std::fs::write(model.join("model.toml"), card.replace(std_line, "std = [0.8, 0.0, 1.7, 0.7]")).unwrap();
    let (code, _, err) = sinapse(&["eval", model.to_str().unwrap(), "data/iris.csv"]);
    assert_eq!(code, 1);
    assert!(err.contains("std of feature 2 is 0"), "{err}");
    // A file with a header and no rows says so, in eval and in train.
    let empty = dir.join("empty.csv");
    std::fs::write(&empty, "sepal_length,sepal_width,petal_length,petal_width,species\n").unwrap();
    std::fs::write(model.join("model.toml"), card).unwrap();
    let (code, _, err) = sinapse(&["eval", model.to_str().unwrap(), empty.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("no rows of data"), "{err}");
    let spec = spec_copy(&dir, "iris.toml", |t| {
        t.replace(&format!("{}/data/iris.csv", concat!(env!("CARGO_MANIFEST_DIR"), "/../..")), empty.to_str().unwrap())
    });
    let (code, _, err) = sinapse(&["train", spec.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 1);
    assert!(err.contains("no rows of data"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn predictions_quote_class_names_as_csv_needs() {
    let dir = temp("quote");
    let data = dir.join("data.csv");
    let mut rows = String::from("x,label\n");
    for i in 0..40 {
        let label = if i % 2 == 0 { "\"a, b\"" } else { "\"say \"\"hi\"\"\"" };
        rows.push_str(&format!(
            "{},{label}\n",
            if i % 2 == 0 { -1.0 - i as f32 / 40.0 } else { 1.0 + i as f32 / 40.0 }
        ));
    }
    std::fs::write(&data, rows).unwrap();
    let spec = dir.join("spec.toml");
    std::fs::write(&spec, "epochs = 30\nbatch_size = 8\n[data]\nformat = \"csv\"\npath = \"data.csv\"\nlabel = \"label\"\n[[layers]]\ntype = \"linear\"\nunits = 2\n[optimizer]\ntype = \"sgd\"\nlr = 0.5\n").unwrap();
    let model = dir.join("model");
    let (code, _, err) = sinapse(&["train", spec.to_str().unwrap(), "--out", model.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = sinapse(&["predict", model.to_str().unwrap(), data.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let mut reader = csv::Reader::from_reader(out.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header, vec!["prediction", "p_a, b", "p_say \"hi\""]);
    let first = reader.records().next().unwrap().unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(&first[0], "a, b");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn small_things_said_once_and_clearly() {
    // An IO error's cause is printed once.
    let (code, _, err) = sinapse(&["train", "no/such/spec.toml"]);
    assert_eq!(code, 1);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // Zero checks is not a pass; a negative rate is read as a number and refused as one.
    let (code, _, err) = sinapse(&["gradcheck", "models/xor.toml", "--per-tensor", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("per-tensor"), "{err}");
    let (code, _, err) = sinapse(&["perceptron", "--gate", "and", "--lr", "-1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--lr must be a positive number, got -1"), "{err}");
}

#[test]
fn rl_cartpole_trains_saves_and_plays() {
    let dir = std::env::temp_dir().join(format!("sinapse-cli-rl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let (code, out, err) = sinapse(&["rl", "cartpole", "--episodes", "5", "--seed", "1", "--out", d]);
    assert_eq!(code, 0, "{err}");
    let last = out.trim_end().lines().last().unwrap();
    assert!(last.starts_with("not solved after 5 episodes: mean return "), "{out}");
    for f in ["policy.toml", "policy.safetensors", "returns.csv", "returns.png"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(std::fs::read_to_string(dir.join("returns.csv")).unwrap().lines().count(), 6);
    let (code, out, err) = sinapse(&["rl", "cartpole", "--play", d, "--episodes", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mean return ") && out.contains("over 3 episodes"), "{out}");
    // Unknown environments and folders that are not policies are errors naming them.
    let (code, _, err) = sinapse(&["rl", "pong"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown environment 'pong'") && err.contains("cartpole"), "{err}");
    let (code, _, err) = sinapse(&["rl", "cartpole", "--play", "models"]);
    assert_ne!(code, 0);
    assert!(err.contains("policy.toml"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn autoencoder_spec_trains_evaluates_and_predicts_codes() {
    let dir = temp("autoencoder");
    let model = dir.join("model");
    let m = model.to_str().unwrap();
    let (code, out, err) = sinapse(&["train", "models/mnist_autoencoder.toml", "--out", m, "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let last = out.trim_end().lines().last().unwrap();
    let mse: f64 = last.strip_prefix("test reconstruction mse: ").expect(last).parse().unwrap();
    // The mean image alone scores about 0.067 (pixel variance); the bar catches an autoencoder
    // that learned nothing.
    assert!(mse < 0.02, "{out}");
    for f in ["codes.png", "reconstructions.png", "loss.png", "mse.png", "history.csv"] {
        assert!(model.join(f).is_file(), "{f} missing");
    }
    let (code, out, err) = sinapse(&["eval", m, "data/mnist-10k"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.trim_end().ends_with(&format!("reconstruction mse: {mse:.6}")), "{out}");
    // Codes by default (32 per row), reconstructions (784, named as the inputs) on request.
    let csv = dir.join("in.csv");
    let header: Vec<String> = (0..784).map(|i| format!("pixel{i}")).collect();
    let row: Vec<String> = (0..784).map(|i| if i % 7 == 0 { "0.5".into() } else { "0".into() }).collect();
    std::fs::write(&csv, format!("{}\n{}\n{}\n", header.join(","), row.join(","), row.join(","))).unwrap();
    let (code, out, err) = sinapse(&["predict", m, csv.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.trim_end().lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("code0,code1,") && lines[0].split(',').count() == 32, "{}", lines[0]);
    let (code, out, err) = sinapse(&["predict", m, csv.to_str().unwrap(), "--reconstructions"]);
    assert_eq!(code, 0, "{err}");
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("pixel0,pixel1") && first.split(',').count() == 784);
    let values: Vec<f64> = out.lines().nth(1).unwrap().split(',').map(|v| v.parse().unwrap()).collect();
    assert!(values.iter().all(|v| (0.0..=1.0).contains(v)), "sigmoid of the logits: pixels in [0, 1]");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn learning_curve_writes_a_table_and_a_plot() {
    let dir = temp("curve");
    let out = dir.join("curve");
    let o = out.to_str().unwrap();
    let (code, stdout, err) = sinapse(&[
        "learning-curve",
        "models/iris.toml",
        "--fractions",
        "0.25,1",
        "--compare",
        "models/xor.toml",
        "--out",
        o,
    ]);
    // xor has no test set: the comparison is refused, naming what is missing, and nothing is
    // written.
    assert_ne!(code, 0);
    assert!(err.contains("xor") && err.contains("no test set"), "{err}");
    assert!(!out.exists());
    let (code, stdout2, err) = sinapse(&["learning-curve", "models/iris.toml", "--fractions", "0.25,1", "--out", o]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("fraction") || stdout2.contains("fraction"));
    let csv = std::fs::read_to_string(out.join("learning_curve.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "spec,fraction,examples,metric,train_mean,train_std,test_mean,test_std");
    assert_eq!(rows.len(), 3, "{csv}");
    let fields: Vec<&str> = rows[1].split(',').collect();
    assert_eq!((fields[0], fields[1], fields[2], fields[3]), ("iris", "0.25", "30", "accuracy"), "{csv}");
    let test_acc: f64 = fields[6].parse().unwrap();
    assert!((0.0..=1.0).contains(&test_acc));
    assert!(out.join("learning_curve.png").is_file());
    // Extreme fractions still give each class a row, and never all but none.
    let (code, stdout, err) = sinapse(&["learning-curve", "models/iris.toml", "--fractions", "0.01,0.99", "--out", o]);
    assert_eq!(code, 0, "{err}");
    let csv = std::fs::read_to_string(out.join("learning_curve.csv")).unwrap();
    let examples: Vec<usize> = csv.lines().skip(1).map(|l| l.split(',').nth(2).unwrap().parse().unwrap()).collect();
    assert_eq!(examples, vec![3, 120], "one per class at 1%, all 120 at 99%: {stdout}");
    let (code, _, err) = sinapse(&["learning-curve", "models/iris.toml", "--fractions", "0,1", "--out", o]);
    assert_ne!(code, 0);
    assert!(err.contains("--fractions: 0 is not in (0, 1]"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The probabilities of a `predict` CSV (every column after the predicted class).
fn probabilities(csv: &str) -> Vec<Vec<f64>> {
    csv.lines().skip(1).map(|l| l.split(',').skip(1).map(|v| v.parse().unwrap()).collect()).collect()
}

#[test]
fn pytorch_weights_import_and_predict_as_pytorch_does() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let dir = temp("import");
    for net in ["mlp", "cnn"] {
        let out = dir.join(net);
        let (code, stdout, err) = sinapse(&[
            "import",
            &format!("{fixtures}/import_{net}.toml"),
            &format!("{fixtures}/import_{net}.safetensors"),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{net}: {err}");
        assert!(stdout.contains("imported 4 tensors") && stdout.contains("test accuracy: "), "{stdout}");
        let (code, csv, err) = sinapse(&["predict", out.to_str().unwrap(), &format!("{fixtures}/import_inputs.csv")]);
        assert_eq!(code, 0, "{net}: {err}");
        let got = probabilities(&csv);
        // PyTorch's softmax outputs: a comment line, then one row per image.
        let expected = std::fs::read_to_string(format!("{fixtures}/import_expected_{net}.csv")).unwrap();
        let rows: Vec<Vec<f64>> = expected
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|r| r.split(',').map(|v| v.parse().unwrap()).collect())
            .collect();
        assert_eq!(got.len(), 5);
        for (i, (g, w)) in got.iter().zip(&rows).enumerate() {
            assert_eq!(g.len(), 10);
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() <= 1e-5, "{net}, image {i}: {a} vs PyTorch's {b}");
            }
        }
    }
    // Weights of another network: every missing and extra tensor is named, nothing is saved.
    let out = dir.join("wrong");
    let (code, _, err) = sinapse(&[
        "import",
        &format!("{fixtures}/import_cnn.toml"),
        &format!("{fixtures}/import_mlp.safetensors"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("1.weight") && err.contains("0.weight"), "{err}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn export_writes_an_onnx_model_with_samples() {
    let dir = temp("export");
    let model = dir.join("iris");
    let (code, _, err) =
        sinapse(&["train", "models/iris.toml", "--epochs", "2", "--quiet", "--out", model.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let onnx = dir.join("iris.onnx");
    let (code, out, err) =
        sinapse(&["export", model.to_str().unwrap(), "--onnx", onnx.to_str().unwrap(), "--samples", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ONNX opset 17"), "{out}");
    let bytes = std::fs::read(&onnx).unwrap();
    // The producer's name is in the protobuf, and so are the scaler's nodes.
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("sinapse") && text.contains("Sub") && text.contains("Gemm"), "not an ONNX model of iris");
    let samples = std::fs::read_to_string(dir.join("iris.onnx.samples.json")).unwrap();
    assert!(samples.starts_with("{\"input_shape\": [4], \"output_shape\": [3], \"inputs\": [["), "{samples}");
    // Not a model directory: an error naming it.
    let (code, _, err) = sinapse(&["export", "models", "--onnx", onnx.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("model.toml"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `import --scaler` takes the scaling the weights were trained with: iris weights imported
/// with their own model's `model.toml` as the scaler predict exactly as that model does; a
/// scaler of another width or kind is refused, naming the difference.
#[test]
fn import_takes_the_scaler_the_weights_were_trained_with() {
    let dir = temp("import-scaler");
    let model = dir.join("iris");
    let (code, _, err) =
        sinapse(&["train", "models/iris.toml", "--epochs", "3", "--quiet", "--out", model.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let weights = model.join("model.safetensors");
    let card = model.join("model.toml");
    let imported = dir.join("imported");
    let (code, stdout, err) = sinapse(&[
        "import",
        "models/iris.toml",
        weights.to_str().unwrap(),
        "--scaler",
        card.to_str().unwrap(),
        "--out",
        imported.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("imported 4 tensors"), "{stdout}");
    let predict = |m: &std::path::Path| {
        let (code, csv, err) = sinapse(&["predict", m.to_str().unwrap(), "data/iris.csv"]);
        assert_eq!(code, 0, "{err}");
        csv
    };
    assert_eq!(predict(&imported), predict(&model), "the same weights and scaler predict the same");

    let narrow = dir.join("narrow.toml");
    std::fs::write(&narrow, "kind = \"standard\"\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]\n").unwrap();
    let minmax = dir.join("minmax.toml");
    std::fs::write(&minmax, "kind = \"min_max\"\nmin = [0.0, 0.0, 0.0, 0.0]\nmax = [1.0, 1.0, 1.0, 1.0]\n").unwrap();
    let junk = dir.join("junk.toml");
    std::fs::write(&junk, "kind = \"standard\"\nmean = [0.0]\n").unwrap();
    for (file, want) in
        [(&narrow, "fitted on 3 features, got 4"), (&minmax, "given scaler is MinMax"), (&junk, "not a scaler")]
    {
        let out = dir.join("refused");
        let (code, _, err) = sinapse(&[
            "import",
            "models/iris.toml",
            weights.to_str().unwrap(),
            "--scaler",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_ne!(code, 0);
        assert!(err.contains(want), "{file:?}: {err}");
        assert!(!out.exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// GET `path` from `addr` (HTTP/1.0, the whole answer): status code and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_get_as(addr, addr, path)
}

/// GET `path` from `addr` with `host` as the Host header.
fn http_get_as(addr: &str, host: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the dashboard");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let code = reply.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = reply.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    (code, body)
}

#[test]
fn dashboard_serves_the_page_and_the_runs() {
    use std::io::BufRead;
    let runs = std::env::temp_dir().join(format!("sinapse-cli-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&runs);
    let out = runs.join("iris");
    let (code, _, err) = sinapse(&["train", "models/iris.toml", "--quiet", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.join("confusion.csv").is_file());
    assert!(!runs.join("iris.live.json").exists(), "the live file goes once the model is saved");
    let mut server = Command::new(env!("CARGO_BIN_EXE_sinapse"))
        .args(["dashboard", "--runs", runs.to_str().unwrap(), "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the dashboard");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_default().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "bound to the loopback address only: {line}");
    let (page_code, page) = http_get(&addr, "/");
    let (api_code, api) = http_get(&addr, "/api/runs");
    let (missing, _) = http_get(&addr, "/nothing");
    // A page of another site whose name was pointed at 127.0.0.1 (DNS rebinding) is refused.
    let port = addr.rsplit(':').next().unwrap();
    let (foreign, _) = http_get_as(&addr, &format!("attacker.example:{port}"), "/api/runs");
    server.kill().ok();
    server.wait().ok();
    std::fs::remove_dir_all(&runs).ok();
    assert_eq!((page_code, api_code, missing, foreign), (200, 200, 404, 403));
    assert!(page.contains("<canvas") && !page.contains("http://") && !page.contains("https://"), "self-contained page");
    let runs: serde_json::Value = serde_json::from_str(&api).expect("JSON");
    let iris = &runs[0];
    assert_eq!((iris["name"].as_str(), iris["status"].as_str()), (Some("iris"), Some("finished")), "{api}");
    let history = std::fs::read_to_string(out.join("history.csv")).unwrap_or_default();
    assert!(iris["records"].as_array().is_some_and(|r| !r.is_empty()), "{api}{history}");
    assert_eq!(iris["confusion"]["classes"].as_array().map(Vec::len), Some(3), "{api}");
    assert!(iris["summary"].as_str().unwrap().contains("131 parameters"), "{api}");
}

/// `bench --profile-kernels` on the GPU emulated on the CPU (`SINAPSE_EMULATED_GPU=1`), with
/// 256 training and 64 test images of the bundled set: each product and kernel of the `mlp`'s
/// step is listed per step (the first layer's product once, each hidden layer's fused ReLU and
/// bias gradient kernel once), and the total. Skipped, saying so, where the emulator cannot be built (no C++
/// compiler) or run (no NVRTC), unless `SINAPSE_REQUIRE_EMULATOR=1`.
#[test]
fn bench_profiles_each_kernel_of_a_step_on_the_emulated_gpu() {
    let data = sinapse::data::mnist::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k")).unwrap();
    let dir = temp("profile-mnist");
    for (split, set, n) in [("train", &data.train, 256), ("t10k", &data.test, 64)] {
        let pixels: Vec<u8> = set.x().to_vec()[..n * 784].iter().map(|v| (v * 255.0).round() as u8).collect();
        let labels: Vec<u8> = set.y().to_vec()[..n].iter().map(|&v| v as u8).collect();
        let mut images = vec![0, 0, 8, 3];
        for d in [n as u32, 28, 28] {
            images.extend(d.to_be_bytes());
        }
        images.extend(pixels);
        let mut classes = vec![0, 0, 8, 1];
        classes.extend((n as u32).to_be_bytes());
        classes.extend(labels);
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), classes).unwrap();
    }
    let args = ["bench", "mlp", "--device", "cuda", "--runs", "1", "--epochs", "1", "--profile-kernels", "2"];
    let data_dir = dir.to_str().unwrap();
    let (code, out, err) = sinapse_with(&[("SINAPSE_EMULATED_GPU", "1")], &[&args[..], &["--data", data_dir]].concat());
    // No C++ compiler for the emulator, or no NVRTC to compile the kernels for it.
    if code != 0
        && (err.contains("SINAPSE_EMULATED_GPU=1: the emulated GPU") || err.contains("cuda:0 is not available"))
    {
        let required = std::env::var("SINAPSE_REQUIRE_EMULATOR").is_ok_and(|v| v == "1");
        assert!(!required, "SINAPSE_REQUIRE_EMULATOR=1, and: {err}");
        eprintln!("cli: bench --profile-kernels not covered: {}", err.trim());
        return;
    }
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kernel profile: 2 eager training steps"), "{out}");
    let line = |what: &str| out.lines().find(|l| l.ends_with(what)).unwrap_or_else(|| panic!("no {what}: {out}"));
    let launches = |l: &str| l.split_whitespace().nth(2).unwrap().parse::<f64>().unwrap();
    assert_eq!(launches(line("sgemm [128 x 784] · [784 x 256]")), 1.0, "{out}");
    assert_eq!(launches(line("relu_grad_sums (grid 8, block 1024)")), 1.0, "{out}");
    assert_eq!(launches(line("relu_grad_sums (grid 4, block 1024)")), 1.0, "{out}");
    assert!(out.contains("kernel profile total: "), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
