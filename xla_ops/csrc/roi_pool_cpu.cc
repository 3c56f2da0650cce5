// RoI max pooling on CPUs as XLA FFI custom calls (NHWC, channels innermost).
//
// Forward: for each RoI and bin, the max over the bin of every channel and its argmax (the flat
// index h * W + w in that image's plane; -1 for an empty bin or an invalid RoI).
// Backward: the cotangent of each output is added to the feature at its argmax. Work is split
// by (image, channel block), each worker walking the RoIs in order, so every gradient element
// is summed by one thread in one fixed order: the result is bit-identical run after run
// (deterministic by construction) and no atomics are needed.
//
// Work is spread over XLA's intra-op thread pool (the FFI ThreadPool context). The calling
// thread takes chunks too, so progress never depends on a pool thread being free.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "pybind11/pybind11.h"
#include "roi_pool_bins.h"
#include "roi_pool_ffi.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace roi_pool {
namespace {

// Runs body(begin, end) over [0, n) in chunks on the pool and the calling thread; returns when
// every chunk is done. Late pool tasks that find no chunk left touch only the shared state.
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t min_chunk,
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

// best[c], arg[c] <- the max-with-argmax update over one pixel's channels.
template <typename T>
inline void UpdateMaxImpl(const T* __restrict__ pixel, float* __restrict__ best,
                          int32_t* __restrict__ arg, int32_t index, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) {  // vectorised over channels
    const float v = Flush(ToFloat(pixel[c]));
    const bool take = TakesOver(v, best[c]);
    best[c] = take ? v : best[c];
    arg[c] = take ? index : arg[c];
  }
}

// The hot loop, compiled for AVX2 and for baseline x86-64 and picked at load time, so the
// extension runs on any x86-64 CPU whatever machine built it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ROI_POOL_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ROI_POOL_CLONES
#endif
ROI_POOL_CLONES void UpdateMax(const float* p, float* b, int32_t* a, int32_t i, int64_t c) {
  UpdateMaxImpl(p, b, a, i, c);
}
ROI_POOL_CLONES void UpdateMax(const BFloat16* p, float* b, int32_t* a, int32_t i, int64_t c) {
  UpdateMaxImpl(p, b, a, i, c);
}
ROI_POOL_CLONES void UpdateMax(const Float16* p, float* b, int32_t* a, int32_t i, int64_t c) {
  UpdateMaxImpl(p, b, a, i, c);
}

template <typename T>
void ForwardRows(const T* features, const float* rois, T* out, int32_t* argmax, const Dims& d,
                 float spatial_scale, Rounding rounding, int64_t row_begin, int64_t row_end,
                 std::vector<float>& best) {
  best.resize(d.c);
  for (int64_t row = row_begin; row < row_end; ++row) {  // row = k * PH + ph
    const int64_t k = row / d.ph;
    const int64_t ph = row % d.ph;
    const RoiGeometry g = MapRoi(rois + k * 5, spatial_scale, d.n, d.ph, d.pw, rounding);
    const BinRange rows = g.batch < 0 ? BinRange{0, 0}
                                      : BinAlongAxis(ph, g.start_h, g.bin_h, d.h, rounding);
    for (int64_t pw = 0; pw < d.pw; ++pw) {
      T* out_bin = out + (row * d.pw + pw) * d.c;
      int32_t* arg_bin = argmax + (row * d.pw + pw) * d.c;
      const BinRange cols = g.batch < 0 ? BinRange{0, 0}
                                        : BinAlongAxis(pw, g.start_w, g.bin_w, d.w, rounding);
      if (rows.end <= rows.begin || cols.end <= cols.begin) {
        std::memset(out_bin, 0, sizeof(T) * d.c);  // +0 for every float type
        std::fill(arg_bin, arg_bin + d.c, -1);
        continue;
      }
      const T* plane = features + g.batch * d.h * d.w * d.c;
      // The bin's first element seeds the max, so the argmax is always a real element.
      const int32_t first = static_cast<int32_t>(rows.begin * d.w + cols.begin);
      const T* seed = plane + first * d.c;
      for (int64_t c = 0; c < d.c; ++c) best[c] = Flush(ToFloat(seed[c]));
      std::fill(arg_bin, arg_bin + d.c, first);
      for (int64_t y = rows.begin; y < rows.end; ++y) {
        for (int64_t x = cols.begin; x < cols.end; ++x) {
          const int32_t index = static_cast<int32_t>(y * d.w + x);
          UpdateMax(plane + index * d.c, best.data(), arg_bin, index, d.c);
        }
      }
      // Copy the winning elements bit for bit (no float -> half conversion needed).
      for (int64_t c = 0; c < d.c; ++c) out_bin[c] = plane[arg_bin[c] * d.c + c];
    }
  }
}

template <typename T>
void Forward(ffi::ThreadPool& pool, const T* features, const float* rois, T* out,
             int32_t* argmax, const Dims& d, float spatial_scale, Rounding rounding) {
  ParallelFor(pool, d.k * d.ph, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> best;
    ForwardRows(features, rois, out, argmax, d, spatial_scale, rounding, begin, end, best);
  });
}

// grad_features [N, H, W, C] float32 = scatter-add of grad_out [K, PH, PW, C] through argmax.
template <typename T>
void Backward(ffi::ThreadPool& pool, const T* grad_out, const float* rois, const int32_t* argmax,
              float* grad_features, const Dims& d) {
  const int64_t plane = d.h * d.w;
  ParallelFor(pool, d.n * plane, 4096, [&](int64_t begin, int64_t end) {
    std::memset(grad_features + begin * d.c, 0, sizeof(float) * (end - begin) * d.c);
  });
  constexpr int64_t kBlock = 64;  // channels per work item: a few cache lines
  const int64_t blocks = (d.c + kBlock - 1) / kBlock;
  ParallelFor(pool, d.n * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t image = item / blocks;
      const int64_t c0 = (item % blocks) * kBlock;
      const int64_t c1 = std::min(d.c, c0 + kBlock);
      float* grad_plane = grad_features + image * plane * d.c;
      for (int64_t k = 0; k < d.k; ++k) {
        // Only the image is needed, validated exactly as in the forward pass.
        if (RoiImage(rois + k * 5, d.n) != image) continue;
        const int64_t base = k * d.ph * d.pw * d.c;
        for (int64_t bin = 0; bin < d.ph * d.pw; ++bin) {
          const int32_t* arg = argmax + base + bin * d.c;
          const T* g = grad_out + base + bin * d.c;
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t a = arg[c];
            // Never trust the argmax buffer blindly: it is an input of this call.
            if (a < 0 || a >= plane) continue;
            grad_plane[a * d.c + c] += ToFloat(g[c]);
          }
        }
      }
    }
  });
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer features, ffi::Buffer<ffi::F32> rois,
                       ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::S32>> argmax,
                       int64_t pooled_h, int64_t pooled_w, float spatial_scale, int32_t rounding) {
  Dims d;
  if (auto err = CheckForward(features, rois, *out, pooled_h, pooled_w, rounding, &d);
      !err.success()) {
    return err;
  }
  const auto mode = static_cast<Rounding>(rounding);
  const float* r = rois.typed_data();
  int32_t* a = argmax->typed_data();
  switch (features.element_type()) {
    case ffi::F32:
      Forward(pool, features.typed_data<float>(), r, out->typed_data<float>(), a, d, spatial_scale, mode);
      break;
    case ffi::BF16:
      Forward(pool, reinterpret_cast<const BFloat16*>(features.untyped_data()), r,
              reinterpret_cast<BFloat16*>(out->untyped_data()), a, d, spatial_scale, mode);
      break;
    case ffi::F16:
      Forward(pool, reinterpret_cast<const Float16*>(features.untyped_data()), r,
              reinterpret_cast<Float16*>(out->untyped_data()), a, d, spatial_scale, mode);
      break;
    default:
      return ffi::Error::InvalidArgument("roi_pool: features must be float32, bfloat16 or float16");
  }
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer grad_out, ffi::Buffer<ffi::F32> rois,
                        ffi::Buffer<ffi::S32> argmax, ffi::Result<ffi::Buffer<ffi::F32>> grad_features,
                        bool /*deterministic*/, float /*spatial_scale*/, int32_t /*rounding*/) {
  Dims d;
  if (auto err = CheckBackward(grad_out, rois, argmax, *grad_features, &d); !err.success()) {
    return err;
  }
  const float* r = rois.typed_data();
  const int32_t* a = argmax.typed_data();
  float* g = grad_features->typed_data();
  switch (grad_out.element_type()) {
    case ffi::F32:
      Backward(pool, grad_out.typed_data<float>(), r, a, g, d);
      break;
    case ffi::BF16:
      Backward(pool, reinterpret_cast<const BFloat16*>(grad_out.untyped_data()), r, a, g, d);
      break;
    case ffi::F16:
      Backward(pool, reinterpret_cast<const Float16*>(grad_out.untyped_data()), r, a, g, d);
      break;
    default:
      return ffi::Error::InvalidArgument("roi_pool backward: cotangent must be a float type");
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace roi_pool

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    RoiPoolForwardCpu, roi_pool::ForwardImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<ffi::AnyBuffer>()           // features [N, H, W, C]
        .Arg<ffi::Buffer<ffi::F32>>()    // rois [K, 5]
        .Ret<ffi::AnyBuffer>()           // out [K, PH, PW, C]
        .Ret<ffi::Buffer<ffi::S32>>()    // argmax [K, PH, PW, C]
        .Attr<int64_t>("pooled_h")
        .Attr<int64_t>("pooled_w")
        .Attr<float>("spatial_scale")
        .Attr<int32_t>("rounding"));     // 0: seed kernel, 1: Caffe/torchvision

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    RoiPoolBackwardCpu, roi_pool::BackwardImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<ffi::AnyBuffer>()           // grad_out [K, PH, PW, C]
        .Arg<ffi::Buffer<ffi::F32>>()    // rois [K, 5]
        .Arg<ffi::Buffer<ffi::S32>>()    // argmax [K, PH, PW, C]
        .Ret<ffi::Buffer<ffi::F32>>()    // grad_features [N, H, W, C], float32 accumulation
        // Accepted so CPU and CUDA share one call signature; the CPU backward is always
        // deterministic and needs only the argmax, not the bins.
        .Attr<bool>("deterministic")
        .Attr<float>("spatial_scale")
        .Attr<int32_t>("rounding"));

PYBIND11_MODULE(_roi_pool_cpu, m) {
  m.def("registrations", []() {
    pybind11::dict d;
    d["jaxdet_roi_pool_fwd"] = pybind11::capsule(reinterpret_cast<void*>(RoiPoolForwardCpu));
    d["jaxdet_roi_pool_bwd"] = pybind11::capsule(reinterpret_cast<void*>(RoiPoolBackwardCpu));
    return d;
  });
}
