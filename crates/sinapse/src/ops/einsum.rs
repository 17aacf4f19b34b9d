//! `einsum`: sums of products named by index letters, for one or two operands.
//!
//! `"ij,jk->ik"` is a matrix product, `"bij,bjk->bik"` a batched one, `"i,j->ij"` an outer
//! product, `"ij->ji"` a transpose, `"ij->"` a sum. Two operands are reduced to one batched
//! matrix product: letters in both operands and the output are batch axes, letters in both
//! operands only are contracted, the others stay with their operand. The gradient is that of
//! the permutes, sums and product it is made of.

use crate::{Error, Result, Tensor};

/// Sizes of the letters seen so far.
struct Sizes(Vec<(char, usize)>);

impl Sizes {
    fn of(&self, c: char) -> usize {
        self.0.iter().find(|(l, _)| *l == c).map_or(1, |(_, s)| *s)
    }
}

fn bad(msg: String) -> Error {
    Error::invalid("einsum", msg)
}

impl Tensor {
    /// Einstein summation over one or two operands (PyTorch's `torch.einsum` for those):
    /// `Tensor::einsum("bij,bjk->bik", &[&a, &b])`. Without `->`, the output holds the
    /// letters that appear once, in alphabetical order (NumPy's rule). A letter repeated
    /// within one operand (a diagonal) and `...` are not supported and are errors.
    pub fn einsum(equation: &str, operands: &[&Tensor]) -> Result<Tensor> {
        let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
        let (inputs, output) = match eq.split_once("->") {
            Some((i, o)) => (i.to_string(), Some(o.to_string())),
            None => (eq.clone(), None),
        };
        let subs: Vec<Vec<char>> = inputs.split(',').map(|s| s.chars().collect()).collect();
        if subs.len() != operands.len() || !(1..=2).contains(&operands.len()) {
            return Err(bad(format!(
                "{equation:?} names {} operands, {} given (one or two are supported)",
                subs.len(),
                operands.len()
            )));
        }
        let mut sizes = Sizes(Vec::new());
        for (k, (s, t)) in subs.iter().zip(operands).enumerate() {
            if s.len() != t.rank() {
                return Err(bad(format!(
                    "operand {k} has shape {:?} but {equation:?} gives it {} letters",
                    t.shape(),
                    s.len()
                )));
            }
            for (i, &c) in s.iter().enumerate() {
                if !c.is_ascii_alphabetic() {
                    return Err(bad(format!("{equation:?}: {c:?} is not an index letter")));
                }
                if s[..i].contains(&c) {
                    return Err(bad(format!(
                        "{equation:?}: letter {c} repeats within operand {k} (diagonals are not supported)"
                    )));
                }
                let n = t.shape()[i];
                match sizes.0.iter().find(|(l, _)| *l == c) {
                    Some(&(_, m)) if m != n => {
                        return Err(bad(format!("{equation:?}: letter {c} is {m} in one place and {n} in another")));
                    }
                    Some(_) => {}
                    None => sizes.0.push((c, n)),
                }
            }
        }
        let all: Vec<char> = subs.concat();
        let out: Vec<char> = match output {
            Some(o) => o.chars().collect(),
            None => {
                let mut once: Vec<char> =
                    sizes.0.iter().map(|(c, _)| *c).filter(|c| all.iter().filter(|d| *d == c).count() == 1).collect();
                once.sort_unstable();
                once
            }
        };
        for (i, c) in out.iter().enumerate() {
            if !all.contains(c) || out[..i].contains(c) {
                return Err(bad(format!(
                    "{equation:?}: output letter {c} must appear in an input, once in the output"
                )));
            }
        }
        // Sum each operand over the letters nobody else needs.
        let mut reduced = Vec::new();
        for (k, (s, t)) in subs.iter().zip(operands).enumerate() {
            let other: &[char] = if operands.len() == 2 { &subs[1 - k] } else { &[] };
            let drop: Vec<usize> = (0..s.len()).filter(|&i| !out.contains(&s[i]) && !other.contains(&s[i])).collect();
            let t = if drop.is_empty() { (*t).clone() } else { t.sum_dims(&drop, false)? };
            let kept: Vec<char> = s.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, &c)| c).collect();
            reduced.push((kept, t));
        }
        let (letters, result) = if reduced.len() == 1 {
            reduced.pop().ok_or_else(|| bad("no operand".into()))?
        } else {
            let (b_sub, b) = reduced.pop().ok_or_else(|| bad("no operand".into()))?;
            let (a_sub, a) = reduced.pop().ok_or_else(|| bad("no operand".into()))?;
            contract(&a_sub, &a, &b_sub, &b, &out, &sizes)?
        };
        let perm: Vec<usize> = out
            .iter()
            .map(|c| letters.iter().position(|l| l == c).ok_or_else(|| bad(format!("lost letter {c}"))))
            .collect::<Result<_>>()?;
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            Ok(result)
        } else {
            result.permute(&perm)?.contiguous()
        }
    }
}

/// `a` and `b` as one batched matrix product; returns the result's letters (batch, left,
/// right) and the result.
fn contract(
    a_sub: &[char],
    a: &Tensor,
    b_sub: &[char],
    b: &Tensor,
    out: &[char],
    sizes: &Sizes,
) -> Result<(Vec<char>, Tensor)> {
    let batch: Vec<char> = a_sub.iter().copied().filter(|c| b_sub.contains(c) && out.contains(c)).collect();
    let summed: Vec<char> = a_sub.iter().copied().filter(|c| b_sub.contains(c) && !out.contains(c)).collect();
    let left: Vec<char> = a_sub.iter().copied().filter(|c| !b_sub.contains(c)).collect();
    let right: Vec<char> = b_sub.iter().copied().filter(|c| !a_sub.contains(c)).collect();
    let size = |cs: &[char]| cs.iter().map(|&c| sizes.of(c)).product::<usize>();
    let arrange = |sub: &[char], t: &Tensor, order: &[&[char]], shape: [usize; 3]| -> Result<Tensor> {
        let letters: Vec<char> = order.concat();
        let perm: Vec<usize> = letters.iter().map(|c| sub.iter().position(|l| l == c).unwrap_or(0)).collect();
        t.permute(&perm)?.reshape(&shape)
    };
    let (nb, nl, nc, nr) = (size(&batch), size(&left), size(&summed), size(&right));
    let a3 = arrange(a_sub, a, &[&batch, &left, &summed], [nb, nl, nc])?;
    let b3 = arrange(b_sub, b, &[&batch, &summed, &right], [nb, nc, nr])?;
    let letters: Vec<char> = [batch.as_slice(), &left, &right].concat();
    let shape: Vec<usize> = letters.iter().map(|&c| sizes.of(c)).collect();
    Ok((letters, a3.matmul(&b3)?.reshape(&shape)?))
}
