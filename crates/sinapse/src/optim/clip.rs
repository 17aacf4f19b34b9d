//! Gradient clipping.

use crate::{Error, Gradients, Result, Tensor};

/// Rescales the gradients of `params` so that their global L2 norm (all gradients as one
/// vector) is at most `max_norm`, as PyTorch's `clip_grad_norm_`: when the norm exceeds it,
/// every gradient is multiplied by `max_norm / (norm + 1e-6)`. Returns the norm before
/// clipping.
pub fn clip_grad_norm(params: &[Tensor], grads: &mut Gradients, max_norm: f32) -> Result<f32> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::invalid("clip_grad_norm", format!("max_norm must be > 0, got {max_norm}")));
    }
    let mut sq = 0.0f64;
    {
        let _off = crate::no_grad();
        for p in params {
            if let Some(g) = grads.get(p) {
                if g.elem_count() == 0 {
                    continue;
                }
                // ‖g‖² = m²·Σ(g/m)² with m = max |g|: the squares are summed where the gradient
                // is, and cannot overflow f32 however large g is (two small reads per tensor).
                let m = g.abs()?.max_all()?.to_scalar()?;
                if m > 0.0 && m.is_finite() {
                    let s = g.mul_scalar(1.0 / m)?;
                    sq += (m as f64).powi(2) * s.mul(&s)?.sum_all()?.to_scalar()? as f64;
                } else if m != 0.0 {
                    sq += (m as f64).powi(2); // inf or NaN: the norm is too
                }
            }
        }
    }
    let norm = sq.sqrt() as f32;
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        for p in params {
            if let Some(g) = grads.remove(p) {
                grads.insert(p, g.mul_scalar(scale)?);
            }
        }
    }
    Ok(norm)
}
