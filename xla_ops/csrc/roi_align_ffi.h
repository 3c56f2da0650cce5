// The operands, attributes and shape checks of the RoIAlign custom calls, shared by the CPU and
// CUDA handlers (and the CUDA emulation). Python (xla_ops/roi_align.py) checks user input first
// and names the argument; these guard the native side on their own.
#ifndef XLA_OPS_ROI_ALIGN_FFI_H_
#define XLA_OPS_ROI_ALIGN_FFI_H_

#include <cstdint>
#include <utility>

#include "roi_align_bins.h"
#include "xla/ffi/api/ffi.h"

namespace roi_align {

struct Dims {
  int64_t n, h, w, c;  // features [N, H, W, C]
  int64_t k;           // rois [K, 5]
  int64_t ph, pw;      // output [K, PH, PW, C]
};

// What every kernel needs besides the buffers.
struct Params {
  float spatial_scale;
  int64_t sampling_ratio;  // <= 0: adaptive, ceil(bin) samples per bin along each axis
  bool aligned;
};

template <typename Binding>
auto BindForward(Binding binding) {
  namespace ffi = xla::ffi;
  return std::move(binding).template Arg<ffi::AnyBuffer>()  // features [N, H, W, C]
      .template Arg<ffi::Buffer<ffi::F32>>()                // rois [K, 5]
      .template Ret<ffi::AnyBuffer>()                       // out [K, PH, PW, C], features' dtype
      .template Attr<int64_t>("pooled_h")
      .template Attr<int64_t>("pooled_w")
      .template Attr<float>("spatial_scale")
      .template Attr<int64_t>("sampling_ratio")
      .template Attr<bool>("aligned");
}

template <typename Binding>
auto BindBackward(Binding binding) {
  namespace ffi = xla::ffi;
  return std::move(binding).template Arg<ffi::AnyBuffer>()  // grad_out [K, PH, PW, C]
      .template Arg<ffi::Buffer<ffi::F32>>()                // rois [K, 5]
      .template Ret<ffi::Buffer<ffi::F32>>()                // grad_features [N, H, W, C], float32
      .template Attr<float>("spatial_scale")
      .template Attr<int64_t>("sampling_ratio")
      .template Attr<bool>("aligned")
      // The gather (deterministic) backward on CUDA; the CPU backward always is deterministic.
      .template Attr<bool>("deterministic");
}

inline xla::ffi::Error CheckSamplingRatio(int64_t sampling_ratio) {
  if (sampling_ratio > kMaxGrid) {
    return xla::ffi::Error::InvalidArgument("roi_align: sampling_ratio above 2^20");
  }
  return xla::ffi::Error::Success();
}

inline xla::ffi::Error CheckForward(const xla::ffi::AnyBuffer& features,
                                    const xla::ffi::Buffer<xla::ffi::F32>& rois,
                                    const xla::ffi::AnyBuffer& out, int64_t pooled_h,
                                    int64_t pooled_w, int64_t sampling_ratio, Dims* d) {
  namespace ffi = xla::ffi;
  const auto fd = features.dimensions();
  const auto rd = rois.dimensions();
  const auto od = out.dimensions();
  if (fd.size() != 4) return ffi::Error::InvalidArgument("roi_align: features must be [N, H, W, C]");
  if (rd.size() != 2 || rd[1] != 5) return ffi::Error::InvalidArgument("roi_align: rois must be [K, 5]");
  *d = Dims{fd[0], fd[1], fd[2], fd[3], rd[0], pooled_h, pooled_w};
  if (pooled_h <= 0 || pooled_w <= 0) return ffi::Error::InvalidArgument("roi_align: bad output size");
  if (od.size() != 4 || od[0] != d->k || od[1] != d->ph || od[2] != d->pw || od[3] != d->c ||
      out.element_type() != features.element_type()) {
    return ffi::Error::InvalidArgument("roi_align: output must be [K, PH, PW, C] of the features' dtype");
  }
  return CheckSamplingRatio(sampling_ratio);
}

inline xla::ffi::Error CheckBackward(const xla::ffi::AnyBuffer& grad_out,
                                     const xla::ffi::Buffer<xla::ffi::F32>& rois,
                                     const xla::ffi::Buffer<xla::ffi::F32>& grad_features,
                                     int64_t sampling_ratio, Dims* d) {
  namespace ffi = xla::ffi;
  const auto gd = grad_features.dimensions();
  const auto od = grad_out.dimensions();
  const auto rd = rois.dimensions();
  if (gd.size() != 4 || od.size() != 4) {
    return ffi::Error::InvalidArgument("roi_align backward: expected rank-4 buffers");
  }
  if (rd.size() != 2 || rd[1] != 5) return ffi::Error::InvalidArgument("roi_align: rois must be [K, 5]");
  *d = Dims{gd[0], gd[1], gd[2], gd[3], rd[0], od[1], od[2]};
  if (od[0] != d->k || od[3] != d->c || d->ph <= 0 || d->pw <= 0) {
    return ffi::Error::InvalidArgument("roi_align backward: grad must be [K, PH, PW, C]");
  }
  return CheckSamplingRatio(sampling_ratio);
}

}  // namespace roi_align

#endif  // XLA_OPS_ROI_ALIGN_FFI_H_
