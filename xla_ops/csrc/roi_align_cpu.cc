// RoIAlign on CPUs as XLA FFI custom calls (NHWC, channels innermost), torchvision's semantics
// (roi_align_bins.h).
//
// Forward: work is split by output rows (RoI, bin row). A row's sample rows and each bin's
// sample columns are computed once; each bin's samples then become a table of four pixel offsets
// and four weights, and the bin is accumulated channel-vector by channel-vector: for each
// sample, acc[c] += w1 * v1[c] + w2 * v2[c] + w3 * v3[c] + w4 * v4[c], the contiguous channels
// of the four neighbouring pixels (a loop the compiler vectorises), then divided by the count.
// Backward: the cotangent of each bin is spread over the four neighbours of each of its samples,
// cotangent * (weight / count). Work is split by (image, band of rows); each work item walks
// the RoIs, bins, samples and neighbours in order and adds only into its own band, so every
// gradient element is summed by one thread in one fixed order: bit-identical run after run and
// whatever the split (deterministic by construction), without atomics; the CUDA deterministic
// backward sums in the same order.
//
// Work is spread over XLA's intra-op thread pool (cpu_common.h).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_common.h"
#include "pybind11/pybind11.h"
#include "roi_align_bins.h"
#include "roi_align_ffi.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace roi_align {
namespace {

using xla_ops::AdviseHugePages;
using xla_ops::ParallelFor;

// The samples inside the map along one axis, bin after bin: those of bin p are
// samples[begin[p], begin[p + 1]).
struct AxisSamples {
  std::vector<AxisSample> samples;
  std::vector<int64_t> begin;

  void Build(float start, float bin, int64_t grid, int64_t pooled, int64_t size, bool adaptive) {
    samples.clear();
    begin.assign(pooled + 1, 0);
    for (int64_t p = 0; p < pooled; ++p) {
      begin[p] = static_cast<int64_t>(samples.size());
      AppendBin(start, p, bin, grid, size, adaptive);
    }
    begin[pooled] = static_cast<int64_t>(samples.size());
  }

  void AppendBin(float start, int64_t p, float bin, int64_t grid, int64_t size, bool adaptive) {
    const SampleRange range = SamplesToVisit(start, p, bin, grid, size, adaptive);
    for (int64_t i = range.begin; i < range.end; ++i) {
      const AxisSample s = Interpolate(SamplePosition(start, p, bin, i, grid), size);
      if (s.inside) samples.push_back(s);
    }
  }
};

// ---- Forward ----

// One bin's samples as offsets (in elements, from the image plane) of the four neighbours and
// their weights, sample after sample.
struct BinTable {
  std::vector<int64_t> offset;  // 4 per sample
  std::vector<Weights> weight;
};

// acc[c] (c < n) += the bin's samples, in order. Vectorised over channels.
template <typename T>
__attribute__((always_inline)) inline void AccumulateImpl(const T* __restrict__ plane,
                                                          const int64_t* __restrict__ offset,
                                                          const Weights* __restrict__ weight,
                                                          int64_t samples, int64_t n,
                                                          float* __restrict__ acc) {
  for (int64_t s = 0; s < samples; ++s) {
    const T* __restrict__ p1 = plane + offset[4 * s];
    const T* __restrict__ p2 = plane + offset[4 * s + 1];
    const T* __restrict__ p3 = plane + offset[4 * s + 2];
    const T* __restrict__ p4 = plane + offset[4 * s + 3];
    const Weights w = weight[s];
    for (int64_t c = 0; c < n; ++c) {
      acc[c] = Add(acc[c], Blend(w, ToFloat(p1[c]), ToFloat(p2[c]), ToFloat(p3[c]), ToFloat(p4[c])));
    }
  }
}

// The hot loop, compiled for AVX2 and for baseline x86-64 and picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ROI_ALIGN_CLONES __attribute__((noinline, target_clones("avx2", "default")))
#else
#define ROI_ALIGN_CLONES __attribute__((noinline))
#endif
ROI_ALIGN_CLONES void Accumulate(const float* p, const int64_t* o, const Weights* w, int64_t s,
                                 int64_t n, float* acc) {
  AccumulateImpl(p, o, w, s, n, acc);
}
ROI_ALIGN_CLONES void Accumulate(const BFloat16* p, const int64_t* o, const Weights* w, int64_t s,
                                 int64_t n, float* acc) {
  AccumulateImpl(p, o, w, s, n, acc);
}
ROI_ALIGN_CLONES void Accumulate(const Float16* p, const int64_t* o, const Weights* w, int64_t s,
                                 int64_t n, float* acc) {
  AccumulateImpl(p, o, w, s, n, acc);
}

// out[c] = the element of acc[c] / count.
template <typename T>
__attribute__((always_inline)) inline void FinishImpl(const float* __restrict__ acc, float count,
                                                      int64_t n, T* __restrict__ out) {
  for (int64_t c = 0; c < n; ++c) out[c] = FromFloat<T>(Div(acc[c], count));
}
ROI_ALIGN_CLONES void Finish(const float* acc, float count, int64_t n, float* out) {
  FinishImpl(acc, count, n, out);
}
ROI_ALIGN_CLONES void Finish(const float* acc, float count, int64_t n, BFloat16* out) {
  FinishImpl(acc, count, n, out);
}
ROI_ALIGN_CLONES void Finish(const float* acc, float count, int64_t n, Float16* out) {
  FinishImpl(acc, count, n, out);
}

// Channels accumulated at a time: the accumulators of a block stay in the first-level cache
// while the bin's samples stream by.
constexpr int64_t kChannelBlock = 512;

template <typename T>
void ForwardRows(const T* features, const float* rois, T* out, const Dims& d, const Params& p,
                 int64_t row_begin, int64_t row_end) {
  IeeeFloatMode ieee;
  AxisSamples rows, cols;
  BinTable table;
  std::vector<float> acc(std::min(d.c, kChannelBlock));
  const int64_t row_size = d.pw * d.c;
  for (int64_t row = row_begin; row < row_end; ++row) {  // row = k * PH + ph
    const int64_t k = row / d.ph;
    const int64_t ph = row % d.ph;
    T* out_row = out + row * row_size;
    const RoiGeometry g =
        MapRoi(rois + k * 5, p.spatial_scale, d.n, d.ph, d.pw, p.sampling_ratio, p.aligned);
    if (g.batch < 0 || d.h == 0 || d.w == 0) {
      std::memset(static_cast<void*>(out_row), 0, sizeof(T) * row_size);  // +0 in every type
      continue;
    }
    rows.samples.clear();
    rows.AppendBin(g.start_h, ph, g.bin_h, g.grid_h, d.h, g.adaptive);
    cols.Build(g.start_w, g.bin_w, g.grid_w, d.pw, d.w, g.adaptive);
    const T* plane = features + g.batch * d.h * d.w * d.c;
    for (int64_t pw = 0; pw < d.pw; ++pw) {
      table.offset.clear();
      table.weight.clear();
      for (const AxisSample& y : rows.samples) {
        for (int64_t i = cols.begin[pw]; i < cols.begin[pw + 1]; ++i) {
          const AxisSample& x = cols.samples[i];
          table.offset.push_back((y.low * d.w + x.low) * d.c);
          table.offset.push_back((y.low * d.w + x.high) * d.c);
          table.offset.push_back((y.high * d.w + x.low) * d.c);
          table.offset.push_back((y.high * d.w + x.high) * d.c);
          table.weight.push_back(SampleWeights(y, x));
        }
      }
      const int64_t samples = static_cast<int64_t>(table.weight.size());
      T* out_bin = out_row + pw * d.c;
      for (int64_t c0 = 0; c0 < d.c; c0 += kChannelBlock) {
        const int64_t n = std::min(kChannelBlock, d.c - c0);
        std::fill(acc.begin(), acc.begin() + n, 0.0f);
        Accumulate(plane + c0, table.offset.data(), table.weight.data(), samples, n, acc.data());
        Finish(acc.data(), g.count, n, out_bin + c0);
      }
    }
  }
}

template <typename T>
void Forward(ffi::ThreadPool& pool, const T* features, const float* rois, T* out, const Dims& d,
             const Params& p) {
  const size_t outputs = static_cast<size_t>(d.k * d.ph * d.pw * d.c);
  if (outputs == 0) return;
  AdviseHugePages(out, sizeof(T) * outputs);
  ParallelFor(pool, d.k * d.ph, 1, [&](int64_t begin, int64_t end) {
    ForwardRows(features, rois, out, d, p, begin, end);
  });
}

// ---- Backward ----

// A RoI's geometry and its samples inside the map, with the rows each bin row touches.
struct RoiSamples {
  RoiGeometry g;
  AxisSamples rows, cols;
  std::vector<int64_t> first_row, last_row;  // per bin row: the lowest and highest row touched
};

// grad_plane[offset + c] += g[c] * scale, c < n.
ROI_ALIGN_CLONES void AddScaled(const float* __restrict__ g, float scale, int64_t n,
                                float* __restrict__ grad) {
  for (int64_t c = 0; c < n; ++c) grad[c] = Add(grad[c], Mul(g[c], scale));
}

// A bin's cotangents as float32: the buffer itself for float32, else converted into `scratch`.
inline const float* Cotangents(const float* g, int64_t, std::vector<float>&) { return g; }
template <typename T>
inline const float* Cotangents(const T* g, int64_t c, std::vector<float>& scratch) {
  for (int64_t j = 0; j < c; ++j) scratch[j] = ToFloat(g[j]);
  return scratch.data();
}

// Bands per image: up to kItemsPerThread items per pool thread (for balance), but none with
// less than about kMinItemAdds cotangent elements to add: each item walks all its image's RoIs.
constexpr int64_t kItemsPerThread = 2;
constexpr int64_t kMinItemAdds = int64_t{1} << 20;

template <typename T>
void Backward(ffi::ThreadPool& pool, const T* grad_out, const float* rois, float* grad_features,
              const Dims& d, const Params& p) {
  const int64_t plane = d.h * d.w;
  ParallelFor(pool, d.n * plane, 4096, [&](int64_t begin, int64_t end) {
    std::memset(grad_features + begin * d.c, 0, sizeof(float) * (end - begin) * d.c);
  });
  if (d.n == 0 || plane == 0 || d.c == 0 || d.k == 0) return;
  std::vector<RoiSamples> roi(d.k);
  ParallelFor(pool, d.k, 16, [&](int64_t begin, int64_t end) {
    IeeeFloatMode ieee;
    for (int64_t k = begin; k < end; ++k) {
      RoiSamples& r = roi[k];
      r.g = MapRoi(rois + k * 5, p.spatial_scale, d.n, d.ph, d.pw, p.sampling_ratio, p.aligned);
      if (r.g.batch < 0) continue;
      r.rows.Build(r.g.start_h, r.g.bin_h, r.g.grid_h, d.ph, d.h, r.g.adaptive);
      r.cols.Build(r.g.start_w, r.g.bin_w, r.g.grid_w, d.pw, d.w, r.g.adaptive);
      r.first_row.assign(d.ph, d.h);
      r.last_row.assign(d.ph, -1);
      for (int64_t ph = 0; ph < d.ph; ++ph) {
        for (int64_t i = r.rows.begin[ph]; i < r.rows.begin[ph + 1]; ++i) {
          r.first_row[ph] = std::min(r.first_row[ph], r.rows.samples[i].low);
          r.last_row[ph] = std::max(r.last_row[ph], r.rows.samples[i].high);
        }
      }
    }
  });
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t adds = d.k * d.ph * d.pw * d.c * 4;
  const int64_t items = std::max<int64_t>(1, std::min(kItemsPerThread * threads, adds / kMinItemAdds));
  const int64_t bands = std::min(d.h, (items + d.n - 1) / d.n);
  ParallelFor(pool, d.n * bands, 1, [&](int64_t begin, int64_t end) {
    IeeeFloatMode ieee;
    std::vector<float> scratch(std::is_same<T, float>::value ? 0 : d.c);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t image = item / bands;
      const int64_t y0 = item % bands * d.h / bands;  // the band: rows [y0, y1)
      const int64_t y1 = (item % bands + 1) * d.h / bands;
      float* grad_plane = grad_features + image * plane * d.c;
      auto add = [&](int64_t row, int64_t col, float weight, float count, const float* g) {
        if (row < y0 || row >= y1) return;
        AddScaled(g, Div(weight, count), d.c, grad_plane + (row * d.w + col) * d.c);
      };
      for (int64_t k = 0; k < d.k; ++k) {
        const RoiSamples& r = roi[k];
        if (r.g.batch != image) continue;
        for (int64_t ph = 0; ph < d.ph; ++ph) {
          if (r.last_row[ph] < y0 || r.first_row[ph] >= y1) continue;  // no sample row in band
          for (int64_t pw = 0; pw < d.pw; ++pw) {
            const int64_t o = ((k * d.ph + ph) * d.pw + pw) * d.c;
            const float* g = Cotangents(grad_out + o, d.c, scratch);
            for (int64_t i = r.rows.begin[ph]; i < r.rows.begin[ph + 1]; ++i) {
              const AxisSample& y = r.rows.samples[i];
              if ((y.low < y0 || y.low >= y1) && (y.high < y0 || y.high >= y1)) continue;
              for (int64_t j = r.cols.begin[pw]; j < r.cols.begin[pw + 1]; ++j) {
                const AxisSample& x = r.cols.samples[j];
                const Weights w = SampleWeights(y, x);
                add(y.low, x.low, w.w1, r.g.count, g);
                add(y.low, x.high, w.w2, r.g.count, g);
                add(y.high, x.low, w.w3, r.g.count, g);
                add(y.high, x.high, w.w4, r.g.count, g);
              }
            }
          }
        }
      }
    }
  });
}

template <typename Fn>
ffi::Error Dispatch(ffi::DataType type, const char* what, Fn&& fn) {
  switch (type) {
    case ffi::F32:
      fn(float{});
      return ffi::Error::Success();
    case ffi::BF16:
      fn(BFloat16{});
      return ffi::Error::Success();
    case ffi::F16:
      fn(Float16{});
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument(what);
  }
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer features, ffi::Buffer<ffi::F32> rois,
                       ffi::Result<ffi::AnyBuffer> out, int64_t pooled_h, int64_t pooled_w,
                       float spatial_scale, int64_t sampling_ratio, bool aligned) {
  Dims d;
  if (auto err = CheckForward(features, rois, *out, pooled_h, pooled_w, sampling_ratio, &d);
      !err.success()) {
    return err;
  }
  const Params p{spatial_scale, sampling_ratio, aligned};
  return Dispatch(features.element_type(), "roi_align: features must be float32, bfloat16 or float16",
                  [&](auto zero) {
                    using T = decltype(zero);
                    Forward(pool, static_cast<const T*>(features.untyped_data()), rois.typed_data(),
                            static_cast<T*>(out->untyped_data()), d, p);
                  });
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer grad_out, ffi::Buffer<ffi::F32> rois,
                        ffi::Result<ffi::Buffer<ffi::F32>> grad_features, float spatial_scale,
                        int64_t sampling_ratio, bool aligned, bool /*deterministic: always*/) {
  Dims d;
  if (auto err = CheckBackward(grad_out, rois, *grad_features, sampling_ratio, &d); !err.success()) {
    return err;
  }
  const Params p{spatial_scale, sampling_ratio, aligned};
  return Dispatch(grad_out.element_type(), "roi_align backward: cotangent must be a float type",
                  [&](auto zero) {
                    using T = decltype(zero);
                    Backward(pool, static_cast<const T*>(grad_out.untyped_data()), rois.typed_data(),
                             grad_features->typed_data(), d, p);
                  });
}

}  // namespace
}  // namespace roi_align

XLA_FFI_DEFINE_HANDLER_SYMBOL(RoiAlignForwardCpu, roi_align::ForwardImpl,
                              roi_align::BindForward(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RoiAlignBackwardCpu, roi_align::BackwardImpl,
                              roi_align::BindBackward(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

PYBIND11_MODULE(_roi_align_cpu, m) {
  m.def("registrations", []() {
    pybind11::dict d;
    d["jaxdet_roi_align_fwd"] = pybind11::capsule(reinterpret_cast<void*>(RoiAlignForwardCpu));
    d["jaxdet_roi_align_bwd"] = pybind11::capsule(reinterpret_cast<void*>(RoiAlignBackwardCpu));
    return d;
  });
}
