// group_influence's torch-free part: the non-finite scan of train/target/precond (a NaN there would silently turn
// every influence score and every mixture built on it into NaN). The GEMMs run through ATen in the binding.
#include <cstring>

#include "tikmix/reduce_kernels.h"

namespace tikmix::cpu {
namespace {

// Exponent all ones ⇔ NaN or ±inf. Integer-only, so the row test vectorises (an OR reduction) at any -O level.
inline uint32_t bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
inline uint64_t bits(double v) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
constexpr uint32_t exp_mask(float) { return 0x7F800000u; }
constexpr uint64_t exp_mask(double) { return 0x7FF0000000000000ull; }

template <typename T>
int64_t scan(const T* x, int64_t rows, int64_t cols, int64_t ld) {
  const auto mask = exp_mask(T(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * ld;
    int bad = 0;
    for (int64_t c = 0; c < cols; ++c) bad |= int((bits(row[c]) & mask) == mask);
    if (bad) {
      for (int64_t c = 0; c < cols; ++c)
        if ((bits(row[c]) & mask) == mask) return r * cols + c;
    }
  }
  return -1;
}

}  // namespace

int64_t first_nonfinite(const float* x, int64_t rows, int64_t cols, int64_t ld) { return scan(x, rows, cols, ld); }
int64_t first_nonfinite(const double* x, int64_t rows, int64_t cols, int64_t ld) { return scan(x, rows, cols, ld); }

}  // namespace tikmix::cpu
