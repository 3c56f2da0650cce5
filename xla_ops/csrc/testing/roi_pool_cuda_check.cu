// Runs the RoI pooling CUDA kernels of roi_pool_cuda.cu (forward, atomicAdd backward,
// deterministic backward) on adversarial RoIs and special feature values, and checks what must
// hold whatever the arithmetic: every argmax in its image's plane (or -1 with a zero output),
// every output the bits of the element its argmax names, the deterministic backward the same bits
// in any block order, and both backwards equal to a host scatter where sums are exact. It exists
// for the memory and race checkers, which see every access it makes:
//   GPU (nvcc):      compute-sanitizer --tool memcheck|racecheck ./roi_pool_cuda_check
//   CPU (g++ against testing/cuda_runtime.h): built with -fsanitize=address or -fsanitize=thread.
// experiments/sanitize_roi_pool.sh builds and runs it each way. Exit status 0 when all checks hold.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "roi_pool_cuda.cu"

namespace {

using roi_pool::BFloat16;
using roi_pool::Dims;
using roi_pool::Float16;
using roi_pool::Rounding;

int failures = 0;

void Expect(bool ok, const char* what, const char* case_name) {
  if (!ok && failures++ < 20) std::fprintf(stderr, "FAILED %s: %s\n", case_name, what);
}

void Check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
    std::exit(2);
  }
}

void CheckFfi(const ffi::Error& err) {
  if (!err.success()) {
    std::fprintf(stderr, "kernel launch: %s\n", err.message().c_str());
    std::exit(2);
  }
}

// A device buffer of exactly `count` elements (a sanitizer sees the first byte past its end).
template <typename T>
struct DeviceBuffer {
  explicit DeviceBuffer(size_t count) : count(count) {
    Check(cudaMalloc(reinterpret_cast<void**>(&data), count * sizeof(T) + (count == 0)), "cudaMalloc");
  }
  DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    Check(cudaMemcpy(data, host.data(), count * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  ~DeviceBuffer() { cudaFree(data); }
  std::vector<T> ToHost() const {
    std::vector<T> host(count);
    Check(cudaMemcpy(host.data(), data, count * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return host;
  }
  T* data = nullptr;
  size_t count;
};

// A small linear congruential generator: the same inputs on every platform.
struct Random {
  uint64_t state;
  float Uniform(float lo, float hi) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * static_cast<float>(state >> 40) / static_cast<float>(1ull << 24);
  }
};

template <typename T>
T FromFloat(float x);
template <>
float FromFloat<float>(float x) { return x; }
template <>
BFloat16 FromFloat<BFloat16>(float x) {  // truncation: any bit pattern will do
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return BFloat16{static_cast<uint16_t>(u >> 16)};
}
template <>
Float16 FromFloat<Float16>(float x) {  // small integers, +-0, +-inf and NaN are exact
  if (std::isnan(x)) return Float16{0x7e00};
  if (std::isinf(x)) return Float16{static_cast<uint16_t>(x > 0 ? 0x7c00 : 0xfc00)};
  uint16_t bits = std::signbit(x) ? 0x8000 : 0;
  float m = std::fabs(x);
  if (m >= 1.0f) {
    int e = 0;
    while (m >= 2.0f && e < 16) m *= 0.5f, ++e;
    if (e > 15) return Float16{static_cast<uint16_t>(bits | 0x7c00)};  // beyond float16: infinity
    bits |= static_cast<uint16_t>((e + 15) << 10 | static_cast<uint16_t>((m - 1.0f) * 1024.0f));
  } else if (m > 0.0f) {
    bits |= 1;  // the smallest subnormal
  }
  return Float16{bits};
}

template <typename T>
uint32_t Bits(T x) {
  uint32_t u = 0;
  std::memcpy(&u, &x, sizeof(T));
  return u;
}

std::vector<float> Rois(Random& rng, int64_t count, int64_t n, float height, float width) {
  static const float kAdversarial[][5] = {
      {-1, 0, 0, 8, 8},          {static_cast<float>(n), 0, 0, 8, 8}, {1e9f, 0, 0, 8, 8},
      {NAN, 0, 0, 8, 8},         {INFINITY, 0, 0, 8, 8},              {-0.5f, 0, 0, 8, 8},
      {0.7f, 0, 0, 8, 8},        {0, NAN, 0, 8, 8},                   {0, 0, INFINITY, 8, 8},
      {0, 0, 0, -INFINITY, 8},   {1, 9, 9, 2, 2},                     {1, 5, 5, 4, 4},
      {0, 1e6f, 1e6f, 2e6f, 2e6f}, {0, -2e6f, -2e6f, -1e6f, -1e6f},   {1, -1e30f, -1e30f, 1e30f, 1e30f},
      {0, 3.4e38f, 0, 3.4e38f, 8}, {1, 0, 0, 1e-40f, 1e-40f},
      // The last image's bottom-right corner, from inside and from beyond it.
      {static_cast<float>(n - 1), 0, 0, 1e5f, 1e5f}, {static_cast<float>(n - 1), width - 1, height - 1, width + 40, height + 40},
  };
  std::vector<float> rois;
  for (const auto& roi : kAdversarial) rois.insert(rois.end(), roi, roi + 5);
  for (int64_t i = 0; i < count; ++i) {
    const float x1 = rng.Uniform(-0.2f * width, width), y1 = rng.Uniform(-0.2f * height, height);
    rois.insert(rois.end(), {std::floor(rng.Uniform(0, static_cast<float>(n))), x1, y1,
                             x1 + rng.Uniform(0, 0.8f * width), y1 + rng.Uniform(0, 0.8f * height)});
  }
  return rois;
}

template <typename T>
void RunCase(const char* name, const Dims& d, float scale, Rounding rounding, uint64_t seed) {
  Random rng{seed};
  static const float kSpecial[] = {NAN, INFINITY, -INFINITY, 1e-40f, -0.0f, 3e38f};
  std::vector<T> features(d.n * d.h * d.w * d.c);
  for (size_t i = 0; i < features.size(); ++i) {
    const float u = rng.Uniform(0, 1);
    features[i] = FromFloat<T>(u < 0.05f ? kSpecial[i % 6] : std::floor(rng.Uniform(-50, 50)));
  }
  const int64_t random_rois = d.k - 19;
  const std::vector<float> rois = Rois(rng, random_rois, d.n, d.h / scale, d.w / scale);
  const int64_t outputs = d.k * d.ph * d.pw * d.c;

  const DeviceBuffer<T> features_d(features);
  const DeviceBuffer<float> rois_d(rois);
  DeviceBuffer<T> out_d(outputs);
  DeviceBuffer<int32_t> argmax_d(outputs);
  CheckFfi(roi_pool::LaunchForward<T>(nullptr, features_d.data, rois_d.data, out_d.data, argmax_d.data, d,
                                      scale, rounding));
  Check(cudaDeviceSynchronize(), "forward");
  const std::vector<T> out = out_d.ToHost();
  const std::vector<int32_t> argmax = argmax_d.ToHost();

  // Cotangents that are small integers: every float32 sum of them is exact, in any order.
  std::vector<T> cot(outputs);
  for (auto& g : cot) g = FromFloat<T>(std::floor(rng.Uniform(-8, 8)));
  std::vector<double> expected(features.size(), 0.0);
  int64_t pooled = 0;
  for (int64_t i = 0; i < outputs; ++i) {
    const int64_t k = i / (d.ph * d.pw * d.c), c = i % d.c;
    const int64_t image = roi_pool::RoiImage(&rois[k * 5], d.n);
    const int32_t a = argmax[i];
    Expect(a >= -1 && a < d.h * d.w, "argmax outside the image plane", name);
    if (a < 0) {
      Expect(Bits(out[i]) == 0, "an empty bin's output is not +0", name);
      continue;
    }
    Expect(image >= 0, "an invalid RoI has an argmax", name);
    if (image < 0 || a >= d.h * d.w) continue;
    ++pooled;
    const int64_t at = (image * d.h * d.w + a) * d.c + c;
    Expect(Bits(out[i]) == Bits(features[at]), "output is not the element its argmax names", name);
    expected[at] += roi_pool::ToFloat(cot[i]);
  }
  if (random_rois > 0) Expect(pooled > outputs / 4, "too few bins pooled anything: the case tests little", name);

  const DeviceBuffer<T> cot_d(cot);
  DeviceBuffer<float> grad_d(features.size());
  DeviceBuffer<int32_t> table_d(d.k * roi_pool::BinTableStride(d));
  std::vector<std::vector<float>> grads;
  for (const bool deterministic : {true, true, false}) {
#if !defined(__CUDACC__)
    cuda_emulation::SetBlockOrderSeed(seed + grads.size());
#endif
    CheckFfi(roi_pool::LaunchBackward<T>(nullptr, table_d.data, cot_d.data, rois_d.data, argmax_d.data,
                                         grad_d.data, d, deterministic, scale, rounding));
    Check(cudaDeviceSynchronize(), "backward");
    grads.push_back(grad_d.ToHost());
  }
  for (size_t i = 0; i < features.size(); ++i) {
    const float want = static_cast<float>(expected[i]);
    Expect(Bits(grads[0][i]) == Bits(want), "deterministic backward differs from the host scatter", name);
    Expect(Bits(grads[1][i]) == Bits(grads[0][i]), "deterministic backward differs between runs", name);
    Expect(Bits(grads[2][i]) == Bits(want), "atomic backward differs from the host scatter", name);
  }
}

}  // namespace

int main() {
  // 2 images of 9x11 feature pixels, 33 channels (two channel tiles of the gather backward, one
  // partial), 300 RoIs (two compaction rounds of 256); sizes kept small for the sanitizers.
  const Dims d3{2, 9, 11, 33, 300, 3, 3};
  const Dims d7{2, 9, 11, 33, 300, 7, 7};
  RunCase<float>("float32 3x3 none", d3, 1.0f / 16, Rounding::kNone, 1);
  RunCase<float>("float32 3x3 round", d3, 1.0f / 16, Rounding::kRound, 2);
  RunCase<Float16>("float16 7x7 round", d7, 0.5f, Rounding::kRound, 3);
  RunCase<BFloat16>("bfloat16 7x7 none", d7, 1.0f, Rounding::kNone, 4);
  RunCase<float>("float32 7x7 adaptive", d7, 1.0f / 16, Rounding::kAdaptive, 6);
  // A 1x1x1 map under the adversarial RoIs alone.
  RunCase<float>("float32 1x1 map", Dims{1, 1, 1, 1, 19, 2, 2}, 1.0f, Rounding::kNone, 5);
  if (failures > 0) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("roi_pool_cuda_check: all checks held\n");
  return 0;
}
