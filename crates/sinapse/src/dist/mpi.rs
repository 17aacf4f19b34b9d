//! The MPI engine: OpenMPI (or any MPI) through the `mpi` crate.
//!
//! Every collective is started as a non-blocking one and polled against a deadline, so a rank
//! that stopped answering (its machine lost, its process stalled) ends the job with an error
//! naming the operation instead of leaving the others waiting forever. A rank that *dies* is
//! seen sooner by `mpirun` itself, which ends the others and names the dead rank.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};

use super::{Engine, Ranks};
use crate::{Device, Error, Result, Tensor};

/// Seconds a collective may take before the job is ended, unless `SINAPSE_DIST_TIMEOUT` says
/// otherwise (the first one waits for every rank to load its data and build its model).
const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// What MPI hands out, used from one thread at a time.
struct State {
    world: SimpleCommunicator,
    /// Finalises MPI when dropped: `mpirun` counts a rank that exits without it as failed.
    _universe: Universe,
    /// Collectives started so far (named in a timeout's message).
    calls: u64,
}

/// MPI's world communicator.
pub(crate) struct Mpi {
    state: Mutex<State>,
    ranks: Ranks,
    timeout: Duration,
}

// SAFETY: MPI is initialised with `Threading::Serialized` (or more), and every MPI call is
// made while holding `state`'s lock, so no two threads are ever inside MPI at once.
unsafe impl Send for Mpi {}
// SAFETY: as above; shared references only reach MPI through the lock.
unsafe impl Sync for Mpi {}

impl Mpi {
    /// Initialises MPI (once per process) and takes its world.
    pub(crate) fn init() -> Result<Mpi> {
        let fail = |msg: String| Error::Distributed { rank: 0, world: 1, what: "starting MPI".into(), msg };
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| fail("MPI was initialised already in this process (once per process)".into()))?;
        if threading < mpi::Threading::Serialized {
            return Err(fail(format!("this MPI offers only {threading:?} threading; Serialized is needed")));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let local_rank = world.split_shared(0).rank() as usize;
        let timeout = match std::env::var("SINAPSE_DIST_TIMEOUT") {
            Ok(v) => {
                v.trim().parse::<f64>().ok().filter(|s| *s > 0.0).map(Duration::from_secs_f64).ok_or_else(|| {
                    Error::Distributed {
                        rank,
                        world: size,
                        what: "SINAPSE_DIST_TIMEOUT".into(),
                        msg: format!("must be a number of seconds > 0, got {v:?}"),
                    }
                })?
            }
            Err(_) => Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        };
        let ranks = Ranks { rank, size, local: local_rank };
        Ok(Mpi { state: Mutex::new(State { world, _universe: universe, calls: 0 }), ranks, timeout })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Polls a started collective until it completes; past the deadline, prints why and ends
    /// the job (an unfinished MPI request cannot be abandoned: MPI still owns its buffers).
    fn wait<'a, B: ?Sized, S: mpi::request::Scope<'a>>(
        &self,
        state: &State,
        what: &str,
        mut request: mpi::request::Request<'a, B, S>,
    ) {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            match request.test() {
                Ok(_) => return,
                Err(r) => request = r,
            }
            if start.elapsed() > self.timeout {
                eprintln!(
                    "error: rank {} of {}: {what} (collective {}) got no answer from the other ranks in {:.0} s: \
                     a rank has died or stalled (SINAPSE_DIST_TIMEOUT sets the limit); ending the job",
                    self.ranks.rank,
                    self.ranks.size,
                    state.calls,
                    self.timeout.as_secs_f64()
                );
                state.world.abort(3);
            }
            // Spin a little (a step's all-reduce usually completes within microseconds of the
            // last rank arriving), then give the core to the other ranks sharing it.
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else if spins < 2000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
}

impl Engine for Mpi {
    fn name(&self) -> &'static str {
        "mpi"
    }

    fn ranks(&self) -> Ranks {
        self.ranks
    }

    fn all_reduce(&self, t: &Tensor) -> Result<Tensor> {
        let send = t.try_to_vec()?;
        let mut sum = vec![0.0f32; send.len()];
        let mut state = self.lock();
        state.calls += 1;
        mpi::request::scope(|scope| {
            let request = state.world.immediate_all_reduce_into(scope, &send[..], &mut sum[..], SystemOperation::sum());
            self.wait(&state, "all-reduce", request);
        });
        drop(state);
        Tensor::from_vec(sum, t.shape())?.to(t.device())
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        let mut values = t.try_to_vec()?;
        let mut state = self.lock();
        state.calls += 1;
        mpi::request::scope(|scope| {
            let request = state.world.process_at_rank(root as i32).immediate_broadcast_into(scope, &mut values[..]);
            self.wait(&state, "broadcast", request);
        });
        drop(state);
        let device: Device = t.device();
        Tensor::from_vec(values, t.shape())?.to(device)
    }

    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        let send = values.to_vec();
        let mut state = self.lock();
        state.calls += 1;
        mpi::request::scope(|scope| {
            let request =
                state.world.immediate_all_reduce_into(scope, &send[..], &mut values[..], SystemOperation::sum());
            self.wait(&state, "all-reduce", request);
        });
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.lock().world.abort(code)
    }
}
