// A host-C++ stand-in for the part of the CUDA runtime that roi_pool_cuda.cu uses, so that the
// very same kernels compile with a C++ compiler and run on the CPU, where every CI run can test
// them (tests/xla_ops/test_roi_pool_cuda_emulated.py) and AddressSanitizer and ThreadSanitizer can watch
// them (experiments/sanitize_roi_pool.sh). It is put on the include path ahead of the real
// <cuda_runtime.h> only by those builds; nvcc never sees it.
//
// What it emulates, and how faithfully:
//  - A launch (ROI_POOL_LAUNCH in roi_pool_cuda.cu) is validated as CUDA validates it (block
//    and grid limits of compute capability 9.0; an invalid one sets cudaErrorInvalidConfiguration
//    and runs nothing), then runs its blocks one after another in a shuffled order, each block on
//    as many real threads as it has CUDA threads. Blocks never run concurrently, so a kernel's
//    __shared__ arrays (function statics here) belong to the block that is running.
//  - __syncthreads() is a real barrier of the block's threads, __ballot_sync() a real vote of the
//    warp's 32 lanes (the mask must name exactly the warp's threads), atomicAdd() a real atomic.
//    A barrier that some threads of a block never reach would hang a GPU; here it aborts with a
//    message after a timeout.
//  - Memory is host memory: cudaMalloc is malloc of the exact size (so a sanitizer sees every
//    byte past the end), cudaMemcpy is memcpy, and streams are ignored: every call is synchronous.
// Not emulated: warp-synchronous execution beyond the votes, memory-model weakness, shared-memory
// contents left by a previous block (a static keeps them; on a GPU they are undefined).
#ifndef XLA_OPS_CSRC_TESTING_CUDA_RUNTIME_H_
#define XLA_OPS_CSRC_TESTING_CUDA_RUNTIME_H_

#if defined(__CUDACC__)
#error "testing/cuda_runtime.h emulates CUDA on the host; nvcc builds use the real runtime"
#endif

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __shared__ static
#define __host__
#define __device__
#define __forceinline__ inline

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

// Each emulated CUDA thread is a host thread with its own indices.
inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

using cudaStream_t = struct CUstream_st*;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
};

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
};

namespace cuda_emulation {

inline cudaError_t& LastError() {
  static cudaError_t error = cudaSuccess;
  return error;
}

[[noreturn]] inline void Fail(const char* what) {
  std::fprintf(stderr, "CUDA emulation: %s (block %u,%u,%u thread %u,%u,%u)\n", what, blockIdx.x,
               blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  std::abort();
}

// A reusable barrier for a fixed number of threads (a block, or one warp of it). Waiters sleep
// on a futex: a block has far more threads than a CI machine has cores, and spinning ones would
// take the cores from the threads still on their way to the barrier.
class Barrier {
 public:
  explicit Barrier(unsigned count) : count_(count) {}

  void Wait(const char* what) {
    const uint32_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      Futex(FUTEX_WAKE_PRIVATE, INT_MAX, nullptr);
      return;
    }
    // A GPU would hang if some threads never arrive; fail loudly instead.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (generation_.load(std::memory_order_acquire) == generation) {
      const timespec timeout{1, 0};
      Futex(FUTEX_WAIT_PRIVATE, generation, &timeout);  // returns at once if it moved on
      if (std::chrono::steady_clock::now() > deadline) Fail(what);
    }
  }

 private:
  void Futex(int op, uint32_t value, const timespec* timeout) {
    static_assert(sizeof(generation_) == sizeof(uint32_t), "the futex word is the generation");
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&generation_), op, value, timeout, nullptr, 0);
  }

  const unsigned count_;
  std::atomic<unsigned> arrived_{0};
  std::atomic<uint32_t> generation_{0};
};

// One warp's vote: each lane writes its predicate, all lanes meet, each reads the ballot, all
// lanes meet again before the slots can be reused by the next vote.
struct Warp {
  explicit Warp(unsigned lanes) : lanes(lanes), barrier(lanes) {}
  const unsigned lanes;  // 32, fewer in a block's last warp when blockDim is not a multiple
  Barrier barrier;
  int votes[32] = {};
};

// The state shared by the threads of the running block.
struct Block {
  explicit Block(unsigned threads) : barrier(threads) {
    for (unsigned first = 0; first < threads; first += 32) {
      warps.push_back(std::make_unique<Warp>(std::min(32u, threads - first)));
    }
  }
  Barrier barrier;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline thread_local Block* current_block = nullptr;

inline unsigned LinearThreadIndex() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

// The order in which blocks run: a fresh permutation per launch from a seeded generator
// (SetBlockOrderSeed makes a run reproducible).
inline std::mt19937_64& BlockOrderGenerator() {
  static std::mt19937_64 generator(0x5eed);
  return generator;
}

inline void SetBlockOrderSeed(uint64_t seed) { BlockOrderGenerator().seed(seed); }

// CUDA's limits for compute capability 9.0 (no dynamic shared memory opt-in).
inline bool ValidLaunch(dim3 grid, dim3 block, size_t shared_bytes) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  return block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= 1024 && block.y <= 1024 &&
         block.z <= 64 && threads <= 1024 && grid.x >= 1 && grid.y >= 1 && grid.z >= 1 &&
         grid.x <= 2147483647u && grid.y <= 65535 && grid.z <= 65535 && shared_bytes <= 48 * 1024;
}

template <typename... Params, typename... Args>
void Launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t /*stream: synchronous*/,
            void (*kernel)(Params...), Args&&... args) {
  if (!ValidLaunch(grid, block, shared_bytes)) {
    LastError() = cudaErrorInvalidConfiguration;
    return;
  }
  // Kernel parameters are passed by value, as CUDA copies them at launch.
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  const uint64_t num_blocks = uint64_t{grid.x} * grid.y * grid.z;
  std::vector<uint64_t> order(num_blocks);
  std::iota(order.begin(), order.end(), uint64_t{0});
  std::shuffle(order.begin(), order.end(), BlockOrderGenerator());
  const unsigned num_threads = block.x * block.y * block.z;
  Block state(num_threads);
  std::vector<std::thread> threads;
  threads.reserve(num_threads);
  for (unsigned t = 0; t < num_threads; ++t) {
    threads.emplace_back([&, t] {
      blockDim = block;
      gridDim = grid;
      threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      current_block = &state;
      for (const uint64_t b : order) {
        blockIdx = dim3(static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                        static_cast<unsigned>(b / (uint64_t{grid.x} * grid.y)));
        std::apply(kernel, params);
        // The next block starts when every thread of this one has returned.
        state.barrier.Wait("a thread of the block is still in a __syncthreads() at its end");
      }
      current_block = nullptr;
    });
  }
  for (auto& thread : threads) thread.join();
}

}  // namespace cuda_emulation

inline void __syncthreads() {
  cuda_emulation::current_block->barrier.Wait("__syncthreads() not reached by every thread of the block");
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  using cuda_emulation::current_block;
  const unsigned t = cuda_emulation::LinearThreadIndex();
  cuda_emulation::Warp& warp = *current_block->warps[t / 32];
  const unsigned lane = t % 32;
  const unsigned members = warp.lanes == 32 ? 0xffffffffu : (1u << warp.lanes) - 1u;
  if (mask != members) cuda_emulation::Fail("__ballot_sync mask must name exactly the warp's threads");
  warp.votes[lane] = predicate != 0;
  warp.barrier.Wait("__ballot_sync not reached by every lane of the warp");
  unsigned ballot = 0;
  for (unsigned l = 0; l < warp.lanes; ++l) ballot |= static_cast<unsigned>(warp.votes[l]) << l;
  warp.barrier.Wait("__ballot_sync not left by every lane of the warp");
  return ballot;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }

inline float atomicAdd(float* address, float value) {
  return std::atomic_ref<float>(*address).fetch_add(value, std::memory_order_relaxed);
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t error = cuda_emulation::LastError();
  cuda_emulation::LastError() = cudaSuccess;
  return error;
}

inline const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
  }
  return "unrecognized error code";
}

inline cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t /*stream*/) {
  if (bytes > 0 && pointer == nullptr) return cuda_emulation::LastError() = cudaErrorInvalidValue;
  std::memset(pointer, value, bytes);
  return cudaSuccess;
}

inline cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  *pointer = std::malloc(bytes > 0 ? bytes : 1);
  return *pointer != nullptr ? cudaSuccess : (cuda_emulation::LastError() = cudaErrorMemoryAllocation);
}

template <typename T>
cudaError_t cudaMalloc(T** pointer, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(pointer), bytes);
}

inline cudaError_t cudaFree(void* pointer) {
  std::free(pointer);
  return cudaSuccess;
}

inline cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, cudaMemcpyKind /*kind*/) {
  if (bytes > 0) std::memcpy(destination, source, bytes);
  return cudaSuccess;
}

inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

#endif  // XLA_OPS_CSRC_TESTING_CUDA_RUNTIME_H_
