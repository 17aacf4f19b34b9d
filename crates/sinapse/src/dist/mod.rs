//! Data-parallel training across processes, as PyTorch's `DistributedDataParallel` does it.
//!
//! One process per device (a *rank*), each with a replica of the model and a shard of every
//! minibatch. Before the first step every replica takes rank 0's weights ([`Communicator::broadcast`]);
//! after each backward pass the gradients are summed over the ranks by an all-reduce
//! ([`all_reduce_gradients`], a few large messages, not one per tensor), so every replica makes
//! the same optimizer step and stays equal to the others.
//!
//! A [`Communicator`] is the one seam; behind it is an engine the field already trusts:
//! - [`Communicator::local`]: one process, nothing to exchange;
//! - `Communicator::mpi` (cargo feature `mpi`): MPI through the `mpi` crate, for CPU processes
//!   on one machine or several (`mpirun -np 2 sinapse train SPEC --distributed`);
//! - [`Communicator::nccl`]: NVIDIA's NCCL, loaded at run time like the rest of the CUDA backend,
//!   for tensors on GPUs (its ranks find each other through an MPI communicator).
//!
//! [`crate::train::fit`] does all of this when [`crate::train::FitConfig::communicator`] is set;
//! a hand-written loop calls [`Communicator::broadcast`], [`Communicator::shard`] and
//! [`all_reduce_gradients`] itself (see `examples/distributed.rs`).

#[cfg(feature = "mpi")]
mod mpi;

use std::ops::Range;
use std::sync::Arc;

use crate::{no_grad, Device, Error, Gradients, Result, Tensor};

/// Largest all-reduce message, in f32 values: 25 MiB, PyTorch DDP's default bucket.
const BUCKET_VALUES: usize = 25 << 18;

/// Where a process stands among the ranks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ranks {
    /// This process's rank, from 0.
    pub(crate) rank: usize,
    /// Number of ranks.
    pub(crate) size: usize,
    /// This process's rank among those on its machine (which GPU it takes).
    pub(crate) local: usize,
}

/// The operations one engine provides; [`Communicator`] builds the rest on them.
pub(crate) trait Engine: Send + Sync {
    /// `mpi`, `nccl` or `local`.
    fn name(&self) -> &'static str;
    /// This process's rank, the number of ranks, its rank on its machine.
    fn ranks(&self) -> Ranks;
    /// The sum over all ranks of a 1-D contiguous tensor, as a new tensor on its device.
    fn all_reduce(&self, t: &Tensor) -> Result<Tensor>;
    /// Root's 1-D tensor, on every rank (a new tensor; the root's own comes back unchanged).
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// Sums host values over all ranks, in place.
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()>;
    /// Ends every rank's process: the way out when one rank cannot go on.
    fn abort(&self, code: i32) -> !;
}

/// A world of one process: every collective returns its input.
struct Local;

impl Engine for Local {
    fn name(&self) -> &'static str {
        "local"
    }
    fn ranks(&self) -> Ranks {
        Ranks { rank: 0, size: 1, local: 0 }
    }
    fn all_reduce(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast(&self, t: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn all_reduce_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The processes training one model together: their number, this one's rank, and the
/// collective operations between them. Cheap to clone (a shared handle).
#[derive(Clone)]
pub struct Communicator {
    engine: Arc<dyn Engine>,
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Communicator({}, rank {} of {})", self.engine.name(), self.rank(), self.world_size())
    }
}

impl Communicator {
    /// A world of one process (rank 0 of 1).
    pub fn local() -> Communicator {
        Communicator { engine: Arc::new(Local) }
    }

    /// The processes started together by `mpirun` (MPI's world), or a world of one when this
    /// process was started alone. MPI is initialised here and finalised when the last clone
    /// is dropped, which must happen on the thread that called this (MPI's rule); a process
    /// can do this once.
    #[cfg(feature = "mpi")]
    pub fn mpi() -> Result<Communicator> {
        Ok(Communicator { engine: Arc::new(mpi::Mpi::init()?) })
    }

    /// A NCCL communicator over the same ranks as `self`, for tensors on `device` (a GPU; by
    /// convention each rank takes the GPU of its [`Communicator::local_rank`]). `self` (MPI,
    /// or local for one rank) carries NCCL's unique id from rank 0 to the others.
    pub fn nccl(&self, device: Device) -> Result<Communicator> {
        let engine = crate::backend::cuda::nccl::Nccl::new(self, device)?;
        Ok(Communicator { engine: Arc::new(engine) })
    }

    /// Which engine carries the messages: `local`, `mpi` or `nccl`.
    pub fn engine(&self) -> &'static str {
        self.engine.name()
    }

    /// This process's rank, from 0.
    pub fn rank(&self) -> usize {
        self.engine.ranks().rank
    }

    /// Number of processes.
    pub fn world_size(&self) -> usize {
        self.engine.ranks().size
    }

    /// This process's rank among the processes on its machine.
    pub fn local_rank(&self) -> usize {
        self.engine.ranks().local
    }

    /// True on rank 0, the one that prints progress and writes files.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// This rank's part of `n` items split in contiguous runs: the first `n % world` ranks
    /// take one more. Concatenated in rank order, the parts are `0..n`.
    pub fn shard(&self, n: usize) -> Range<usize> {
        shard_range(n, self.rank(), self.world_size())
    }

    /// Ends every rank's process with exit status `code` (MPI_Abort under MPI): for an error
    /// on one rank that the others, waiting in a collective, would never learn of.
    pub fn abort(&self, code: i32) -> ! {
        self.engine.abort(code)
    }

    /// Overwrites every tensor in `tensors` with rank `root`'s values, in place (a model's
    /// parameters and buffers before training starts). Few large messages: the tensors are
    /// packed into buckets.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        if root >= self.world_size() {
            return Err(self.error("broadcast", format!("root {root} is not a rank")));
        }
        if self.is_local() || tensors.is_empty() {
            return Ok(());
        }
        let _off = no_grad();
        let parts = tensors.iter().map(Tensor::flatten_all).collect::<Result<Vec<_>>>()?;
        let received = self.buckets(&parts, |bucket| self.engine.broadcast(bucket, root))?;
        for (t, values) in tensors.iter().zip(received) {
            t.copy_from(&values.reshape(t.shape())?)?;
        }
        Ok(())
    }

    /// The elementwise sums over all ranks of `tensors` (each rank passes tensors of the same
    /// shapes, in the same order), as new tensors on their devices. Packed into few messages.
    pub fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        if self.is_local() {
            return Ok(tensors.to_vec());
        }
        let _off = no_grad();
        let parts = tensors.iter().map(Tensor::flatten_all).collect::<Result<Vec<_>>>()?;
        let sums = self.buckets(&parts, |bucket| self.engine.all_reduce(bucket))?;
        tensors.iter().zip(sums).map(|(t, s)| s.reshape(t.shape())).collect()
    }

    /// Sums host numbers over all ranks, in place (counts and sums of metrics).
    pub fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        if self.is_local() {
            return Ok(());
        }
        self.engine.all_reduce_f64(values)
    }

    /// Runs `collective` on the 1-D `parts` packed into buckets of at most [`BUCKET_VALUES`]
    /// (a part larger than that goes alone) and returns each part's result.
    fn buckets(&self, parts: &[Tensor], collective: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Vec<Tensor>> {
        let device = parts.first().map_or(Device::Cpu, Tensor::device);
        if let Some(p) = parts.iter().find(|p| p.device() != device) {
            return Err(Error::DeviceMismatch { op: "all-reduce", lhs: device, rhs: p.device() });
        }
        let mut out = Vec::with_capacity(parts.len());
        let mut start = 0;
        while start < parts.len() {
            let mut end = start + 1;
            let mut len = parts[start].elem_count();
            while end < parts.len() && len + parts[end].elem_count() <= BUCKET_VALUES {
                len += parts[end].elem_count();
                end += 1;
            }
            let group: Vec<&Tensor> = parts[start..end].iter().collect();
            let bucket = if group.len() == 1 { group[0].contiguous()? } else { Tensor::cat(&group, 0)? };
            let result = collective(&bucket)?;
            let mut offset = 0;
            for p in group {
                out.push(result.narrow(0, offset, p.elem_count())?);
                offset += p.elem_count();
            }
            start = end;
        }
        Ok(out)
    }

    /// True for [`Communicator::local`]: nothing to exchange. (An MPI or NCCL world of one
    /// still runs its engine's collectives: that is how one GPU tests NCCL.)
    fn is_local(&self) -> bool {
        self.engine.name() == "local"
    }

    /// An error of this rank's `what`.
    pub(crate) fn error(&self, what: &str, msg: impl Into<String>) -> Error {
        Error::Distributed { rank: self.rank(), world: self.world_size(), what: what.into(), msg: msg.into() }
    }
}

/// Part `rank` of `n` items split contiguously over `world` ranks (the first `n % world`
/// parts one longer).
pub fn shard_range(n: usize, rank: usize, world: usize) -> Range<usize> {
    let world = world.max(1);
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start.min(n)..(start + len).min(n)
}

/// Sums the gradients of `params` over all ranks, in place in `grads`, each rank's gradients
/// multiplied by `weight` first; then sums `extras` (scalars or small tensors, such as a
/// batch's loss) in the same messages and returns them.
///
/// With `weight` = 1/world this is DDP's gradient average; with this rank's share of the
/// global batch (local samples / global samples) and a mean loss, it is exactly the gradient
/// of the global batch's mean loss, also when the shards differ in size. A rank whose shard
/// is empty passes no gradients: its part counts as zeros. A parameter gets a gradient when
/// any rank had one for it.
pub fn all_reduce_gradients(
    comm: &Communicator,
    params: &[Tensor],
    grads: &mut Gradients,
    weight: f32,
    extras: &[Tensor],
) -> Result<Vec<Tensor>> {
    if comm.is_local() {
        if weight != 1.0 {
            for p in params {
                if let Some(g) = grads.remove(p) {
                    grads.insert(p, g.mul_scalar(weight)?);
                }
            }
        }
        return Ok(extras.to_vec());
    }
    let _off = no_grad();
    let device = params.first().map_or(Device::Cpu, Tensor::device);
    let mut parts = Vec::with_capacity(params.len() + 1 + extras.len());
    let mut present = Vec::with_capacity(params.len());
    for p in params {
        match grads.get(p) {
            Some(g) if weight == 1.0 => parts.push(g.flatten_all()?),
            Some(g) => parts.push(g.flatten_all()?.mul_scalar(weight)?),
            None => parts.push(Tensor::zeros_on(&[p.elem_count()], device)?),
        }
        present.push(if grads.get(p).is_some() { 1.0 } else { 0.0 });
    }
    // Which parameters any rank had a gradient for, in the same message.
    parts.push(Tensor::from_vec(present, &[params.len()])?.to(device)?);
    for e in extras {
        parts.push(e.flatten_all()?.to(device)?);
    }
    let all_here = params.iter().all(|p| grads.get(p).is_some());
    let sums = comm.all_reduce_sum(&parts)?;
    // Which parameters get a gradient: all of them when this rank had every one (no read:
    // on a GPU that would wait for the device every step), else those any rank had.
    let present = if all_here { vec![1.0; params.len()] } else { sums[params.len()].try_to_vec()? };
    for (i, p) in params.iter().enumerate() {
        if present[i] > 0.0 {
            grads.insert(p, sums[i].reshape(p.shape())?);
        }
    }
    extras.iter().zip(&sums[params.len() + 1..]).map(|(e, s)| s.reshape(e.shape())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_item_once_in_order() {
        for n in [0, 1, 2, 5, 7, 64, 65] {
            for world in 1..=4 {
                let parts: Vec<Range<usize>> = (0..world).map(|r| shard_range(n, r, world)).collect();
                let joined: Vec<usize> = parts.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(joined, (0..n).collect::<Vec<_>>(), "n {n}, world {world}");
                let lens: Vec<usize> = parts.iter().map(|r| r.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{lens:?}");
            }
        }
    }

    #[test]
    fn a_world_of_one_returns_what_it_is_given() -> Result<()> {
        let comm = Communicator::local();
        assert_eq!((comm.rank(), comm.world_size(), comm.engine()), (0, 1, "local"));
        let t = Tensor::from_vec(vec![1.0, 2.0], &[2])?;
        assert_eq!(comm.all_reduce_sum(std::slice::from_ref(&t))?[0].to_vec(), vec![1.0, 2.0]);
        comm.broadcast(std::slice::from_ref(&t), 0)?;
        assert!(comm.broadcast(&[t], 1).is_err());
        Ok(())
    }

    #[test]
    fn buckets_split_and_rejoin_parts() -> Result<()> {
        // Parts of several sizes, two above the bucket size: every part comes back as it was.
        let comm = Communicator::local();
        let sizes = [3, 4, BUCKET_VALUES - 7, 1, BUCKET_VALUES + 1, 2];
        let parts: Vec<Tensor> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Tensor::full_on(&[n], i as f32, Device::Cpu))
            .collect::<Result<_>>()?;
        let calls = std::cell::Cell::new(0);
        let out = comm.buckets(&parts, |b| {
            calls.set(calls.get() + 1);
            assert!(b.elem_count() <= BUCKET_VALUES + 1);
            Ok(b.clone())
        })?;
        assert_eq!(calls.get(), 4, "[3, 4, B-7], [1], [B+1], [2]: packed greedily in order");
        for (i, (p, o)) in parts.iter().zip(&out).enumerate() {
            assert_eq!(o.shape(), p.shape());
            assert!(o.to_vec().iter().all(|&v| v == i as f32));
        }
        Ok(())
    }
}
