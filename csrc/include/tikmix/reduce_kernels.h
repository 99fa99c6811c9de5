// Torch-free kernels of the reduce family (sketch_kron, segment_sum/mean, group_influence, mixture_scores), and
// the numerical CONTRACTS the CPU and CUDA implementations share. Sketch family: sketch_kernels.h; RNG: rng.h.
// Pointers are raw, sizes int64, no ATen types: csrc/binding/reduce_cpu.cpp adapts tensors to these and runs
// them inside at::parallel_for (each function below is one task: thread-safe, results independent of threads).
//
// ---- sketch_kron -------------------------------------------------------------------------------------------------
//   R_in  = unit-sign tile of R for seed kron_seed(seed, layer, 0), rows = input features  [i, k_in]  (±1)
//   R_out = unit-sign tile of R for seed kron_seed(seed, layer, 1), rows = output features [o, k_out] (±1)
//   y[n, p·k_in + q] = kron_scale(k_in, k_out) · (R_outᵀ · (Σ_t g[n,t]·a[n,t]ᵀ) · R_in)[p, q]
//                    = ((R_out/√k_out) ⊗ (R_in/√k_in))ᵀ · vec_row(W_n),  W_n = Σ_t g[n,t] a[n,t]ᵀ  ([o, i])
//   computed in fp32 as Ã = a·R_in, g̃ = g·R_out (rowdot of the rows of a and g against the ±1 tiles, in rowdot's
//   order below; products with ±1 are exact), Y = g̃ᵀ·Ã per sample (kron_outer: a sum over tokens t ascending
//   from +0.0), then ONE multiplication by kron_scale = float(1 / sqrt(double(k_in) · double(k_out))). Equal to the
//   float64 identity to fp32 rounding; bit-exact for small-integer inputs (all partial sums exact).
//
// ---- segment_sum / segment_mean: the summation order (bit-exact contract, CPU == CUDA) ----------------------------
//   Rows are cut into fixed chunks of kSegmentChunkRows = 4096 rows: chunk q = rows [4096·q, 4096·q + 4096).
//   For group j and column c, in the input dtype T (float or double), IEEE adds only (no FMA, no reassociation):
//     part_q = +0.0;  for rows z of chunk q with ids[z] == j, ascending:  part_q = part_q + x[z, c]
//     out    = +0.0;  for chunks q ascending:                              out    = out + part_q
//     mean:  out = count_j > 0 ? out / T(count_j) : 0   (IEEE division in T; count_j = #{z : ids[z] == j})
//   A group with no rows gives 0 (sum and mean). Chunks without rows of j may be skipped: part_q is then +0.0,
//   and `out` can never be −0.0 (it starts at +0.0 and +0.0 + −0.0 = +0.0), so adding +0.0 changes nothing.
//   Column partitioning (strips, tiles, threads, blocks) is free: columns are independent.
//
// ---- rowdot (the products of group_influence and sketch_kron): the summation order (thread-count independent) ----------------------
//   out[z, i] = Σ_c a[z, c] · b[i, c] in the input dtype T, IEEE only (no FMA): 16 lane sums from +0.0,
//     acc[c mod 16] = acc[c mod 16] + a[z, c] · b[i, c]   for c = 0, 1, …, K−1 (products rounded to T first),
//   then the lanes pairwise: acc[l] += acc[l + w] for w = 8, 4, 2, 1 (l < w); out = acc[0]. Each output element is
//   one task's, so no split of rows or targets changes a bit.
//
// ---- mixture_scores: per-candidate draw counts and the resampled mean (bit-exact contract, CPU == CUDA) ------------
//   Weights w = candidates[c, :] converted to float64. Every w_j must be finite and ≥ 0, and
//     s = (((0 + w_0) + w_1) + …) + w_{G−1}           (sequential float64 sum — NOT pairwise, so not numpy.sum;
//                                                      numpy.cumsum(w)[-1] or a Python loop reproduce it)
//   must be finite and > 0. Largest-remainder rounding of the expected counts:
//     q_j = (w_j / s) · double(draws),  f_j = floor(q_j),  r_j = q_j − f_j            (float64)
//     remaining = draws − Σ_j f_j;  the `remaining` domains with w_j > 0 first in the order (r_j descending,
//     j ascending) get one more draw. count_j = f_j (+1).  Σ_j count_j = draws. (0 ≤ remaining ≤ #{w_j > 0} holds
//     for draws < 2^31 and G < 2^20, the checked limits: the float64 rounding of q_j and s is too small to move it.)
//   A domain j with count_j > 0 and no rows (n_j = 0) is an error. Draw t ∈ [0, count_j) of domain j takes
//     row = rows_j[ resample_word(rng_key(seed), c, j, t) mod n_j ]   (rows_j: rows with ids == j, input order)
//   and score[c, i] = T( acc_i / double(draws) ), acc_i = float64 sum of double(per_sample[row, i]) over draws in
//   the order j ascending, then t ascending, starting from +0.0 (IEEE adds, no FMA). T = per_sample's dtype.
#pragma once
#include <cstdint>

namespace tikmix {

constexpr int64_t kSegmentChunkRows = 4096;     // the fixed row chunk of the segment-sum contract
constexpr int64_t kMixtureMaxDraws = int64_t(1) << 31;   // draws must be < 2^31
constexpr int64_t kMixtureMaxGroups = int64_t(1) << 20;  // candidates' G must be < 2^20

}  // namespace tikmix

namespace tikmix::cpu {

// ---- sketch_kron -------------------------------------------------------------------------------------------------
// The single fp32 factor applied to the unit-sign product: float(1 / sqrt(double(k_in) · double(k_out))).
float kron_scale(int64_t k_in, int64_t k_out);
// Rows [p0, p1) of one sample's Y: out[p · k_in + q] = scale · Σ_{t<T} gt[t · ldg + p] · at[t · lda + q] (q < k_in),
// the sum in fp32 over t ascending from +0.0 (IEEE, no FMA), then one multiplication by scale.
// gt: g̃ of the sample [T, ≥ p1] (row stride ldg); at: Ã of the sample [T, k_in] (row stride lda).
void kron_outer(const float* gt, int64_t ldg, const float* at, int64_t lda, int64_t T, int64_t p0, int64_t p1,
                int64_t k_in, float scale, float* out);

// ---- rowdot ------------------------------------------------------------------------------------------------------
// out[z · ldo + i] = Σ_c a[z · lda + c] · b[i · ldb + c] (c < K) for z in [z0, z1), i in [i0, i1), in the contract
// order above. Thread-safe for disjoint (z, i) ranges.
void rowdot(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K, int64_t z0, int64_t z1, int64_t i0,
            int64_t i1, float* out, int64_t ldo);
void rowdot(const double* a, int64_t lda, const double* b, int64_t ldb, int64_t K, int64_t z0, int64_t z1, int64_t i0,
            int64_t i1, double* out, int64_t ldo);

// ---- segments ----------------------------------------------------------------------------------------------------
// Stable counting sort of rows by group: rows of group j are rows[offsets[j] .. offsets[j+1]) in ascending order.
// ids: [n]; offsets: [num_groups + 1]; rows: [n]. Returns -1 when every id is in [0, num_groups), otherwise the
// index of the first id outside it (offsets/rows are then unspecified).
int64_t segment_plan(const int64_t* ids, int64_t n, int64_t num_groups, int64_t* offsets, int64_t* rows);
int64_t segment_plan(const int32_t* ids, int64_t n, int64_t num_groups, int64_t* offsets, int64_t* rows);

// One task of segment_sum/segment_mean in the contract order: out[c] for columns [col0, col0 + cols) of group
// `group`. x: [N, ·] with row stride ldx and column stride 1; offsets/rows: from segment_plan; out: cols values.
void segment_reduce(const float* x, int64_t ldx, const int64_t* offsets, const int64_t* rows, int64_t group,
                    int64_t col0, int64_t cols, bool mean, float* out);
void segment_reduce(const double* x, int64_t ldx, const int64_t* offsets, const int64_t* rows, int64_t group,
                    int64_t col0, int64_t cols, bool mean, double* out);

// ---- group_influence ---------------------------------------------------------------------------------------------
// Linear index r·cols + c of the first non-finite (NaN/±inf) entry of x[rows, cols] (row stride ld, column stride
// 1), scanning row-major; -1 when all are finite.
int64_t first_nonfinite(const float* x, int64_t rows, int64_t cols, int64_t ld);
int64_t first_nonfinite(const double* x, int64_t rows, int64_t cols, int64_t ld);

// ---- mixture_scores ----------------------------------------------------------------------------------------------
enum MixtureStatus : int {
  kMixtureOk = 0,
  kMixtureNonFinite = 1,  // w[*bad] is NaN or ±inf
  kMixtureNegative = 2,   // w[*bad] < 0
  kMixtureBadSum = 3,     // the sum of w is 0 or overflows to inf
  kMixtureInternal = 4,   // remaining units outside [0, #positive] (cannot happen within the checked limits)
};
// Draw counts of one candidate (contract above). w: [G] float64; counts: [G]. Returns a MixtureStatus; *bad is
// the offending domain index for kMixtureNonFinite / kMixtureNegative.
int mixture_counts(const double* w, int64_t num_groups, int64_t draws, int64_t* counts, int64_t* bad);

// Scores of candidates [c0, c1) (contract above). per_sample: [N, n] with row stride ld, column stride 1;
// offsets/rows: segment_plan of ids with num_groups = G; counts: [C, G] from mixture_counts (validated: no domain
// with count > 0 and no rows); acc: n float64 scratch values; out: [C, n] with row stride ldo.
void mixture_scores(const float* per_sample, int64_t ld, int64_t n, const int64_t* offsets, const int64_t* rows,
                    const int64_t* counts, int64_t num_groups, int64_t draws, uint64_t seed, int64_t c0, int64_t c1,
                    double* acc, float* out, int64_t ldo);
void mixture_scores(const double* per_sample, int64_t ld, int64_t n, const int64_t* offsets, const int64_t* rows,
                    const int64_t* counts, int64_t num_groups, int64_t draws, uint64_t seed, int64_t c0, int64_t c1,
                    double* acc, double* out, int64_t ldo);

}  // namespace tikmix::cpu
