//! `work_on_this_thread`, in a test binary of its own: it changes the process's thread pool.

use sinapse::Tensor;

#[test]
fn the_calling_thread_joins_the_pool_once_and_kernels_still_split() {
    // Before any parallel work the pool can still be built around this thread.
    sinapse::work_on_this_thread().unwrap();
    // A second call cannot rebuild it, and says so.
    let e = sinapse::work_on_this_thread().unwrap_err().to_string();
    assert!(e.contains("already started"), "{e}");
    // A kernel large enough to be split over the threads gives the same values as by hand.
    let n = 1 << 18;
    let x = Tensor::from_vec((0..n).map(|i| i as f32).collect(), &[n]).unwrap();
    let y = x.mul_scalar(2.0).unwrap().to_vec();
    assert!(y.iter().enumerate().all(|(i, &v)| v == 2.0 * i as f32));
}
