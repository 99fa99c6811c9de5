// group_influence's torch-free part: the products in a fixed order (rowdot), and the non-finite scan of
// train/target/precond (a NaN there would silently turn every influence score and every mixture built on it into NaN).
#include <cstring>

#include "clones.h"
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

// rowdot in the contract order (reduce_kernels.h): 16 lane sums, c ascending, then a fixed pairwise tree. The lanes
// are one GCC vector (element-wise ops only: the same bits at any vector width); NR rows of a × NT targets share
// each load.
constexpr int kLanes = 16;
typedef float LanesF32 __attribute__((vector_size(kLanes * sizeof(float))));
typedef double LanesF64 __attribute__((vector_size(kLanes * sizeof(double))));
template <typename T>
struct LanesOf;
template <>
struct LanesOf<float> {
  using type = LanesF32;
};
template <>
struct LanesOf<double> {
  using type = LanesF64;
};
template <typename T>
using Lanes = typename LanesOf<T>::type;
static_assert(sizeof(Lanes<float>) == kLanes * sizeof(float) && sizeof(Lanes<double>) == kLanes * sizeof(double));

template <typename V, typename T>
inline __attribute__((always_inline)) void load_lanes(V& v, const T* p) {
  std::memcpy(&v, p, sizeof v);
}

template <typename T, int NR, int NT>
inline __attribute__((always_inline)) void rowdot_block(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t K,
                                                        T* out, int64_t ldo) {
  Lanes<T> acc[NR][NT];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = Lanes<T>{};  // +0.0 in every lane
  const int64_t full = K / kLanes * kLanes;
  for (int64_t c = 0; c < full; c += kLanes) {
    Lanes<T> bv[NT];
    for (int t = 0; t < NT; ++t) load_lanes(bv[t], b + t * ldb + c);
    for (int r = 0; r < NR; ++r) {
      Lanes<T> av;
      load_lanes(av, a + r * lda + c);
      for (int t = 0; t < NT; ++t) acc[r][t] = acc[r][t] + av * bv[t];
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) {
      T lane[kLanes];
      std::memcpy(lane, &acc[r][t], sizeof lane);
      for (int64_t c = full; c < K; ++c) lane[c - full] = lane[c - full] + a[r * lda + c] * b[t * ldb + c];
      for (int w = kLanes / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) lane[l] = lane[l] + lane[l + w];
      out[r * ldo + t] = lane[0];
    }
}

template <typename T, int NR>
inline __attribute__((always_inline)) void rowdot_rows(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t K,
                                                       int64_t i0, int64_t i1, T* out, int64_t ldo) {
  int64_t i = i0;
  for (; i + 4 <= i1; i += 4) rowdot_block<T, NR, 4>(a, lda, b + i * ldb, ldb, K, out + i, ldo);
  for (; i < i1; ++i) rowdot_block<T, NR, 1>(a, lda, b + i * ldb, ldb, K, out + i, ldo);
}

template <typename T>
inline __attribute__((always_inline)) void rowdot_body(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t K,
                                                      int64_t z0, int64_t z1, int64_t i0, int64_t i1, T* out,
                                                      int64_t ldo) {
  int64_t z = z0;
  for (; z + 2 <= z1; z += 2) rowdot_rows<T, 2>(a + z * lda, lda, b, ldb, K, i0, i1, out + z * ldo, ldo);
  for (; z < z1; ++z) rowdot_rows<T, 1>(a + z * lda, lda, b, ldb, K, i0, i1, out + z * ldo, ldo);
}

TIKMIX_CLONES void rowdot_f32(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K, int64_t z0,
                              int64_t z1, int64_t i0, int64_t i1, float* out, int64_t ldo) {
  rowdot_body(a, lda, b, ldb, K, z0, z1, i0, i1, out, ldo);
}

TIKMIX_CLONES void rowdot_f64(const double* a, int64_t lda, const double* b, int64_t ldb, int64_t K, int64_t z0,
                              int64_t z1, int64_t i0, int64_t i1, double* out, int64_t ldo) {
  rowdot_body(a, lda, b, ldb, K, z0, z1, i0, i1, out, ldo);
}

}  // namespace

void rowdot(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K, int64_t z0, int64_t z1, int64_t i0,
            int64_t i1, float* out, int64_t ldo) {
  rowdot_f32(a, lda, b, ldb, K, z0, z1, i0, i1, out, ldo);
}

void rowdot(const double* a, int64_t lda, const double* b, int64_t ldb, int64_t K, int64_t z0, int64_t z1, int64_t i0,
            int64_t i1, double* out, int64_t ldo) {
  rowdot_f64(a, lda, b, ldb, K, z0, z1, i0, i1, out, ldo);
}

int64_t first_nonfinite(const float* x, int64_t rows, int64_t cols, int64_t ld) { return scan(x, rows, cols, ld); }
int64_t first_nonfinite(const double* x, int64_t rows, int64_t cols, int64_t ld) { return scan(x, rows, cols, ld); }

}  // namespace tikmix::cpu
