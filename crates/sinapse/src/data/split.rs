//! Validation splits, as the course teaches them: holdout (about 2/3 for training), k-fold,
//! and leave-one-out; holdout and k-fold can be stratified (each part keeps the class
//! proportions of the whole).

use crate::{Error, Result, Rng};

/// The row indices of one training/test split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fold {
    /// Rows to train on.
    pub train: Vec<usize>,
    /// Rows to test (validate) on.
    pub test: Vec<usize>,
}

/// The rows of each class, shuffled; `classes[i]` is row i's class.
fn shuffled_by_class(classes: &[usize], rng: &mut Rng) -> Vec<Vec<usize>> {
    let k = classes.iter().max().map_or(0, |&m| m + 1);
    let mut groups = vec![Vec::new(); k];
    for (i, &c) in classes.iter().enumerate() {
        groups[c].push(i);
    }
    for g in &mut groups {
        rng.shuffle(g);
    }
    groups
}

/// One random split with `train_fraction` of the rows for training (the course's holdout,
/// 2/3 by default in the CLI). With `strata` (a class per row), each class is split in that
/// proportion.
pub fn holdout(n: usize, train_fraction: f64, strata: Option<&[usize]>, rng: &mut Rng) -> Result<Fold> {
    if !(train_fraction > 0.0 && train_fraction < 1.0) {
        return Err(Error::invalid("holdout", format!("train fraction must be in (0, 1), got {train_fraction}")));
    }
    if n < 2 {
        return Err(Error::invalid("holdout", format!("needs at least 2 samples, got {n}")));
    }
    let groups = match strata {
        Some(s) => {
            check_strata("holdout", n, s)?;
            shuffled_by_class(s, rng)
        }
        None => vec![rng.permutation(n)],
    };
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for g in groups {
        let cut = ((g.len() as f64) * train_fraction).round() as usize;
        train.extend_from_slice(&g[..cut]);
        test.extend_from_slice(&g[cut..]);
    }
    if train.is_empty() || test.is_empty() {
        return Err(Error::invalid("holdout", format!("{n} samples leave an empty part at fraction {train_fraction}")));
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok(Fold { train, test })
}

/// `k` folds: the rows are shuffled and dealt into `k` parts of nearly equal size; fold `i`
/// tests on part `i` and trains on the rest. With `strata`, each class is dealt round-robin so
/// every part keeps the class proportions.
pub fn kfold(n: usize, k: usize, strata: Option<&[usize]>, rng: &mut Rng) -> Result<Vec<Fold>> {
    if k < 2 || k > n {
        return Err(Error::invalid("kfold", format!("needs 2 <= k <= samples, got k = {k} with {n} samples")));
    }
    let mut parts = vec![Vec::new(); k];
    match strata {
        Some(s) => {
            check_strata("kfold", n, s)?;
            let mut next = 0;
            for g in shuffled_by_class(s, rng) {
                for i in g {
                    parts[next].push(i);
                    next = (next + 1) % k;
                }
            }
        }
        None => {
            let order = rng.permutation(n);
            let (base, extra) = (n / k, n % k);
            let mut start = 0;
            for (p, part) in parts.iter_mut().enumerate() {
                let len = base + usize::from(p < extra);
                part.extend_from_slice(&order[start..start + len]);
                start += len;
            }
        }
    }
    Ok((0..k)
        .map(|i| {
            let mut test = parts[i].clone();
            test.sort_unstable();
            let mut train: Vec<usize> =
                parts.iter().enumerate().filter(|(j, _)| *j != i).flat_map(|(_, p)| p.iter().copied()).collect();
            train.sort_unstable();
            Fold { train, test }
        })
        .collect())
}

/// Leave-one-out: `n` folds, each testing on one row and training on all others.
pub fn leave_one_out(n: usize) -> Result<Vec<Fold>> {
    if n < 2 {
        return Err(Error::invalid("leave_one_out", format!("needs at least 2 samples, got {n}")));
    }
    Ok((0..n).map(|i| Fold { train: (0..n).filter(|&j| j != i).collect(), test: vec![i] }).collect())
}

fn check_strata(op: &'static str, n: usize, strata: &[usize]) -> Result<()> {
    if strata.len() != n {
        return Err(Error::invalid(op, format!("{} class labels for {n} samples", strata.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rows: &[usize], classes: &[usize], k: usize) -> Vec<usize> {
        let mut c = vec![0; k];
        for &r in rows {
            c[classes[r]] += 1;
        }
        c
    }

    #[test]
    fn holdout_keeps_two_thirds_and_class_proportions() {
        let classes: Vec<usize> = (0..150).map(|i| i / 50).collect();
        let f = holdout(150, 2.0 / 3.0, Some(&classes), &mut Rng::seed(0)).unwrap();
        assert_eq!(counts(&f.train, &classes, 3), vec![33, 33, 33]);
        assert_eq!(counts(&f.test, &classes, 3), vec![17, 17, 17]);
        let plain = holdout(150, 2.0 / 3.0, None, &mut Rng::seed(0)).unwrap();
        assert_eq!(plain.train.len(), 100);
        let mut all = [plain.train, plain.test].concat();
        all.sort_unstable();
        assert_eq!(all, (0..150).collect::<Vec<_>>());
        assert!(holdout(10, 1.0, None, &mut Rng::seed(0)).is_err());
    }

    #[test]
    fn kfold_partitions_the_rows() {
        for strata in [None, Some((0..23).map(|i| i % 3).collect::<Vec<usize>>())] {
            let folds = kfold(23, 5, strata.as_deref(), &mut Rng::seed(1)).unwrap();
            assert_eq!(folds.len(), 5);
            let mut tested: Vec<usize> = folds.iter().flat_map(|f| f.test.clone()).collect();
            tested.sort_unstable();
            assert_eq!(tested, (0..23).collect::<Vec<_>>(), "every row tested exactly once");
            for f in &folds {
                assert_eq!(f.train.len() + f.test.len(), 23);
                assert!(f.test.iter().all(|t| !f.train.contains(t)));
                assert!((4..=5).contains(&f.test.len()), "{}", f.test.len());
            }
        }
        assert!(kfold(3, 4, None, &mut Rng::seed(0)).is_err());
        assert!(kfold(3, 1, None, &mut Rng::seed(0)).is_err());
    }

    #[test]
    fn stratified_kfold_keeps_proportions() {
        let classes: Vec<usize> = (0..150).map(|i| i / 50).collect();
        for f in kfold(150, 5, Some(&classes), &mut Rng::seed(2)).unwrap() {
            assert_eq!(counts(&f.test, &classes, 3), vec![10, 10, 10]);
        }
    }

    #[test]
    fn leave_one_out_tests_each_row_once() {
        let folds = leave_one_out(4).unwrap();
        assert_eq!(folds.len(), 4);
        assert_eq!(folds[2], Fold { train: vec![0, 1, 3], test: vec![2] });
    }
}
