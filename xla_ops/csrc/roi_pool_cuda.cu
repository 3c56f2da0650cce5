// RoI max pooling on NVIDIA GPUs as XLA FFI custom calls (NHWC; float32, bfloat16, float16).
//
// Forward: one thread per output element (k, ph, pw, c), channels fastest so a warp reads
// consecutive channels of one pixel (coalesced). The bin arithmetic is roi_pool_bins.h, shared
// with the CPU kernel.
// Backward, two variants, both accumulating in float32:
//   atomic (default): one thread per output element adds its cotangent at its argmax with
//     atomicAdd into a buffer zeroed on XLA's stream. Fast; summation order varies run to run.
//   deterministic: one thread per feature element gathers, in a fixed order (RoI, then bin),
//     the cotangents whose argmax points at it. Blocks first keep, in order, only the RoIs that
//     touch their pixels. Bit-identical run after run, and to the CPU backward.
// All index arithmetic is 64-bit; every read is bounds-checked against the buffers.
//
// Every launch goes through ROI_POOL_LAUNCH, so that this file also compiles as host C++
// against testing/cuda_runtime.h, which runs each block on as many real threads as it has CUDA
// threads: tests/xla_ops/test_roi_pool_cuda_emulated.py runs these kernels on the CPU in every CI run,
// and experiments/sanitize_roi_pool.sh runs them under AddressSanitizer and ThreadSanitizer.

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "roi_pool_bins.h"
#include "roi_pool_ffi.h"
#include "xla/ffi/api/ffi.h"

#if defined(__CUDACC__)
#define ROI_POOL_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#else
#define ROI_POOL_LAUNCH(kernel, grid, block, stream, ...) \
  ::cuda_emulation::Launch((grid), (block), 0, (stream), kernel, __VA_ARGS__)
#endif

namespace ffi = xla::ffi;

namespace roi_pool {
namespace {

constexpr int kThreads = 256;

int64_t NumBlocks(int64_t work) {
  // Grid-stride loops cover any size; cap the grid so the launch is always valid.
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return blocks < 1 ? 1 : (blocks > (1 << 20) ? (1 << 20) : blocks);
}

template <typename T>
__global__ void ForwardKernel(const T* __restrict__ features, const float* __restrict__ rois,
                              T* __restrict__ out, int32_t* __restrict__ argmax, Dims d,
                              float spatial_scale, Rounding rounding) {
  const int64_t total = d.k * d.ph * d.pw * d.c;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t c = i % d.c;
    const int64_t pw = (i / d.c) % d.pw;
    const int64_t ph = (i / (d.c * d.pw)) % d.ph;
    const int64_t k = i / (d.c * d.pw * d.ph);
    const RoiGeometry g = MapRoi(rois + k * 5, spatial_scale, d.n, d.ph, d.pw, rounding);
    const BinRange rows = BinRows(g, ph, d.ph, d.h, rounding);
    const BinRange cols = BinCols(g, pw, d.pw, d.w, rounding);
    if (rows.end <= rows.begin || cols.end <= cols.begin) {
      out[i] = T{};  // +0 for every float type
      argmax[i] = -1;
      continue;
    }
    const T* plane = features + g.batch * d.h * d.w * d.c + c;
    int64_t best_index = rows.begin * d.w + cols.begin;
    float best = Flush(ToFloat(plane[best_index * d.c]));
    for (int64_t y = rows.begin; y < rows.end; ++y) {
      for (int64_t x = cols.begin; x < cols.end; ++x) {
        const int64_t index = y * d.w + x;
        const float v = Flush(ToFloat(plane[index * d.c]));
        if (TakesOver(v, best)) {
          best = v;
          best_index = index;
        }
      }
    }
    out[i] = plane[best_index * d.c];  // the winning element, bit for bit
    argmax[i] = static_cast<int32_t>(best_index);
  }
}

template <typename T>
__global__ void BackwardAtomicKernel(const T* __restrict__ grad_out, const float* __restrict__ rois,
                                     const int32_t* __restrict__ argmax, float* grad_features, Dims d) {
  const int64_t total = d.k * d.ph * d.pw * d.c;
  const int64_t plane = d.h * d.w;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t a = argmax[i];
    if (a < 0 || a >= plane) continue;
    const int64_t image = RoiImage(rois + i / (d.c * d.pw * d.ph) * 5, d.n);
    if (image < 0) continue;
    atomicAdd(grad_features + (image * plane + a) * d.c + i % d.c, ToFloat(grad_out[i]));
  }
}

// Per-RoI table for the deterministic backward: [image, row bins (begin, end) x PH,
// column bins (begin, end) x PW], computed once instead of once per feature element.
ROI_HD int64_t BinTableStride(const Dims& d) { return 1 + 2 * d.ph + 2 * d.pw; }

__global__ void BinTableKernel(const float* __restrict__ rois, int32_t* __restrict__ table, Dims d,
                               float spatial_scale, Rounding rounding) {
  const int64_t stride = BinTableStride(d);
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < d.k;
       k += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int32_t* t = table + k * stride;
    const RoiGeometry g = MapRoi(rois + k * 5, spatial_scale, d.n, d.ph, d.pw, rounding);
    t[0] = static_cast<int32_t>(g.batch);
    for (int64_t ph = 0; ph < d.ph; ++ph) {
      const BinRange r = BinRows(g, ph, d.ph, d.h, rounding);
      t[1 + 2 * ph] = static_cast<int32_t>(r.begin);
      t[2 + 2 * ph] = static_cast<int32_t>(r.end);
    }
    for (int64_t pw = 0; pw < d.pw; ++pw) {
      const BinRange r = BinCols(g, pw, d.pw, d.w, rounding);
      t[1 + 2 * d.ph + 2 * pw] = static_cast<int32_t>(r.begin);
      t[2 + 2 * d.ph + 2 * pw] = static_cast<int32_t>(r.end);
    }
  }
}

// One block: 8 consecutive pixels of one image row x 32 channels (256 threads).
constexpr int kPixelsPerBlock = 8;
constexpr int kChannelsPerBlock = 32;

template <typename T>
__global__ void BackwardGatherKernel(const T* __restrict__ grad_out, const int32_t* __restrict__ argmax,
                                     const int32_t* __restrict__ table, float* __restrict__ grad_features,
                                     Dims d) {
  __shared__ int32_t kept[kThreads];
  __shared__ int32_t warp_counts[kThreads / 32];
  const int64_t stride = BinTableStride(d);
  const int64_t x_tiles = (d.w + kPixelsPerBlock - 1) / kPixelsPerBlock;
  const int64_t c_tiles = (d.c + kChannelsPerBlock - 1) / kChannelsPerBlock;
  const int64_t num_tiles = d.n * d.h * x_tiles * c_tiles;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const int64_t c_tile = tile % c_tiles;
    const int64_t x_tile = (tile / c_tiles) % x_tiles;
    const int64_t y = (tile / (c_tiles * x_tiles)) % d.h;
    const int64_t image = tile / (c_tiles * x_tiles * d.h);
    const int64_t x0 = x_tile * kPixelsPerBlock;
    const int64_t x = x0 + threadIdx.x / kChannelsPerBlock;
    const int64_t c = c_tile * kChannelsPerBlock + threadIdx.x % kChannelsPerBlock;
    const bool active = x < d.w && c < d.c;
    const int32_t target = static_cast<int32_t>(y * d.w + x);
    float acc = 0.0f;
    for (int64_t base = 0; base < d.k; base += kThreads) {
      // Keep, in RoI order, the RoIs of this image whose bins cover row y and meet [x0, x0+8).
      const int64_t k = base + threadIdx.x;
      bool keep = false;
      if (k < d.k) {
        const int32_t* t = table + k * stride;
        keep = t[0] == image && y >= t[1] && y < t[2 * d.ph] && x0 + kPixelsPerBlock > t[1 + 2 * d.ph] &&
               x0 < t[2 * d.ph + 2 * d.pw];
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, keep);
      if (lane == 0) warp_counts[warp] = __popc(ballot);
      __syncthreads();
      int offset = 0, count = 0;
      for (int w = 0; w < kThreads / 32; ++w) {
        offset += w < warp ? warp_counts[w] : 0;
        count += warp_counts[w];
      }
      if (keep) kept[offset + __popc(ballot & ((1u << lane) - 1u))] = static_cast<int32_t>(k);
      __syncthreads();
      if (active) {
        for (int i = 0; i < count; ++i) {
          const int64_t r = kept[i];
          const int32_t* t = table + r * stride;
          for (int64_t ph = 0; ph < d.ph; ++ph) {
            if (y < t[1 + 2 * ph] || y >= t[2 + 2 * ph]) continue;
            for (int64_t pw = 0; pw < d.pw; ++pw) {
              const int32_t* col = t + 1 + 2 * d.ph + 2 * pw;
              if (x < col[0] || x >= col[1]) continue;
              const int64_t o = ((r * d.ph + ph) * d.pw + pw) * d.c + c;
              if (argmax[o] == target) acc += ToFloat(grad_out[o]);
            }
          }
        }
      }
      __syncthreads();  // `kept` is rewritten by the next round
    }
    if (active) grad_features[((image * d.h + y) * d.w + x) * d.c + c] = acc;
  }
}

ffi::Error LastCudaError(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string("roi_pool ") + what + ": " + cudaGetErrorString(err));
}

template <typename T>
ffi::Error LaunchForward(cudaStream_t stream, const void* features, const float* rois, void* out,
                         int32_t* argmax, const Dims& d, float scale, Rounding rounding) {
  const int64_t total = d.k * d.ph * d.pw * d.c;
  if (total == 0) return ffi::Error::Success();
  ROI_POOL_LAUNCH(ForwardKernel<T>, NumBlocks(total), kThreads, stream, static_cast<const T*>(features),
                  rois, static_cast<T*>(out), argmax, d, scale, rounding);
  return LastCudaError("forward");
}

// `table`: K * BinTableStride(d) int32 of device scratch memory when `deterministic` (else unused).
template <typename T>
ffi::Error LaunchBackward(cudaStream_t stream, int32_t* table, const void* grad_out, const float* rois,
                          const int32_t* argmax, float* grad, const Dims& d, bool deterministic,
                          float scale, Rounding rounding) {
  const int64_t elements = d.n * d.h * d.w * d.c;
  if (elements == 0) return ffi::Error::Success();
  const T* g = static_cast<const T*>(grad_out);
  if (!deterministic || d.k == 0) {
    if (cudaMemsetAsync(grad, 0, sizeof(float) * elements, stream) != cudaSuccess) {
      return LastCudaError("zeroing the gradient");
    }
    const int64_t total = d.k * d.ph * d.pw * d.c;
    if (total == 0) return ffi::Error::Success();
    ROI_POOL_LAUNCH(BackwardAtomicKernel<T>, NumBlocks(total), kThreads, stream, g, rois, argmax, grad, d);
    return LastCudaError("backward");
  }
  ROI_POOL_LAUNCH(BinTableKernel, NumBlocks(d.k), kThreads, stream, rois, table, d, scale, rounding);
  if (auto err = LastCudaError("bin table"); !err.success()) return err;
  const int64_t tiles = d.n * d.h * ((d.w + kPixelsPerBlock - 1) / kPixelsPerBlock) *
                        ((d.c + kChannelsPerBlock - 1) / kChannelsPerBlock);
  const int64_t blocks = tiles < (1 << 20) ? tiles : (1 << 20);
  ROI_POOL_LAUNCH(BackwardGatherKernel<T>, blocks, kThreads, stream, g, argmax, table, grad, d);
  return LastCudaError("deterministic backward");
}

ffi::Error ForwardImpl(cudaStream_t stream, ffi::AnyBuffer features, ffi::Buffer<ffi::F32> rois,
                       ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::S32>> argmax,
                       int64_t pooled_h, int64_t pooled_w, float spatial_scale, int32_t rounding) {
  Dims d;
  if (auto err = CheckForward(features, rois, *out, pooled_h, pooled_w, rounding, &d); !err.success()) {
    return err;
  }
  const auto mode = static_cast<Rounding>(rounding);
  const float* r = rois.typed_data();
  int32_t* a = argmax->typed_data();
  switch (features.element_type()) {
    case ffi::F32:
      return LaunchForward<float>(stream, features.untyped_data(), r, out->untyped_data(), a, d, spatial_scale, mode);
    case ffi::BF16:
      return LaunchForward<BFloat16>(stream, features.untyped_data(), r, out->untyped_data(), a, d, spatial_scale, mode);
    case ffi::F16:
      return LaunchForward<Float16>(stream, features.untyped_data(), r, out->untyped_data(), a, d, spatial_scale, mode);
    default:
      return ffi::Error::InvalidArgument("roi_pool: features must be float32, bfloat16 or float16");
  }
}

ffi::Error BackwardImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer grad_out,
                        ffi::Buffer<ffi::F32> rois, ffi::Buffer<ffi::S32> argmax,
                        ffi::Result<ffi::Buffer<ffi::F32>> grad_features, bool deterministic,
                        float spatial_scale, int32_t rounding) {
  Dims d;
  if (auto err = CheckBackward(grad_out, rois, argmax, *grad_features, rounding, &d); !err.success()) return err;
  const auto mode = static_cast<Rounding>(rounding);
  const float* r = rois.typed_data();
  const int32_t* a = argmax.typed_data();
  float* g = grad_features->typed_data();
  const void* go = grad_out.untyped_data();
  int32_t* table = nullptr;
  if (deterministic && d.k > 0) {
    auto memory = scratch.Allocate(sizeof(int32_t) * d.k * BinTableStride(d), alignof(int32_t));
    if (!memory.has_value()) return ffi::Error::Internal("roi_pool backward: scratch allocation failed");
    table = static_cast<int32_t*>(*memory);
  }
  switch (grad_out.element_type()) {
    case ffi::F32:
      return LaunchBackward<float>(stream, table, go, r, a, g, d, deterministic, spatial_scale, mode);
    case ffi::BF16:
      return LaunchBackward<BFloat16>(stream, table, go, r, a, g, d, deterministic, spatial_scale, mode);
    case ffi::F16:
      return LaunchBackward<Float16>(stream, table, go, r, a, g, d, deterministic, spatial_scale, mode);
    default:
      return ffi::Error::InvalidArgument("roi_pool backward: cotangent must be a float type");
  }
}

}  // namespace
}  // namespace roi_pool

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    RoiPoolForwardCuda, roi_pool::ForwardImpl,
    roi_pool::BindForward(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    RoiPoolBackwardCuda, roi_pool::BackwardImpl,
    roi_pool::BindBackward(ffi::Ffi::Bind()
                               .Ctx<ffi::PlatformStream<cudaStream_t>>()
                               .Ctx<ffi::ScratchAllocator>()));  // bin table of the gather backward
