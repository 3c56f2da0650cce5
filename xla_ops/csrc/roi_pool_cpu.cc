// RoI max pooling on CPUs as XLA FFI custom calls (NHWC, channels innermost).
//
// Forward: for each RoI and bin, the max over the bin of every channel and its argmax (the flat
// index h * W + w in that image's plane; -1 for an empty bin or an invalid RoI). Work is split
// by output rows (RoI, bin row), handed out in chunks.
// Backward: the cotangent of each output is added to the feature at its argmax. Work is split
// by (image, band of rows), each worker walking the RoIs in order, so every gradient element is
// summed by one thread in one fixed order: the result is bit-identical run after run and
// whatever the split (deterministic by construction), and no atomics are needed.
//
// Work is spread over XLA's intra-op thread pool (cpu_common.h).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_common.h"
#include "pybind11/pybind11.h"
#include "roi_pool_bins.h"
#include "roi_pool_ffi.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace roi_pool {
namespace {

using xla_ops::AdviseHugePages;
using xla_ops::ParallelFor;

// ---- Forward ----
//
// Each bin is pooled in blocks of kPoolBlock channels whose running maxima and argmaxes stay in
// registers while the bin's pixels stream by. A row of PW bins is then written once: the
// winning elements (bit for bit) and the argmax, with non-temporal stores when the outputs are
// large. The update is TakesOver() of roi_pool_bins.h on the flushed values, element by
// element and pixel by pixel in row-major order, so the result is the one of the CUDA kernel
// and the jnp reference, bit for bit.
//
// Flushing subnormals: on x86-64 the comparisons run with the MXCSR's denormals-are-zero bit
// set (ScopedDenormalsAreZero), under which a compare reads a subnormal operand as a zero of
// its sign: what Flush() does first elsewhere. The running maxima then hold the raw elements,
// so the winning element is the maximum itself (no second read of the features), and the loop
// does 4 vector operations less per 8 channels. Other CPUs apply Flush(). Float16 needs neither:
// ToFloat() of a binary16 is never a binary32 subnormal.
#if defined(__x86_64__)
constexpr bool kCompareFlushes = true;

// Sets MXCSR.DAZ for the calling thread for its lifetime, restoring the previous MXCSR after.
// Every CPU jaxlib runs on (x86-64 with AVX) has DAZ. It only ever wraps calls of PoolBin,
// which is never inlined, so that no floating-point operation moves across the switch.
class ScopedDenormalsAreZero {
 public:
  ScopedDenormalsAreZero() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x0040u); }
  ~ScopedDenormalsAreZero() { _mm_setcsr(saved_); }
  ScopedDenormalsAreZero(const ScopedDenormalsAreZero&) = delete;
  ScopedDenormalsAreZero& operator=(const ScopedDenormalsAreZero&) = delete;

 private:
  unsigned saved_;
};
#else
constexpr bool kCompareFlushes = false;
struct ScopedDenormalsAreZero {};
#endif

// The value an element is compared as (see above).
template <typename T>
__attribute__((always_inline)) inline float Compared(T x) {
  return kCompareFlushes || std::is_same<T, Float16>::value ? ToFloat(x) : Flush(ToFloat(x));
}

// The element of type T whose compared value (`Compared`) is `raw`, bit for bit, where
// Compared() does not flush (MXCSR.DAZ does the flushing of the comparisons instead).
template <typename T>
T FromCompared(float raw);
template <>
inline float FromCompared<float>(float raw) { return raw; }
template <>
inline BFloat16 FromCompared<BFloat16>(float raw) {  // ToFloat(BFloat16) is a shift: shift back
  uint32_t u;
  std::memcpy(&u, &raw, sizeof(u));
  BFloat16 x;
  x.bits = static_cast<uint16_t>(u >> 16);
  return x;
}
template <>
inline Float16 FromCompared<Float16>(float raw) {
  // ToFloat(Float16) is exact: invert it, NaN payloads included.
  uint32_t u;
  std::memcpy(&u, &raw, sizeof(u));
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t exponent = (u >> 23) & 0xffu;
  const uint32_t mantissa = (u >> 13) & 0x3ffu;
  const uint32_t normal = ((exponent - 112u) << 10) | mantissa;
  const uint32_t special = 0x7c00u | mantissa;  // infinity or NaN
  // Zero or subnormal: |x| = m * 2^-24 with m < 1024, converted exactly. Only magnitudes
  // below 2^-14 are converted, so that the lanes not selected stay in the int32 range too.
  const float magnitude = fabsf(raw);
  const float small = magnitude < 6.103515625e-05f ? magnitude : 0.0f;
  const uint32_t subnormal = static_cast<uint32_t>(static_cast<int32_t>(small * 16777216.0f));
  const uint32_t bits = exponent == 0xffu ? special : (exponent < 113u ? subnormal : normal);
  Float16 x;
  x.bits = static_cast<uint16_t>(sign | bits);
  return x;
}

// value[j] <- the winning element of channel c0 + j, bit for bit, from its maximum best[j] and
// argmax arg[j]. Where the comparisons flushed subnormals in software (see Compared), best[j]
// may be a flushed one: the element is read back from the plane instead.
template <int kWidth, typename T>
__attribute__((always_inline)) inline void Winners(const T* plane, int64_t c, int64_t c0,
                                                   const float* best, const int32_t* arg,
                                                   T* value) {
  if (!kCompareFlushes && !std::is_same<T, Float16>::value) {
    for (int j = 0; j < kWidth; ++j) value[j] = plane[arg[j] * c + c0 + j];
    return;
  }
  for (int j = 0; j < kWidth; ++j) value[j] = FromCompared<T>(best[j]);
}

// arg_out[j], value_out[j] (j < kWidth) <- argmax and winning element of channel c0 + j over
// the (non-empty) bin. The running maxima and argmaxes are local arrays of compile-time size,
// which the compiler keeps in registers (kWidth = 32 floats: 4 + 4 ymm registers under AVX2).
template <int kWidth, typename T>
__attribute__((always_inline)) inline void BinBlock(const T* __restrict__ plane, int64_t w,
                                                    int64_t c, BinRange rows, BinRange cols,
                                                    int64_t c0, int32_t* __restrict__ arg_out,
                                                    T* __restrict__ value_out) {
  // The same result as seeding with the bin's first element (so that the argmax is always a
  // real element): that element takes over from -inf unless it is -inf itself, and then the
  // state (-inf, first) is the seeded one, bit for bit. Written this way, the seed is not a
  // copy that the compiler turns into narrow stores that the loop's wide loads then stall on.
  float best[kWidth];
  int32_t arg[kWidth];
  const int32_t first = static_cast<int32_t>(rows.begin * w + cols.begin);
  for (int j = 0; j < kWidth; ++j) {
    best[j] = -INFINITY;
    arg[j] = first;
  }
  for (int64_t y = rows.begin; y < rows.end; ++y) {
    for (int64_t x = cols.begin; x < cols.end; ++x) {
      const int32_t index = static_cast<int32_t>(y * w + x);
      const T* pixel = plane + index * c + c0;
      for (int j = 0; j < kWidth; ++j) {  // vectorised over channels
        const float v = Compared(pixel[j]);
        const bool take = TakesOver(v, best[j]);
        best[j] = take ? v : best[j];
        arg[j] = take ? index : arg[j];
      }
    }
  }
  std::memcpy(arg_out, arg, sizeof(arg));
  Winners<kWidth>(plane, c, c0, best, arg, value_out);
}

// The same for the channels [c0, c) left over (fewer than a block), with the running state in
// memory: a loop of run-time length, which compilers vectorise as they do any channel loop.
template <typename T>
__attribute__((always_inline)) inline void BinRest(const T* __restrict__ plane, int64_t w,
                                                   int64_t c, BinRange rows, BinRange cols,
                                                   int64_t c0, float* __restrict__ best,
                                                   int32_t* __restrict__ arg_out,
                                                   T* __restrict__ value_out) {
  const int64_t n = c - c0;
  const int32_t first = static_cast<int32_t>(rows.begin * w + cols.begin);
  for (int64_t j = 0; j < n; ++j) {  // as in BinBlock
    best[j] = -INFINITY;
    arg_out[j] = first;
  }
  for (int64_t y = rows.begin; y < rows.end; ++y) {
    for (int64_t x = cols.begin; x < cols.end; ++x) {
      const int32_t index = static_cast<int32_t>(y * w + x);
      const T* pixel = plane + index * c + c0;
      for (int64_t j = 0; j < n; ++j) {
        const float v = Compared(pixel[j]);
        const bool take = TakesOver(v, best[j]);
        best[j] = take ? v : best[j];
        arg_out[j] = take ? index : arg_out[j];
      }
    }
  }
  for (int64_t j = 0; j < n; ++j) value_out[j] = plane[arg_out[j] * c + c0 + j];
}

// Channels pooled together in registers. GCC 12 vectorises BinBlock<32> (4 ymm vectors of
// maxima, 4 of argmaxes); it did not vectorise BinBlock<8> or <16> (scalar code with branches,
// 20x slower), hence the run-time-length loop of BinRest for what is left over.
constexpr int kPoolBlock = 32;

// Argmax and winning element of every channel of one (non-empty) bin into arg[0, c) and
// value[0, c).
template <typename T>
__attribute__((always_inline)) inline void PoolBinImpl(const T* __restrict__ plane, int64_t w,
                                                       int64_t c, BinRange rows, BinRange cols,
                                                       int32_t* __restrict__ arg,
                                                       T* __restrict__ value) {
  int64_t c0 = 0;
  for (; c0 + kPoolBlock <= c; c0 += kPoolBlock) {
    BinBlock<kPoolBlock>(plane, w, c, rows, cols, c0, arg + c0, value + c0);
  }
  if (c0 < c) {
    float best[kPoolBlock];
    BinRest(plane, w, c, rows, cols, c0, best, arg + c0, value + c0);
  }
}

// The hot loop, compiled for AVX2 and for baseline x86-64 and picked at load time, so the
// extension runs on any x86-64 CPU whatever machine built it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ROI_POOL_CLONES __attribute__((noinline, target_clones("avx2", "default")))
#else
#define ROI_POOL_CLONES __attribute__((noinline))
#endif
ROI_POOL_CLONES void PoolBin(const float* p, int64_t w, int64_t c, BinRange r, BinRange s,
                             int32_t* a, float* v) {
  PoolBinImpl(p, w, c, r, s, a, v);
}
ROI_POOL_CLONES void PoolBin(const BFloat16* p, int64_t w, int64_t c, BinRange r, BinRange s,
                             int32_t* a, BFloat16* v) {
  PoolBinImpl(p, w, c, r, s, a, v);
}
ROI_POOL_CLONES void PoolBin(const Float16* p, int64_t w, int64_t c, BinRange r, BinRange s,
                             int32_t* a, Float16* v) {
  PoolBinImpl(p, w, c, r, s, a, v);
}

// dst[0, bytes) <- src, with non-temporal stores for the 16-byte-aligned middle when
// `streaming` (x86-64): the output is written once and read by a later op, so it need not
// evict the feature map from the caches, nor be read into them before being overwritten.
// StoreFence() must follow before another thread may read dst.
inline void Store(void* dst, const void* src, size_t bytes, bool streaming) {
#if defined(__x86_64__)
  if (streaming) {
    auto* d = static_cast<char*>(dst);
    const auto* s = static_cast<const char*>(src);
    const size_t head = std::min(bytes, (16 - reinterpret_cast<uintptr_t>(d) % 16) % 16);
    std::memcpy(d, s, head);
    size_t i = head;
    for (; i + 16 <= bytes; i += 16) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i),
                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
    }
    std::memcpy(d + i, s + i, bytes - i);
    return;
  }
#endif
  std::memcpy(dst, src, bytes);
}

inline void StoreFence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

// Outputs (values + argmax) at least this large are written with non-temporal stores: they
// cannot stay in the caches anyway, and the stores skip reading each line in before writing it.
constexpr size_t kStreamingBytes = size_t{8} << 20;

// One output row (the PW bins of one RoI and bin row) is pooled here, then stored at once.
template <typename T>
struct Scratch {
  std::vector<BinRange> cols;
  std::vector<int32_t> arg;
  std::vector<T> value;
  Scratch(int64_t pw, int64_t c) : cols(pw), arg(pw * c), value(pw * c) {}
};

template <typename T>
void ForwardRows(const T* features, const float* rois, T* out, int32_t* argmax, const Dims& d,
                 float spatial_scale, Rounding rounding, bool streaming, int64_t row_begin,
                 int64_t row_end, Scratch<T>& s) {
  const int64_t row_size = d.pw * d.c;
  for (int64_t row = row_begin; row < row_end; ++row) {  // row = k * PH + ph
    const int64_t k = row / d.ph;
    const int64_t ph = row % d.ph;
    // The geometry first, under the default floating-point environment.
    const RoiGeometry g = MapRoi(rois + k * 5, spatial_scale, d.n, d.ph, d.pw, rounding);
    const BinRange rows = BinRows(g, ph, d.ph, d.h, rounding);
    for (int64_t pw = 0; pw < d.pw; ++pw) s.cols[pw] = BinCols(g, pw, d.pw, d.w, rounding);
    const T* plane = features + (g.batch < 0 ? 0 : g.batch) * d.h * d.w * d.c;
    {
      ScopedDenormalsAreZero daz;
      for (int64_t pw = 0; pw < d.pw; ++pw) {
        int32_t* arg = s.arg.data() + pw * d.c;
        T* value = s.value.data() + pw * d.c;
        const BinRange cols = s.cols[pw];
        if (rows.end <= rows.begin || cols.end <= cols.begin) {
          std::memset(value, 0, sizeof(T) * d.c);  // +0 for every float type
          std::fill(arg, arg + d.c, -1);
          continue;
        }
        PoolBin(plane, d.w, d.c, rows, cols, arg, value);
      }
    }
    Store(out + row * row_size, s.value.data(), sizeof(T) * row_size, streaming);
    Store(argmax + row * row_size, s.arg.data(), sizeof(int32_t) * row_size, streaming);
  }
  if (streaming) StoreFence();  // before ParallelFor reports the chunk done
}

template <typename T>
void Forward(ffi::ThreadPool& pool, const T* features, const float* rois, T* out,
             int32_t* argmax, const Dims& d, float spatial_scale, Rounding rounding) {
  const size_t outputs = static_cast<size_t>(d.k * d.ph * d.pw * d.c);
  if (outputs == 0) return;
  AdviseHugePages(out, sizeof(T) * outputs);
  AdviseHugePages(argmax, sizeof(int32_t) * outputs);
  // Non-temporal stores only pay when they fill whole cache lines: rows of 1 KiB or more.
  const bool streaming = (sizeof(T) + sizeof(int32_t)) * outputs >= kStreamingBytes &&
                         sizeof(T) * d.pw * d.c >= 1024;
  ParallelFor(pool, d.k * d.ph, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> scratch(d.pw, d.c);
    ForwardRows(features, rois, out, argmax, d, spatial_scale, rounding, streaming, begin, end,
                scratch);
  });
}

// A bin's cotangents as float32: the buffer itself for float32, else converted into `scratch`
// in one loop, which vectorises, rather than one element at a time in the adds, which do not.
inline const float* Cotangents(const float* g, int64_t, std::vector<float>&) { return g; }
template <typename T>
inline const float* Cotangents(const T* g, int64_t c, std::vector<float>& scratch) {
  for (int64_t j = 0; j < c; ++j) scratch[j] = ToFloat(g[j]);
  return scratch.data();
}

// grad_plane[a * c + j] += g[j] for the channels j whose argmax a = arg[j] is in [a0, a1).
// Never trust the argmax buffer blindly: it is an input of this call.
// (Not inlined: inside the item loop it was left short of registers.)
__attribute__((noinline)) void AddRange(const int32_t* __restrict__ arg,
                                        const float* __restrict__ g, int64_t c, int64_t a0,
                                        int64_t a1, float* __restrict__ grad_plane) {
  for (int64_t j = 0; j < c; ++j) {
    const int64_t a = arg[j];
    if (a < a0 || a >= a1) continue;  // predictable: the forward put every a in range
    grad_plane[a * c + j] += g[j];
  }
}

// The same for a bin across bands, whose channels have argmaxes in this band and in others,
// unpredictably: a branch per channel is mispredicted about half the time in such bins (in 4
// bands of [1, 50, 50, 64], a third more time overall). Instead, 64 channels at a time, a mask
// of the channels in range is made without branches, then its set bits are visited.
__attribute__((noinline)) void AddRangeStraddling(const int32_t* __restrict__ arg,
                                                  const float* __restrict__ g, int64_t c,
                                                  int64_t a0, int64_t a1,
                                                  float* __restrict__ grad_plane) {
  for (int64_t j0 = 0; j0 < c; j0 += 64) {
    const int64_t n = std::min<int64_t>(64, c - j0);
    uint64_t mine = 0;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t a = arg[j0 + j];
      mine |= static_cast<uint64_t>((a >= a0) & (a < a1)) << j;
    }
    for (; mine != 0; mine &= mine - 1) {  // the channels in range, in increasing order
      const int64_t j = j0 + __builtin_ctzll(mine);
      grad_plane[static_cast<int64_t>(arg[j]) * c + j] += g[j];
    }
  }
}

// Bands per image: up to kItemsPerThread items per pool thread (for balance), but none with
// less than about kMinItemAdds cotangents to add (about a millisecond): below that, splitting
// costs more than it gains (each item walks all the RoIs, and bins across bands are read by
// both).
constexpr int64_t kItemsPerThread = 2;
constexpr int64_t kMinItemAdds = int64_t{1} << 20;

// grad_features [N, H, W, C] float32 = scatter-add of grad_out [K, PH, PW, C] through argmax.
//
// A work item owns the pixels of one band of rows of one image, all channels: it walks the
// RoIs of its image in order, and the bins of each in order, and adds the cotangents whose
// argmax falls in its band. Every gradient element is so summed by one item, in the order of
// the RoIs and bins, whatever the number of bands: the same sums, bit for bit, as with one
// band. An item only reads the bins whose rows (the forward's geometry, from the same
// spatial_scale and rounding) meet its band, and a bin's argmax and cotangent in one run.
//
// A cotangent is added only where its argmax lies in the rows of its own bin, which is where
// the forward puts it; an argmax buffer that was not made by the forward with the same
// geometry (any other is an error of the caller) cannot make an item write outside its band,
// and gives the same result whatever the split. The CUDA deterministic backward, which
// gathers over the bins, has the same rule.
template <typename T>
void Backward(ffi::ThreadPool& pool, const T* grad_out, const float* rois, const int32_t* argmax,
              float* grad_features, const Dims& d, float spatial_scale, Rounding rounding) {
  const int64_t plane = d.h * d.w;
  ParallelFor(pool, d.n * plane, 4096, [&](int64_t begin, int64_t end) {
    std::memset(grad_features + begin * d.c, 0, sizeof(float) * (end - begin) * d.c);
  });
  if (d.n == 0 || plane == 0 || d.c == 0) return;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t adds = d.k * d.ph * d.pw * d.c;
  const int64_t items = std::max<int64_t>(
      1, std::min(kItemsPerThread * threads, adds / kMinItemAdds));
  const int64_t bands = std::min(d.h, (items + d.n - 1) / d.n);
  // The rows of every bin, once: rows[k * PH + ph], empty for an invalid RoI.
  std::vector<BinRange> rows(d.k * d.ph);
  ParallelFor(pool, d.k, 64, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const RoiGeometry g = MapRoi(rois + k * 5, spatial_scale, d.n, d.ph, d.pw, rounding);
      for (int64_t ph = 0; ph < d.ph; ++ph) {
        rows[k * d.ph + ph] = BinRows(g, ph, d.ph, d.h, rounding);
      }
    }
  });
  ParallelFor(pool, d.n * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> cotangents(std::is_same<T, float>::value ? 0 : d.c);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t image = item / bands;
      const int64_t y0 = item % bands * d.h / bands;  // the band: rows [y0, y1)
      const int64_t y1 = (item % bands + 1) * d.h / bands;
      float* grad_plane = grad_features + image * plane * d.c;
      for (int64_t k = 0; k < d.k; ++k) {
        // The image as the forward validated it (an invalid RoI has empty rows).
        if (RoiImage(rois + k * 5, d.n) != image) continue;
        for (int64_t ph = 0; ph < d.ph; ++ph) {
          const BinRange bin_rows = rows[k * d.ph + ph];
          const int64_t lo = std::max(bin_rows.begin, y0);
          const int64_t hi = std::min(bin_rows.end, y1);
          if (lo >= hi) continue;  // the bin row is outside the band
          // Argmaxes that count here: in the bin's rows and the band, [a0, a1) (in the plane).
          const int64_t a0 = lo * d.w, a1 = hi * d.w;
          const bool whole = lo == bin_rows.begin && hi == bin_rows.end;  // bin within band
          for (int64_t pw = 0; pw < d.pw; ++pw) {
            const int64_t o = ((k * d.ph + ph) * d.pw + pw) * d.c;
            const float* g = Cotangents(grad_out + o, d.c, cotangents);
            if (whole) {
              AddRange(argmax + o, g, d.c, a0, a1, grad_plane);
            } else {
              AddRangeStraddling(argmax + o, g, d.c, a0, a1, grad_plane);
            }
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
                        bool /*deterministic*/, float spatial_scale, int32_t rounding) {
  Dims d;
  if (auto err = CheckBackward(grad_out, rois, argmax, *grad_features, rounding, &d); !err.success()) {
    return err;
  }
  const auto mode = static_cast<Rounding>(rounding);
  const float* r = rois.typed_data();
  const int32_t* a = argmax.typed_data();
  float* g = grad_features->typed_data();
  switch (grad_out.element_type()) {
    case ffi::F32:
      Backward(pool, grad_out.typed_data<float>(), r, a, g, d, spatial_scale, mode);
      break;
    case ffi::BF16:
      Backward(pool, reinterpret_cast<const BFloat16*>(grad_out.untyped_data()), r, a, g, d,
               spatial_scale, mode);
      break;
    case ffi::F16:
      Backward(pool, reinterpret_cast<const Float16*>(grad_out.untyped_data()), r, a, g, d,
               spatial_scale, mode);
      break;
    default:
      return ffi::Error::InvalidArgument("roi_pool backward: cotangent must be a float type");
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace roi_pool

XLA_FFI_DEFINE_HANDLER_SYMBOL(RoiPoolForwardCpu, roi_pool::ForwardImpl,
                              roi_pool::BindForward(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RoiPoolBackwardCpu, roi_pool::BackwardImpl,
                              roi_pool::BindBackward(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

PYBIND11_MODULE(_roi_pool_cpu, m) {
  m.def("registrations", []() {
    pybind11::dict d;
    d["jaxdet_roi_pool_fwd"] = pybind11::capsule(reinterpret_cast<void*>(RoiPoolForwardCpu));
    d["jaxdet_roi_pool_bwd"] = pybind11::capsule(reinterpret_cast<void*>(RoiPoolBackwardCpu));
    return d;
  });
}
