// CPU emulation of the CUDA features that csrc/cuda/*.cu use — test-only (tests/test_mma_layout.py).
//
// The .cu files compiled with -DTIKMIX_CPU_EMULATION include this header (via launch.cuh) instead of the CUDA
// headers, so the real kernel code (staging, conversion, pipeline, generator, MMAs, epilogue, split-K reduction) runs on the CPU:
//   - each CUDA thread is a fiber (ucontext) of one OS thread; a CTA's fibers run round-robin and switch only at
//     __syncthreads and warp collectives, which are barriers; a pass without progress aborts (deadlock);
//   - warp collectives follow their PTX definitions: __shfl_xor_sync, ldmatrix.x4 (lanes 8q..8q+7 give the row
//     addresses of matrix q, lane t gets row t/4, elements 2(t%4), 2(t%4)+1 of each), mma.m16n8k16 (A row-major
//     16×16, B 16×8 "col", fp32 C; fragment layouts as in mma_layout.h's a_/b_/c_frag_* functions, restated here
//     from the PTX ISA rather than reused);
//   - cp.async is a synchronous copy with zero fill; "device" memory is host memory.
// Not emulated: timing, asynchrony, races, bank conflicts, register limits.
#pragma once
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }

enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
using cudaStream_t = struct CUstream_emu*;
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
template <class F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) {
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  bool done = false;
};

struct Barrier {
  int count = 0, gen = 0;
};

struct Cta {
  std::vector<Fiber> fibers;
  ucontext_t sched;
  const std::function<void()>* body = nullptr;
  int current = 0, nthreads = 0;
  long events = 0;  // arrivals, releases, completions: progress of the CTA
  Barrier cta;
  std::vector<Barrier> warp;
  std::vector<uint64_t> word;       // [warp][lane]: shuffle values
  std::vector<const char*> addr;    // [warp][lane]: ldmatrix row addresses
  std::vector<uint32_t> frag;       // [warp][lane][6]: mma A (4) and B (2) registers
  char* smem = nullptr;
};

inline Cta* g_cta = nullptr;
inline constexpr size_t kStack = 64 * 1024;

inline void yield() {
  Cta& c = *g_cta;
  swapcontext(&c.fibers[size_t(c.current)].ctx, &c.sched);
}

inline void wait(Barrier& b, int expected) {
  Cta& c = *g_cta;
  const int gen = b.gen;
  ++c.events;
  if (++b.count == expected) {
    b.count = 0;
    ++b.gen;
    return;
  }
  while (b.gen == gen) yield();
}

inline int tid() { return int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }
inline void warp_sync() { wait(g_cta->warp[size_t(tid() / 32)], 32); }
inline char* dynamic_smem() { return g_cta->smem; }

inline void trampoline() {
  (*g_cta->body)();
  g_cta->fibers[size_t(g_cta->current)].done = true;
  ++g_cta->events;
}

// Runs body() as every thread of every CTA of the grid (CTAs one after another).
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body) {
  const int nthreads = int(block.x * block.y * block.z);
  const int warps = (nthreads + 31) / 32;
  if (nthreads % 32 != 0) {
    std::fprintf(stderr, "emu: block size %d is not a multiple of 32\n", nthreads);
    std::exit(3);
  }
  std::unique_ptr<char[]> smem_buf(new char[smem_bytes + 16 + 1]);
  char* smem = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(smem_buf.get()) + 15) & ~uintptr_t(15));
  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Cta c;
        c.fibers.resize(size_t(nthreads));
        c.body = &body;
        c.nthreads = nthreads;
        c.warp.resize(size_t(warps));
        c.word.assign(size_t(warps) * 32, 0);
        c.addr.assign(size_t(warps) * 32, nullptr);
        c.frag.assign(size_t(warps) * 32 * 6, 0);
        std::memset(smem, 0xA5, smem_bytes);  // poison: the kernel must write before it reads
        c.smem = smem;
        g_cta = &c;
        blockIdx = dim3(bx, by, bz);
        for (auto& f : c.fibers) {
          f.stack.reset(new char[kStack]);
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.get();
          f.ctx.uc_stack.ss_size = kStack;
          f.ctx.uc_link = &c.sched;
          makecontext(&f.ctx, trampoline, 0);
        }
        for (;;) {
          bool alive = false;
          const long before = c.events;
          for (int t = 0; t < nthreads; ++t) {
            if (c.fibers[size_t(t)].done) continue;
            alive = true;
            c.current = t;
            threadIdx = dim3(unsigned(t) % block.x, (unsigned(t) / block.x) % block.y, unsigned(t) / (block.x * block.y));
            swapcontext(&c.sched, &c.fibers[size_t(t)].ctx);
          }
          if (!alive) break;
          if (c.events == before) {
            std::fprintf(stderr, "emu: deadlock in block (%u, %u, %u)\n", bx, by, bz);
            std::exit(3);
          }
        }
        g_cta = nullptr;
      }
}

inline float bf16_to_float(uint32_t h) {
  const uint32_t b = (h & 0xFFFF) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

inline float f16_to_float(uint32_t h) {
  const uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  float v;
  if (exp == 0) v = std::ldexp(float(man), -24);
  else if (exp == 31) v = man ? NAN : INFINITY;
  else v = std::ldexp(float(man | 0x400), int(exp) - 25);
  return sign ? -v : v;
}

}  // namespace emu

// ---- the CUDA device functions used by sketch.cu ----------------------------------------------------------------
inline void __syncthreads() { emu::wait(emu::g_cta->cta, emu::g_cta->nthreads); }

inline uint32_t __shfl_xor_sync(unsigned, uint32_t v, int lane_mask) {
  emu::Cta& c = *emu::g_cta;
  const int t = emu::tid(), w = t / 32, lane = t % 32;
  c.word[size_t(w * 32 + lane)] = v;
  emu::warp_sync();
  const uint32_t r = uint32_t(c.word[size_t(w * 32 + (lane ^ lane_mask))]);
  emu::warp_sync();
  return r;
}

template <class T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __ddiv_rn(double a, double b) { return a / b; }

inline void cp_async16(void* dst, const void* src, int bytes) {
  if (bytes > 0) std::memcpy(dst, src, size_t(bytes));
  if (bytes < 16) std::memset(static_cast<char*>(dst) + bytes, 0, size_t(16 - bytes));
}
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  emu::Cta& c = *emu::g_cta;
  const int t = emu::tid(), w = t / 32, lane = t % 32;
  c.addr[size_t(w * 32 + lane)] = static_cast<const char*>(p);
  emu::warp_sync();
  for (int q = 0; q < 4; ++q) std::memcpy(&r[q], c.addr[size_t(w * 32 + 8 * q + lane / 4)] + 4 * (lane % 4), 4);
  emu::warp_sync();
}

// D = A·B + C for one m16n8k16 tile; A elements (row m, col k) sit in lane 4(m%8) + (k%8)/2, register
// (m/8) + 2(k/8), half k%2; B elements (row k, col n) in lane 4n + (k%8)/2, register k/8, half k%2;
// C element v of lane t is (row t/4 + 8(v/2), col 2(t%4) + v%2).
template <bool F16>
inline void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu::Cta& ctx = *emu::g_cta;
  const int t = emu::tid(), w = t / 32, lane = t % 32;
  uint32_t* mine = &ctx.frag[size_t((w * 32 + lane) * 6)];
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b0;
  mine[5] = b1;
  emu::warp_sync();
  auto half = [&](int ln, int reg, int h) {
    const uint32_t v = ctx.frag[size_t((w * 32 + ln) * 6 + reg)] >> (16 * h);
    return F16 ? emu::f16_to_float(v & 0xFFFF) : emu::bf16_to_float(v & 0xFFFF);
  };
  for (int v = 0; v < 4; ++v) {
    const int m = lane / 4 + 8 * (v / 2), n = 2 * (lane % 4) + v % 2;
    double s = 0;
    for (int k = 0; k < 16; ++k) {
      const double av = half(4 * (m % 8) + (k % 8) / 2, (m / 8) + 2 * (k / 8), k % 2);
      const double bv = half(4 * n + (k % 8) / 2, 4 + k / 8, k % 2);
      s += av * bv;
    }
    c[v] = float(double(c[v]) + s);
  }
  emu::warp_sync();
}

inline float half_bits_to_float(uint32_t bits) { return emu::f16_to_float(bits); }
