// Lane and fragment index arithmetic of the CUDA sketch kernel (csrc/cuda/sketch.cu), written as plain
// __host__ __device__ functions so that tests/test_mma_layout.py can check them on the CPU with an emulator of
// the warp's shuffles against the reference R of rng.h.
//
// Formulation. yᵀ = Rᵀ·xᵀ on the tensor cores with mma.sync.m16n8k16 (bf16 or fp16 in, fp32 accumulate):
// R is the A operand (M = output columns, K = rows of R), generated in registers from the hash; x is the
// B operand (K = rows of R, N = samples), read from shared memory with ldmatrix.
//
// One warp step covers one hash block (64 output columns) × kStepRows = 32 rows of R:
//   1. lane (t4 = lane & 3, g = lane >> 2) hashes ONE word, for row word_row(lane) of the step;
//   2. an 8×8 byte transpose among the 8 lanes that share t4 (three stages: PRMT, SHFL.BFLY, 2 PRMT) leaves
//      lane (t4, g) with byte g (columns 8g..8g+7) of the words of rows word_row(4P + t4), P = 0..7, at byte
//      position P of the pair (lo = positions 0..3, hi = positions 4..7);
//   3. each A register (two consecutive K rows of one M row) is a byte permute, a shift and one LOP3:
//      ((v << (7 − j)) & 0x80008000) ^ one, one = 0x3F803F80 (bf16 +1,+1) or 0x3C003C00 (fp16).
// Fragment rows are mapped to columns so that step 3 needs no further data movement: in m-tile i (0..3),
// fragment row g + 8h is output column 8g + 2i + h of the block (frag_column). The epilogue writes each
// accumulator to its true column; nothing else depends on this permutation.
#pragma once
#include <cstdint>
#include <cstring>

#include "tikmix/rng.h"

namespace tikmix::mma {

constexpr int kStepRows = 32;          // rows of R per warp step (two k16 MMA steps)
constexpr int kBlockCols = 64;         // output columns per warp (one hash word)
constexpr int kMTiles = 4;             // m16 tiles per warp step (64 columns)
constexpr uint32_t kSignMask = 0x80008000u;
constexpr uint32_t kOneBF16x2 = 0x3F803F80u;
constexpr uint32_t kOneF16x2 = 0x3C003C00u;

TIKMIX_HD int lane_t4(int lane) { return lane & 3; }
TIKMIX_HD int lane_g(int lane) { return lane >> 2; }

// Row (within the 32-row step) whose word lane (t4, g) hashes: {2t4, 2t4+1, 2t4+8, 2t4+9, +16, …}[g].
TIKMIX_HD int word_row(int lane) {
  const int t4 = lane_t4(lane), g = lane_g(lane);
  return 2 * t4 + (g & 1) + 8 * (g >> 1);
}

// PRMT in its default mode as CUDA's __byte_perm: byte n of the result is byte ((s >> 4n) & 7) of the
// 8-byte value {b:a} (a = bytes 0..3, b = bytes 4..7).
TIKMIX_HD uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t s) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(a, b, s);
#else
  const uint64_t v = (uint64_t(b) << 32) | a;
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n) r |= uint32_t((v >> (8 * ((s >> (4 * n)) & 7))) & 0xFF) << (8 * n);
  return r;
#endif
}

// The transpose's three stages exchange with the lane at xor distance 16, 8, 4 (byte-position bit 2, 1, 0).
constexpr int kTransposeStages = 3;
TIKMIX_HD int stage_lane_xor(int stage) { return 16 >> stage; }
TIKMIX_HD int stage_bit(int stage) { return 4 >> stage; }

// Per-lane PRMT selectors of the transpose (computed once per kernel, kept in registers).
struct TransposeSelectors {
  uint32_t send[kTransposeStages];  // byte_perm(lo, hi, send): the 4 bytes this lane gives away
  uint32_t lo[kTransposeStages];    // byte_perm(lo, recv, lo_sel): new positions 0..3
  uint32_t hi[kTransposeStages];    // byte_perm(hi, recv, hi_sel): new positions 4..7
};

// At the stage for bit m, a byte at position P of lane g moves iff bit m of P differs from bit m of g; it goes
// to lane g ^ m, position P ^ m. After the three stages the byte that started at (lane g', position P) sits at
// (lane P, position g'): an 8×8 transpose. Bytes travel in increasing position order, so received byte q lands
// on the q-th position this lane gave away.
TIKMIX_HD TransposeSelectors transpose_selectors(int lane) {
  TransposeSelectors s{};
  const int g = lane_g(lane);
  for (int stage = 0; stage < kTransposeStages; ++stage) {
    const int m = stage_bit(stage);
    uint32_t send = 0, lo = 0, hi = 0;
    int q = 0;
    for (int p = 0; p < 8; ++p) {
      const bool gives = ((p & m) != 0) != ((g & m) != 0);
      // keep: byte (p & 3) of its own register; receive: byte 4 + q of recv
      const uint32_t src = gives ? uint32_t(4 + q) : uint32_t(p & 3);
      if (p < 4) lo |= src << (4 * p);
      else hi |= src << (4 * (p - 4));
      if (gives) send |= uint32_t(p) << (4 * q++);
    }
    s.send[stage] = send;
    s.lo[stage] = lo;
    s.hi[stage] = hi;
  }
  return s;
}

// Split a lane's word into the (lo, hi) byte pair the transpose works on.
TIKMIX_HD void word_to_pair(uint64_t w, uint32_t& lo, uint32_t& hi) {
  lo = uint32_t(w);
  hi = uint32_t(w >> 32);
}
TIKMIX_HD uint32_t transpose_send(uint32_t lo, uint32_t hi, const TransposeSelectors& s, int stage) {
  return byte_perm(lo, hi, s.send[stage]);
}
TIKMIX_HD void transpose_merge(uint32_t& lo, uint32_t& hi, uint32_t recv, const TransposeSelectors& s, int stage) {
  const uint32_t nlo = byte_perm(lo, recv, s.lo[stage]);
  const uint32_t nhi = byte_perm(hi, recv, s.hi[stage]);
  lo = nlo;
  hi = nhi;
}

// ((v & mask) ^ one) as ONE LOP3 (LUT 0x6a = (a & b) ^ c); ptxas otherwise emits AND + XOR.
TIKMIX_HD uint32_t and_xor(uint32_t v, uint32_t mask, uint32_t one) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0x6a;" : "=r"(r) : "r"(v), "r"(mask), "r"(one));
  return r;
#else
  return (v & mask) ^ one;
#endif
}

// Byte-pair selectors of step 3: for k16 half p (rows 2t4+8p, 2t4+8p+1 of the k-step) put the byte of the
// lower row at byte 1 and the higher row at byte 3, so that bit j of each lands on bit 15 / 31 after << (7−j).
TIKMIX_HD uint32_t pair_selector(int p) { return p ? 0x3322u : 0x1100u; }

// The A fragments of one warp step, a[ks][i][r]: k-step ks (rows 16ks..16ks+15 of the step), m-tile i, PTX
// register r (a0..a3 of mma.m16n8k16: r = h + 2p, h = fragment row half, p = K half). `lo`/`hi` come from the
// transpose; `one` selects bf16 or fp16.
TIKMIX_HD void a_fragments(uint32_t lo, uint32_t hi, uint32_t mask, uint32_t one, uint32_t (&a)[2][kMTiles][4]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int ks = 0; ks < 2; ++ks) {
    const uint32_t u = ks ? hi : lo;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int p = 0; p < 2; ++p) {
      const uint32_t v = byte_perm(u, u, pair_selector(p));
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int i = 0; i < kMTiles; ++i) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
        for (int h = 0; h < 2; ++h) {
          const int j = 2 * i + h;
          a[ks][i][h + 2 * p] = and_xor(v << (7 - j), mask, one);
        }
      }
    }
  }
}

// Output column (within the 64-column block) of fragment row `frow` (0..15) of m-tile i.
TIKMIX_HD int frag_column(int i, int frow) { return 8 * (frow & 7) + 2 * i + (frow >> 3); }

// ---- the PTX fragment layouts of mma.m16n8k16 (16-bit A/B, fp32 C), for the epilogue and the tests --------
// A (16×16, row = M, col = K), register r (0..3), half e (0 = low 16 bits): row g + 8(r & 1), col 2t4 + e + 8(r >> 1).
TIKMIX_HD int a_frag_row(int lane, int r) { return lane_g(lane) + 8 * (r & 1); }
TIKMIX_HD int a_frag_col(int lane, int r, int e) { return 2 * lane_t4(lane) + e + 8 * (r >> 1); }
// B (16×8, row = K, col = N), register r (0..1), half e: row 2t4 + e + 8r, col g.
TIKMIX_HD int b_frag_row(int lane, int r, int e) { return 2 * lane_t4(lane) + e + 8 * r; }
TIKMIX_HD int b_frag_col(int lane) { return lane_g(lane); }
// C (16×8 fp32), element v (0..3): row g + 8(v >> 1), col 2t4 + (v & 1).
TIKMIX_HD int c_frag_row(int lane, int v) { return lane_g(lane) + 8 * (v >> 1); }
TIKMIX_HD int c_frag_col(int lane, int v) { return 2 * lane_t4(lane) + (v & 1); }

// ---- the kernel's own index maps (checked against the PTX layouts above by tests/test_mma_layout.py) ----------
// Byte offset of this lane's ldmatrix.x4 row address in a 16-bit tile [samples][pitch bytes]: lanes 8q..8q+7
// address matrix q = K rows 8q..8q+7 of the step for samples (lane & 7) of the n-tile, so register q of the
// result is b0 (q even) or b1 (q odd) of k-step q / 2.
TIKMIX_HD int ldsm_offset(int lane, int pitch) { return (lane & 7) * pitch + (lane >> 3) * 16; }
// Accumulator v of m-tile i: output column within the block and sample within the n-tile. For a fixed
// e = v & 1, the 8 values (i, h = v >> 1) of a lane are the consecutive columns 8g + 2i + h.
TIKMIX_HD int acc_column(int lane, int i, int v) { return frag_column(i, c_frag_row(lane, v)); }
TIKMIX_HD int acc_sample(int lane, int v) { return c_frag_col(lane, v); }

// Bytes that the 16-byte cp.async of a staged row chunk copies: chunk at byte `cb` of the row of sample s,
// with n_left samples and bytes_left bytes of x left in the tile (the rest is zero-filled).
TIKMIX_HD int chunk_bytes(int s, int cb, int n_left, int bytes_left) {
  int bytes = s < n_left ? bytes_left - cb : 0;
  return bytes < 0 ? 0 : bytes > 16 ? 16 : bytes;
}

TIKMIX_HD uint32_t f32_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b;
#endif
}
TIKMIX_HD float bits_f32(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float v;
  std::memcpy(&v, &b, 4);
  return v;
#endif
}
TIKMIX_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// The exact 3-way bf16 split of a float by truncation: bf16 patterns h, m, l with h + m + l == v exactly for
// finite v whose low parts stay normal (|v| ≥ 2^-110 or so); each product with ±1 is then exact too.
// Non-finite v: h carries it (NaN canonicalised to 0x7FC0), m = l = 0.
TIKMIX_HD void split3_bf16(float v, uint32_t& h, uint32_t& m, uint32_t& l) {
  const uint32_t b = f32_bits(v);
  if ((b & 0x7F800000u) != 0x7F800000u) {
    const uint32_t hb = b & 0xFFFF0000u;
    const float r1 = sub_rn(v, bits_f32(hb));
    const uint32_t mb = f32_bits(r1) & 0xFFFF0000u;
    const float r2 = sub_rn(r1, bits_f32(mb));
    h = hb >> 16;
    m = mb >> 16;
    l = f32_bits(r2) >> 16;
  } else {
    h = (b & 0x007FFFFFu) ? 0x7FC0u : (b >> 16);
    m = 0;
    l = 0;
  }
}

}  // namespace tikmix::mma
