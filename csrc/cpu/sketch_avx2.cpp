// AVX2 + FMA kernels of the CPU sketch, for x86 CPUs without AVX-512. Every function carries a target attribute and
// is only reached after __builtin_cpu_supports() said yes (avx2_kernels() below); the TU has no -march flags.
// Each kernel sums in exactly the order of its portable twin in sketch.cpp (products with ±1 are exact), so fp32
// results are bit-identical to the generic and AVX-512 paths.
//
//   tile_f32      : one SplitMix64 word → 64 fp32 signs, 8 at a time (bit → lane by a variable shift, blend)
//   pack_f32      : x rows → fp32 (bf16 by a shift, fp16 by F16C), times scale
//   fused_f32     : N ≤ 4, no tile: acc += x with its sign bit flipped where the hash bit is set
//   table_indices : 6 sign bits per column, 32 columns at a time (bytes expanded from the word by vpshufb + compare)
//   table_block   : the table ("four Russians") path on 16/32-sample lanes of 8-float vectors
// AVX2 has no 64-bit vector multiply, so the hash runs on scalar registers (mulx); it costs a small fraction of the
// table lookups it feeds.
#include <immintrin.h>

#include <memory>

#include "sketch_isa.h"
#include "tikmix/rng.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define TIKMIX_X86 1
#endif

namespace tikmix::cpu::detail {

#ifdef TIKMIX_X86

#define TIKMIX_AVX2 __attribute__((target("avx2,fma,bmi,bmi2,f16c")))
#define TIKMIX_INLINE inline __attribute__((always_inline))

namespace {

// Lane q of the result has its sign bit set ⇔ bit q of `byte` is set (q < 8).
TIKMIX_AVX2 TIKMIX_INLINE __m256i sign_bits8(uint32_t byte) {
  const __m256i to_top = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
  return _mm256_and_si256(_mm256_sllv_epi32(_mm256_set1_epi32(int(byte)), to_top),
                          _mm256_set1_epi32(int(0x80000000u)));
}

// ---- fp32 tile (projection, generic tile path) -----------------------------------------------------------------

TIKMIX_AVX2 void tile_f32_avx2(uint64_t key, uint64_t row0, int64_t rows, uint64_t blk0, int64_t cols, float value,
                               float* B, int64_t ldb) {
  const __m256 plus = _mm256_set1_ps(value);
  const int64_t words = (cols + 63) / 64;
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = B + r * ldb;
    for (int64_t b = 0; b < words; ++b) {
      const uint64_t w = sign_word(key, row0 + uint64_t(r), blk0 + uint64_t(b));
      float* out = dst + 64 * b;
      const int64_t left = cols - 64 * b;
      if (left >= 64) {
        for (int q = 0; q < 8; ++q) {
          const __m256i s = sign_bits8(uint32_t(w >> (8 * q)) & 0xFFu);
          _mm256_storeu_ps(out + 8 * q, _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(plus), s)));
        }
      } else {
        for (int64_t i = 0; i < left; ++i) out[i] = ((w >> i) & 1) ? -value : value;
      }
    }
  }
}

// ---- packing ---------------------------------------------------------------------------------------------------

// Eight values x[j .. j+8) of one row as fp32 (full vectors only).
TIKMIX_AVX2 TIKMIX_INLINE __m256 load8(const void* row, XType type, int64_t j) {
  if (type == XType::kF32) return _mm256_loadu_ps(static_cast<const float*>(row) + j);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + j));
  if (type == XType::kF16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

TIKMIX_AVX2 void pack_f32_avx2(const void* x, XType type, int64_t ld, const float* scale, int64_t m, int64_t kc,
                               float* A, int64_t lda) {
  const size_t esize = type == XType::kF32 ? 4 : 2;
  for (int64_t i = 0; i < m; ++i) {
    const void* row = static_cast<const unsigned char*>(x) + size_t(i) * size_t(ld) * esize;
    float* dst = A + i * lda;
    int64_t j = 0;
    for (; j + 8 <= kc; j += 8) {
      __m256 v = load8(row, type, j);
      if (scale) v = _mm256_mul_ps(v, _mm256_loadu_ps(scale + j));
      _mm256_storeu_ps(dst + j, v);
    }
    for (; j < kc; ++j) dst[j] = scale ? load_x(row, type, j) * scale[j] : load_x(row, type, j);
  }
}

// ---- fused sign-apply (N ≤ 4) ----------------------------------------------------------------------------------

// Columns [8·q0, 8·(q0 + NC)) of one hash block for M rows of x: acc from 0 over the kc rows in order, then C += acc.
// words[r] is the hash word of row r for this block.
template <int M, int NC>
TIKMIX_AVX2 TIKMIX_INLINE void fused_tile(const float* A, int64_t lda, int64_t kc, const uint64_t* words, int q0,
                                          float* C, int64_t ldc) {
  __m256 acc[M][NC];
#pragma GCC unroll 4
  for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
    for (int q = 0; q < NC; ++q) acc[i][q] = _mm256_setzero_ps();
  for (int64_t r = 0; r < kc; ++r) {
    const uint64_t w = words[r] >> (8 * q0);
    __m256i s[NC];
#pragma GCC unroll 8
    for (int q = 0; q < NC; ++q) s[q] = sign_bits8(uint32_t(w >> (8 * q)) & 0xFFu);
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i) {
      const __m256i xv = _mm256_castps_si256(_mm256_set1_ps(A[i * lda + r]));
#pragma GCC unroll 8
      for (int q = 0; q < NC; ++q)
        acc[i][q] = _mm256_add_ps(acc[i][q], _mm256_castsi256_ps(_mm256_xor_si256(xv, s[q])));
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
    for (int q = 0; q < NC; ++q) {
      float* p = C + i * ldc + 8 * (q0 + q);
      _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc[i][q]));
    }
}

template <int M, int NC>
TIKMIX_AVX2 TIKMIX_INLINE void fused_rows(const float* A, int64_t lda, int64_t kc, uint64_t key, uint64_t row0,
                                          uint64_t blk0, int64_t nblk, float* C, int64_t ldc, uint64_t* words) {
  for (int64_t b = 0; b < nblk; ++b) {
    for (int64_t r = 0; r < kc; ++r) words[r] = sign_word(key, row0 + uint64_t(r), blk0 + uint64_t(b));
    for (int q0 = 0; q0 < 8; q0 += NC) fused_tile<M, NC>(A, lda, kc, words, q0, C + 64 * b, ldc);
  }
}

TIKMIX_AVX2 void fused_f32_avx2(const float* A, int64_t lda, int64_t m, int64_t kc, uint64_t key, uint64_t row0,
                                uint64_t blk0, int64_t nblk, float* C, int64_t ldc) {
  // One hash word per row and block, reused by every column tile of the block. The plan's d_block (≤ 1024) fits
  // the stack buffer; longer blocks get a heap one (splitting the rows would change the summation order).
  constexpr int64_t kStackRows = 1024;
  uint64_t stack_words[kStackRows];
  std::unique_ptr<uint64_t[]> heap_words;
  uint64_t* words = stack_words;
  if (kc > kStackRows) {
    heap_words.reset(new uint64_t[size_t(kc)]);
    words = heap_words.get();
  }
  switch (m) {
    case 1: fused_rows<1, 8>(A, lda, kc, key, row0, blk0, nblk, C, ldc, words); break;
    case 2: fused_rows<2, 4>(A, lda, kc, key, row0, blk0, nblk, C, ldc, words); break;
    case 3: fused_rows<3, 4>(A, lda, kc, key, row0, blk0, nblk, C, ldc, words); break;
    default: fused_rows<4, 2>(A, lda, kc, key, row0, blk0, nblk, C, ldc, words); break;
  }
}

// ---- table path ------------------------------------------------------------------------------------------------

// Byte c (c < 32) of the result is 0xFF ⇔ bit c of `bits` is set.
TIKMIX_AVX2 TIKMIX_INLINE __m256i expand_bits32(uint32_t bits) {
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i select = _mm256_set1_epi64x(int64_t(0x8040201008040201ULL));
  const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), spread);
  return _mm256_cmpeq_epi8(_mm256_and_si256(v, select), select);
}

TIKMIX_AVX2 void table_indices_avx2(uint64_t key, uint64_t row0, uint64_t blk0, int64_t nblk, uint8_t* I,
                                    int64_t ldi) {
  uint64_t words[kTableRows];
  for (int64_t b = 0; b < nblk; ++b) {
    for (int r = 0; r < kTableRows; ++r) words[r] = sign_word(key, row0 + uint64_t(r), blk0 + uint64_t(b));
    for (int g = 0; g < kGroups; ++g) {
      for (int h = 0; h < 2; ++h) {
        __m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 6
        for (int j = 0; j < kGroupRows; ++j) {
          const __m256i set = expand_bits32(uint32_t(words[kGroupRows * g + j] >> (32 * h)));
          acc = _mm256_or_si256(acc, _mm256_and_si256(set, _mm256_set1_epi8(char(1 << j))));
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(I + g * ldi + 64 * b + 32 * h), acc);
      }
    }
  }
}

// NV vectors of 8 samples (L = 8·NV lanes); CB columns per pass (CB · NV accumulators ≤ 8 of the 16 ymm registers).
template <int NV, int CB>
TIKMIX_AVX2 TIKMIX_INLINE void table_block_nv(const void* x, XType type, int64_t ld, const float* scale, int64_t m,
                                              int64_t kc, const uint8_t* I, int64_t ldi, int64_t ncols, float* C,
                                              float* work) {
  constexpr int L = 8 * NV;
  float* xt = work;                  // [48][L]: xt[j · L + s] = x[s, j] · scale[j], 0 beyond m or kc
  float* T = work + kTableRows * L;  // [8][64][L]
  // 1. x transposed (48 × L values per block: small next to the lookups below).
  transpose_table_x(x, type, ld, scale, m, kc, L, xt);
  // 2. Tables: level j adds row j to the 2^j sums over rows < j (+x: index unchanged, −x: index + 2^j).
  const __m256i signbit = _mm256_set1_epi32(int(0x80000000u));
  for (int g = 0; g < kGroups; ++g) {
    float* Tg = T + g * 64 * L;
    const float* xg = xt + kGroupRows * g * L;
    for (int v = 0; v < NV; ++v) {
      const __m256 x0 = _mm256_load_ps(xg + 8 * v);
      _mm256_store_ps(Tg + 8 * v, x0);
      _mm256_store_ps(Tg + L + 8 * v, _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(x0), signbit)));
      for (int j = 1; j < kGroupRows; ++j) {
        const __m256 xj = _mm256_load_ps(xg + j * L + 8 * v);
        const int half = 1 << j;
        for (int e = 0; e < half; ++e) {
          const __m256 t = _mm256_load_ps(Tg + e * L + 8 * v);
          _mm256_store_ps(Tg + (e + half) * L + 8 * v, _mm256_sub_ps(t, xj));
          _mm256_store_ps(Tg + e * L + 8 * v, _mm256_add_ps(t, xj));
        }
      }
    }
  }
  // 3. Columns, CB at a time: one lookup-add per group, from 0 in group order, then added to C.
  for (int64_t c = 0; c < ncols; c += CB) {
    __m256 acc[CB][NV];
#pragma GCC unroll 4
    for (int q = 0; q < CB; ++q)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[q][v] = _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int g = 0; g < kGroups; ++g) {
      const float* Tg = T + g * 64 * L;
      const uint8_t* Ig = I + g * ldi + c;
#pragma GCC unroll 4
      for (int q = 0; q < CB; ++q) {
        const float* e = Tg + int64_t(Ig[q]) * L;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[q][v] = _mm256_add_ps(acc[q][v], _mm256_load_ps(e + 8 * v));
      }
    }
#pragma GCC unroll 4
    for (int q = 0; q < CB; ++q)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        float* p = C + (c + q) * L + 8 * v;
        _mm256_store_ps(p, _mm256_add_ps(_mm256_load_ps(p), acc[q][v]));
      }
  }
}

TIKMIX_AVX2 void table_block_avx2(const void* x, XType type, int64_t ld, const float* scale, int64_t m, int64_t kc,
                                  int64_t lanes, const uint8_t* I, int64_t ldi, int64_t ncols, float* C, float* work) {
  if (lanes == 16)
    table_block_nv<2, 4>(x, type, ld, scale, m, kc, I, ldi, ncols, C, work);
  else
    table_block_nv<4, 2>(x, type, ld, scale, m, kc, I, ldi, ncols, C, work);
}

}  // namespace

bool avx2_kernels(IsaKernels& table) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
  if (!avx2) return false;
  table.name = "avx2";
  table.tile_f32 = tile_f32_avx2;
  table.pack_f32 = pack_f32_avx2;
  table.fused_f32 = fused_f32_avx2;
  table.table_indices = table_indices_avx2;
  table.table_block = table_block_avx2;
  // gemm_f32 stays the portable one: with fused_f32 and table_block set, no AVX2 plan reaches the tile GEMM.
  return true;
}

#else  // not x86 / not GCC-compatible: portable kernels only

bool avx2_kernels(IsaKernels&) { return false; }

#endif

}  // namespace tikmix::cpu::detail
