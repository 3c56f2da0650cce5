// Runs the RoIAlign CUDA kernels of roi_align_cuda.cu (forward, atomicAdd backward,
// deterministic backward) on adversarial RoIs and special feature values, and checks them
// against a host loop over the same arithmetic (roi_align_bins.h): the forward and the
// deterministic backward bit for bit (twice, in two block orders), the atomic backward to float32
// rounding, invalid RoIs zero. It exists for the memory and race checkers, which see every
// access it makes:
//   GPU (nvcc):      compute-sanitizer --tool memcheck|racecheck ./roi_align_cuda_check
//   CPU (g++ against testing/cuda_runtime.h): built with -fsanitize=address or -fsanitize=thread.
// experiments/sanitize_roi_pool.sh builds and runs it each way. Exit status 0 when all checks hold.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "roi_align_cuda.cu"

namespace {

using roi_align::AxisSample;
using roi_align::BFloat16;
using roi_align::Dims;
using roi_align::Float16;
using roi_align::Params;

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
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
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
uint32_t Bits(T x) {
  uint32_t u = 0;
  std::memcpy(&u, &x, sizeof(T));
  return u;
}

// The same bits, or both NaN (a GPU's NaN has other bits than a CPU's).
template <typename T>
bool Same(T a, T b) {
  return Bits(a) == Bits(b) || (std::isnan(roi_align::ToFloat(a)) && std::isnan(roi_align::ToFloat(b)));
}

std::vector<float> Rois(Random& rng, int64_t count, int64_t n, float height, float width) {
  const float last = static_cast<float>(n - 1);
  const float adversarial[][5] = {
      {-1, 0, 0, 8, 8},           {static_cast<float>(n), 0, 0, 8, 8}, {NAN, 0, 0, 8, 8},
      {-0.5f, 0, 0, 8, 8},        {0.7f, 0, 0, 8, 8},                  {0, NAN, 0, 8, 8},
      {0, 0, 0, INFINITY, 8},     {0, -3e38f, 0, 3e38f, 8},            {1, 9, 9, 2, 2},
      {0, 3, 3, 3, 3},            {0, 1e6f, 1e6f, 2e6f, 2e6f},         {last, -1e9f, -1e9f, 1e9f, 1e9f},
      {last, -2e4f, -10, 2e4f, 10}, {0, 1e-40f, 0, 1e-40f, 1e-40f},
      // The last image's bottom-right corner, from inside and from beyond it.
      {last, width - 1, height - 1, width + 40, height + 40}, {last, 0, 0, width, height},
  };
  std::vector<float> rois;
  for (const auto& roi : adversarial) rois.insert(rois.end(), roi, roi + 5);
  for (int64_t i = 0; i < count; ++i) {
    const float x1 = rng.Uniform(-0.2f * width, width), y1 = rng.Uniform(-0.2f * height, height);
    rois.insert(rois.end(), {std::floor(rng.Uniform(0, static_cast<float>(n))), x1, y1,
                             x1 + rng.Uniform(0, 0.8f * width), y1 + rng.Uniform(0, 0.8f * height)});
  }
  return rois;
}
constexpr int64_t kAdversarial = 16;

// The samples inside the map of bin p along an axis, as the kernels visit them.
std::vector<AxisSample> HostSamples(float start, int64_t p, float bin, int64_t grid, int64_t size, bool adaptive) {
  std::vector<AxisSample> samples;
  const roi_align::SampleRange r = roi_align::SamplesToVisit(start, p, bin, grid, size, adaptive);
  for (int64_t i = r.begin; i < r.end; ++i) {
    const AxisSample s = roi_align::Interpolate(roi_align::SamplePosition(start, p, bin, i, grid), size);
    if (s.inside) samples.push_back(s);
  }
  return samples;
}

template <typename T>
void RunCase(const char* name, const Dims& d, const Params& p, uint64_t seed) {
  roi_align::IeeeFloatMode ieee;  // the host loops below, as the kernels
  Random rng{seed};
  static const float kSpecial[] = {NAN, INFINITY, -INFINITY, 1e-40f, -0.0f, 3e38f};
  std::vector<T> features(d.n * d.h * d.w * d.c);
  for (size_t i = 0; i < features.size(); ++i) {
    const float u = rng.Uniform(0, 1);
    features[i] = roi_align::FromFloat<T>(u < 0.02f ? kSpecial[i % 6] : rng.Uniform(-4, 4));
  }
  const std::vector<float> rois = Rois(rng, d.k - kAdversarial, d.n, d.h / p.spatial_scale, d.w / p.spatial_scale);
  const int64_t outputs = d.k * d.ph * d.pw * d.c;
  std::vector<T> cot(outputs);
  for (auto& g : cot) g = roi_align::FromFloat<T>(rng.Uniform(-1, 1) * std::pow(10.0f, std::floor(rng.Uniform(-3, 4))));

  // The host loop: the forward's sums and the backward's, in the CPU kernels' order.
  std::vector<float> want_out(outputs, 0.0f), want_grad(features.size(), 0.0f);
  for (int64_t k = 0; k < d.k; ++k) {
    const roi_align::RoiGeometry g =
        roi_align::MapRoi(&rois[k * 5], p.spatial_scale, d.n, d.ph, d.pw, p.sampling_ratio, p.aligned);
    if (g.batch < 0) continue;
    const T* plane = features.data() + g.batch * d.h * d.w * d.c;
    float* grad = want_grad.data() + g.batch * d.h * d.w * d.c;
    for (int64_t ph = 0; ph < d.ph; ++ph) {
      const auto ys = HostSamples(g.start_h, ph, g.bin_h, g.grid_h, d.h, g.adaptive);
      for (int64_t pw = 0; pw < d.pw; ++pw) {
        const auto xs = HostSamples(g.start_w, pw, g.bin_w, g.grid_w, d.w, g.adaptive);
        for (int64_t c = 0; c < d.c; ++c) {
          const int64_t o = ((k * d.ph + ph) * d.pw + pw) * d.c + c;
          const float go = roi_align::ToFloat(cot[o]);
          float acc = 0.0f;
          for (const AxisSample& y : ys) {
            for (const AxisSample& x : xs) {
              const roi_align::Weights w = roi_align::SampleWeights(y, x);
              const int64_t at[4] = {(y.low * d.w + x.low) * d.c + c, (y.low * d.w + x.high) * d.c + c,
                                     (y.high * d.w + x.low) * d.c + c, (y.high * d.w + x.high) * d.c + c};
              acc = roi_align::Add(acc, roi_align::Blend(w, roi_align::ToFloat(plane[at[0]]), roi_align::ToFloat(plane[at[1]]),
                                                         roi_align::ToFloat(plane[at[2]]), roi_align::ToFloat(plane[at[3]])));
              const float weights[4] = {w.w1, w.w2, w.w3, w.w4};
              for (int j = 0; j < 4; ++j) {
                grad[at[j]] = roi_align::Add(grad[at[j]], roi_align::Mul(go, roi_align::Div(weights[j], g.count)));
              }
            }
          }
          want_out[o] = roi_align::Div(acc, g.count);
        }
      }
    }
  }

  const DeviceBuffer<T> features_d(features);
  const DeviceBuffer<float> rois_d(rois);
  DeviceBuffer<T> out_d(outputs);
  CheckFfi(roi_align::LaunchForward<T>(nullptr, features_d.data, rois_d.data, out_d.data, d, p));
  Check(cudaDeviceSynchronize(), "forward");
  const std::vector<T> out = out_d.ToHost();
  for (int64_t i = 0; i < outputs; ++i) {
    Expect(Same(out[i], roi_align::FromFloat<T>(want_out[i])), "forward differs from the host loop", name);
  }
  // The invalid RoIs among the adversarial ones: +0 everywhere.
  for (int64_t k = 0; k < kAdversarial; ++k) {
    if (roi_align::MapRoi(&rois[k * 5], p.spatial_scale, d.n, d.ph, d.pw, p.sampling_ratio, p.aligned).batch >= 0) continue;
    for (int64_t i = k * d.ph * d.pw * d.c; i < (k + 1) * d.ph * d.pw * d.c; ++i) {
      Expect(Bits(out[i]) == 0, "an invalid RoI's output is not +0", name);
    }
  }

  const DeviceBuffer<T> cot_d(cot);
  DeviceBuffer<float> grad_d(features.size());
  DeviceBuffer<int32_t> table_d(d.k * roi_align::RowTableStride(d));
  std::vector<std::vector<float>> grads;
  for (const bool deterministic : {true, true, false}) {
#if !defined(__CUDACC__)
    cuda_emulation::SetBlockOrderSeed(seed + grads.size());
#endif
    CheckFfi(roi_align::LaunchBackward<T>(nullptr, table_d.data, cot_d.data, rois_d.data, grad_d.data, d, p,
                                          deterministic));
    Check(cudaDeviceSynchronize(), "backward");
    grads.push_back(grad_d.ToHost());
  }
  for (size_t i = 0; i < features.size(); ++i) {
    Expect(Bits(grads[0][i]) == Bits(want_grad[i]), "deterministic backward differs from the host loop", name);
    Expect(Bits(grads[1][i]) == Bits(grads[0][i]), "deterministic backward differs between runs", name);
    const float tolerance = 1e-4f * (1.0f + std::fabs(want_grad[i]));
    Expect(std::fabs(grads[2][i] - want_grad[i]) <= tolerance, "atomic backward far from the host loop", name);
  }
}

}  // namespace

int main() {
  // 2 images of 9x11 feature pixels, 33 channels, 80 RoIs; sizes kept small for the sanitizers.
  const Dims d{2, 9, 11, 33, 80, 3, 3};
  RunCase<float>("float32 3x3 sampling 2", d, Params{1.0f / 16, 2, false}, 1);
  RunCase<float>("float32 3x3 adaptive aligned", d, Params{1.0f / 16, 0, true}, 2);
  RunCase<Float16>("float16 7x7 adaptive", Dims{2, 9, 11, 33, 80, 7, 7}, Params{0.5f, 0, false}, 3);
  RunCase<BFloat16>("bfloat16 2x5 sampling 3 aligned", Dims{2, 9, 11, 33, 80, 2, 5}, Params{1.0f, 3, true}, 4);
  // A 1x1x1 map under the adversarial RoIs alone.
  RunCase<float>("float32 1x1 map", Dims{1, 1, 1, 1, kAdversarial, 2, 2}, Params{1.0f, 0, false}, 5);
  if (failures > 0) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("roi_align_cuda_check: all checks held\n");
  return 0;
}
