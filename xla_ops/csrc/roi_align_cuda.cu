// RoIAlign on NVIDIA GPUs as XLA FFI custom calls (NHWC; float32, bfloat16, float16), torchvision's
// semantics, with the sampling and bilinear arithmetic of roi_align_bins.h shared with the CPU
// kernels (so the forward and the deterministic backward equal the CPU's bit for bit).
//
// Forward: one thread per output element (k, ph, pw, c), channels fastest, so that a warp reads
// consecutive channels of each neighbouring pixel (coalesced). Samples in order, accumulated in
// float32, divided by the count, rounded once to the features' dtype.
// Backward, two variants, both accumulating in float32:
//   atomic (default): one thread per output element adds cotangent * (weight / count) to the
//     four neighbours of each of its samples with atomicAdd, into a buffer zeroed on XLA's
//     stream. Fast; the summation order varies run to run.
//   deterministic: one thread per (image, row, channel) owns that row of the gradient and adds,
//     in the CPU backward's order (RoI, bin row, bin column, sample row, sample column,
//     neighbour), every contribution that lands on it. A table kernel first records, per RoI,
//     its image and the rows each of its bin rows touches, so that threads skip the others.
//     Bit-identical run after run, and to the CPU backward.
// All index arithmetic is 64-bit, and every neighbour index is clamped into the map by
// Interpolate: no read or write can leave the buffers, whatever the RoIs.
//
// Every launch goes through ROI_ALIGN_LAUNCH, so that this file also compiles as host C++
// against testing/cuda_runtime.h (tests/xla_ops/test_roi_align_cuda_emulated.py runs these
// kernels on the CPU in every CI run, and experiments/sanitize_roi_pool.sh under AddressSanitizer).

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "roi_align_bins.h"
#include "roi_align_ffi.h"
#include "xla/ffi/api/ffi.h"

#if defined(__CUDACC__)
#define ROI_ALIGN_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#define ROI_ALIGN_IEEE_MODE()
#else
#define ROI_ALIGN_LAUNCH(kernel, grid, block, stream, ...) \
  ::cuda_emulation::Launch((grid), (block), 0, (stream), kernel, __VA_ARGS__)
// Emulated threads are host threads: IEEE subnormals, as on the GPU.
#define ROI_ALIGN_IEEE_MODE() ::roi_align::IeeeFloatMode ieee_mode
#endif

namespace ffi = xla::ffi;

namespace roi_align {
namespace {

constexpr int kThreads = 256;

int64_t NumBlocks(int64_t work) {
  // Grid-stride loops cover any size; cap the grid so the launch is always valid.
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return blocks < 1 ? 1 : (blocks > (1 << 20) ? (1 << 20) : blocks);
}

// Element i of a [K, PH, PW, C] array: RoI k, bin (ph, pw), channel c.
struct OutputElement {
  int64_t k, ph, pw, c;
};

ROI_HD OutputElement Unflatten(int64_t i, const Dims& d) {
  return {i / (d.c * d.pw * d.ph), (i / (d.c * d.pw)) % d.ph, (i / d.c) % d.pw, i % d.c};
}

// Calls visit(y, x) for each sample of bin (ph, pw) of the RoI `g` that lies inside the map, in
// the CPU kernels' order (sample row, then sample column).
template <typename Visit>
__device__ inline void ForEachSample(const RoiGeometry& g, int64_t ph, int64_t pw, const Dims& d, Visit&& visit) {
  const SampleRange rows = SamplesToVisit(g.start_h, ph, g.bin_h, g.grid_h, d.h, g.adaptive);
  const SampleRange cols = SamplesToVisit(g.start_w, pw, g.bin_w, g.grid_w, d.w, g.adaptive);
  for (int64_t iy = rows.begin; iy < rows.end; ++iy) {
    const AxisSample y = Interpolate(SamplePosition(g.start_h, ph, g.bin_h, iy, g.grid_h), d.h);
    if (!y.inside) continue;
    for (int64_t ix = cols.begin; ix < cols.end; ++ix) {
      const AxisSample x = Interpolate(SamplePosition(g.start_w, pw, g.bin_w, ix, g.grid_w), d.w);
      if (x.inside) visit(y, x);
    }
  }
}

template <typename T>
__global__ void ForwardKernel(const T* __restrict__ features, const float* __restrict__ rois,
                              T* __restrict__ out, Dims d, Params p) {
  ROI_ALIGN_IEEE_MODE();
  const int64_t total = d.k * d.ph * d.pw * d.c;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const OutputElement e = Unflatten(i, d);
    const RoiGeometry g = MapRoi(rois + e.k * 5, p.spatial_scale, d.n, d.ph, d.pw, p.sampling_ratio, p.aligned);
    if (g.batch < 0 || d.h == 0 || d.w == 0) {
      out[i] = T{};  // +0 for every float type
      continue;
    }
    const T* plane = features + g.batch * d.h * d.w * d.c + e.c;
    float acc = 0.0f;
    ForEachSample(g, e.ph, e.pw, d, [&](const AxisSample& y, const AxisSample& x) {
      acc = Add(acc, Blend(SampleWeights(y, x), ToFloat(plane[(y.low * d.w + x.low) * d.c]),
                           ToFloat(plane[(y.low * d.w + x.high) * d.c]),
                           ToFloat(plane[(y.high * d.w + x.low) * d.c]),
                           ToFloat(plane[(y.high * d.w + x.high) * d.c])));
    });
    out[i] = FromFloat<T>(Div(acc, g.count));
  }
}

template <typename T>
__global__ void BackwardAtomicKernel(const T* __restrict__ grad_out, const float* __restrict__ rois,
                                     float* grad_features, Dims d, Params p) {
  ROI_ALIGN_IEEE_MODE();
  const int64_t total = d.k * d.ph * d.pw * d.c;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const OutputElement e = Unflatten(i, d);
    const RoiGeometry g = MapRoi(rois + e.k * 5, p.spatial_scale, d.n, d.ph, d.pw, p.sampling_ratio, p.aligned);
    if (g.batch < 0) continue;
    const float go = ToFloat(grad_out[i]);
    float* plane = grad_features + g.batch * d.h * d.w * d.c + e.c;
    ForEachSample(g, e.ph, e.pw, d, [&](const AxisSample& y, const AxisSample& x) {
      const Weights w = SampleWeights(y, x);
      atomicAdd(plane + (y.low * d.w + x.low) * d.c, Mul(go, Div(w.w1, g.count)));
      atomicAdd(plane + (y.low * d.w + x.high) * d.c, Mul(go, Div(w.w2, g.count)));
      atomicAdd(plane + (y.high * d.w + x.low) * d.c, Mul(go, Div(w.w3, g.count)));
      atomicAdd(plane + (y.high * d.w + x.high) * d.c, Mul(go, Div(w.w4, g.count)));
    });
  }
}

// Per-RoI table of the deterministic backward: [image, (first row, last row) x PH], the rows
// touched by the samples inside the map of each bin row (first > last: none).
ROI_HD int64_t RowTableStride(const Dims& d) { return 1 + 2 * d.ph; }

__global__ void RowTableKernel(const float* __restrict__ rois, int32_t* __restrict__ table, Dims d,
                               Params p) {
  ROI_ALIGN_IEEE_MODE();
  const int64_t stride = RowTableStride(d);
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < d.k;
       k += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int32_t* t = table + k * stride;
    const RoiGeometry g = MapRoi(rois + k * 5, p.spatial_scale, d.n, d.ph, d.pw, p.sampling_ratio, p.aligned);
    t[0] = static_cast<int32_t>(g.batch);
    for (int64_t ph = 0; ph < d.ph; ++ph) {
      int64_t first = d.h, last = -1;
      if (g.batch >= 0) {
        const SampleRange rows = SamplesToVisit(g.start_h, ph, g.bin_h, g.grid_h, d.h, g.adaptive);
        for (int64_t iy = rows.begin; iy < rows.end; ++iy) {
          const AxisSample y = Interpolate(SamplePosition(g.start_h, ph, g.bin_h, iy, g.grid_h), d.h);
          if (!y.inside) continue;
          first = y.low < first ? y.low : first;
          last = y.high > last ? y.high : last;
        }
      }
      t[1 + 2 * ph] = static_cast<int32_t>(first);
      t[2 + 2 * ph] = static_cast<int32_t>(last);
    }
  }
}

template <typename T>
__global__ void BackwardGatherKernel(const T* __restrict__ grad_out, const float* __restrict__ rois,
                                     const int32_t* __restrict__ table, float* __restrict__ grad_features,
                                     Dims d, Params p) {
  ROI_ALIGN_IEEE_MODE();
  const int64_t stride = RowTableStride(d);
  const int64_t total = d.n * d.h * d.c;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t c = i % d.c;
    const int64_t row = (i / d.c) % d.h;
    const int64_t image = i / (d.c * d.h);
    float* line = grad_features + (image * d.h + row) * d.w * d.c + c;  // this thread's row
    for (int64_t x = 0; x < d.w; ++x) line[x * d.c] = 0.0f;
    for (int64_t k = 0; k < d.k; ++k) {
      const int32_t* t = table + k * stride;
      if (t[0] != image) continue;
      bool touched = false;
      for (int64_t ph = 0; ph < d.ph; ++ph) touched |= t[1 + 2 * ph] <= row && row <= t[2 + 2 * ph];
      if (!touched) continue;
      const RoiGeometry g = MapRoi(rois + k * 5, p.spatial_scale, d.n, d.ph, d.pw, p.sampling_ratio, p.aligned);
      if (g.batch != image) continue;  // as the table says; never otherwise
      for (int64_t ph = 0; ph < d.ph; ++ph) {
        if (row < t[1 + 2 * ph] || row > t[2 + 2 * ph]) continue;
        const SampleRange rows = SamplesToVisit(g.start_h, ph, g.bin_h, g.grid_h, d.h, g.adaptive);
        for (int64_t pw = 0; pw < d.pw; ++pw) {
          const float go = ToFloat(grad_out[((k * d.ph + ph) * d.pw + pw) * d.c + c]);
          const SampleRange cols = SamplesToVisit(g.start_w, pw, g.bin_w, g.grid_w, d.w, g.adaptive);
          for (int64_t iy = rows.begin; iy < rows.end; ++iy) {
            const AxisSample y = Interpolate(SamplePosition(g.start_h, ph, g.bin_h, iy, g.grid_h), d.h);
            if (!y.inside || (y.low != row && y.high != row)) continue;
            for (int64_t ix = cols.begin; ix < cols.end; ++ix) {
              const AxisSample x = Interpolate(SamplePosition(g.start_w, pw, g.bin_w, ix, g.grid_w), d.w);
              if (!x.inside) continue;
              const Weights w = SampleWeights(y, x);
              // The neighbours in the CPU backward's order: (low, low), (low, high), (high,
              // low), (high, high); those on this row.
              if (y.low == row) {
                line[x.low * d.c] = Add(line[x.low * d.c], Mul(go, Div(w.w1, g.count)));
                line[x.high * d.c] = Add(line[x.high * d.c], Mul(go, Div(w.w2, g.count)));
              }
              if (y.high == row) {
                line[x.low * d.c] = Add(line[x.low * d.c], Mul(go, Div(w.w3, g.count)));
                line[x.high * d.c] = Add(line[x.high * d.c], Mul(go, Div(w.w4, g.count)));
              }
            }
          }
        }
      }
    }
  }
}

ffi::Error LastCudaError(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string("roi_align ") + what + ": " + cudaGetErrorString(err));
}

template <typename T>
ffi::Error LaunchForward(cudaStream_t stream, const void* features, const float* rois, void* out,
                         const Dims& d, const Params& p) {
  const int64_t total = d.k * d.ph * d.pw * d.c;
  if (total == 0) return ffi::Error::Success();
  ROI_ALIGN_LAUNCH(ForwardKernel<T>, NumBlocks(total), kThreads, stream, static_cast<const T*>(features),
                   rois, static_cast<T*>(out), d, p);
  return LastCudaError("forward");
}

// `table`: K * RowTableStride(d) int32 of device scratch memory when `deterministic` (else unused).
template <typename T>
ffi::Error LaunchBackward(cudaStream_t stream, int32_t* table, const void* grad_out, const float* rois,
                          float* grad, const Dims& d, const Params& p, bool deterministic) {
  const int64_t elements = d.n * d.h * d.w * d.c;
  if (elements == 0) return ffi::Error::Success();
  const T* g = static_cast<const T*>(grad_out);
  if (!deterministic || d.k == 0) {
    if (cudaMemsetAsync(grad, 0, sizeof(float) * elements, stream) != cudaSuccess) {
      return LastCudaError("zeroing the gradient");
    }
    const int64_t total = d.k * d.ph * d.pw * d.c;
    if (total == 0) return ffi::Error::Success();
    ROI_ALIGN_LAUNCH(BackwardAtomicKernel<T>, NumBlocks(total), kThreads, stream, g, rois, grad, d, p);
    return LastCudaError("backward");
  }
  ROI_ALIGN_LAUNCH(RowTableKernel, NumBlocks(d.k), kThreads, stream, rois, table, d, p);
  if (auto err = LastCudaError("row table"); !err.success()) return err;
  ROI_ALIGN_LAUNCH(BackwardGatherKernel<T>, NumBlocks(d.n * d.h * d.c), kThreads, stream, g, rois, table,
                   grad, d, p);
  return LastCudaError("deterministic backward");
}

template <typename Fn>
ffi::Error Dispatch(ffi::DataType type, const char* what, Fn&& fn) {
  switch (type) {
    case ffi::F32:
      return fn(float{});
    case ffi::BF16:
      return fn(BFloat16{});
    case ffi::F16:
      return fn(Float16{});
    default:
      return ffi::Error::InvalidArgument(what);
  }
}

ffi::Error ForwardImpl(cudaStream_t stream, ffi::AnyBuffer features, ffi::Buffer<ffi::F32> rois,
                       ffi::Result<ffi::AnyBuffer> out, int64_t pooled_h, int64_t pooled_w,
                       float spatial_scale, int64_t sampling_ratio, bool aligned) {
  Dims d;
  if (auto err = CheckForward(features, rois, *out, pooled_h, pooled_w, sampling_ratio, &d); !err.success()) {
    return err;
  }
  const Params p{spatial_scale, sampling_ratio, aligned};
  return Dispatch(features.element_type(), "roi_align: features must be float32, bfloat16 or float16",
                  [&](auto zero) {
                    using T = decltype(zero);
                    return LaunchForward<T>(stream, features.untyped_data(), rois.typed_data(),
                                            out->untyped_data(), d, p);
                  });
}

ffi::Error BackwardImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer grad_out,
                        ffi::Buffer<ffi::F32> rois, ffi::Result<ffi::Buffer<ffi::F32>> grad_features,
                        float spatial_scale, int64_t sampling_ratio, bool aligned, bool deterministic) {
  Dims d;
  if (auto err = CheckBackward(grad_out, rois, *grad_features, sampling_ratio, &d); !err.success()) return err;
  const Params p{spatial_scale, sampling_ratio, aligned};
  int32_t* table = nullptr;
  if (deterministic && d.k > 0 && d.n * d.h * d.w * d.c > 0) {
    auto memory = scratch.Allocate(sizeof(int32_t) * d.k * RowTableStride(d), alignof(int32_t));
    if (!memory.has_value()) return ffi::Error::Internal("roi_align backward: scratch allocation failed");
    table = static_cast<int32_t*>(*memory);
  }
  return Dispatch(grad_out.element_type(), "roi_align backward: cotangent must be a float type",
                  [&](auto zero) {
                    using T = decltype(zero);
                    return LaunchBackward<T>(stream, table, grad_out.untyped_data(), rois.typed_data(),
                                             grad_features->typed_data(), d, p, deterministic);
                  });
}

}  // namespace
}  // namespace roi_align

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    RoiAlignForwardCuda, roi_align::ForwardImpl,
    roi_align::BindForward(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    RoiAlignBackwardCuda, roi_align::BackwardImpl,
    roi_align::BindBackward(ffi::Ffi::Bind()
                                .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                .Ctx<ffi::ScratchAllocator>()));  // row table of the gather backward
