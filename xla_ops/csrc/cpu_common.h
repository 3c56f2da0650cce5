// What the CPU custom calls share: parallel loops on XLA's intra-op thread pool (the FFI
// ThreadPool context), where the calling thread takes chunks too, so progress never depends on
// a pool thread being free; and the huge-page hint for their large outputs.
#ifndef XLA_OPS_CPU_COMMON_H_
#define XLA_OPS_CPU_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace xla_ops {

// Runs body(begin, end) over [0, n) in chunks on the pool and the calling thread; returns when
// every chunk is done. Late pool tasks that find no chunk left touch only the shared state.
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, int64_t min_chunk,
                        const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunk = std::max<int64_t>(min_chunk, (n + threads * 4 - 1) / (threads * 4));
  const int64_t num_chunks = (n + chunk - 1) / chunk;
  if (threads == 1 || num_chunks == 1) {
    body(0, n);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const auto* body_ptr = &body;
  auto work = [state, body_ptr, n, chunk, num_chunks]() {
    for (int64_t c; (c = state->next.fetch_add(1)) < num_chunks;) {
      const int64_t begin = c * chunk;
      (*body_ptr)(begin, std::min(n, begin + chunk));
      if (state->done.fetch_add(1) + 1 == num_chunks) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min(threads, num_chunks) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(std::function<void()>(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == num_chunks; });
}

// Asks the kernel for transparent huge pages behind [p, p + bytes) (the whole 2 MiB pages
// inside it). The output buffers are usually fresh allocations that XLA maps anew on every
// call, and first-touch faults on 4 KiB pages cost more than the pooling itself for large
// outputs; with THP in "madvise" mode one fault then maps 2 MiB. Only a hint: the contents and
// the ownership of the memory are unchanged, and a failure (e.g. THP off) changes nothing.
// Buffers under kHugePagesFrom are left alone: with THP's "madvise" defrag setting a huge-page
// fault may compact memory first, which made the 6 MiB outputs of a small model's RoIs
// (512 RoIs x 7 x 7 x 64, xla_ops/csrc/roi_pool_cpu.cc) 3.5x slower in the median, while
// 25 MiB outputs were 2.6x faster.
constexpr size_t kHugePagesFrom = size_t{16} << 20;
inline void AdviseHugePages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < kHugePagesFrom) return;
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

}  // namespace xla_ops

#endif  // XLA_OPS_CPU_COMMON_H_
