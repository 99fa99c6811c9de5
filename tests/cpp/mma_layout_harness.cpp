// CPU emulation of one warp of the CUDA sketch kernel (csrc/cuda/sketch.cu), built with g++ by
// tests/test_mma_layout.py. It runs the kernel's own lane functions (tikmix/mma_layout.h) for all 32 lanes,
// emulating __shfl_xor_sync, ldmatrix.x4 and mma.m16n8k16 from their PTX-documented semantics, and compares
// with the reference R of tikmix/rng.h. Each check prints "CHECK <name> <failures> <cases>"; the test also
// re-derives printed sign rows with its own Python hash.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <random>
#include <vector>

#include "tikmix/cuda_plan.h"
#include "tikmix/mma_layout.h"
#include "tikmix/rng.h"

using namespace tikmix;
using namespace tikmix::mma;

namespace {

using Frags = uint32_t[2][kMTiles][4];

// One warp step: the A fragments of every lane for rows row0 .. row0 + 31 of hash block `block`.
void warp_fragments(uint64_t key, uint64_t row0, uint64_t block, uint32_t one, Frags* a) {
  uint32_t lo[32], hi[32];
  TransposeSelectors sel[32];
  for (int lane = 0; lane < 32; ++lane) {
    sel[lane] = transpose_selectors(lane);
    word_to_pair(sign_word(key, row0 + uint64_t(word_row(lane)), block), lo[lane], hi[lane]);
  }
  for (int stage = 0; stage < kTransposeStages; ++stage) {
    uint32_t send[32];
    for (int lane = 0; lane < 32; ++lane) send[lane] = transpose_send(lo[lane], hi[lane], sel[lane], stage);
    for (int lane = 0; lane < 32; ++lane) {
      const uint32_t recv = send[lane ^ stage_lane_xor(stage)];  // __shfl_xor_sync
      transpose_merge(lo[lane], hi[lane], recv, sel[lane], stage);
    }
  }
  for (int lane = 0; lane < 32; ++lane) a_fragments(lo[lane], hi[lane], kSignMask, one, a[lane]);
}

// Decode the fragments into a 32×64 sign matrix (+1/−1, 0 = not produced); count bad encodings and duplicates.
int decode(const Frags* a, uint32_t one, int (&r)[32][64]) {
  std::memset(r, 0, sizeof(r));
  int bad = 0;
  const uint32_t plus = one & 0xFFFF, minus = plus | 0x8000;
  for (int lane = 0; lane < 32; ++lane)
    for (int ks = 0; ks < 2; ++ks)
      for (int i = 0; i < kMTiles; ++i)
        for (int reg = 0; reg < 4; ++reg)
          for (int e = 0; e < 2; ++e) {
            const uint32_t v = (a[lane][ks][i][reg] >> (16 * e)) & 0xFFFF;
            const int row = 16 * ks + a_frag_col(lane, reg, e);  // K index = row of R within the step
            const int col = frag_column(i, a_frag_row(lane, reg));
            if ((v != plus && v != minus) || r[row][col] != 0) ++bad;
            r[row][col] = v == minus ? -1 : 1;
          }
  for (auto& row : r)
    for (int c : row) bad += c == 0;
  return bad;
}

float bf16_to_float(uint32_t h) {
  const uint32_t b = h << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
uint32_t float_to_bf16_exact(float f) {  // small integers only: exact
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b >> 16;
}

// Emulated mma.sync.m16n8k16 (A 16×16 from a[ks][i], B 16×8 from b0/b1) added into c, per PTX layouts.
void mma_emulate(const Frags* a, int ks, int i, const uint32_t (*b)[4], float (*c)[4]) {
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    for (int reg = 0; reg < 4; ++reg)
      for (int e = 0; e < 2; ++e)
        A[a_frag_row(lane, reg)][a_frag_col(lane, reg, e)] = bf16_to_float((a[lane][ks][i][reg] >> (16 * e)) & 0xFFFF);
    for (int reg = 0; reg < 2; ++reg)
      for (int e = 0; e < 2; ++e)
        B[b_frag_row(lane, reg, e)][b_frag_col(lane)] = bf16_to_float((b[lane][2 * ks + reg] >> (16 * e)) & 0xFFFF);
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int v = 0; v < 4; ++v) {
      float s = 0;
      for (int k = 0; k < 16; ++k) s += A[c_frag_row(lane, v)][k] * B[k][c_frag_col(lane, v)];
      c[lane][v] += s;
    }
}

// Emulated ldmatrix.sync.m8n8.x4.b16: lanes 8q..8q+7 give the row addresses of matrix q; lane t receives
// row t/4, elements 2(t%4), 2(t%4)+1 of each matrix q in register q.
void ldmatrix_x4(const std::vector<uint8_t>& smem, const int (&addr)[32], uint32_t (*out)[4]) {
  for (int t = 0; t < 32; ++t)
    for (int q = 0; q < 4; ++q) {
      const int base = addr[8 * q + t / 4] + 4 * (t % 4);
      uint32_t v;
      std::memcpy(&v, &smem[base], 4);
      out[t][q] = v;
    }
}

void check_fragments() {
  int fail = 0, cases = 0;
  const uint64_t seeds[] = {0, 1, 42, 0xFFFFFFFFFFFFFFFFull};
  const uint64_t rows[] = {0, 32, 1000000, (uint64_t(1) << 40) - 32, kMaxRows - 32};
  const uint64_t blocks[] = {0, 1, 7, 255};
  for (uint64_t seed : seeds)
    for (uint64_t row0 : rows)
      for (uint64_t block : blocks)
        for (uint32_t one : {kOneBF16x2, kOneF16x2}) {
          Frags a[32];
          warp_fragments(rng_key(seed), row0, block, one, a);
          int r[32][64];
          int bad = decode(a, one, r);
          for (int row = 0; row < 32; ++row)
            for (int col = 0; col < 64; ++col)
              bad += (r[row][col] < 0) != sign_bit(rng_key(seed), row0 + row, 64 * block + col);
          fail += bad != 0;
          ++cases;
        }
  std::printf("CHECK fragments_vs_rng %d %d\n", fail, cases);

  // Rows printed for the Python-side check (its own hash): seed 7, row0 = 2^40 − 32 + 32·3, block 3.
  const uint64_t seed = 7, row0 = (uint64_t(1) << 40) + 64, block = 3;
  Frags a[32];
  warp_fragments(rng_key(seed), row0, block, kOneBF16x2, a);
  int r[32][64];
  decode(a, kOneBF16x2, r);
  std::printf("SIGNS %llu %llu %llu", (unsigned long long)seed, (unsigned long long)row0, (unsigned long long)block);
  for (int row = 0; row < 32; ++row) {
    uint64_t bits = 0;
    for (int col = 0; col < 64; ++col) bits |= uint64_t(r[row][col] < 0) << col;
    std::printf(" %016llx", (unsigned long long)bits);
  }
  std::printf("\n");
}

void check_transpose() {
  // The three stages are an 8×8 byte transpose within each group of lanes sharing t4.
  std::mt19937_64 gen(1);
  int fail = 0, cases = 0;
  for (int trial = 0; trial < 200; ++trial) {
    uint64_t w[32];
    uint32_t lo[32], hi[32];
    TransposeSelectors sel[32];
    for (int lane = 0; lane < 32; ++lane) {
      w[lane] = gen();
      sel[lane] = transpose_selectors(lane);
      word_to_pair(w[lane], lo[lane], hi[lane]);
    }
    for (int stage = 0; stage < kTransposeStages; ++stage) {
      uint32_t send[32];
      for (int lane = 0; lane < 32; ++lane) send[lane] = transpose_send(lo[lane], hi[lane], sel[lane], stage);
      for (int lane = 0; lane < 32; ++lane)
        transpose_merge(lo[lane], hi[lane], send[lane ^ stage_lane_xor(stage)], sel[lane], stage);
    }
    for (int lane = 0; lane < 32; ++lane)
      for (int pos = 0; pos < 8; ++pos) {
        const uint32_t got = ((pos < 4 ? lo[lane] : hi[lane]) >> (8 * (pos & 3))) & 0xFF;
        const uint32_t want = (w[4 * pos + lane_t4(lane)] >> (8 * lane_g(lane))) & 0xFF;
        fail += got != want;
        ++cases;
      }
  }
  std::printf("CHECK byte_transpose %d %d\n", fail, cases);
}

void check_warp_mma() {
  // A full warp step for NT n-tiles: smem tile as the kernel stages it, ldmatrix with the kernel's offsets,
  // emulated MMAs, the kernel's epilogue map; small-integer x makes every sum exact.
  std::mt19937_64 gen(2);
  int fail = 0, cases = 0;
  const int pitch = 2 * cuda::kTileRows + 16;
  for (int trial = 0; trial < 6; ++trial) {
    const int nt_count = 1 << (trial % 4);  // 1, 2, 4, 8
    const int S = 8 * nt_count;
    const uint64_t key = rng_key(gen() % 1000), block = gen() % 300, row0 = (gen() % 100000) * 32;
    for (int step = 0; step < cuda::kTileRows / kStepRows; ++step) {
      std::vector<int> x(S * kStepRows);
      std::vector<uint8_t> smem(size_t(S) * pitch, 0);
      for (int s = 0; s < S; ++s)
        for (int r = 0; r < kStepRows; ++r) {
          const int v = int(gen() % 9) - 4;
          x[s * kStepRows + r] = v;
          const uint16_t h = uint16_t(float_to_bf16_exact(float(v)));
          std::memcpy(&smem[size_t(s) * pitch + size_t(step * kStepRows + r) * 2], &h, 2);
        }
      const uint64_t srow = row0 + uint64_t(step) * kStepRows;
      Frags a[32];
      warp_fragments(key, srow, block, kOneBF16x2, a);
      std::vector<float> y(size_t(S) * 64, NAN);
      for (int nt = 0; nt < nt_count; ++nt) {
        int addr[32];
        for (int lane = 0; lane < 32; ++lane) addr[lane] = nt * 8 * pitch + ldsm_offset(lane, pitch) + step * kStepRows * 2;
        uint32_t b[32][4];
        ldmatrix_x4(smem, addr, b);
        for (int i = 0; i < kMTiles; ++i) {
          float c[32][4] = {};
          for (int ks = 0; ks < 2; ++ks) mma_emulate(a, ks, i, b, c);
          for (int lane = 0; lane < 32; ++lane)
            for (int v = 0; v < 4; ++v) y[size_t(nt * 8 + acc_sample(lane, v)) * 64 + acc_column(lane, i, v)] = c[lane][v];
        }
      }
      for (int s = 0; s < S; ++s)
        for (int col = 0; col < 64; ++col) {
          long want = 0;
          for (int r = 0; r < kStepRows; ++r)
            want += (sign_bit(key, srow + r, 64 * block + col) ? -1 : 1) * x[s * kStepRows + r];
          fail += y[size_t(s) * 64 + col] != float(want);
          ++cases;
        }
    }
  }
  std::printf("CHECK warp_mma_small_int %d %d\n", fail, cases);

  // The epilogue packs, for each e, the lane's 8 values (i, h) as consecutive columns 8g + 2i + h, sample 2t4 + e.
  int pf = 0, pc = 0;
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < kMTiles; ++i)
      for (int h = 0; h < 2; ++h)
        for (int e = 0; e < 2; ++e) {
          pf += acc_column(lane, i, 2 * h + e) != 8 * lane_g(lane) + 2 * i + h;
          pf += acc_sample(lane, 2 * h + e) != 2 * lane_t4(lane) + e;
          ++pc;
        }
  std::printf("CHECK epilogue_packing %d %d\n", pf, pc);

  // ldmatrix row addresses of one 8×8 matrix fall in distinct 16-byte bank groups (no bank conflicts).
  int bf = 0, bc = 0;
  for (int q = 0; q < 4; ++q) {
    unsigned used = 0;
    for (int j = 0; j < 8; ++j) {
      const int off = ldsm_offset(8 * q + j, pitch);
      for (int w = 0; w < 4; ++w) {
        const unsigned bank = unsigned(off / 4 + w) % 32;
        bf += (used >> bank) & 1;
        used |= 1u << bank;
      }
      ++bc;
    }
  }
  std::printf("CHECK ldmatrix_banks %d %d\n", bf, bc);
}

void check_split() {
  std::mt19937_64 gen(3);
  int fail = 0, cases = 0;
  auto one_case = [&](float v) {
    uint32_t h, m, l;
    split3_bf16(v, h, m, l);
    const double sum = double(bf16_to_float(h)) + double(bf16_to_float(m)) + double(bf16_to_float(l));
    if (std::isfinite(v)) fail += sum != double(v);
    else if (std::isnan(v)) fail += !(std::isnan(bf16_to_float(h)) && m == 0 && l == 0);
    else fail += !(bf16_to_float(h) == v && m == 0 && l == 0);
    ++cases;
  };
  for (int t = 0; t < 200000; ++t) {
    uint32_t b = uint32_t(gen());
    const uint32_t exp = 24 + uint32_t(gen() % 207);  // normal range with room for the low parts (≥ 2^-103)
    b = (b & 0x807FFFFFu) | (exp << 23);
    float v;
    std::memcpy(&v, &b, 4);
    one_case(v);
  }
  for (float v : {0.0f, -0.0f, 1.0f, -1.0f, 3.4028235e38f, -3.4028235e38f, 1.0000001f, 0.1f, 1e-30f, INFINITY,
                  -INFINITY, NAN})
    one_case(v);
  std::printf("CHECK split3_exact %d %d\n", fail, cases);
}

void check_chunks() {
  int fail = 0, cases = 0;
  for (int n_left = 0; n_left <= 9; ++n_left)
    for (int bytes_left = 0; bytes_left <= 256; bytes_left += 2)
      for (int s = 0; s < 8; ++s)
        for (int cb = 0; cb < 256; cb += 16) {
          int want = 0;
          if (s < n_left)
            for (int byte = cb; byte < cb + 16; ++byte) want += byte < bytes_left;
          fail += chunk_bytes(s, cb, n_left, bytes_left) != want;
          ++cases;
        }
  std::printf("CHECK chunk_bytes %d %d\n", fail, cases);
}

void check_plan() {
  std::mt19937_64 gen(4);
  int fail = 0, cases = 0;
  auto check = [&](int64_t n, int64_t d, int64_t k) {
    const cuda::SketchPlan p = cuda::sketch_plan(n, d, k);
    const int64_t tiles = std::max<int64_t>(1, cuda::ceil_div(d, cuda::kTileRows));
    bool ok = (p.n_tiles == 1 || p.n_tiles == 2 || p.n_tiles == 4 || p.n_tiles == 8);
    ok = ok && p.groups * 8 * p.n_tiles >= n && (p.groups - 1) * 8 * p.n_tiles < n;
    ok = ok && p.blocks * 64 >= k && (p.blocks - 1) * 64 < k && p.k_pad == 64 * p.blocks;
    ok = ok && p.warps >= 1 && p.warps <= cuda::kMaxWarps && p.col_ctas * p.warps >= p.blocks &&
         (p.col_ctas - 1) * p.warps < p.blocks;
    ok = ok && p.splits >= 1 && p.splits * p.chunk_tiles >= tiles && (p.splits - 1) * p.chunk_tiles < tiles;
    ok = ok && p.splits <= cuda::kMaxSplits && (p.splits == 1 || p.groups <= 65535);  // else: several launches
    ok = ok && (p.splits == 1 || p.splits * n * p.k_pad <= cuda::kMaxWorkspaceFloats);
    ok = ok && cuda::sketch_workspace_floats(n, d, k) == (p.splits > 1 ? p.splits * n * p.k_pad : 0);
    fail += !ok;
    ++cases;
  };
  for (int t = 0; t < 20000; ++t) {
    const int64_t n = 1 + int64_t(gen() % (t % 2 ? 300 : 100000));
    const int64_t d = int64_t(gen() % (int64_t(1) << (1 + gen() % 36)));
    const int64_t k = 1 + int64_t(gen() % (int64_t(1) << (1 + gen() % 17)));
    check(n, d, k);
  }
  for (int64_t n : std::initializer_list<int64_t>{1, 2, 7, 8, 9, 16, 17, 33, 64, 65, 256, 4000000, 10000000})
    for (int64_t d : std::initializer_list<int64_t>{0, 1, 63, 64, 65, 4096, 100000000, int64_t(1) << 40})
      for (int64_t k : std::initializer_list<int64_t>{1, 63, 64, 65, 512, 8192, 16384}) check(n, d, k);
  std::printf("CHECK plan_invariants %d %d\n", fail, cases);
  const int64_t shapes[][3] = {{64, 100000000, 8192}, {16, 100000000, 8192}, {256, 100000000, 8192},
                               {1, 1000000000, 16384}, {3, 1000, 10}};
  for (const auto& s : shapes) {
    const cuda::SketchPlan p = cuda::sketch_plan(s[0], s[1], s[2]);
    std::printf("PLAN %lld %lld %lld nt=%d groups=%lld warps=%d col_ctas=%lld splits=%lld chunk_tiles=%lld\n",
                (long long)s[0], (long long)s[1], (long long)s[2], p.n_tiles, (long long)p.groups, p.warps,
                (long long)p.col_ctas, (long long)p.splits, (long long)p.chunk_tiles);
  }
}

}  // namespace

int main() {
  check_transpose();
  check_fragments();
  check_warp_mma();
  check_split();
  check_chunks();
  check_plan();
  return 0;
}
