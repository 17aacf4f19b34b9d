//! The optimizer updates, each fused into one pass over a parameter, its gradient and its
//! state buffers (the equations are on [`OptimizerUpdate`]).

use crate::backend::OptimizerUpdate;

/// Applies `update` to the parameter values `w` in place, from gradient `g` and the state
/// buffers (each `w.len()` long, as many as [`OptimizerUpdate::state_buffers`]).
/// Large parameters are updated in chunks over the threads (each value's update is its own,
/// so the result is the same): the `mlp` benchmark's 784 x 256 weight took 117 us a step on
/// one thread while the other waited, 10% of the run (`perf`, 2-core Intel Xeon).
pub(super) fn step(w: &mut [f32], g: &[f32], state: &mut [&mut [f32]], update: &OptimizerUpdate) {
    use super::elementwise::{PAR_CHUNK, PAR_MIN_ELEMS};
    use rayon::prelude::*;
    if w.len() < PAR_MIN_ELEMS {
        return super::simd::vectorized(|| step_loops(w, g, state, update));
    }
    let mut buffers: Vec<_> = state.iter_mut().map(|s| s.chunks_mut(PAR_CHUNK)).collect();
    // Each chunk: its values, gradient and state buffers.
    type Chunk<'a> = (&'a mut [f32], &'a [f32], Vec<&'a mut [f32]>);
    let chunks: Vec<Chunk> = w
        .chunks_mut(PAR_CHUNK)
        .zip(g.chunks(PAR_CHUNK))
        .map(|(w, g)| (w, g, buffers.iter_mut().filter_map(Iterator::next).collect()))
        .collect();
    chunks
        .into_par_iter()
        .for_each(|(w, g, mut state)| super::simd::vectorized(|| step_loops(w, g, &mut state, update)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// A parameter large enough to be updated in chunks over the threads (with a last,
    /// partial chunk) ends bit-for-bit where one pass over it does, state buffers included,
    /// for every update and its buffers; and the update did change it.
    #[test]
    fn chunked_updates_match_one_pass() {
        let n = super::super::elementwise::PAR_MIN_ELEMS + 1234;
        let mut rng = Rng::seed(3);
        let w0: Vec<f32> = (0..n).map(|_| rng.standard_normal()).collect();
        let g: Vec<f32> = (0..n).map(|_| rng.standard_normal()).collect();
        let s0: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        let updates = [
            OptimizerUpdate::Sgd { lr: 0.1, momentum: 0.0, nesterov: false, weight_decay: 0.01, first_step: false },
            OptimizerUpdate::Sgd { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.0, first_step: false },
            OptimizerUpdate::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                decoupled: true,
                bias1: 0.5,
                bias2: 0.3,
            },
            OptimizerUpdate::RmsProp { lr: 0.01, alpha: 0.99, eps: 1e-8, momentum: 0.5, weight_decay: 0.0 },
        ];
        for update in updates {
            let buffers = update.state_buffers();
            let run = |chunked: bool| {
                let mut w = w0.clone();
                let mut state: Vec<Vec<f32>> = vec![s0.clone(); buffers];
                let mut views: Vec<&mut [f32]> = state.iter_mut().map(Vec::as_mut_slice).collect();
                if chunked {
                    step(&mut w, &g, &mut views, &update);
                } else {
                    step_loops(&mut w, &g, &mut views, &update);
                }
                (w, state)
            };
            let (one, chunks) = (run(false), run(true));
            assert!(one.0.iter().zip(&w0).all(|(a, b)| a != b), "{update:?} changed every value");
            assert!(one == chunks, "{update:?}: the chunked update differs from one pass");
        }
    }
}
