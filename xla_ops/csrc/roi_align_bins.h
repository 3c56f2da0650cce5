// The sampling and bilinear arithmetic of RoIAlign (He et al. 2017, "Mask R-CNN", section 3),
// with torchvision's semantics (torchvision/csrc/ops/{cpu,cuda}/roi_align_kernel.*), shared by
// the C++ kernels (roi_align_cpu.cc), the CUDA kernels (roi_align_cuda.cu) and their host
// emulation (testing/), so that they compute the same float32 operations in the same order and
// agree bit for bit. Plain IEEE float32 arithmetic: no fused multiply-add (-ffp-contract=off on
// the host, --fmad=false and the _rn intrinsics on the device), no flush of subnormals (the CPU
// kernels clear FTZ/DAZ while they run: IeeeFloatMode).
//
// A RoI (batch_index, x1, y1, x2, y2) in input pixels, its bins and samples, as torchvision:
//   offset = aligned ? 0.5 : 0;  start = x1 * scale - offset;  end = x2 * scale - offset
//   size = end - start, at least 1 when not aligned;  bin = size / pooled
//   grid = sampling_ratio > 0 ? sampling_ratio : ceil(bin)   (samples per bin along the axis)
//   sample i of bin p: start + p * bin + (i + 0.5) * bin / grid
//   a sample outside [-1, H] (rows) or [-1, W] (columns) gives 0; else it is clamped to
//   [0, H - 1] and bilinearly interpolated from its four neighbours (all four read and
//   multiplied, even with a weight of 0); a bin is the sum of its samples / max(grid_h * grid_w, 1).
// Only the samples inside the map are visited: for an adaptive grid (which is increasing in i)
// they are found by bisection, so that the work of any RoI is bounded by the map's size.
#ifndef XLA_OPS_ROI_ALIGN_BINS_H_
#define XLA_OPS_ROI_ALIGN_BINS_H_

#include <cmath>
#include <cstdint>

#if !defined(__CUDA_ARCH__) && (defined(__x86_64__) || defined(__i386__))
#include <xmmintrin.h>
#endif

#include "roi_pool_bins.h"  // RoiImage, IsFinite, ToFloat, BFloat16, Float16, ROI_HD

namespace roi_align {

using roi_pool::BFloat16;
using roi_pool::Float16;
using roi_pool::IsFinite;
using roi_pool::RoiImage;
using roi_pool::ToFloat;

// The largest adaptive sampling grid (points per bin along an axis) of a valid RoI. Beyond it
// (a bin over a million feature pixels tall, where torchvision would take days and its int
// arithmetic soon overflows) the RoI is invalid: zeros, zero gradient. It keeps every position
// computed below finite and small enough that the visited samples per bin stay under 2H + 8.
constexpr int64_t kMaxGrid = int64_t{1} << 20;

ROI_HD float Mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

ROI_HD float Add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

ROI_HD float Sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

ROI_HD float Div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// One RoI mapped onto the feature map.
struct RoiGeometry {
  int64_t batch;   // image index; -1: invalid RoI (zeros, no gradient)
  float start_h;   // roi_start_h of torchvision
  float start_w;
  float bin_h;     // bin_size_h
  float bin_w;
  int64_t grid_h;  // sampling points per bin along y (0 when torchvision's would be <= 0)
  int64_t grid_w;
  float count;     // max(grid_h * grid_w, 1): the divisor of a bin's sum
  bool adaptive;   // sampling_ratio <= 0: the samples increase with their index
};

// roi: (batch_index, x1, y1, x2, y2). Invalid (batch -1) when the batch index is not finite or
// not in [0, num_images) (RoiImage: truncated toward zero), a coordinate or a scaled one or the
// RoI's size is not finite, or an adaptive grid exceeds kMaxGrid.
ROI_HD RoiGeometry MapRoi(const float* roi, float spatial_scale, int64_t num_images,
                          int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                          bool aligned) {
  RoiGeometry g{-1, 0.0f, 0.0f, 0.0f, 0.0f, 0, 0, 1.0f, sampling_ratio <= 0};
  const int64_t image = RoiImage(roi, num_images);
  if (image < 0) return g;
  const float offset = aligned ? 0.5f : 0.0f;
  const float start_w = Sub(Mul(roi[1], spatial_scale), offset);
  const float start_h = Sub(Mul(roi[2], spatial_scale), offset);
  const float end_w = Sub(Mul(roi[3], spatial_scale), offset);
  const float end_h = Sub(Mul(roi[4], spatial_scale), offset);
  float width = Sub(end_w, start_w);
  float height = Sub(end_h, start_h);
  if (!IsFinite(start_w) || !IsFinite(start_h) || !IsFinite(width) || !IsFinite(height)) return g;
  if (!aligned) {  // "Force malformed ROIs to be 1x1"
    width = width > 1.0f ? width : 1.0f;
    height = height > 1.0f ? height : 1.0f;
  }
  const float bin_h = Div(height, static_cast<float>(pooled_h));
  const float bin_w = Div(width, static_cast<float>(pooled_w));
  int64_t grid_h = sampling_ratio, grid_w = sampling_ratio;
  if (sampling_ratio <= 0) {
    // ceil(size / pooled) is ceil(bin); <= 0 (an aligned RoI of size <= 0) samples nothing.
    const float ch = ceilf(bin_h), cw = ceilf(bin_w);
    if (ch > static_cast<float>(kMaxGrid) || cw > static_cast<float>(kMaxGrid)) return g;
    grid_h = ch > 0.0f ? static_cast<int64_t>(ch) : 0;
    grid_w = cw > 0.0f ? static_cast<int64_t>(cw) : 0;
  }
  g.batch = image;
  g.start_h = start_h;
  g.start_w = start_w;
  g.bin_h = bin_h;
  g.bin_w = bin_w;
  g.grid_h = grid_h;
  g.grid_w = grid_w;
  const float count = Mul(static_cast<float>(grid_h), static_cast<float>(grid_w));
  g.count = count > 1.0f ? count : 1.0f;
  return g;
}

// Sample `i` of bin `p` along an axis: start + p * bin + (i + 0.5) * bin / grid, evaluated as
// torchvision writes it (left to right, float32).
ROI_HD float SamplePosition(float start, int64_t p, float bin, int64_t i, int64_t grid) {
  const float within = Div(Mul(Add(static_cast<float>(i), 0.5f), bin), static_cast<float>(grid));
  return Add(Add(start, Mul(static_cast<float>(p), bin)), within);
}

// One sample along one axis: its two neighbours and their weights (low * (1 - frac) + high *
// frac), or none when it lies outside [-1, size].
struct AxisSample {
  int64_t low;
  int64_t high;
  float l;      // weight of `high` (ly / lx of torchvision)
  float h;      // weight of `low` (hy / hx)
  bool inside;
};

// torchvision's bilinear_interpolate along one axis. `size` > 0.
ROI_HD AxisSample Interpolate(float v, int64_t size) {
  AxisSample s{0, 0, 0.0f, 0.0f, false};
  // Written as !(in range) so that NaN is outside (no NaN reaches here from MapRoi anyway).
  if (!(v >= -1.0f && v <= static_cast<float>(size))) return s;
  if (v <= 0.0f) v = 0.0f;
  int64_t low = static_cast<int64_t>(v);  // v in [0, size]: no overflow
  int64_t high;
  if (low >= size - 1) {
    high = low = size - 1;
    v = static_cast<float>(low);
  } else {
    high = low + 1;
  }
  s.low = low;
  s.high = high;
  s.l = Sub(v, static_cast<float>(low));
  s.h = Sub(1.0f, s.l);
  s.inside = true;
  return s;
}

// The samples [begin, end) of bin `p` to visit along an axis: every one inside [-1, size] lies
// in it. Adaptive grids increase with the sample's index (every operation of SamplePosition is
// monotonic, bin > 0): both ends by bisection. A fixed grid (sampling_ratio > 0: the user's
// size, and bin may be negative for an aligned RoI) is visited whole, outside samples skipped.
struct SampleRange {
  int64_t begin;
  int64_t end;
};

ROI_HD SampleRange SamplesToVisit(float start, int64_t p, float bin, int64_t grid, int64_t size,
                                  bool adaptive) {
  if (!adaptive || grid <= 0) return SampleRange{0, grid > 0 ? grid : 0};
  const float lowest = -1.0f, highest = static_cast<float>(size);
  int64_t lo = 0, hi = grid;  // first sample >= -1
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (SamplePosition(start, p, bin, mid, grid) >= lowest) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  const int64_t begin = lo;
  hi = grid;  // first sample > size
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (SamplePosition(start, p, bin, mid, grid) > highest) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return SampleRange{begin, lo};
}

// The bilinear weights of a sample from its two axes, as torchvision: w1 = hy * hx (low row,
// low column), w2 = hy * lx, w3 = ly * hx, w4 = ly * lx.
struct Weights {
  float w1, w2, w3, w4;
};

ROI_HD Weights SampleWeights(const AxisSample& y, const AxisSample& x) {
  return Weights{Mul(y.h, x.h), Mul(y.h, x.l), Mul(y.l, x.h), Mul(y.l, x.l)};
}

// One sample's contribution, torchvision's w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4 (left to right).
ROI_HD float Blend(const Weights& w, float v1, float v2, float v3, float v4) {
  return Add(Add(Add(Mul(w.w1, v1), Mul(w.w2, v2)), Mul(w.w3, v3)), Mul(w.w4, v4));
}

// ---- Float32 to the half types, round to nearest even (NaN stays NaN, quieted). ----
ROI_HD uint32_t FloatBits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

ROI_HD float FromBits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

template <typename T>
ROI_HD T FromFloat(float f);

template <>
ROI_HD float FromFloat<float>(float f) { return f; }

template <>
ROI_HD BFloat16 FromFloat<BFloat16>(float f) {
  const uint32_t u = FloatBits(f);
  BFloat16 b;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep the sign and top payload, quiet
    b.bits = static_cast<uint16_t>((u >> 16) | 0x0040u);
    return b;
  }
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  b.bits = static_cast<uint16_t>((u + rounding) >> 16);
  return b;
}

template <>
ROI_HD Float16 FromFloat<Float16>(float f) {
  // IEEE binary32 -> binary16, round to nearest even, subnormals and overflow to infinity.
  const uint32_t u = FloatBits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  Float16 h;
  if (abs > 0x7f800000u) {  // NaN
    h.bits = static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
    return h;
  }
  if (abs >= 0x477ff000u) {  // rounds to >= 65520: infinity
    h.bits = static_cast<uint16_t>(sign | 0x7c00u);
    return h;
  }
  if (abs < 0x38800000u) {  // below 2^-14: a subnormal (or zero) of binary16
    // abs * 2^24 rounded to an integer (exact scaling, one rounding to nearest even).
    const float scaled = FromBits(abs) * 16777216.0f;
    const float rounded = nearbyintf(scaled);  // default rounding mode: to nearest even
    h.bits = static_cast<uint16_t>(sign | static_cast<uint32_t>(rounded));
    return h;
  }
  const uint32_t rebiased = abs - (uint32_t{112} << 23);
  const uint32_t rounding = 0xfffu + ((rebiased >> 13) & 1u);
  h.bits = static_cast<uint16_t>(sign | ((rebiased + rounding) >> 13));
  return h;
}

// Clears flush-to-zero and denormals-are-zero on the host for its lifetime (XLA's CPU threads
// may run with them set), so that subnormal features and products are IEEE, as on the GPU
// (nvcc's default -ftz=false) and in the CUDA emulation. A no-op elsewhere.
#if !defined(__CUDA_ARCH__) && (defined(__x86_64__) || defined(__i386__))
class IeeeFloatMode {
 public:
  IeeeFloatMode() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ & ~0x8040u); }
  ~IeeeFloatMode() { _mm_setcsr(saved_); }
  IeeeFloatMode(const IeeeFloatMode&) = delete;
  IeeeFloatMode& operator=(const IeeeFloatMode&) = delete;

 private:
  unsigned saved_;
};
#else
struct IeeeFloatMode {
  ROI_HD IeeeFloatMode() {}
};
#endif

}  // namespace roi_align

#endif  // XLA_OPS_ROI_ALIGN_BINS_H_
