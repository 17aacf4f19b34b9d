//! The optimizer updates, each fused into one pass over a parameter, its gradient and its
//! state buffers (the equations are on [`OptimizerUpdate`]).

use crate::backend::OptimizerUpdate;

/// Applies `update` to the parameter values `w` in place, from gradient `g` and the state
/// buffers (each `w.len()` long, as many as [`OptimizerUpdate::state_buffers`]).
pub(super) fn step(w: &mut [f32], g: &[f32], state: &mut [&mut [f32]], update: &OptimizerUpdate) {
    super::simd::vectorized(|| step_loops(w, g, state, update));
}

/// [`step`]'s loops, inlined into its vectorised wrapper.
#[inline(always)]
fn step_loops(w: &mut [f32], g: &[f32], state: &mut [&mut [f32]], update: &OptimizerUpdate) {
    match *update {
        OptimizerUpdate::Sgd { lr, momentum: mu, nesterov, weight_decay: wd, first_step } => {
            if mu == 0.0 {
                for (w, &g) in w.iter_mut().zip(g) {
                    *w -= lr * (g + wd * *w);
                }
                return;
            }
            let [b] = state else { unreachable!("SGD with momentum has one buffer") };
            for ((w, &g), b) in w.iter_mut().zip(g).zip(b.iter_mut()) {
                let g = g + wd * *w;
                *b = if first_step { g } else { mu * *b + g };
                let step = if nesterov { g + mu * *b } else { *b };
                *w -= lr * step;
            }
        }
        OptimizerUpdate::Adam { lr, beta1, beta2, eps, weight_decay: wd, decoupled, bias1, bias2 } => {
            let [m, v] = state else { unreachable!("Adam has two buffers") };
            for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = if decoupled {
                    *w *= 1.0 - lr * wd;
                    g
                } else {
                    g + wd * *w
                };
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                let m_hat = *m / bias1;
                let v_hat = *v / bias2;
                *w -= lr * m_hat / (v_hat.sqrt() + eps);
            }
        }
        OptimizerUpdate::RmsProp { lr, alpha, eps, momentum: mu, weight_decay: wd } => {
            let (v, mut b) = match state {
                [v] => (v, None),
                [v, b] => (v, Some(b)),
                _ => unreachable!("RMSprop has one or two buffers"),
            };
            for (j, (w, &g)) in w.iter_mut().zip(g).enumerate() {
                let g = g + wd * *w;
                v[j] = alpha * v[j] + (1.0 - alpha) * g * g;
                let scaled = g / (v[j].sqrt() + eps);
                match b.as_deref_mut() {
                    Some(b) => {
                        b[j] = mu * b[j] + scaled;
                        *w -= lr * b[j];
                    }
                    None => *w -= lr * scaled,
                }
            }
        }
    }
}
