// Internal to csrc/cpu: the per-instruction-set kernel table behind sketch_items() and fill_signs_f32().
// sketch.cpp holds the portable kernels, the driver and the dispatch; sketch_avx512.cpp the AVX-512 / AVX512-BF16
// ones and sketch_avx2.cpp the AVX2 + FMA ones, compiled with per-function target attributes and chosen at run time
// (never -march=native).
#pragma once
#include <cstdint>

#include "tikmix/sketch_kernels.h"

namespace tikmix::cpu::detail {

struct IsaKernels {
  const char* name = "generic";
  // B[r * ldb + c] = ±value, the signs of R[row0 + r, 64·blk0 + c], for r < rows, c < cols.
  void (*tile_f32)(uint64_t key, uint64_t row0, int64_t rows, uint64_t blk0, int64_t cols, float value, float* B,
                   int64_t ldb) = nullptr;
  // C[i, c] += Σ_{r<kc} A[i, r] · B[r, c] for i < m, c < ncols (ncols a multiple of 64): an fp32 sum over r in
  // order starting from 0, then added to C (every kernel below keeps this order).
  void (*gemm_f32)(const float* A, int64_t lda, int64_t m, const float* B, int64_t ldb, int64_t ncols, int64_t kc,
                   float* C, int64_t ldc) = nullptr;
  // A[i, j] = float(x[i · ld + j]) · scale[j] (scale may be null) for i < m, j < kc.
  void (*pack_f32)(const void* x, XType type, int64_t ld, const float* scale, int64_t m, int64_t kc, float* A,
                   int64_t lda) = nullptr;
  // Fused sign-apply, no tile (m ≤ 4): C[i, c] += Σ_{r<kc} A[i, r] · sign(row0 + r, 64·blk0 + c), c < 64·nblk,
  // in the same order as gemm_f32.
  // Null: the driver uses tile_f32 + gemm_f32 instead.
  void (*fused_f32)(const float* A, int64_t lda, int64_t m, int64_t kc, uint64_t key, uint64_t row0, uint64_t blk0,
                    int64_t nblk, float* C, int64_t ldc) = nullptr;
  // bf16 VNNI tile (pairs of rows interleaved): the 32-bit word B[p · ldb + c] holds the bf16 signs (±1) of
  // R[row0 + 2p, 64·blk0 + c] (low half) and R[row0 + 2p + 1, …] (high half; +1 past `rows`), p < ceil(rows/2).
  void (*tile_bf16)(uint64_t key, uint64_t row0, int64_t rows, uint64_t blk0, int64_t nblk, uint32_t* B,
                    int64_t ldb) = nullptr;
  // C[i, c] += Σ_{p<kp} dot(A[i, p], B[p, c]) with A, B bf16 pairs (vdpbf16ps), fp32 accumulation, ncols % 64 == 0.
  void (*gemm_bf16)(const uint32_t* A, int64_t lda, int64_t m, const uint32_t* B, int64_t ldb, int64_t ncols,
                    int64_t kp, float* C, int64_t ldc) = nullptr;
  // ---- table path ("four Russians" on the signs; N ≥ 5) ----
  // Rows come in groups of kGroupRows = 6; a block holds kGroups = 8 groups (48 rows). For each group and each
  // sample, the 64 signed sums T[e] = Σ_j ±x[row j] (bit j of e set ⇔ R[row j, c] < 0) are built once, in row
  // order; a column then costs one table lookup-add per group instead of 6 multiply-adds.
  // I[g · ldi + c] = the 6 sign bits of rows row0 + 6g + j (j < 6) at column 64·blk0 + c, for g < 8, c < 64·nblk.
  void (*table_indices)(uint64_t key, uint64_t row0, uint64_t blk0, int64_t nblk, uint8_t* I, int64_t ldi) = nullptr;
  // For `lanes` (16 or 32) samples: C[c · lanes + s] += Σ_{g<8} T_g[I[g, c]][s] (a sum from 0 in group order),
  // with T built from x[s, j] (s < m, j < kc ≤ 48, converted to fp32 and multiplied by scale; zero beyond).
  // work: at least table_work_floats(lanes) floats, 64-byte aligned.
  void (*table_block)(const void* x, XType type, int64_t ld, const float* scale, int64_t m, int64_t kc, int64_t lanes,
                      const uint8_t* I, int64_t ldi, int64_t ncols, float* C, float* work) = nullptr;
};

constexpr int kGroupRows = 6;
constexpr int kGroups = 8;
constexpr int kTableRows = kGroupRows * kGroups;  // 48 rows of R per table block
constexpr int64_t table_work_floats(int64_t lanes) { return (kTableRows + kGroups * 64) * lanes; }

// x[j] of one row (fp32, bf16 or fp16) as fp32: exact.
float load_x(const void* row, XType type, int64_t j);
// The table path's first step, shared by the portable and AVX2 kernels: xt[j · lanes + s] = x[s, j] · scale[j]
// (scale may be null) for s < m, j < kc, and 0 elsewhere in [kTableRows][lanes].
void transpose_table_x(const void* x, XType type, int64_t ld, const float* scale, int64_t m, int64_t kc,
                       int64_t lanes, float* xt);

const IsaKernels& generic_kernels();
// Fill in the AVX-512 (sketch_avx512.cpp) or AVX2 + FMA (sketch_avx2.cpp) entries when the CPU supports them;
// return false otherwise (the table is then unchanged).
bool avx512_kernels(IsaKernels& table, bool allow_bf16);
bool avx2_kernels(IsaKernels& table);
// The table in use (selected once: AVX512-BF16 → AVX-512 → AVX2 → generic, capped by TIKMIX_CPU_ISA).
const IsaKernels& kernels();

}  // namespace tikmix::cpu::detail
