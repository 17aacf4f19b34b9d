//! Checkpoints: weights in the safetensors format under their `state_dict` names, written
//! atomically ([`crate::atomic`]) so an interrupted save never leaves a broken model behind.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::nn::Module;
use crate::{Error, Result, Tensor};

/// The weights as safetensors bytes (f32, little-endian), one entry per name.
pub fn weights_to_bytes(named: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = named
        .iter()
        .map(|(n, t)| {
            Ok((n.clone(), t.try_to_vec()?.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape().to_vec()))
        })
        .collect::<Result<_>>()?;
    let views = data
        .iter()
        .map(|(n, bytes, shape)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::invalid("save_weights", format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::invalid("save_weights", e.to_string()))
}

/// Parses safetensors bytes into named f32 tensors (`path` is for error messages).
pub fn weights_from_bytes(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>> {
    let fail = |msg: String| Error::Format { path: path.to_path_buf(), msg };
    let st = SafeTensors::deserialize(bytes).map_err(|e| fail(format!("not a safetensors file: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        // F32 is what Sinapse writes; PyTorch writes its counters (BatchNorm's
        // `num_batches_tracked`) as I64, and float64 models as F64: both are read as f32.
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F64 => {
                data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()) as f32).collect()
            }
            Dtype::I64 => {
                data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()) as f32).collect()
            }
            other => {
                return Err(fail(format!("tensor {name} has dtype {other:?}; F32, F64 and I64 are read")));
            }
        };
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(fail(format!("tensor {name} holds {v} at element {i}; weights must be finite")));
        }
        out.push((name.clone(), Tensor::from_vec(values, view.shape())?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Writes the model's parameters and buffers ([`Module::state_dict`]) to a safetensors file,
/// atomically.
pub fn save_weights(model: &dyn Module, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    crate::atomic::write_atomically(path, &weights_to_bytes(&model.state_dict())?)
}

/// Reads a safetensors file.
pub fn load_weights(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    let bytes = crate::data::files::read_regular(path)?;
    weights_from_bytes(&bytes, path)
}

/// Copies `tensors` into the model's parameters and buffers by name. Every one must be present
/// with its shape, and every tensor must belong to one; otherwise nothing is changed and the
/// error lists the missing, extra and mis-shaped names (`source` names the file).
pub fn load_into(model: &dyn Module, tensors: &[(String, Tensor)], source: &Path) -> Result<()> {
    let params = model.state_dict();
    let given: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let wanted: HashMap<&str, &Tensor> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut problems = Vec::new();
    let mut missing: Vec<&str> = wanted.keys().filter(|n| !given.contains_key(*n)).copied().collect();
    let mut extra: Vec<&str> = given.keys().filter(|n| !wanted.contains_key(*n)).copied().collect();
    missing.sort_unstable();
    extra.sort_unstable();
    if !missing.is_empty() {
        problems.push(format!("missing {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        problems.push(format!("unexpected {}", extra.join(", ")));
    }
    for (name, p) in &params {
        if let Some(t) = given.get(name.as_str()) {
            if t.shape() != p.shape() {
                problems.push(format!("{name} has shape {:?}, the model needs {:?}", t.shape(), p.shape()));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Format {
            path: source.to_path_buf(),
            msg: format!("weights do not fit the model: {}", problems.join("; ")),
        });
    }
    for (name, p) in &params {
        p.copy_from(given[name.as_str()])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Linear, Relu, Sequential};
    use crate::Rng;
    use std::path::PathBuf;

    fn model(seed: u64) -> Sequential {
        let mut rng = Rng::seed(seed);
        Sequential::new().add(Linear::new(3, 4, &mut rng).unwrap()).add(Relu).add(Linear::new(4, 2, &mut rng).unwrap())
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sinapse-ckpt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn weights_round_trip_by_name() {
        let dir = temp("roundtrip");
        let a = model(1);
        save_weights(&a, dir.join("w.safetensors")).unwrap();
        let b = model(2);
        let loaded = load_weights(dir.join("w.safetensors")).unwrap();
        let names: Vec<&str> = loaded.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["0.bias", "0.weight", "2.bias", "2.weight"]);
        load_into(&b, &loaded, &dir).unwrap();
        for ((_, pa), (_, pb)) in a.named_parameters().iter().zip(b.named_parameters()) {
            assert_eq!(pa.to_vec(), pb.to_vec());
        }
    }

    #[test]
    fn loading_names_what_does_not_fit() {
        let dir = temp("misfit");
        let small = Sequential::new().add(Linear::new(3, 5, &mut Rng::seed(0)).unwrap());
        save_weights(&small, dir.join("w.safetensors")).unwrap();
        let target = model(0);
        let before: Vec<Vec<f32>> = target.parameters().iter().map(Tensor::to_vec).collect();
        let e = load_into(&target, &load_weights(dir.join("w.safetensors")).unwrap(), &dir).unwrap_err().to_string();
        assert!(e.contains("missing 2.bias, 2.weight"), "{e}");
        assert!(e.contains("0.weight has shape [5, 3], the model needs [4, 3]"), "{e}");
        let after: Vec<Vec<f32>> = target.parameters().iter().map(Tensor::to_vec).collect();
        assert_eq!(before, after, "a failed load changes nothing");
        std::fs::write(dir.join("junk"), b"not safetensors").unwrap();
        assert!(load_weights(dir.join("junk")).unwrap_err().to_string().contains("not a safetensors file"));
    }

    #[test]
    fn weights_that_are_not_finite_are_refused_by_name() {
        let bad = vec![("0.weight".to_string(), Tensor::from_vec(vec![1.0, f32::NAN], &[2]).unwrap())];
        let bytes = weights_to_bytes(&bad).unwrap();
        let e = weights_from_bytes(&bytes, Path::new("w.safetensors")).unwrap_err().to_string();
        assert!(e.contains("tensor 0.weight holds NaN at element 1"), "{e}");
    }
}
