// The bin arithmetic of RoI max pooling, shared by the C++ and CUDA kernels so that the two
// can never drift apart. Everything here is plain float32 arithmetic with no fused
// multiply-add (the CPU build uses -ffp-contract=off, the CUDA build --fmad=false and the
// explicit round-to-nearest intrinsics below, and subnormals are flushed explicitly), so CPU, GPU and the jnp reference
// (xla_ops/reference.py, which mirrors these functions line by line) agree bit for bit.
#ifndef XLA_OPS_ROI_POOL_BINS_H_
#define XLA_OPS_ROI_POOL_BINS_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define ROI_HD __host__ __device__ __forceinline__
#else
#define ROI_HD inline
#endif

namespace roi_pool {

enum class Rounding : int32_t {
  // Unrounded: coordinates scaled without rounding, +1 on x2/y2 (inclusive pixels) before scaling.
  kNone = 0,
  // Caffe / torchvision: scaled coordinates rounded half away from zero, size max(x2-x1+1, 1).
  kRound = 1,
  // The SlowROIPool of the PyTorch Fast R-CNN tutorials: the crop of feature pixels
  // floor(x1 * scale) to floor(x2 * scale), both included, clipped to the map, split into bins
  // as adaptive max pooling (torch.nn.AdaptiveMaxPool2d) splits its input.
  kAdaptive = 2,
};

// Subnormal results are flushed to zero (sign kept), as XLA's CPU backend does, so that the
// bins never depend on a platform's denormal mode.
ROI_HD float Flush(float x) { return fabsf(x) < 1.17549435e-38f ? copysignf(0.0f, x) : x; }

ROI_HD float Mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return Flush(__fmul_rn(a, b));
#else
  return Flush(a * b);
#endif
}

ROI_HD float Add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return Flush(__fadd_rn(a, b));
#else
  return Flush(a + b);
#endif
}

ROI_HD float Sub(float a, float b) { return Add(a, -b); }

ROI_HD float Div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return Flush(__fdiv_rn(a, b));
#else
  return Flush(a / b);
#endif
}

ROI_HD bool IsFinite(float x) { return x - x == 0.0f; }  // false for NaN and +-inf

// Clamps a float edge to [0, limit] before the integer conversion, so that huge or infinite
// coordinates can never overflow the cast (NaN has been rejected before this point), and the
// integer again: above 2^24, float(limit) may round up past limit.
ROI_HD int64_t ClampEdge(float edge, int64_t limit) {
  const float hi = static_cast<float>(limit);
  edge = edge < 0.0f ? 0.0f : edge;
  edge = edge > hi ? hi : edge;
  const int64_t clamped = static_cast<int64_t>(edge);
  return clamped < limit ? clamped : limit;
}

// One RoI mapped onto the feature map: the image it reads and the geometry of its bins.
struct RoiGeometry {
  int64_t batch;   // image index; -1 when the RoI is invalid (pool nothing)
  float start_h;   // top edge on the feature map
  float start_w;   // left edge
  float bin_h;     // bin height (feature pixels); kAdaptive: the crop's bottom edge, exclusive
  float bin_w;     // bin width; kAdaptive: the crop's right edge, exclusive
};

// The image a RoI reads: its batch index (truncated toward zero) when finite and in
// [0, num_images), else -1. The forward and both backward kernels validate through this.
ROI_HD int64_t RoiImage(const float* roi, int64_t num_images) {
  const float b = Flush(roi[0]);
  if (!IsFinite(b) || !(b >= 0.0f) || !(b < static_cast<float>(num_images))) return -1;
  return static_cast<int64_t>(b);
}

// roi: (batch_index, x1, y1, x2, y2) in input pixels. An RoI is invalid, and pools to zeros
// with argmax -1, when its batch index is not finite or not in [0, num_images), when a
// coordinate is not finite, or (rounding none) when its scaled size is not positive.
// (kAdaptive: a crop that is empty once clipped to the map pools to zeros bin by bin.)
ROI_HD RoiGeometry MapRoi(const float* roi, float spatial_scale, int64_t num_images,
                          int64_t pooled_h, int64_t pooled_w, Rounding rounding) {
  RoiGeometry g{-1, 0.0f, 0.0f, 0.0f, 0.0f};
  const int64_t image = RoiImage(roi, num_images);
  if (image < 0) return g;
  for (int i = 1; i < 5; ++i) {
    if (!IsFinite(roi[i])) return g;
  }
  float x1, y1, w, h;
  if (rounding == Rounding::kAdaptive) {
    // floor(+-inf) stays infinite and is clamped to the map by BinAlongAxis, like any edge.
    g.batch = image;
    g.start_w = floorf(Mul(roi[1], spatial_scale));
    g.start_h = floorf(Mul(roi[2], spatial_scale));
    g.bin_w = Add(floorf(Mul(roi[3], spatial_scale)), 1.0f);
    g.bin_h = Add(floorf(Mul(roi[4], spatial_scale)), 1.0f);
    return g;
  }
  if (rounding == Rounding::kNone) {
    x1 = Mul(roi[1], spatial_scale);
    y1 = Mul(roi[2], spatial_scale);
    const float x2 = Mul(Add(roi[3], 1.0f), spatial_scale);
    const float y2 = Mul(Add(roi[4], 1.0f), spatial_scale);
    w = Sub(x2, x1);
    h = Sub(y2, y1);
    if (!(w > 0.0f) || !(h > 0.0f) || !IsFinite(w) || !IsFinite(h)) return g;
  } else {
    x1 = roundf(Mul(roi[1], spatial_scale));
    y1 = roundf(Mul(roi[2], spatial_scale));
    const float x2 = roundf(Mul(roi[3], spatial_scale));
    const float y2 = roundf(Mul(roi[4], spatial_scale));
    w = Add(Sub(x2, x1), 1.0f);
    h = Add(Sub(y2, y1), 1.0f);
    w = w > 1.0f ? w : 1.0f;
    h = h > 1.0f ? h : 1.0f;
    if (!IsFinite(w) || !IsFinite(h)) return g;
  }
  g.batch = image;
  g.start_h = y1;
  g.start_w = x1;
  g.bin_h = Div(h, static_cast<float>(pooled_h));
  g.bin_w = Div(w, static_cast<float>(pooled_w));
  return g;
}

// The half-open pixel range [begin, end) of bin `index` along one axis, clipped to [0, size).
// An empty range (end <= begin) pools to zero with argmax -1.
struct BinRange {
  int64_t begin;
  int64_t end;
};

ROI_HD BinRange BinAlongAxis(int64_t index, int64_t pooled, float start, float bin_size,
                             int64_t size, Rounding rounding) {
  if (rounding == Rounding::kAdaptive) {
    // bin_size is the crop's exclusive end. Bin i of a crop of length L covers
    // [floor(i * L / pooled), ceil((i + 1) * L / pooled)), torch's adaptive pooling windows.
    const int64_t begin = ClampEdge(start, size);
    const int64_t length = ClampEdge(bin_size, size) - begin;
    if (length <= 0) return BinRange{0, 0};
    return BinRange{begin + index * length / pooled, begin + ((index + 1) * length + pooled - 1) / pooled};
  }
  const float lo_offset = Mul(static_cast<float>(index), bin_size);
  const float hi_offset = Mul(static_cast<float>(index + 1), bin_size);
  float lo, hi;
  if (rounding == Rounding::kNone) {
    lo = floorf(Add(lo_offset, start));
    hi = ceilf(Add(hi_offset, start));
  } else {
    lo = Add(floorf(lo_offset), start);
    hi = Add(ceilf(hi_offset), start);
  }
  return BinRange{ClampEdge(lo, size), ClampEdge(hi, size)};
}

// The rows of bin row `ph` and the columns of bin column `pw` of a mapped RoI, empty for an
// invalid one: what every kernel pools over.
ROI_HD BinRange BinRows(const RoiGeometry& g, int64_t ph, int64_t pooled_h, int64_t height,
                        Rounding rounding) {
  return g.batch < 0 ? BinRange{0, 0} : BinAlongAxis(ph, pooled_h, g.start_h, g.bin_h, height, rounding);
}

ROI_HD BinRange BinCols(const RoiGeometry& g, int64_t pw, int64_t pooled_w, int64_t width,
                        Rounding rounding) {
  return g.batch < 0 ? BinRange{0, 0} : BinAlongAxis(pw, pooled_w, g.start_w, g.bin_w, width, rounding);
}

// The max-with-argmax update used by every kernel: take `value` when it is larger, or when it
// is the first NaN (NaN propagates like jnp.max; the argmax then points at the first NaN in
// row-major order). Ties keep the earlier element. That is
//   value > best || (value != value && best == best),
// written as !(value <= best) (true when larger or either is NaN) & (best == best), with & for
// && so there is no short-circuit branch: compilers vectorise it as two compares and an and
// (with ||, GCC 12 vectorised the CPU forward into branches around masked stores, 2x slower).
ROI_HD bool TakesOver(float value, float best) {
  return !(value <= best) & (best == best);
}

// ---- Element conversions for the half types (stored as uint16 bits by the FFI). ----
struct BFloat16 {
  uint16_t bits;
};
struct Float16 {
  uint16_t bits;
};

ROI_HD float ToFloat(float x) { return x; }
ROI_HD float ToFloat(BFloat16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}
ROI_HD float ToFloat(Float16 x) {
  // IEEE binary16 -> binary32, exact (subnormals, infinities and NaN payloads included), with
  // no branch or loop, so that compilers vectorise it in the CPU forward's channel loop. The
  // choices are and/or masks rather than ?: because GCC would move the float operations below
  // into a branch of their own, and then not vectorise a loop with a branch in it.
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  const uint32_t magnitude = x.bits & 0x7fffu;  // exponent and mantissa
  const uint32_t exponent = magnitude >> 10;
  // Normal numbers: the exponent rebiased by 127 - 15 = 112. Infinity and NaN (exponent 31)
  // take another 112, to the binary32 exponent 255, with the mantissa (payload) kept.
  const uint32_t special = 0u - static_cast<uint32_t>(exponent == 0x1fu);  // all ones or 0
  const uint32_t normal = (magnitude << 13) + (112u << 23) + (special & (112u << 23));
  // Zero and subnormals (exponent 0): mantissa * 2^-24, an integer below 1024 converted and
  // scaled by a power of two, both exact; the result is 0 or a binary32 normal number, so
  // neither a flush-to-zero mode nor Flush() changes it.
  const float small = static_cast<float>(static_cast<int32_t>(magnitude)) * 5.9604644775390625e-08f;
  uint32_t small_bits;
  memcpy(&small_bits, &small, sizeof(small_bits));
  const uint32_t tiny = 0u - static_cast<uint32_t>(exponent == 0);  // all ones or 0
  const uint32_t u = sign | (small_bits & tiny) | (normal & ~tiny);
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

}  // namespace roi_pool

#endif  // XLA_OPS_ROI_POOL_BINS_H_
