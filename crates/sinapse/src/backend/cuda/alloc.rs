//! The caching allocator's bookkeeping, kept apart from the driver so that it is tested on
//! any machine: freed device blocks are kept, by rounded size, and handed out again, as
//! PyTorch's CUDA caching allocator does. A training loop asks for the same sizes every step,
//! so after its first steps every request is served from the cache and the driver is not
//! called (`cudaMalloc` and `cudaFree` synchronise and cost tens of microseconds each).

use std::collections::HashMap;

/// Requests are rounded up to a multiple of this many bytes (PyTorch's `kMinBlockSize`).
const SMALL_ROUND: usize = 512;
/// Requests above this many bytes are rounded up to a multiple of [`LARGE_ROUND`].
const LARGE_FROM: usize = 1 << 20;
/// Rounding of large requests (2 MiB, the driver's own allocation granularity).
const LARGE_ROUND: usize = 2 << 20;

/// The size in bytes a request of `bytes` is served with: a multiple of 512 B (at least one),
/// or of 2 MiB above 1 MiB, so that requests of nearly equal size share cached blocks.
pub(crate) fn rounded(bytes: usize) -> usize {
    let unit = if bytes > LARGE_FROM { LARGE_ROUND } else { SMALL_ROUND };
    bytes.max(1).div_ceil(unit).saturating_mul(unit)
}

/// Counters of a cache, for `bench` and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes in blocks handed out and not yet given back.
    pub in_use: u64,
    /// The most bytes in use at once.
    pub peak: u64,
    /// Bytes in blocks kept for reuse.
    pub cached: u64,
    /// Blocks obtained from the driver.
    pub driver_allocations: u64,
    /// Requests served from the cache.
    pub reuses: u64,
}

/// Freed blocks of type `B`, by rounded size in bytes.
#[derive(Debug)]
pub(crate) struct BlockCache<B> {
    free: HashMap<usize, Vec<B>>,
    stats: MemoryStats,
}

impl<B> Default for BlockCache<B> {
    fn default() -> Self {
        BlockCache { free: HashMap::new(), stats: MemoryStats::default() }
    }
}

impl<B> BlockCache<B> {
    /// A cached block of `size` (already [`rounded`]) bytes, counted as in use; `None` when the
    /// caller must ask the driver (then it reports the new block with [`BlockCache::allocated`]).
    pub(crate) fn take(&mut self, size: usize) -> Option<B> {
        let block = self.free.get_mut(&size)?.pop()?;
        self.stats.cached -= size as u64;
        self.stats.reuses += 1;
        self.add_use(size);
        Some(block)
    }

    /// Counts a block of `size` bytes just obtained from the driver as in use.
    pub(crate) fn allocated(&mut self, size: usize) {
        self.stats.driver_allocations += 1;
        self.add_use(size);
    }

    /// Keeps a block of `size` bytes that its user gave back.
    pub(crate) fn give_back(&mut self, size: usize, block: B) {
        self.stats.in_use -= size as u64;
        self.stats.cached += size as u64;
        self.free.entry(size).or_default().push(block);
    }

    /// Every cached block, handed to the caller to free (when the driver is out of memory).
    pub(crate) fn drain(&mut self) -> Vec<B> {
        self.stats.cached = 0;
        self.free.drain().flat_map(|(_, blocks)| blocks).collect()
    }

    /// Every cached block with its size, handed to the caller (a graph's pool giving its
    /// blocks back to the GPU's cache).
    pub(crate) fn drain_sized(&mut self) -> Vec<(usize, B)> {
        self.stats.cached = 0;
        self.free.drain().flat_map(|(size, blocks)| blocks.into_iter().map(move |b| (size, b))).collect()
    }

    /// How many blocks of `size` are kept.
    pub(crate) fn free_count(&self, size: usize) -> usize {
        self.free.get(&size).map_or(0, Vec::len)
    }

    /// The counters.
    pub(crate) fn stats(&self) -> MemoryStats {
        self.stats
    }

    fn add_use(&mut self, size: usize) {
        self.stats.in_use += size as u64;
        self.stats.peak = self.stats.peak.max(self.stats.in_use);
    }
}

/// The bookkeeping of a CUDA graph's block pool (blocks of type `B`): the blocks it keeps
/// free, how many of each size it owns, and how many a capture must find free. A step run
/// with the pool in place ("recorded") makes the pool own its working set; a capture of the
/// same step, starting with that many blocks of each size free, asks for nothing more.
#[derive(Debug)]
pub(crate) struct PoolState<B> {
    /// Blocks given back to the pool, by size.
    pub(crate) free: BlockCache<B>,
    /// Blocks the pool owns (free or handed out), by size.
    owned: HashMap<usize, usize>,
    /// Free blocks of each size a capture starts with.
    needed: HashMap<usize, usize>,
    /// The first host copy or wait of the recorded step (which then cannot be captured).
    pub(crate) host_op: Option<String>,
}

impl<B> Default for PoolState<B> {
    fn default() -> Self {
        PoolState { free: BlockCache::default(), owned: HashMap::new(), needed: HashMap::new(), host_op: None }
    }
}

impl<B> PoolState<B> {
    /// Counts a block of `size` (from the GPU's cache or the driver) as the pool's, handed out.
    pub(crate) fn adopt(&mut self, size: usize) {
        *self.owned.entry(size).or_default() += 1;
        self.free.allocated(size);
    }

    /// The recorded step is done: a capture starts with every block it used free.
    pub(crate) fn end_recording(&mut self) {
        self.needed = self.owned.clone();
    }

    /// A capture asked for a block of `size` the pool did not have free: the next starts with
    /// one more.
    pub(crate) fn missed(&mut self, size: usize) {
        *self.needed.entry(size).or_default() += 1;
    }

    /// How many blocks of each size must be added before a capture (those still handed out
    /// are not free).
    pub(crate) fn shortfall(&self) -> Vec<(usize, usize)> {
        let mut short: Vec<(usize, usize)> = self
            .needed
            .iter()
            .map(|(&size, &n)| (size, n.saturating_sub(self.free.free_count(size))))
            .filter(|&(_, n)| n > 0)
            .collect();
        short.sort_unstable();
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_to_512_bytes_then_to_2_mib() {
        assert_eq!(rounded(0), 512);
        assert_eq!(rounded(1), 512);
        assert_eq!(rounded(512), 512);
        assert_eq!(rounded(513), 1024);
        assert_eq!(rounded(1 << 20), 1 << 20);
        assert_eq!(rounded((1 << 20) + 1), 2 << 20);
        assert_eq!(rounded((2 << 20) + 1), 4 << 20);
    }

    #[test]
    fn a_steady_loop_stops_asking_the_driver() {
        // Blocks are plain numbers here; on a GPU they are device buffers.
        let mut cache = BlockCache::<u32>::default();
        let mut next_block = 0;
        let sizes = [rounded(4 * 784 * 128), rounded(4 * 128), rounded(4 * 10), rounded(4 * 128)];
        for step in 0..5 {
            let mut live = Vec::new();
            for &size in &sizes {
                let block = cache.take(size).unwrap_or_else(|| {
                    cache.allocated(size);
                    next_block += 1;
                    next_block
                });
                live.push((size, block));
            }
            for (size, block) in live {
                cache.give_back(size, block);
            }
            let s = cache.stats();
            assert_eq!(s.driver_allocations, 4, "step {step}: only the first step allocates");
            assert_eq!(s.in_use, 0);
            assert_eq!(s.cached, sizes.iter().sum::<usize>() as u64);
        }
        let s = cache.stats();
        assert_eq!(s.reuses, 16);
        assert_eq!(s.peak, sizes.iter().sum::<usize>() as u64);
        assert_eq!(cache.drain().len(), 4);
        assert_eq!(cache.stats().cached, 0);
        assert_eq!(cache.take(sizes[0]), None, "drained blocks are gone");
    }

    #[test]
    fn a_recorded_step_sizes_the_capture() {
        // A step of four buffers: a (512 B) and b (1 KiB) freed within it, c (512 B) made
        // after a was freed (so it reuses a's block), d (512 B) kept after the step (its loss).
        let mut pool = PoolState::<u32>::default();
        let (s512, s1k) = (rounded(512), rounded(1024));
        let mut next = 0;
        let mut take = |pool: &mut PoolState<u32>, size| {
            pool.free.take(size).unwrap_or_else(|| {
                pool.adopt(size);
                next += 1;
                next
            })
        };
        let a = take(&mut pool, s512);
        let b = take(&mut pool, s1k);
        pool.free.give_back(s512, a);
        let c = take(&mut pool, s512);
        assert_eq!(c, a, "reused within the step");
        let d = take(&mut pool, s512);
        pool.free.give_back(s1k, b);
        pool.free.give_back(s512, c);
        pool.end_recording();
        // The step used two 512 B blocks and one of 1 KiB; d is still out, so the capture is
        // one 512 B block short of the step's working set.
        assert_eq!(pool.shortfall(), vec![(s512, 1)]);
        pool.adopt(s512);
        pool.free.give_back(s512, 99);
        assert_eq!(pool.shortfall(), vec![]);
        // A capture that asked for one more than the step did: the next starts with it.
        pool.missed(rounded(4096));
        assert_eq!(pool.shortfall(), vec![(rounded(4096), 1)]);
        pool.free.give_back(s512, d);
        assert_eq!(pool.free.free_count(s512), 3);
    }

    #[test]
    fn a_graph_pool_hands_its_blocks_back_with_their_sizes() {
        // A graph's pool takes blocks from the cache while it is captured and gives them back,
        // by size, when it goes: the cache then serves them again without the driver.
        let mut cache = BlockCache::<u32>::default();
        let mut pool = BlockCache::<u32>::default();
        let (small, large) = (rounded(100), rounded(3 << 20));
        for (block, size) in [(1, small), (2, large), (3, small)] {
            cache.allocated(size);
            cache.give_back(size, block);
        }
        for size in [small, large] {
            let block = cache.take(size).expect("cached");
            pool.allocated(size);
            pool.give_back(size, block);
        }
        let mut back = pool.drain_sized();
        back.sort();
        assert_eq!(back.iter().map(|&(size, _)| size).collect::<Vec<_>>(), vec![small, large]);
        assert_eq!(pool.stats().cached, 0);
        for (size, block) in back {
            cache.give_back(size, block);
        }
        let s = cache.stats();
        assert_eq!((s.in_use, s.driver_allocations), (0, 3));
        assert!(cache.take(large).is_some() && cache.take(small).is_some() && cache.take(small).is_some());
    }
}
