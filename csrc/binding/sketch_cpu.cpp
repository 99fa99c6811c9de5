// CPU implementations of the sketch family: checks, then the torch-free kernels of csrc/cpu.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "sketch_checks.h"
#include "tikmix/sketch_kernels.h"

namespace tikmix::binding {
namespace {

constexpr int64_t kRowBlock = 1024;  // rows of R generated per tile (fixed: results never depend on threads)

// out[N,k] += (x ⊙ scale) · R[offset : offset+d, :] with R's signs at unit scale; scaled by caller.
void accumulate_unscaled(at::Tensor& out, const at::Tensor& x, int64_t seed, int64_t offset,
                         const std::optional<at::Tensor>& scale) {
  const int64_t d = x.size(1), k = out.size(1);
  at::Tensor xf = x.to(at::kFloat);
  if (scale.has_value()) xf = xf * *scale;
  at::Tensor tile = at::empty({kRowBlock, k}, out.options());
  for (int64_t r0 = 0; r0 < d; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, d - r0);
    cpu::fill_signs_f32(uint64_t(seed), uint64_t(offset + r0), rows, 0, k, 1.0f, tile.data_ptr<float>(), k);
    out.addmm_(xf.narrow(1, r0, rows), tile.narrow(0, 0, rows));
  }
}

at::Tensor sketch_cpu(const at::Tensor& x, int64_t k, int64_t seed, int64_t offset,
                      const std::optional<at::Tensor>& scale) {
  check_sketch_inputs(x, k, seed, offset, scale);
  at::Tensor out = at::zeros({x.size(0), k}, x.options().dtype(at::kFloat));
  accumulate_unscaled(out, x, seed, offset, scale);
  out.mul_(float(1.0 / std::sqrt(double(k))));
  return out;
}

void sketch_accumulate_cpu(at::Tensor& out, const at::Tensor& x, int64_t seed, int64_t offset,
                           const std::optional<at::Tensor>& scale) {
  TORCH_CHECK_VALUE(out.dim() == 2, "tikmix.sketch_accumulate_: out must be 2-D [N, k], got shape ", out.sizes());
  check_sketch_inputs(x, out.size(1), seed, offset, scale);
  check_sketch_out(out, x);
  at::Tensor part = at::zeros_like(out);
  accumulate_unscaled(part, x, seed, offset, scale);
  out.add_(part, float(1.0 / std::sqrt(double(out.size(1)))));
}

at::Tensor projection_cpu(int64_t rows, int64_t k, int64_t seed, int64_t offset) {
  check_k(k);
  check_seed(seed);
  TORCH_CHECK_VALUE(rows >= 0, "tikmix.projection: rows must be >= 0, got ", rows);
  check_rows(offset, rows, "projection");
  at::Tensor out = at::empty({rows, k}, at::TensorOptions().dtype(at::kFloat));
  const float value = float(1.0 / std::sqrt(double(k)));
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    cpu::fill_signs_f32(uint64_t(seed), uint64_t(offset + begin), end - begin, 0, k, value,
                        out.data_ptr<float>() + begin * k, k);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tikmix, CPU, m) {
  m.impl("sketch", &sketch_cpu);
  m.impl("sketch_accumulate_", &sketch_accumulate_cpu);
}

// projection has no tensor inputs: register it for the CompositeExplicitAutograd key (device = CPU).
TORCH_LIBRARY_IMPL(tikmix, CompositeExplicitAutograd, m) {
  m.impl("projection", &projection_cpu);
}

}  // namespace tikmix::binding
