// Python module exposing the RoIAlign CUDA handlers (compiled by nvcc in roi_align_cuda.cu) as
// capsules.
#include "pybind11/pybind11.h"
#include "xla/ffi/api/api.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(RoiAlignForwardCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(RoiAlignBackwardCuda);

PYBIND11_MODULE(_roi_align_cuda, m) {
  m.def("registrations", []() {
    pybind11::dict d;
    d["jaxdet_roi_align_fwd"] = pybind11::capsule(reinterpret_cast<void*>(RoiAlignForwardCuda));
    d["jaxdet_roi_align_bwd"] = pybind11::capsule(reinterpret_cast<void*>(RoiAlignBackwardCuda));
    return d;
  });
}
