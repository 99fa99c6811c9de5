// tikmix RNG contract — the single source of truth for the random projection R.
//
// R ∈ {±1/√k}^{D×k} is never stored. Entry R[r, c] (r: 64-bit global coordinate index, c: column in [0, k))
// is a pure function of (seed, r, c):
//
//   G        = 0x9E3779B97F4A7C15                              (golden-ratio increment of SplitMix64)
//   mix(z)   = SplitMix64 finaliser: z ^= z>>30; z *= 0xBF58476D1CE4E5B9; z ^= z>>27;
//                                    z *= 0x94D049BB133111EB; z ^= z>>31
//   key(s)   = mix(s + G)
//   W(s,r,b) = mix(key(s) + (b·2^44 + r)·G)                     (all arithmetic mod 2^64)
//   bit(r,c) = (W(seed, r, c >> 6) >> (c & 63)) & 1
//   R[r, c]  = (bit ? −1 : +1) · s_k,   s_k = float(1 / sqrt(double(k)))
//
// One word W gives the signs of 64 consecutive columns of one row. The sign of column c does not depend on k
// (prefix property): only the scale s_k does, and kernels apply s_k once to the fp32 accumulator at the end.
// Nothing else goes in — no thread, tile, stream, device, chunk or batch state — so every kernel (CPU or CUDA,
// any tiling or launch shape) produces bit-identical R. Implementations must use u64 integer arithmetic only
// and read bits by shifting (never by reinterpreting memory), so endianness and vector width cannot matter.
//
// Domain of validity: r < 2^44 (kMaxRows), k < 2^26 (kMaxK). Callers check and raise outside it.
//
// Derived streams (documented here so there is one definition):
//   - Kronecker sketches of linear layer `layer`: R_in uses seed  kron_seed(seed, layer, 0) and R_out uses
//     kron_seed(seed, layer, 1), with kron_seed(s, l, t) = mix(s ^ mix(2·l + t)); rows are input/output features.
//   - mixture_scores resampling: resample_word() below is the one definition of the draw hash.
//
// Golden values (pinned in tests/test_rng_contract.py):
//   key(0) = 0xe220a8397b1dcdaf, W(0,0,0) = 0x48218226ff3cd4bf, W(0,1,0) = 0xa706dd2f4d197e6f,
//   W(0,0,1) = 0xbbce8524fe9b79ad, W(42, 2^40−1, 255) = 0x7312b94f007f5046; signs of R[0, 0:16], seed 0:
//   "------+-++-+-+--".
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define TIKMIX_HD __host__ __device__ __forceinline__
#else
#define TIKMIX_HD inline
#endif

namespace tikmix {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
constexpr int kRowBits = 44;
constexpr uint64_t kMaxRows = uint64_t(1) << kRowBits;  // r must be < 2^44
constexpr int64_t kMaxK = int64_t(1) << 26;             // k must be < 2^26

TIKMIX_HD uint64_t mix64(uint64_t z) {
  z ^= z >> 30;
  z *= 0xBF58476D1CE4E5B9ULL;
  z ^= z >> 27;
  z *= 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return z;
}

TIKMIX_HD uint64_t rng_key(uint64_t seed) { return mix64(seed + kGolden); }

// 64 sign bits of row r for columns [64·block, 64·block + 64); bit i set ⇔ R[r, 64·block + i] < 0.
TIKMIX_HD uint64_t sign_word(uint64_t key, uint64_t row, uint64_t block) {
  return mix64(key + ((block << kRowBits) + row) * kGolden);
}

TIKMIX_HD bool sign_bit(uint64_t key, uint64_t row, uint64_t col) {
  return (sign_word(key, row, col >> 6) >> (col & 63)) & 1ULL;
}

TIKMIX_HD uint64_t kron_seed(uint64_t seed, uint64_t layer, uint64_t tag) {
  return mix64(seed ^ mix64(2 * layer + tag));
}

// Hash behind mixture_scores: the t-th draw of domain j for candidate c. The row drawn is
// (resample_word(key(seed), c, j, t) mod n_j)-th row of domain j (rows of a domain in input order).
// Modulo bias is ≤ n_j / 2^64: negligible and documented.
TIKMIX_HD uint64_t resample_word(uint64_t key, uint64_t candidate, uint64_t domain, uint64_t draw) {
  return mix64(mix64(key ^ mix64(candidate * kGolden + domain)) + draw * kGolden);
}

}  // namespace tikmix
