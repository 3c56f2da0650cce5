// Python module exposing the CUDA handlers (compiled by nvcc in roi_pool_cuda.cu) as capsules.
#include "pybind11/pybind11.h"
#include "xla/ffi/api/api.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(RoiPoolForwardCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(RoiPoolBackwardCuda);

PYBIND11_MODULE(_roi_pool_cuda, m) {
  m.def("registrations", []() {
    pybind11::dict d;
    d["jaxdet_roi_pool_fwd"] = pybind11::capsule(reinterpret_cast<void*>(RoiPoolForwardCuda));
    d["jaxdet_roi_pool_bwd"] = pybind11::capsule(reinterpret_cast<void*>(RoiPoolBackwardCuda));
    return d;
  });
}
