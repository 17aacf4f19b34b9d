//! In-memory datasets and the minibatch loader.

use crate::{Device, Error, Result, Rng, Tensor};

/// Inputs and targets held in memory; row `i` of `x` goes with row `i` of `y`.
#[derive(Clone, Debug)]
pub struct Dataset {
    x: Tensor,
    y: Tensor,
}

impl Dataset {
    /// Pairs inputs `[N, ..]` with targets `[N, ..]` (class indices `[N]`, values `[N, k]`).
    pub fn new(x: Tensor, y: Tensor) -> Result<Dataset> {
        if x.rank() == 0 || y.rank() == 0 || x.shape()[0] != y.shape()[0] {
            return Err(Error::shapes("Dataset (inputs vs targets, first axis)", x.shape(), y.shape()));
        }
        Ok(Dataset { x, y })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.x.shape()[0]
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inputs.
    pub fn x(&self) -> &Tensor {
        &self.x
    }

    /// The targets.
    pub fn y(&self) -> &Tensor {
        &self.y
    }

    /// The samples at `indices` (a 1-D index tensor), as a batch `(x, y)` on the dataset's
    /// device.
    pub fn batch(&self, indices: &Tensor) -> Result<(Tensor, Tensor)> {
        let ix = indices.to(self.x.device())?;
        // One copy of the indices where inputs and targets share a device.
        let iy = if self.y.device() == self.x.device() { ix.clone() } else { indices.to(self.y.device())? };
        Ok((self.x.index_select(0, &ix)?, self.y.index_select(0, &iy)?))
    }

    /// The dataset with its inputs and targets on `device`.
    pub fn to(&self, device: Device) -> Result<Dataset> {
        Dataset::new(self.x.to(device)?, self.y.to(device)?)
    }

    /// A new dataset of the samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        let idx = index_tensor(indices)?;
        let (x, y) = self.batch(&idx)?;
        Dataset::new(x, y)
    }
}

/// Row numbers as an index tensor (f32 counts exactly up to 2²⁴ rows).
fn index_tensor(indices: &[usize]) -> Result<Tensor> {
    crate::ops::index::index_tensor("Dataset", indices.iter().copied(), crate::Device::Cpu)
}

/// The row indices of each minibatch of one epoch, as index tensors for
/// [`Tensor::index_select`]. With an `rng` the order is shuffled. The last batch keeps the
/// remainder unless `drop_last`.
pub fn batch_indices(n: usize, batch_size: usize, rng: Option<&mut Rng>, drop_last: bool) -> Result<Vec<Tensor>> {
    batch_orders(n, batch_size, rng, drop_last)?.iter().map(|rows| index_tensor(rows)).collect()
}

/// The row numbers of each minibatch of one epoch ([`batch_indices`] as lists).
fn batch_orders(n: usize, batch_size: usize, rng: Option<&mut Rng>, drop_last: bool) -> Result<Vec<Vec<usize>>> {
    if batch_size == 0 {
        return Err(Error::invalid("batch_indices", "batch size must be at least 1"));
    }
    let order: Vec<usize> = match rng {
        Some(rng) => rng.permutation(n),
        None => (0..n).collect(),
    };
    Ok(order.chunks(batch_size).filter(|c| !drop_last || c.len() == batch_size).map(<[usize]>::to_vec).collect())
}

/// Serves a [`Dataset`] in minibatches, reshuffled every epoch when shuffling is on (as
/// PyTorch's `DataLoader(shuffle=True)` with a seeded generator).
pub struct DataLoader<'a> {
    data: &'a Dataset,
    batch_size: usize,
    rng: Option<Rng>,
    drop_last: bool,
    device: Option<Device>,
    /// (rank, world): each batch is cut to this rank's contiguous part.
    shard: Option<(usize, usize)>,
}

impl<'a> DataLoader<'a> {
    /// Batches of `batch_size` in dataset order, last partial batch kept.
    pub fn new(data: &'a Dataset, batch_size: usize) -> Result<DataLoader<'a>> {
        if batch_size == 0 {
            return Err(Error::invalid("DataLoader", "batch size must be at least 1"));
        }
        Ok(DataLoader { data, batch_size, rng: None, drop_last: false, device: None, shard: None })
    }

    /// Shuffles every epoch, from a generator seeded with `seed`.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.rng = Some(Rng::seed(seed));
        self
    }

    /// Drops the last batch of an epoch when it is smaller than the batch size.
    pub fn drop_last(mut self, on: bool) -> Self {
        self.drop_last = on;
        self
    }

    /// Hands every batch over on `device` (where the model is), whatever device holds the
    /// dataset: each batch is gathered where the data is, then copied.
    pub fn to_device(mut self, device: Device) -> Self {
        self.device = Some(device);
        self
    }

    /// Serves rank `rank` of `world` data-parallel processes its part of every batch: each
    /// batch (drawn in the same order on every rank, from the same seed) is cut in `world`
    /// contiguous parts ([`crate::dist::shard_range`]) and this rank gets part `rank`, which
    /// is empty when a short last batch has fewer samples than ranks.
    pub fn shard(mut self, rank: usize, world: usize) -> Self {
        self.shard = (world > 1).then_some((rank, world));
        self
    }

    /// Number of batches per epoch.
    pub fn len(&self) -> usize {
        let n = self.data.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// True when an epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One epoch of batches as row numbers of the dataset (f32 index tensors on the host, as
    /// [`batch_indices`] makes), in the order [`DataLoader::epoch`] would serve them, for a
    /// caller that gathers the rows itself.
    pub(crate) fn epoch_rows(&mut self) -> Result<impl Iterator<Item = Result<Tensor>> + 'a> {
        let shard = self.shard;
        let batches = batch_orders(self.data.len(), self.batch_size, self.rng.as_mut(), self.drop_last)?;
        Ok(batches.into_iter().map(move |rows| match shard {
            Some((rank, world)) => index_tensor(&rows[crate::dist::shard_range(rows.len(), rank, world)]),
            None => index_tensor(&rows),
        }))
    }

    /// One epoch of batches `(x, y)`; each call draws a new order when shuffling.
    pub fn epoch(&mut self) -> Result<impl Iterator<Item = Result<(Tensor, Tensor)>> + 'a> {
        let (data, device) = (self.data, self.device);
        if let Some(d) = device {
            d.check_available()?;
        }
        Ok(self.epoch_rows()?.map(move |idx| {
            let (x, y) = data.batch(&idx?)?;
            match device {
                Some(d) => Ok((x.to(d)?, y.to(d)?)),
                None => Ok((x, y)),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let x = Tensor::arange(0.0, n as f32, 1.0).unwrap().reshape(&[n, 1]).unwrap();
        let y = Tensor::arange(0.0, n as f32, 1.0).unwrap().mul_scalar(10.0).unwrap();
        Dataset::new(x, y).unwrap()
    }

    #[test]
    fn loader_covers_every_sample_once_per_epoch_and_reshuffles() {
        let data = toy(10);
        let mut loader = DataLoader::new(&data, 4).unwrap().shuffle(7);
        assert_eq!(loader.len(), 3);
        let mut epochs = Vec::new();
        for _ in 0..2 {
            let mut seen = Vec::new();
            for b in loader.epoch().unwrap() {
                let (x, y) = b.unwrap();
                // Inputs and targets stay paired.
                assert_eq!(x.flatten_all().unwrap().mul_scalar(10.0).unwrap().to_vec(), y.to_vec());
                seen.extend(x.to_vec());
            }
            let mut sorted = seen.clone();
            sorted.sort_by(f32::total_cmp);
            assert_eq!(sorted, (0..10).map(|i| i as f32).collect::<Vec<_>>());
            epochs.push(seen);
        }
        assert_ne!(epochs[0], epochs[1], "each epoch draws a new order");
        // Same seed, same orders.
        let mut again = DataLoader::new(&data, 4).unwrap().shuffle(7);
        let first: Vec<f32> = again.epoch().unwrap().flat_map(|b| b.unwrap().0.to_vec()).collect();
        assert_eq!(first, epochs[0]);
    }

    #[test]
    fn drop_last_drops_only_the_short_batch() {
        let data = toy(10);
        let mut loader = DataLoader::new(&data, 4).unwrap().drop_last(true);
        let sizes: Vec<usize> = loader.epoch().unwrap().map(|b| b.unwrap().0.shape()[0]).collect();
        assert_eq!(sizes, vec![4, 4]);
        let mut keep = DataLoader::new(&data, 4).unwrap();
        let sizes: Vec<usize> = keep.epoch().unwrap().map(|b| b.unwrap().0.shape()[0]).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        assert!(DataLoader::new(&data, 0).is_err());
    }

    #[test]
    fn mismatched_rows_are_an_error() {
        assert!(Dataset::new(Tensor::zeros(&[3, 2]), Tensor::zeros(&[4])).is_err());
    }
}
