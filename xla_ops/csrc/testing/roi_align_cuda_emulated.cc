// xla_ops._roi_align_cuda_emulated: the CUDA kernels of roi_align_cuda.cu, compiled as host C++
// against testing/cuda_runtime.h (each block on blockDim real threads, real atomics, blocks in a
// shuffled order) and exposed to Python on numpy arrays, so that
// tests/xla_ops/test_roi_align_cuda_emulated.py can compare them with the CPU extension on every
// CI run. Built only for the tests (JAXDET_CUDA_EMULATION=1, see setup.py); not a custom call.
//
// Half-precision arrays cross the boundary as their uint16 bits, with the dtype named.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "pybind11/numpy.h"
#include "pybind11/pybind11.h"
#include "roi_align_cuda.cu"

namespace py = pybind11;

namespace roi_align {
namespace {

enum class Element { kF32, kBF16, kF16 };

Element ParseDtype(const std::string& dtype) {
  if (dtype == "float32") return Element::kF32;
  if (dtype == "bfloat16") return Element::kBF16;
  if (dtype == "float16") return Element::kF16;
  throw std::invalid_argument("dtype must be float32, bfloat16 or float16, got " + dtype);
}

void CheckArray(const py::array& a, Element e, int ndim, const char* name) {
  const bool elements = e == Element::kF32 ? a.dtype().is(py::dtype::of<float>())
                                           : a.dtype().is(py::dtype::of<uint16_t>());
  if (!elements) throw std::invalid_argument(std::string(name) + ": float32 for float32, else the uint16 bits");
  if (a.ndim() != ndim || !(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string(name) + ": wrong rank or not C-contiguous");
  }
}

void CheckRois(const py::array_t<float>& rois) {
  if (rois.ndim() != 2 || rois.shape(1) != 5 || !(rois.flags() & py::array::c_style)) {
    throw std::invalid_argument("rois must be a C-contiguous [K, 5] float32 array");
  }
}

void Raise(const ffi::Error& err) {
  if (!err.success()) throw std::runtime_error(err.message());
}

template <typename Fn>
void OnElement(Element e, Fn&& fn) {
  switch (e) {
    case Element::kF32:
      Raise(fn(float{}));
      break;
    case Element::kBF16:
      Raise(fn(BFloat16{}));
      break;
    case Element::kF16:
      Raise(fn(Float16{}));
      break;
  }
}

// features [N, H, W, C], rois [K, 5] -> out [K, PH, PW, C] in the features' dtype.
py::array Forward(py::array features, const std::string& dtype, py::array_t<float> rois, int64_t pooled_h,
                  int64_t pooled_w, float spatial_scale, int64_t sampling_ratio, bool aligned) {
  const Element e = ParseDtype(dtype);
  CheckArray(features, e, 4, "features");
  CheckRois(rois);
  if (pooled_h <= 0 || pooled_w <= 0) throw std::invalid_argument("bad output size");
  Raise(CheckSamplingRatio(sampling_ratio));
  const Dims d{features.shape(0), features.shape(1), features.shape(2), features.shape(3), rois.shape(0),
               pooled_h, pooled_w};
  const Params p{spatial_scale, sampling_ratio, aligned};
  std::vector<py::ssize_t> shape{d.k, d.ph, d.pw, d.c};
  py::array out = e == Element::kF32 ? py::array(py::array_t<float>(shape)) : py::array(py::array_t<uint16_t>(shape));
  OnElement(e, [&](auto zero) {
    using T = decltype(zero);
    return LaunchForward<T>(nullptr, features.data(), rois.data(), out.mutable_data(), d, p);
  });
  return out;
}

// grad_out [K, PH, PW, C], rois [K, 5] -> grad_features [N, H, W, C] float32 sums.
py::array_t<float> Backward(py::array grad_out, const std::string& dtype, py::array_t<float> rois, int64_t n,
                            int64_t h, int64_t w, float spatial_scale, int64_t sampling_ratio, bool aligned,
                            bool deterministic) {
  const Element e = ParseDtype(dtype);
  CheckArray(grad_out, e, 4, "grad_out");
  CheckRois(rois);
  if (grad_out.shape(0) != rois.shape(0)) throw std::invalid_argument("grad_out and rois disagree on K");
  if (n < 0 || h < 0 || w < 0 || grad_out.shape(1) <= 0 || grad_out.shape(2) <= 0) {
    throw std::invalid_argument("bad shapes");
  }
  Raise(CheckSamplingRatio(sampling_ratio));
  const Dims d{n, h, w, grad_out.shape(3), grad_out.shape(0), grad_out.shape(1), grad_out.shape(2)};
  const Params p{spatial_scale, sampling_ratio, aligned};
  py::array_t<float> grad({n, h, w, d.c});
  // The row table lives in scratch memory on a GPU; an exact-size heap block here.
  std::vector<int32_t> table(deterministic ? d.k * RowTableStride(d) : 0);
  OnElement(e, [&](auto zero) {
    using T = decltype(zero);
    return LaunchBackward<T>(nullptr, table.data(), grad_out.data(), rois.data(), grad.mutable_data(), d, p,
                             deterministic);
  });
  return grad;
}

}  // namespace
}  // namespace roi_align

PYBIND11_MODULE(_roi_align_cuda_emulated, m) {
  m.doc() = "The CUDA RoIAlign kernels run on the CPU by a CUDA-runtime emulation (tests only).";
  m.def("forward", &roi_align::Forward, py::arg("features"), py::arg("dtype"), py::arg("rois"),
        py::arg("pooled_h"), py::arg("pooled_w"), py::arg("spatial_scale"), py::arg("sampling_ratio"),
        py::arg("aligned"));
  m.def("backward", &roi_align::Backward, py::arg("grad_out"), py::arg("dtype"), py::arg("rois"), py::arg("n"),
        py::arg("h"), py::arg("w"), py::arg("spatial_scale"), py::arg("sampling_ratio"), py::arg("aligned"),
        py::arg("deterministic"));
  m.def("set_block_order_seed", &cuda_emulation::SetBlockOrderSeed, py::arg("seed"));
}
