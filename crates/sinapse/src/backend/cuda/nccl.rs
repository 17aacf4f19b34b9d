//! The NCCL engine of [`crate::dist`]: collectives between GPUs, through cudarc's NCCL
//! bindings loaded at run time (`libnccl.so.2`, which PyTorch's CUDA wheels and NVIDIA's
//! images ship), queued on the GPU's one stream in order with every other kernel.

use std::sync::Arc;

use cudarc::nccl::{result, sys};

use super::gpu::Gpu;
use crate::backend::Storage;
use crate::dist::{Communicator, Engine, Ranks};
use crate::{Device, Error, Result, Tensor};

/// A NCCL communicator: one rank on one GPU.
pub(crate) struct Nccl {
    comm: sys::ncclComm_t,
    /// Held while a call is queued: a NCCL communicator takes one call at a time (and two
    /// threads' collectives, interleaved, could be queued in different orders on different
    /// ranks).
    calls: std::sync::Mutex<()>,
    gpu: Arc<Gpu>,
    ranks: Ranks,
    /// The host communicator that started this one (aborting goes through it too).
    bootstrap: Communicator,
}

// SAFETY: a NCCL communicator may be used from any thread, one call at a time: every call
// here is made holding `calls`, and queued on the GPU's one stream, which orders them.
unsafe impl Send for Nccl {}
// SAFETY: as above: shared references reach the communicator only through `calls`.
unsafe impl Sync for Nccl {}

impl Nccl {
    /// Joins every rank of `bootstrap` into a NCCL communicator on `device`: rank 0 makes the
    /// unique id and `bootstrap` carries it to the others.
    pub(crate) fn new(bootstrap: &Communicator, device: Device) -> Result<Nccl> {
        let (rank, size) = (bootstrap.rank(), bootstrap.world_size());
        let fail = |msg: String| bootstrap.error("starting NCCL", msg);
        let Device::Cuda(ordinal) = device else {
            return Err(fail(format!("NCCL works on GPU tensors; {device} is not a GPU")));
        };
        let gpu = super::gpu::gpu(ordinal)?;
        // SAFETY: only looks for the library (dlopen); any other NCCL call would panic without it.
        if !unsafe { sys::is_culib_present() } {
            return Err(fail(
                "the NCCL library was not found under the names cudarc loads (libnccl.so, \
                 libnccl.so.13, ..): install NVIDIA's NCCL and put its folder on LD_LIBRARY_PATH \
                 (the nvidia-nccl-cu13 wheel has only libnccl.so.2: link libnccl.so to it)"
                    .into(),
            ));
        }
        // The 128-byte id travels as 128 exact small floats.
        let id = if rank == 0 {
            result::get_uniqueid().map_err(|e| fail(format!("ncclGetUniqueId: {e:?}")))?
        } else {
            sys::ncclUniqueId { internal: [0; 128] }
        };
        // `c_char` is i8 on x86-64 and u8 on aarch64: the cast to u8 is needed on one of them.
        #[allow(clippy::unnecessary_cast)]
        let bytes: Vec<f32> = id.internal.iter().map(|&c| c as u8 as f32).collect();
        let carrier = Tensor::from_vec(bytes, &[128])?;
        bootstrap.broadcast(std::slice::from_ref(&carrier), 0)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (dst, v) in internal.iter_mut().zip(carrier.try_to_vec()?) {
            *dst = v as u8 as std::ffi::c_char;
        }
        let comm = {
            let _claim = gpu.bind("starting NCCL")?;
            let mut comm = std::mem::MaybeUninit::uninit();
            // SAFETY: `comm` is written by NCCL on success; every rank passes the same id.
            unsafe {
                result::comm_init_rank(comm.as_mut_ptr(), size as i32, sys::ncclUniqueId { internal }, rank as i32)
            }
            .map_err(|e| fail(format!("ncclCommInitRank: {e:?}")))?;
            // SAFETY: initialised by the successful call above.
            unsafe { comm.assume_init() }
        };
        Ok(Nccl {
            comm,
            calls: std::sync::Mutex::new(()),
            gpu,
            ranks: Ranks { rank, size, local: bootstrap.local_rank() },
            bootstrap: bootstrap.clone(),
        })
    }

    /// The device address of a 1-D contiguous tensor on this GPU.
    fn address(&self, t: &Tensor, op: &str) -> Result<u64> {
        if t.device() != self.gpu.device() || t.rank() != 1 || !t.layout().is_contiguous() {
            return Err(self.bootstrap.error(
                op,
                format!(
                    "needs a 1-D contiguous tensor on {}, got {:?} on {}",
                    self.gpu.device(),
                    t.shape(),
                    t.device()
                ),
            ));
        }
        match &*t.storage() {
            Storage::Cuda(s) => Ok(s.block.ptr + 4 * t.layout().offset() as u64),
            Storage::Cpu(_) => Err(Error::DeviceMismatch { op: "nccl", lhs: self.gpu.device(), rhs: Device::Cpu }),
        }
    }

    /// A fresh buffer for a collective's result, shaped like `t`.
    fn output(&self, t: &Tensor) -> Result<Tensor> {
        Tensor::zeros_on(t.shape(), self.gpu.device())
    }

    fn stream(&self) -> sys::cudaStream_t {
        self.gpu.stream.cu_stream() as sys::cudaStream_t
    }

    /// Queues one collective `call(src, dst, count, comm, stream)` from `t` into a fresh
    /// buffer, which it returns; `what` names it in errors.
    fn collective(
        &self,
        t: &Tensor,
        what: &str,
        call: impl FnOnce(
            *const std::ffi::c_void,
            *mut std::ffi::c_void,
            usize,
            sys::ncclComm_t,
            sys::cudaStream_t,
        ) -> std::result::Result<result::NcclStatus, result::NcclError>,
    ) -> Result<Tensor> {
        let out = self.output(t)?;
        let (src, dst) = (self.address(t, what)?, self.address(&out, what)?);
        let _one_call = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let _claim = self.gpu.bind(what)?;
        // Both buffers hold `t.elem_count()` f32 values on this GPU and stay alive until the
        // stream has run the call (the caching allocator hands a freed block out again only to
        // later work on the same stream).
        call(src as *const _, dst as *mut _, t.elem_count(), self.comm, self.stream())
            .map_err(|e| self.bootstrap.error(what, format!("NCCL: {e:?}")))?;
        Ok(out)
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator is this value's own; nothing uses it after.
        unsafe {
            let _ = result::comm_destroy(self.comm);
        }
    }
}

impl Engine for Nccl {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn ranks(&self) -> Ranks {
        self.ranks
    }

    fn all_reduce(&self, t: &Tensor) -> Result<Tensor> {
        // SAFETY: the pointers are `collective`'s, valid for `n` f32 values each.
        self.collective(t, "all-reduce", |src, dst, n, comm, stream| unsafe {
            result::all_reduce(src, dst, n, sys::ncclDataType_t::ncclFloat32, sys::ncclRedOp_t::ncclSum, comm, stream)
        })
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        // SAFETY: as in `all_reduce`.
        self.collective(t, "broadcast", |src, dst, n, comm, stream| unsafe {
            result::broadcast(src, dst, n, sys::ncclDataType_t::ncclFloat32, root as i32, comm, stream)
        })
    }

    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        // Host numbers go over the host communicator.
        self.bootstrap.all_reduce_f64(values)
    }

    fn abort(&self, code: i32) -> ! {
        self.bootstrap.abort(code)
    }
}
