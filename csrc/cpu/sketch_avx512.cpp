// AVX-512 (and AVX512-BF16) kernels of the CPU sketch. Every function here carries a target attribute and is only
// reached after __builtin_cpu_supports() said yes (avx512_kernels() below); the TU is built without -march flags.
//
//   tile_f32   : one SplitMix64 word → 64 fp32 signs with 4 × (mask → vblendmps → store)
//   gemm_f32   : 6 × 64 register block (24 zmm accumulators), fp32 FMA; block sum over rows in order from 0, then C += it
//   fused_f32  : N ≤ 4, no tile: acc += blend(mask, x, −x) straight from the hash bits
//   tile_bf16  : ±1 bf16 tile in pair-interleaved (VNNI) layout: pdep interleaves the bits of rows r, r+1,
//                then one vpblendmw per 32 entries
//   gemm_bf16  : 6 × 64 register block of vdpbf16ps (bf16 pairs × bf16 pairs → fp32)
//   table_*    : the table ("four Russians") path: per 6-row group, the 64 signed sums of x for 16/32 samples;
//                a column then costs one lookup-add per group (x transposed in registers while packing)
#include <immintrin.h>

#include <cstring>

#include "sketch_isa.h"
#include "tikmix/rng.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define TIKMIX_X86 1
#endif

namespace tikmix::cpu::detail {

#ifdef TIKMIX_X86

#define TIKMIX_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,bmi,bmi2,f16c,fma")))
#define TIKMIX_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,bmi,bmi2,f16c,fma,avx512bf16")))
#define TIKMIX_INLINE inline __attribute__((always_inline))

namespace {

// ---- the RNG contract, 8 rows at a time (vpmullq): lane i = sign_word(key, row + i, block) ---------------------

TIKMIX_AVX512 TIKMIX_INLINE __m512i sign_words_x8(uint64_t key, uint64_t row, uint64_t block) {
  const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i r = _mm512_add_epi64(_mm512_set1_epi64(int64_t((block << kRowBits) + row)), lane);
  __m512i z = _mm512_add_epi64(_mm512_set1_epi64(int64_t(key)), _mm512_mullo_epi64(r, _mm512_set1_epi64(int64_t(kGolden))));
  z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 30));
  z = _mm512_mullo_epi64(z, _mm512_set1_epi64(int64_t(0xBF58476D1CE4E5B9ULL)));
  z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 27));
  z = _mm512_mullo_epi64(z, _mm512_set1_epi64(int64_t(0x94D049BB133111EBULL)));
  z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
  return z;
}

// ---- fp32 ----------------------------------------------------------------------------------------------------

TIKMIX_AVX512 void tile_f32_avx512(uint64_t key, uint64_t row0, int64_t rows, uint64_t blk0, int64_t cols,
                                   float value, float* B, int64_t ldb) {
  const __m512 plus = _mm512_set1_ps(value), minus = _mm512_set1_ps(-value);
  const int64_t words = (cols + 63) / 64;
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = B + r * ldb;
    for (int64_t b = 0; b < words; ++b) {
      const uint64_t w = sign_word(key, row0 + uint64_t(r), blk0 + uint64_t(b));
      float* out = dst + 64 * b;
      const int64_t left = cols - 64 * b;
      if (left >= 64) {
        _mm512_storeu_ps(out, _mm512_mask_blend_ps(__mmask16(w), plus, minus));
        _mm512_storeu_ps(out + 16, _mm512_mask_blend_ps(__mmask16(w >> 16), plus, minus));
        _mm512_storeu_ps(out + 32, _mm512_mask_blend_ps(__mmask16(w >> 32), plus, minus));
        _mm512_storeu_ps(out + 48, _mm512_mask_blend_ps(__mmask16(w >> 48), plus, minus));
      } else {
        for (int q = 0; q < 4 && 16 * q < left; ++q) {
          const int64_t n = left - 16 * q < 16 ? left - 16 * q : 16;
          const __mmask16 keep = __mmask16((1u << n) - 1u);
          _mm512_mask_storeu_ps(out + 16 * q, keep, _mm512_mask_blend_ps(__mmask16(w >> (16 * q)), plus, minus));
        }
      }
    }
  }
}

template <int MR>
TIKMIX_AVX512 TIKMIX_INLINE void mk_f32(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t kc, float* C,
                                        int64_t ldc) {
  __m512 c[MR][4];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) c[i][j] = _mm512_setzero_ps();
  for (int64_t r = 0; r < kc; ++r) {
    const float* b = B + r * ldb;
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), b2 = _mm512_load_ps(b + 32),
                 b3 = _mm512_load_ps(b + 48);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(A[i * lda + r]);
      c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
      c[i][2] = _mm512_fmadd_ps(a, b2, c[i][2]);
      c[i][3] = _mm512_fmadd_ps(a, b3, c[i][3]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(C + i * ldc + 16 * j, _mm512_add_ps(_mm512_loadu_ps(C + i * ldc + 16 * j), c[i][j]));
}

TIKMIX_AVX512 void gemm_f32_avx512(const float* A, int64_t lda, int64_t m, const float* B, int64_t ldb, int64_t ncols,
                                   int64_t kc, float* C, int64_t ldc) {
  constexpr int MR = 6;
  int64_t i = 0;
  for (; i + MR <= m; i += MR)
    for (int64_t j = 0; j < ncols; j += 64) mk_f32<MR>(A + i * lda, lda, B + j, ldb, kc, C + i * ldc + j, ldc);
  const int64_t rest = m - i;
  for (int64_t j = 0; j < ncols && rest > 0; j += 64) {
    const float* a = A + i * lda;
    float* c = C + i * ldc + j;
    switch (rest) {
      case 1: mk_f32<1>(a, lda, B + j, ldb, kc, c, ldc); break;
      case 2: mk_f32<2>(a, lda, B + j, ldb, kc, c, ldc); break;
      case 3: mk_f32<3>(a, lda, B + j, ldb, kc, c, ldc); break;
      case 4: mk_f32<4>(a, lda, B + j, ldb, kc, c, ldc); break;
      default: mk_f32<5>(a, lda, B + j, ldb, kc, c, ldc); break;
    }
  }
}

TIKMIX_AVX512 void pack_f32_avx512(const void* x, XType type, int64_t ld, const float* scale, int64_t m, int64_t kc,
                                   float* A, int64_t lda) {
  for (int64_t i = 0; i < m; ++i) {
    float* dst = A + i * lda;
    int64_t j = 0;
    if (type == XType::kF32) {
      const float* src = static_cast<const float*>(x) + i * ld;
      if (!scale) {
        std::memcpy(dst, src, size_t(kc) * 4);
        continue;
      }
      for (; j + 16 <= kc; j += 16)
        _mm512_storeu_ps(dst + j, _mm512_mul_ps(_mm512_loadu_ps(src + j), _mm512_loadu_ps(scale + j)));
      for (; j < kc; ++j) dst[j] = src[j] * scale[j];
      continue;
    }
    const uint16_t* src = static_cast<const uint16_t*>(x) + i * ld;
    for (; j < kc; j += 16) {
      const int64_t n = kc - j < 16 ? kc - j : 16;
      const __mmask16 keep = __mmask16(n == 16 ? 0xFFFFu : ((1u << n) - 1u));
      const __m256i h = _mm256_maskz_loadu_epi16(keep, src + j);
      __m512 v = type == XType::kBF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                      : _mm512_cvtph_ps(h);
      if (scale) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(keep, scale + j));
      _mm512_mask_storeu_ps(dst + j, keep, v);
    }
  }
}

// N ≤ 4: C[i, c] += Σ_r A[i, r] · sign(row0 + r, c), column tiles of 16 zmm accumulators in total.
template <int M, int W>  // M rows of x, W hash words (64 columns each) per column tile; M · W · 4 ≤ 16 zmm
TIKMIX_AVX512 TIKMIX_INLINE void fused_tile(const float* A, int64_t lda, int64_t kc, uint64_t key, uint64_t row0,
                                            uint64_t blk, float* C, int64_t ldc) {
  __m512 acc[M][4 * W];
#pragma GCC unroll 4
  for (int i = 0; i < M; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < 4 * W; ++j) acc[i][j] = _mm512_setzero_ps();
  const __m512i signbit = _mm512_set1_epi32(int(0x80000000u));
  alignas(64) uint64_t words[W][8];
  for (int64_t r8 = 0; r8 < kc; r8 += 8) {
#pragma GCC unroll 4
    for (int q = 0; q < W; ++q)
      _mm512_store_si512(words[q], sign_words_x8(key, row0 + uint64_t(r8), blk + uint64_t(q)));
    const int rows = kc - r8 < 8 ? int(kc - r8) : 8;
    for (int rr = 0; rr < rows; ++rr) {
      const int64_t r = r8 + rr;
#pragma GCC unroll 4
      for (int i = 0; i < M; ++i) {
        const __m512i xv = _mm512_castps_si512(_mm512_set1_ps(A[i * lda + r]));
#pragma GCC unroll 4
        for (int q = 0; q < W; ++q)
#pragma GCC unroll 4
          for (int h = 0; h < 4; ++h) {
            // Flip the sign bit of x where the hash bit is set (x · (±1), exact), then add.
            const __m512i v = _mm512_mask_xor_epi32(xv, __mmask16(words[q][rr] >> (16 * h)), xv, signbit);
            acc[i][4 * q + h] = _mm512_add_ps(acc[i][4 * q + h], _mm512_castsi512_ps(v));
          }
      }
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < M; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < 4 * W; ++j)
      _mm512_storeu_ps(C + i * ldc + 16 * j, _mm512_add_ps(_mm512_loadu_ps(C + i * ldc + 16 * j), acc[i][j]));
}

template <int M, int W>
TIKMIX_AVX512 TIKMIX_INLINE void fused_rows(const float* A, int64_t lda, int64_t kc, uint64_t key, uint64_t row0,
                                            uint64_t blk0, int64_t nblk, float* C, int64_t ldc) {
  int64_t b = 0;
  for (; b + W <= nblk; b += W) fused_tile<M, W>(A, lda, kc, key, row0, blk0 + uint64_t(b), C + 64 * b, ldc);
  for (; b < nblk; ++b) fused_tile<M, 1>(A, lda, kc, key, row0, blk0 + uint64_t(b), C + 64 * b, ldc);
}

TIKMIX_AVX512 void fused_f32_avx512(const float* A, int64_t lda, int64_t m, int64_t kc, uint64_t key, uint64_t row0,
                                    uint64_t blk0, int64_t nblk, float* C, int64_t ldc) {
  switch (m) {
    case 1: fused_rows<1, 4>(A, lda, kc, key, row0, blk0, nblk, C, ldc); break;
    case 2: fused_rows<2, 2>(A, lda, kc, key, row0, blk0, nblk, C, ldc); break;
    case 3: fused_rows<3, 1>(A, lda, kc, key, row0, blk0, nblk, C, ldc); break;
    default: fused_rows<4, 1>(A, lda, kc, key, row0, blk0, nblk, C, ldc); break;
  }
}

// ---- bf16 ----------------------------------------------------------------------------------------------------

TIKMIX_AVX512 void tile_bf16_avx512(uint64_t key, uint64_t row0, int64_t rows, uint64_t blk0, int64_t nblk,
                                    uint32_t* B, int64_t ldb) {
  const __m512i plus = _mm512_set1_epi16(0x3F80), minus = _mm512_set1_epi16(int16_t(0xBF80));
  constexpr uint64_t kEven = 0x5555555555555555ULL, kOdd = 0xAAAAAAAAAAAAAAAAULL;
  const int64_t pairs = (rows + 1) / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    const uint64_t ra = row0 + uint64_t(2 * p);
    const bool second = 2 * p + 1 < rows;
    uint32_t* dst = B + p * ldb;
    for (int64_t b = 0; b < nblk; ++b) {
      const uint64_t w0 = sign_word(key, ra, blk0 + uint64_t(b));
      const uint64_t w1 = second ? sign_word(key, ra + 1, blk0 + uint64_t(b)) : 0;
      // Bit 2i of a mask: row 2p, column i; bit 2i+1: row 2p+1, column i (32 columns per 64-bit mask).
      const uint64_t lo = _pdep_u64(w0 & 0xFFFFFFFFu, kEven) | _pdep_u64(w1 & 0xFFFFFFFFu, kOdd);
      const uint64_t hi = _pdep_u64(w0 >> 32, kEven) | _pdep_u64(w1 >> 32, kOdd);
      uint32_t* out = dst + 64 * b;
      _mm512_storeu_si512(out, _mm512_mask_blend_epi16(__mmask32(lo), plus, minus));
      _mm512_storeu_si512(out + 16, _mm512_mask_blend_epi16(__mmask32(lo >> 32), plus, minus));
      _mm512_storeu_si512(out + 32, _mm512_mask_blend_epi16(__mmask32(hi), plus, minus));
      _mm512_storeu_si512(out + 48, _mm512_mask_blend_epi16(__mmask32(hi >> 32), plus, minus));
    }
  }
}

template <int MR>
TIKMIX_AVX512BF16 TIKMIX_INLINE void mk_bf16(const uint32_t* A, int64_t lda, const uint32_t* B, int64_t ldb, int64_t kp,
                                             float* C, int64_t ldc) {
  __m512 c[MR][4];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) c[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    const uint32_t* b = B + p * ldb;
    const __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16),
                   b2 = (__m512bh)_mm512_load_si512(b + 32), b3 = (__m512bh)_mm512_load_si512(b + 48);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(int(A[i * lda + p]));
      c[i][0] = _mm512_dpbf16_ps(c[i][0], a, b0);
      c[i][1] = _mm512_dpbf16_ps(c[i][1], a, b1);
      c[i][2] = _mm512_dpbf16_ps(c[i][2], a, b2);
      c[i][3] = _mm512_dpbf16_ps(c[i][3], a, b3);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(C + i * ldc + 16 * j, _mm512_add_ps(_mm512_loadu_ps(C + i * ldc + 16 * j), c[i][j]));
}

TIKMIX_AVX512BF16 void gemm_bf16_avx512(const uint32_t* A, int64_t lda, int64_t m, const uint32_t* B, int64_t ldb,
                                        int64_t ncols, int64_t kp, float* C, int64_t ldc) {
  constexpr int MR = 6;
  int64_t i = 0;
  for (; i + MR <= m; i += MR)
    for (int64_t j = 0; j < ncols; j += 64) mk_bf16<MR>(A + i * lda, lda, B + j, ldb, kp, C + i * ldc + j, ldc);
  const int64_t rest = m - i;
  for (int64_t j = 0; j < ncols && rest > 0; j += 64) {
    const uint32_t* a = A + i * lda;
    float* c = C + i * ldc + j;
    switch (rest) {
      case 1: mk_bf16<1>(a, lda, B + j, ldb, kp, c, ldc); break;
      case 2: mk_bf16<2>(a, lda, B + j, ldb, kp, c, ldc); break;
      case 3: mk_bf16<3>(a, lda, B + j, ldb, kp, c, ldc); break;
      case 4: mk_bf16<4>(a, lda, B + j, ldb, kp, c, ldc); break;
      default: mk_bf16<5>(a, lda, B + j, ldb, kp, c, ldc); break;
    }
  }
}

// ---- table path ----------------------------------------------------------------------------------------------

TIKMIX_AVX512 void table_indices_avx512(uint64_t key, uint64_t row0, uint64_t blk0, int64_t nblk, uint8_t* I,
                                        int64_t ldi) {
  alignas(64) uint64_t words[kTableRows];
  for (int64_t b = 0; b < nblk; ++b) {
#pragma GCC unroll 6
    for (int r = 0; r < kTableRows; r += 8)
      _mm512_store_si512(words + r, sign_words_x8(key, row0 + uint64_t(r), blk0 + uint64_t(b)));
    for (int g = 0; g < kGroups; ++g) {
      __m512i acc = _mm512_setzero_si512();
#pragma GCC unroll 6
      for (int j = 0; j < kGroupRows; ++j) {
        // byte c of the result gets bit j ⇔ bit c of the word (column 64·b + c of row 6g + j) is set
        const __mmask64 bits = __mmask64(words[kGroupRows * g + j]);
        acc = _mm512_or_si512(acc, _mm512_maskz_mov_epi8(bits, _mm512_set1_epi8(char(1 << j))));
      }
      _mm512_storeu_si512(I + g * ldi + 64 * b, acc);
    }
  }
}

// In-register transpose of a 16 × 16 float block (rows r[i] become columns).
TIKMIX_AVX512 TIKMIX_INLINE void transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h)
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + i + 4], 0x88);
      t[8 * h + i + 4] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + i + 4], 0xdd);
    }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

// Up to 16 values x[j0 .. j0+n) of one row as fp32 (times scale), zero beyond n.
TIKMIX_AVX512 TIKMIX_INLINE __m512 load_row16(const void* row, XType type, const float* scale, int64_t j0, int64_t n) {
  const __mmask16 keep = __mmask16(n >= 16 ? 0xFFFFu : ((1u << n) - 1u));
  __m512 v;
  if (type == XType::kF32) {
    v = _mm512_maskz_loadu_ps(keep, static_cast<const float*>(row) + j0);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(keep, static_cast<const uint16_t*>(row) + j0);
    v = type == XType::kBF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                             : _mm512_cvtph_ps(h);
  }
  if (scale) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(keep, scale + j0));
  return v;
}

template <int NV>
TIKMIX_AVX512 TIKMIX_INLINE void table_block_nv(const void* x, XType type, int64_t ld, const float* scale, int64_t m,
                                                int64_t kc, const uint8_t* I, int64_t ldi, int64_t ncols, float* C,
                                                float* work) {
  constexpr int L = 16 * NV;
  float* xt = work;              // [48][L]: xt[j · L + s] = x[s, j]
  float* T = work + kTableRows * L;  // [8][64][L]
  const size_t esize = type == XType::kF32 ? 4 : 2;
  // 1. Pack x transposed, 16 samples × 16 rows at a time.
  for (int sg = 0; sg < NV; ++sg) {
    for (int j0 = 0; j0 < kTableRows; j0 += 16) {
      const int64_t n = kc - j0 < 0 ? 0 : (kc - j0 > 16 ? 16 : kc - j0);
      __m512 v[16];
#pragma GCC unroll 16
      for (int s = 0; s < 16; ++s) {
        const int64_t i = 16 * sg + s;
        v[s] = (i < m && n > 0)
                   ? load_row16(static_cast<const unsigned char*>(x) + size_t(i) * size_t(ld) * esize, type, scale, j0, n)
                   : _mm512_setzero_ps();
      }
      transpose16(v);
#pragma GCC unroll 16
      for (int t = 0; t < 16; ++t) _mm512_store_ps(xt + (j0 + t) * L + 16 * sg, v[t]);
    }
  }
  // 2. Tables: level j adds row j to the 2^j sums over rows < j (+x: index unchanged, −x: index + 2^j).
  const __m512i signbit = _mm512_set1_epi32(int(0x80000000u));
  for (int g = 0; g < kGroups; ++g) {
    float* Tg = T + g * 64 * L;
    const float* xg = xt + kGroupRows * g * L;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const __m512 x0 = _mm512_load_ps(xg + 16 * v);
      _mm512_store_ps(Tg + 16 * v, x0);
      _mm512_store_ps(Tg + L + 16 * v, _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x0), signbit)));
      for (int j = 1; j < kGroupRows; ++j) {
        const __m512 xj = _mm512_load_ps(xg + j * L + 16 * v);
        const int half = 1 << j;
        for (int e = 0; e < half; ++e) {
          const __m512 t = _mm512_load_ps(Tg + e * L + 16 * v);
          _mm512_store_ps(Tg + (e + half) * L + 16 * v, _mm512_sub_ps(t, xj));
          _mm512_store_ps(Tg + e * L + 16 * v, _mm512_add_ps(t, xj));
        }
      }
    }
  }
  // 3. Columns, 4 at a time: one lookup-add per group.
  for (int64_t c = 0; c < ncols; c += 4) {
    __m512 acc[4][NV];
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[q][v] = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int g = 0; g < kGroups; ++g) {
      const float* Tg = T + g * 64 * L;
      const uint8_t* Ig = I + g * ldi + c;
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        const float* e = Tg + int64_t(Ig[q]) * L;
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[q][v] = _mm512_add_ps(acc[q][v], _mm512_load_ps(e + 16 * v));
      }
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        float* p = C + (c + q) * L + 16 * v;
        _mm512_store_ps(p, _mm512_add_ps(_mm512_load_ps(p), acc[q][v]));
      }
  }
}

TIKMIX_AVX512 void table_block_avx512(const void* x, XType type, int64_t ld, const float* scale, int64_t m, int64_t kc,
                                      int64_t lanes, const uint8_t* I, int64_t ldi, int64_t ncols, float* C,
                                      float* work) {
  if (lanes == 16)
    table_block_nv<1>(x, type, ld, scale, m, kc, I, ldi, ncols, C, work);
  else
    table_block_nv<2>(x, type, ld, scale, m, kc, I, ldi, ncols, C, work);
}

}  // namespace

bool avx512_kernels(IsaKernels& table, bool allow_bf16) {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c") &&
                      __builtin_cpu_supports("fma");
  if (!avx512) return false;
  table.name = "avx512";
  table.tile_f32 = tile_f32_avx512;
  table.gemm_f32 = gemm_f32_avx512;
  table.pack_f32 = pack_f32_avx512;
  table.fused_f32 = fused_f32_avx512;
  table.table_indices = table_indices_avx512;
  table.table_block = table_block_avx512;
  if (allow_bf16 && __builtin_cpu_supports("avx512bf16")) {
    table.name = "avx512-bf16";
    table.tile_bf16 = tile_bf16_avx512;
    table.gemm_bf16 = gemm_bf16_avx512;
  }
  return true;
}

#else  // not x86 / not GCC-compatible: portable kernels only

bool avx512_kernels(IsaKernels&, bool) { return false; }

#endif

}  // namespace tikmix::cpu::detail
