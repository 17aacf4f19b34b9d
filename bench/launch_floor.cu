// The floor under a small forward pass on this GPU machine, for reading `bench infer`'s batch-1
// latency: the host's time to launch 1 and 3 empty kernels and wait for them, eagerly and as
// one CUDA graph replayed (medians of 3,000, after 200 untimed). bench/gpu-check.sh runs it
// where nvcc is found:
//
//     nvcc -O2 -arch=sm_90 -o /tmp/launch_floor bench/launch_floor.cu && /tmp/launch_floor
#include <cstdio>
#include <chrono>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
// Each CUDA call's status: the first failure ends the probe, naming the call.
#define CHECK(call)                                                                  \
    do {                                                                             \
        cudaError_t e_ = (call);                                                     \
        if (e_ != cudaSuccess) {                                                     \
            fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(e_));      \
            return 1;                                                                \
        }                                                                            \
    } while (0)
__global__ void nop(float* p) { if (p == nullptr) p[threadIdx.x] = 1.f; }
static double med(std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }
int main() {
  float* buf;
  CHECK(cudaMalloc(&buf, 1024));
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  for (int n : {1, 3}) {
    std::vector<double> e, g, l;
    cudaGraph_t graph; cudaGraphExec_t exec;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < n; i++) nop<<<1, 32, 0, s>>>(buf);
    CHECK(cudaStreamEndCapture(s, &graph));
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int r = 0; r < 3200; r++) {
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < n; i++) nop<<<1, 32, 0, s>>>(buf);
      auto t1 = std::chrono::steady_clock::now();
      CHECK(cudaStreamSynchronize(s));
      auto t2 = std::chrono::steady_clock::now();
      CHECK(cudaGraphLaunch(exec, s));
      CHECK(cudaStreamSynchronize(s));
      auto t3 = std::chrono::steady_clock::now();
      if (r >= 200) {
        e.push_back(std::chrono::duration<double, std::micro>(t2 - t0).count());
        l.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
        g.push_back(std::chrono::duration<double, std::micro>(t3 - t2).count());
      }
    }
    CHECK(cudaGetLastError());
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(graph));
    printf("%d empty kernels: eager launch+sync %.1f us (launches alone %.1f us), graph replay+sync %.1f us\n",
           n, med(e), med(l), med(g));
  }
  return 0;
}
