// xla_ops._roi_pool_cuda_emulated: the CUDA kernels of roi_pool_cuda.cu, compiled as host C++
// against testing/cuda_runtime.h (each block on blockDim real threads, real barriers, votes and
// atomics, blocks in a shuffled order) and exposed to Python on numpy arrays, so that
// tests/xla_ops/test_roi_pool_cuda_emulated.py can compare them with the CPU extension on every CI run.
// Built only for the tests (JAXDET_CUDA_EMULATION=1, see setup.py); it is not an XLA custom call.
//
// Half-precision arrays cross the boundary as their uint16 bits, with the dtype named.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "pybind11/numpy.h"
#include "pybind11/pybind11.h"
#include "pybind11/stl.h"
#include "roi_pool_cuda.cu"

namespace py = pybind11;

namespace roi_pool {
namespace {

enum class Element { kF32, kBF16, kF16 };

Element ParseDtype(const std::string& dtype) {
  if (dtype == "float32") return Element::kF32;
  if (dtype == "bfloat16") return Element::kBF16;
  if (dtype == "float16") return Element::kF16;
  throw std::invalid_argument("dtype must be float32, bfloat16 or float16, got " + dtype);
}

// The element size a dtype's array must have: float32 as float32, half types as uint16 bits.
void CheckElements(const py::array& a, Element e, const char* name) {
  const bool ok = e == Element::kF32 ? a.dtype().is(py::dtype::of<float>())
                                     : a.dtype().is(py::dtype::of<uint16_t>());
  if (!ok) {
    throw std::invalid_argument(std::string(name) + ": float32 for float32, else the uint16 bits");
  }
}

void CheckShape(const py::array& a, std::vector<int64_t> shape, const char* name) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
  if (!ok || !(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string(name) + ": wrong shape or not C-contiguous");
  }
}

void Raise(const ffi::Error& err) {
  if (!err.success()) throw std::runtime_error(err.message());
}

py::array NewLike(Element e, std::vector<py::ssize_t> shape) {
  if (e == Element::kF32) return py::array_t<float>(shape);
  return py::array_t<uint16_t>(shape);
}

// features [N, H, W, C], rois [K, 5] -> (out [K, PH, PW, C] in the features' dtype, argmax int32).
py::tuple Forward(py::array features, const std::string& dtype, py::array_t<float> rois, int64_t pooled_h,
                  int64_t pooled_w, float spatial_scale, int32_t rounding) {
  const Element e = ParseDtype(dtype);
  CheckElements(features, e, "features");
  if (features.ndim() != 4) throw std::invalid_argument("features must be [N, H, W, C]");
  if (rois.ndim() != 2 || rois.shape(1) != 5) throw std::invalid_argument("rois must be [K, 5]");
  CheckShape(rois, {rois.shape(0), 5}, "rois");
  CheckShape(features, {features.shape(0), features.shape(1), features.shape(2), features.shape(3)}, "features");
  if (pooled_h <= 0 || pooled_w <= 0) throw std::invalid_argument("bad output size");
  Raise(CheckRounding(rounding));
  const Dims d{features.shape(0), features.shape(1), features.shape(2), features.shape(3), rois.shape(0),
               pooled_h, pooled_w};
  py::array out = NewLike(e, {d.k, d.ph, d.pw, d.c});
  py::array_t<int32_t> argmax({d.k, d.ph, d.pw, d.c});
  const auto mode = static_cast<Rounding>(rounding);
  const void* f = features.data();
  const float* r = rois.data();
  void* o = out.mutable_data();
  int32_t* a = argmax.mutable_data();
  switch (e) {
    case Element::kF32:
      Raise(LaunchForward<float>(nullptr, f, r, o, a, d, spatial_scale, mode));
      break;
    case Element::kBF16:
      Raise(LaunchForward<BFloat16>(nullptr, f, r, o, a, d, spatial_scale, mode));
      break;
    case Element::kF16:
      Raise(LaunchForward<Float16>(nullptr, f, r, o, a, d, spatial_scale, mode));
      break;
  }
  return py::make_tuple(out, argmax);
}

// grad_out [K, PH, PW, C], rois [K, 5], argmax [K, PH, PW, C] -> grad_features [N, H, W, C] f32.
py::array_t<float> Backward(py::array grad_out, const std::string& dtype, py::array_t<float> rois,
                            py::array_t<int32_t> argmax, int64_t n, int64_t h, int64_t w, bool deterministic,
                            float spatial_scale, int32_t rounding) {
  const Element e = ParseDtype(dtype);
  CheckElements(grad_out, e, "grad_out");
  if (grad_out.ndim() != 4) throw std::invalid_argument("grad_out must be [K, PH, PW, C]");
  const Dims d{n, h, w, grad_out.shape(3), grad_out.shape(0), grad_out.shape(1), grad_out.shape(2)};
  CheckShape(grad_out, {d.k, d.ph, d.pw, d.c}, "grad_out");
  CheckShape(argmax, {d.k, d.ph, d.pw, d.c}, "argmax");
  CheckShape(rois, {d.k, 5}, "rois");
  if (n < 0 || h < 0 || w < 0) throw std::invalid_argument("bad feature shape");
  Raise(CheckRounding(rounding));
  py::array_t<float> grad({n, h, w, d.c});
  // The bin table lives in scratch memory on a GPU; an exact-size heap block here.
  std::vector<int32_t> table(deterministic ? d.k * BinTableStride(d) : 0);
  const auto mode = static_cast<Rounding>(rounding);
  const void* g = grad_out.data();
  switch (e) {
    case Element::kF32:
      Raise(LaunchBackward<float>(nullptr, table.data(), g, rois.data(), argmax.data(), grad.mutable_data(), d,
                                  deterministic, spatial_scale, mode));
      break;
    case Element::kBF16:
      Raise(LaunchBackward<BFloat16>(nullptr, table.data(), g, rois.data(), argmax.data(), grad.mutable_data(),
                                     d, deterministic, spatial_scale, mode));
      break;
    case Element::kF16:
      Raise(LaunchBackward<Float16>(nullptr, table.data(), g, rois.data(), argmax.data(), grad.mutable_data(),
                                    d, deterministic, spatial_scale, mode));
      break;
  }
  return grad;
}

// A kernel that records which threads ran, to check the emulator itself: the launch is
// validated as CUDA does, and every (block, thread) runs exactly once.
__global__ void CountKernel(int32_t* counts) {
  const int64_t linear_block = blockIdx.x + static_cast<int64_t>(gridDim.x) * (blockIdx.y + gridDim.y * blockIdx.z);
  const int64_t threads = static_cast<int64_t>(blockDim.x) * blockDim.y * blockDim.z;
  const int64_t t = threadIdx.x + blockDim.x * (threadIdx.y + static_cast<int64_t>(blockDim.y) * threadIdx.z);
  counts[1 + linear_block * threads + t] += 1;
}

// -> (cudaGetLastError() after the launch, per-(block, thread) run counts).
py::tuple CountThreads(std::vector<unsigned> grid, std::vector<unsigned> block) {
  if (grid.size() != 3 || block.size() != 3) throw std::invalid_argument("grid and block are (x, y, z)");
  const dim3 g(grid[0], grid[1], grid[2]);
  const dim3 b(block[0], block[1], block[2]);
  const bool valid = cuda_emulation::ValidLaunch(g, b, 0);
  const int64_t slots = valid ? int64_t{g.x} * g.y * g.z * b.x * b.y * b.z : 0;
  py::array_t<int32_t> counts(1 + slots);
  std::fill(counts.mutable_data(), counts.mutable_data() + counts.size(), 0);
  ROI_POOL_LAUNCH(CountKernel, g, b, nullptr, counts.mutable_data());
  const cudaError_t err = cudaGetLastError();
  return py::make_tuple(static_cast<int>(err), counts[py::slice(1, 1 + slots, 1)]);
}

}  // namespace
}  // namespace roi_pool

PYBIND11_MODULE(_roi_pool_cuda_emulated, m) {
  m.doc() = "The CUDA RoI pooling kernels run on the CPU by a CUDA-runtime emulation (tests only).";
  m.def("forward", &roi_pool::Forward, py::arg("features"), py::arg("dtype"), py::arg("rois"),
        py::arg("pooled_h"), py::arg("pooled_w"), py::arg("spatial_scale"), py::arg("rounding"));
  m.def("backward", &roi_pool::Backward, py::arg("grad_out"), py::arg("dtype"), py::arg("rois"),
        py::arg("argmax"), py::arg("n"), py::arg("h"), py::arg("w"), py::arg("deterministic"),
        py::arg("spatial_scale"), py::arg("rounding"));
  m.def("count_threads", &roi_pool::CountThreads, py::arg("grid"), py::arg("block"));
  m.def("set_block_order_seed", &cuda_emulation::SetBlockOrderSeed, py::arg("seed"));
  m.attr("INVALID_CONFIGURATION") = static_cast<int>(cudaErrorInvalidConfiguration);
}
