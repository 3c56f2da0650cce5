// Shape checks of the RoI pooling custom calls, shared by the CPU and CUDA handlers. Python
// checks user input first and names the argument; these guard the native side on their own.
#ifndef XLA_OPS_ROI_POOL_FFI_H_
#define XLA_OPS_ROI_POOL_FFI_H_

#include <cstdint>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace roi_pool {

struct Dims {
  int64_t n, h, w, c;  // features [N, H, W, C]
  int64_t k;           // rois [K, 5]
  int64_t ph, pw;      // output [K, PH, PW, C]
};

// The operands, results and attributes of the two custom calls, as xla_ops/ops.py passes them:
// one definition for the CPU and CUDA handlers, which add only their own contexts (thread pool;
// stream and scratch memory) in front.
template <typename Binding>
auto BindForward(Binding binding) {
  namespace ffi = xla::ffi;
  return std::move(binding).template Arg<ffi::AnyBuffer>()          // features [N, H, W, C]
      .template Arg<ffi::Buffer<ffi::F32>>()             // rois [K, 5]
      .template Ret<ffi::AnyBuffer>()                    // out [K, PH, PW, C]
      .template Ret<ffi::Buffer<ffi::S32>>()             // argmax [K, PH, PW, C]
      .template Attr<int64_t>("pooled_h")
      .template Attr<int64_t>("pooled_w")
      .template Attr<float>("spatial_scale")
      .template Attr<int32_t>("rounding");               // roi_pool_bins.h's Rounding
}

template <typename Binding>
auto BindBackward(Binding binding) {
  namespace ffi = xla::ffi;
  return std::move(binding).template Arg<ffi::AnyBuffer>()          // grad_out [K, PH, PW, C]
      .template Arg<ffi::Buffer<ffi::F32>>()             // rois [K, 5]
      .template Arg<ffi::Buffer<ffi::S32>>()             // argmax [K, PH, PW, C]
      .template Ret<ffi::Buffer<ffi::F32>>()             // grad_features [N, H, W, C], float32 sums
      // The gather (deterministic) backward on CUDA; the CPU backward always is deterministic.
      .template Attr<bool>("deterministic")
      .template Attr<float>("spatial_scale")             // with rounding: the bins' rows
      .template Attr<int32_t>("rounding");
}

inline xla::ffi::Error CheckRounding(int32_t rounding) {
  if (rounding < 0 || rounding > 2) return xla::ffi::Error::InvalidArgument("roi_pool: bad rounding");
  return xla::ffi::Error::Success();
}

inline xla::ffi::Error CheckForward(const xla::ffi::AnyBuffer& features,
                                    const xla::ffi::Buffer<xla::ffi::F32>& rois,
                                    const xla::ffi::AnyBuffer& out, int64_t pooled_h,
                                    int64_t pooled_w, int32_t rounding, Dims* d) {
  namespace ffi = xla::ffi;
  const auto fd = features.dimensions();
  const auto rd = rois.dimensions();
  const auto od = out.dimensions();
  if (fd.size() != 4) return ffi::Error::InvalidArgument("roi_pool: features must be [N, H, W, C]");
  if (rd.size() != 2 || rd[1] != 5) return ffi::Error::InvalidArgument("roi_pool: rois must be [K, 5]");
  *d = Dims{fd[0], fd[1], fd[2], fd[3], rd[0], pooled_h, pooled_w};
  if (pooled_h <= 0 || pooled_w <= 0) return ffi::Error::InvalidArgument("roi_pool: bad output size");
  if (od.size() != 4 || od[0] != d->k || od[1] != d->ph || od[2] != d->pw || od[3] != d->c ||
      out.element_type() != features.element_type()) {
    return ffi::Error::InvalidArgument("roi_pool: output must be [K, PH, PW, C] of the features' dtype");
  }
  // Argmax is int32: the image plane must be indexable by it.
  if (d->h * d->w > INT32_MAX) return ffi::Error::InvalidArgument("roi_pool: H * W must fit int32");
  return CheckRounding(rounding);
}

inline xla::ffi::Error CheckBackward(const xla::ffi::AnyBuffer& grad_out,
                                     const xla::ffi::Buffer<xla::ffi::F32>& rois,
                                     const xla::ffi::Buffer<xla::ffi::S32>& argmax,
                                     const xla::ffi::Buffer<xla::ffi::F32>& grad_features,
                                     int32_t rounding, Dims* d) {
  namespace ffi = xla::ffi;
  const auto gd = grad_features.dimensions();
  const auto od = grad_out.dimensions();
  const auto ad = argmax.dimensions();
  const auto rd = rois.dimensions();
  if (gd.size() != 4 || od.size() != 4 || ad.size() != 4) {
    return ffi::Error::InvalidArgument("roi_pool backward: expected rank-4 buffers");
  }
  if (rd.size() != 2 || rd[1] != 5) return ffi::Error::InvalidArgument("roi_pool: rois must be [K, 5]");
  *d = Dims{gd[0], gd[1], gd[2], gd[3], rd[0], od[1], od[2]};
  for (int i = 0; i < 4; ++i) {
    if (ad[i] != od[i]) return ffi::Error::InvalidArgument("roi_pool backward: argmax/grad mismatch");
  }
  if (od[0] != d->k || od[3] != d->c) {
    return ffi::Error::InvalidArgument("roi_pool backward: grad must be [K, PH, PW, C]");
  }
  return CheckRounding(rounding);
}

}  // namespace roi_pool

#endif  // XLA_OPS_ROI_POOL_FFI_H_
