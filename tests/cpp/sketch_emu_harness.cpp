// Runs the real CUDA sketch launcher and kernel (csrc/cuda/sketch.cu) on the CPU through tests/cpp/cuda_emu.h and
// compares with a float64 reference built from rng.h. Built by tests/test_mma_layout.py with
//   g++ -std=c++17 -DTIKMIX_CPU_EMULATION -Icsrc/include -Itests/cpp tests/cpp/sketch_emu_harness.cpp
// Each case prints "CHECK emu_<name> <failures> <entries>". Small-integer inputs with k a power of 4 make every
// sum exact, so those cases require bit equality; general inputs use a float32-rounding tolerance.
#include "../../csrc/cuda/sketch.cu"

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

using tikmix::cuda::DType;

uint16_t to_bf16_bits(float v) {  // exact for the values used (small integers / bf16-representable)
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return uint16_t(b >> 16);
}

uint16_t to_f16_bits(float v) {  // exact for integers |v| ≤ 2048
  if (v == 0) return 0;
  const uint16_t sign = v < 0 ? 0x8000 : 0;
  float a = std::fabs(v);
  int e;
  const float m = std::frexp(a, &e);  // a = m·2^e, m in [0.5, 1)
  const uint16_t exp = uint16_t(e - 1 + 15);
  const uint16_t man = uint16_t(std::lround((m * 2 - 1) * 1024));
  return uint16_t(sign | (exp << 10) | man);
}

struct Case {
  std::string name;
  DType dtype;
  int64_t n, d, k;
  uint64_t seed, offset;
  bool use_scale = false, accumulate = false, exact = true;
  int64_t ld_pad = 0;      // extra elements per row (ldx = d + ld_pad)
  int64_t base_shift = 0;  // x starts this many elements into its buffer (unaligned base)
  int lo = -4, hi = 4;     // small-integer range of x (exact cases)
};

void run(const Case& c) {
  std::mt19937_64 gen(c.seed * 1000003 + uint64_t(c.n * 31 + c.d));
  const int64_t ldx = c.d + c.ld_pad;
  const int64_t esize = c.dtype == DType::kFloat32 ? 4 : 2;
  std::vector<char> buf(size_t((c.n * ldx + c.base_shift) * esize + 64));
  char* xb = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(buf.data()) + 15) & ~uintptr_t(15)) + c.base_shift * esize;
  std::vector<double> xv(size_t(c.n * c.d));
  std::uniform_int_distribution<int> ints(c.lo, c.hi);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int64_t i = 0; i < c.n; ++i)
    for (int64_t r = 0; r < c.d; ++r) {
      float v = c.exact ? float(ints(gen)) : normal(gen);
      char* dst = xb + (i * ldx + r) * esize;
      if (c.dtype == DType::kFloat32) {
        std::memcpy(dst, &v, 4);
      } else if (c.dtype == DType::kBFloat16) {
        const uint16_t h = to_bf16_bits(v);  // truncation: exact for ints, a bf16 value otherwise
        std::memcpy(dst, &h, 2);
        v = emu::bf16_to_float(h);
      } else {
        const uint16_t h = to_f16_bits(c.exact ? v : std::round(v * 64));
        std::memcpy(dst, &h, 2);
        v = emu::f16_to_float(h);
      }
      xv[size_t(i * c.d + r)] = v;
    }
  std::vector<float> scale;
  if (c.use_scale) {
    scale.resize(size_t(c.d));
    for (auto& s : scale) s = float(ints(gen) * 2);
  }
  const float sk = float(1.0 / std::sqrt(double(c.k)));
  std::vector<float> out(size_t(c.n * c.k));
  for (auto& o : out) o = c.accumulate ? float(ints(gen)) : NAN;  // NaN: every entry must be written
  const std::vector<float> out0 = out;
  std::vector<float> ws(size_t(std::max<int64_t>(1, tikmix::cuda::sketch_workspace_floats(c.n, c.d, c.k))), NAN);
  const cudaError_t err = tikmix::cuda::sketch(xb, c.dtype, c.n, c.d, ldx, c.use_scale ? scale.data() : nullptr,
                                               c.seed, c.offset, c.k, sk, out.data(), c.k, c.accumulate, ws.data(),
                                               nullptr);
  int64_t fail = err != cudaSuccess ? 1 : 0;
  const uint64_t key = tikmix::rng_key(c.seed);
  for (int64_t i = 0; i < c.n; ++i)
    for (int64_t col = 0; col < c.k; ++col) {
      double s = 0, mag = 0;
      for (int64_t r = 0; r < c.d; ++r) {
        double v = xv[size_t(i * c.d + r)];
        if (c.use_scale) v = double(float(v) * scale[size_t(r)]);
        s += tikmix::sign_bit(key, c.offset + uint64_t(r), uint64_t(col)) ? -v : v;
        mag += v * v;
      }
      const float got = out[size_t(i * c.k + col)];
      if (c.exact) {
        const float y = float(double(sk) * s);  // exact: s is an integer < 2^24 and sk a power of 2
        const float want = c.accumulate ? out0[size_t(i * c.k + col)] + y : y;
        fail += !(got == want);
      } else {
        const double want = double(sk) * s + (c.accumulate ? out0[size_t(i * c.k + col)] : 0.0);
        const double tol = 1e-5 * double(sk) * std::sqrt(mag * double(c.d)) + 1e-6;
        fail += !(std::fabs(double(got) - want) <= tol);
      }
    }
  std::printf("CHECK emu_%s %lld %lld\n", c.name.c_str(), (long long)fail, (long long)(c.n * c.k));
}

}  // namespace

int main() {
  const uint64_t big = (uint64_t(1) << 40) + 5;
  std::vector<Case> cases = {
      // name, dtype, n, d, k, seed, offset
      {"bf16_n9_k256", DType::kBFloat16, 9, 1000, 256, 3, big},
      {"bf16_n64_general", DType::kBFloat16, 64, 640, 64, 1, 0, false, false, false},
      {"f16_n1", DType::kFloat16, 1, 200, 64, 2, 7},
      {"f16_11bit", DType::kFloat16, 5, 40, 16, 2, 7, false, false, true, 0, 0, -1000, 1000},
      {"f32_split_n70_two_groups", DType::kFloat32, 70, 130, 16, 4, 12345},
      {"f32_24bit", DType::kFloat32, 3, 8, 4, 5, 0, false, false, true, 0, 0, -(1 << 20), 1 << 20},
      {"bf16_scale_splitk", DType::kBFloat16, 5, 9000, 4, 6, 99},
      {"f32_unaligned_rows", DType::kFloat32, 3, 77, 64, 7, 1, false, false, true, 1},
      {"bf16_unaligned_base", DType::kBFloat16, 4, 300, 16, 8, 2, false, false, true, 0, 1},
      {"f16_accumulate", DType::kFloat16, 2, 300, 64, 9, 0, false, true},
      {"f32_accumulate_splitk", DType::kFloat32, 2, 8300, 16, 10, 0, false, true},
      {"bf16_n20_k1", DType::kBFloat16, 20, 64, 1, 11, 0},
      {"bf16_d1_k65", DType::kBFloat16, 3, 1, 65, 12, 5, false, false, false},
      {"f32_general_k129", DType::kFloat32, 6, 500, 129, 13, 3, false, false, false},
      {"bf16_k1024_eight_warps_two_ctas", DType::kBFloat16, 3, 100, 1024, 14, 1},
      {"bf16_two_groups_splitk", DType::kBFloat16, 70, 8400, 16, 15, (uint64_t(1) << 44) - 9000},
  };
  for (const Case& c : cases) run(c);
  return 0;
}
