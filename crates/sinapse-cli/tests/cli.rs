//! The `sinapse` binary, run as a user would.

use std::process::Command;

fn sinapse(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sinapse"))
        .args(args)
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
        &["train", "--data", "no/such/dir", "--epochs", "1"],
    ] {
        let (code, out, err) = sinapse(args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
    let (_, _, err) = sinapse(&["train", "--data", "no/such/dir", "--epochs", "1"]);
    assert!(err.contains("no/such/dir") && err.contains("train-images-idx3-ubyte"), "{err}");
}

#[test]
fn train_prints_epochs_then_test_accuracy() {
    let (code, out, err) = sinapse(&["train", "--epochs", "2"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.trim_end().lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("epoch  2/2: loss ")), "{out}");
    let last = lines.last().unwrap();
    let acc: f32 = last.strip_prefix("test accuracy: ").expect(last).parse().unwrap();
    assert!(acc > 0.8, "{last}");
    assert_eq!(last.len(), "test accuracy: 0.NNNN".len());
}
