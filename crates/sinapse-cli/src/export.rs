//! `sinapse export MODEL_DIR --onnx model.onnx`: a model directory as an ONNX graph.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sinapse::atomic::write_atomically;
use sinapse::spec::{onnx, LayerSpec, TrainedModel};
use sinapse::{Rng, Tensor};

/// Options of `sinapse export`.
#[derive(Args)]
pub struct ExportArgs {
    /// A model directory saved by `sinapse train` (or `import`).
    model: PathBuf,
    /// Where to write the ONNX model.
    #[arg(long)]
    onnx: PathBuf,
    /// Also write N random inputs and Sinapse's outputs for them beside it
    /// (`<onnx>.samples.json`), for checking another runtime against Sinapse.
    #[arg(long)]
    samples: Option<usize>,
}

/// Runs the command.
pub fn run(args: ExportArgs) -> Result<()> {
    let model = TrainedModel::load(&args.model).with_context(|| format!("loading model {}", args.model.display()))?;
    let bytes = onnx::export(&model).with_context(|| format!("exporting {}", args.model.display()))?;
    write_atomically(&args.onnx, &bytes)?;
    outln!("wrote {} ({} bytes, ONNX opset {})", args.onnx.display(), bytes.len(), onnx::OPSET);
    if let Some(n) = args.samples {
        if n == 0 {
            anyhow::bail!("--samples must be at least 1");
        }
        let mut path = args.onnx.clone().into_os_string();
        path.push(".samples.json");
        let path = PathBuf::from(path);
        write_atomically(&path, samples(&model, n)?.as_bytes())?;
        outln!("wrote {} ({n} inputs and Sinapse's outputs)", path.display());
    }
    Ok(())
}

/// `n` random inputs of the model's shape (whole numbers below the table's size for an
/// embedding, else uniform in [0, 1)) and the network's outputs for them, as JSON.
fn samples(model: &TrainedModel, n: usize) -> Result<String> {
    let per: usize = model.card.input_shape.iter().product();
    let mut rng = Rng::seed(7);
    let values: Vec<f32> = match model.card.spec.layers.first() {
        Some(LayerSpec::Embedding { num, .. }) => {
            (0..n * per).map(|_| rng.below(*num).map(|v| v as f32)).collect::<sinapse::Result<_>>()?
        }
        _ => (0..n * per).map(|_| rng.unit()).collect(),
    };
    let mut shape = vec![n];
    shape.extend_from_slice(&model.card.input_shape);
    let x = Tensor::from_vec(values, &shape)?;
    let y = model.outputs(&x)?;
    let rows = |t: &Tensor| -> String {
        let v = t.to_vec();
        let per = v.len() / n.max(1);
        let mut s = String::from("[");
        for (i, row) in v.chunks(per.max(1)).enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('[');
            for (j, x) in row.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                // `{:?}` prints the shortest text that reads back as the same f32.
                let _ = write!(s, "{x:?}");
            }
            s.push(']');
        }
        s.push(']');
        s
    };
    Ok(format!(
        "{{\"input_shape\": {:?}, \"output_shape\": {:?}, \"inputs\": {}, \"outputs\": {}}}\n",
        model.card.input_shape,
        &y.shape()[1..],
        rows(&x),
        rows(&y)
    ))
}
