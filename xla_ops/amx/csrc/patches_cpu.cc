// Image patches in bfloat16 on CPUs, as an XLA FFI custom call: the operand a stride-1 "same"
// convolution becomes a matrix product with (im2col).
//
// For x [N, H, W, C] (float32 or bfloat16) and an odd window size k (padding p = k / 2), the patch
// of pixel m = (n * H + y) * W + x_ holds, at column (ty * k + tx) * C + c, the element
// x[n, y + ty - p, x_ + tx - p, c], or zero where that lies outside the image: the order of an
// HWIO kernel [k, k, C, O] reshaped to [k * k * C, O]. The result is
//   rows:       [N * H * W, k * k * C], a patch per row (the operand of y = P @ K), or
//   transposed: [k * k * C, N * H * W], a patch per column (the operand of dK^T = dY^T @ P^T,
//               where both matrices of the product are read along their rows), made from the
//               image with its channels first, [C, N, H, W]: each row is then a shifted copy of
//               one channel plane.
// float32 elements are rounded to the nearest bfloat16, ties to even, as XLA converts them (a
// NaN becomes the quiet NaN of its sign, its payload dropped). Every read is checked against the
// image bounds; the pixels outside are written as zeros, never read.
//
// Work is split by image rows (n, y), or by rows of the transposed result, over XLA's intra-op
// thread pool (cpu_common.h); each writes its own disjoint part of the result. The result is
// hinted to huge pages (a VGG16 layer's patches at 600x1000 are 173 MB, freshly mapped on every
// call).

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu_common.h"
#include "pybind11/pybind11.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace patches {
namespace {

// Without branches, so that the loop below is vectorized: NaNs are selected, not branched to.
inline uint16_t ToBFloat16(float value) {
  uint32_t u;
  std::memcpy(&u, &value, sizeof(u));
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest, ties to even
  const uint32_t quiet_nan = ((u >> 16) & 0x8000u) | 0x7fc0u;  // XLA's NaN of that sign, payload dropped
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// Compiled for AVX-512, AVX2 and the baseline (which the build otherwise targets), the best the
// CPU has chosen when the library loads. target_clones needs the loader's ifunc support: glibc on
// x86-64, and a compiler that knows the attribute; elsewhere the baseline loop alone.
#if defined(__has_attribute)
#if defined(__x86_64__) && defined(__GLIBC__) && __has_attribute(target_clones)
#define PATCHES_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef PATCHES_TARGET_CLONES
#define PATCHES_TARGET_CLONES
#endif

PATCHES_TARGET_CLONES void Convert(const float* src, int64_t count, uint16_t* dst) {
  for (int64_t i = 0; i < count; ++i) dst[i] = ToBFloat16(src[i]);
}
inline void Convert(const uint16_t* src, int64_t count, uint16_t* dst) {
  std::memcpy(dst, src, sizeof(uint16_t) * count);
}

struct Dims {
  int64_t n, h, w, c, k;
  int64_t pixels() const { return n * h * w; }
  int64_t depth() const { return k * k * c; }  // the length of a patch
};

// rows: out[m, (ty * k + tx) * C + c].
template <typename T>
void Rows(ffi::ThreadPool& pool, const T* x, uint16_t* out, const Dims& d) {
  const int64_t pad = d.k / 2;
  xla_ops::ParallelFor(pool, d.n * d.h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / d.h, y = row % d.h;
      uint16_t* dst = out + row * d.w * d.depth();
      for (int64_t col = 0; col < d.w; ++col) {
        for (int64_t ty = 0; ty < d.k; ++ty) {
          const int64_t sy = y + ty - pad;
          for (int64_t tx = 0; tx < d.k; ++tx, dst += d.c) {
            const int64_t sx = col + tx - pad;
            if (sy < 0 || sy >= d.h || sx < 0 || sx >= d.w) {
              std::memset(dst, 0, sizeof(uint16_t) * d.c);
            } else {
              Convert(x + ((n * d.h + sy) * d.w + sx) * d.c, d.c, dst);
            }
          }
        }
      }
    }
  });
}

// transposed: out[(ty * k + tx) * C + c, m] from the image with channels first, xt [C, N, H, W]:
// each row of the result is a shifted window of one channel plane, copied image row by image
// row (and zeros where the window leaves the image).
template <typename T>
void Transposed(ffi::ThreadPool& pool, const T* xt, uint16_t* out, const Dims& d) {
  const int64_t pad = d.k / 2;
  const int64_t pixels = d.pixels();
  xla_ops::ParallelFor(pool, d.depth(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {  // r = (ty * k + tx) * C + c
      const int64_t c = r % d.c, tap = r / d.c;
      const int64_t ty = tap / d.k, tx = tap % d.k;
      // Columns x_ of an image row whose source x_ + tx - pad lies in the image: [lo, hi).
      const int64_t lo = std::min(d.w, std::max<int64_t>(0, pad - tx));
      const int64_t hi = std::max(lo, std::min(d.w, d.w + pad - tx));
      uint16_t* dst = out + r * pixels;
      for (int64_t n = 0; n < d.n; ++n) {
        const T* plane = xt + (c * d.n + n) * d.h * d.w;
        for (int64_t y = 0; y < d.h; ++y, dst += d.w) {
          const int64_t sy = y + ty - pad;
          if (sy < 0 || sy >= d.h) {
            std::memset(dst, 0, sizeof(uint16_t) * d.w);
            continue;
          }
          std::memset(dst, 0, sizeof(uint16_t) * lo);
          Convert(plane + sy * d.w + lo + tx - pad, hi - lo, dst + lo);
          std::memset(dst + hi, 0, sizeof(uint16_t) * (d.w - hi));
        }
      }
    }
  });
}

template <typename T>
void Patches(ffi::ThreadPool& pool, const T* x, uint16_t* out, const Dims& d, bool transposed) {
  if (transposed) {
    Transposed(pool, x, out, d);
  } else {
    Rows(pool, x, out, d);
  }
}

ffi::Error PatchesImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out,
                       int64_t size, bool transposed) {
  const auto xd = x.dimensions();
  if (xd.size() != 4) return ffi::Error::InvalidArgument("image_patches: x must have rank 4");
  if (size < 1 || size % 2 == 0) return ffi::Error::InvalidArgument("image_patches: size must be odd");
  // x is [N, H, W, C], or [C, N, H, W] for the transposed patches.
  const Dims d = transposed ? Dims{xd[1], xd[2], xd[3], xd[0], size} : Dims{xd[0], xd[1], xd[2], xd[3], size};
  const auto od = out->dimensions();
  const int64_t rows = transposed ? d.depth() : d.pixels();
  const int64_t cols = transposed ? d.pixels() : d.depth();
  if (od.size() != 2 || od[0] != rows || od[1] != cols || out->element_type() != ffi::BF16) {
    return ffi::Error::InvalidArgument("image_patches: the result must be bfloat16 [N*H*W, k*k*C] "
                                       "(or [k*k*C, N*H*W] transposed)");
  }
  auto* o = reinterpret_cast<uint16_t*>(out->untyped_data());
  xla_ops::AdviseHugePages(o, sizeof(uint16_t) * rows * cols);
  switch (x.element_type()) {
    case ffi::F32:
      Patches(pool, x.typed_data<float>(), o, d, transposed);
      break;
    case ffi::BF16:
      Patches(pool, reinterpret_cast<const uint16_t*>(x.untyped_data()), o, d, transposed);
      break;
    default:
      return ffi::Error::InvalidArgument("image_patches: x must be float32 or bfloat16");
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace patches

XLA_FFI_DEFINE_HANDLER_SYMBOL(ImagePatchesCpu, patches::PatchesImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // x [N, H, W, C]; [C, N, H, W] when transposed
                                  .Ret<ffi::AnyBuffer>()  // patches, bfloat16
                                  .Attr<int64_t>("size")
                                  .Attr<bool>("transposed"));

PYBIND11_MODULE(_patches_cpu, m) {
  m.def("registrations", []() {
    pybind11::dict d;
    d["jaxdet_image_patches"] = pybind11::capsule(reinterpret_cast<void*>(ImagePatchesCpu));
    return d;
  });
}
