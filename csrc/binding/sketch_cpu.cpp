// CPU implementations of the sketch family: checks, then the torch-free kernels of csrc/cpu, run on torch's threads
// through at::parallel_for (parallel_cpu.h) over the items of a SketchPlan (a pure function of the shapes: results
// never depend on the thread count).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "parallel_cpu.h"
#include "sketch_checks.h"
#include "tikmix/sketch_kernels.h"

namespace tikmix::binding {
namespace {

cpu::XType xtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kBFloat16: return cpu::XType::kBF16;
    case at::kHalf: return cpu::XType::kF16;
    default: return cpu::XType::kF32;
  }
}

// out[N,k] (=|+=) s_k · (x ⊙ scale) · R[offset : offset+d, :]; out is float32 with contiguous rows.
void run_sketch(at::Tensor& out, bool accumulate, const at::Tensor& x_in, int64_t seed, int64_t offset,
                const std::optional<at::Tensor>& scale) {
  const int64_t n = x_in.size(0), d = x_in.size(1), k = out.size(1);
  if (n == 0) return;
  if (d == 0) {
    if (!accumulate) out.zero_();
    return;
  }
  // The kernels read rows with any stride but need contiguous columns.
  const at::Tensor x = (x_in.stride(1) == 1 || d == 1) ? x_in : x_in.contiguous();
  at::Tensor sc;
  if (scale.has_value()) sc = scale->contiguous();

  cpu::SketchInput in;
  in.x = x.data_ptr();
  in.type = xtype_of(x);
  in.ld = x.stride(0);
  in.scale = sc.defined() ? sc.data_ptr<float>() : nullptr;
  in.seed = uint64_t(seed);
  in.offset = uint64_t(offset);

  cpu::SketchOutput o;
  o.dst = out.data_ptr<float>();
  o.ld = out.stride(0);
  o.alpha = float(1.0 / std::sqrt(double(k)));
  o.accumulate = accumulate;
  cpu::run_sketch(n, d, k, in, o, sc.defined(), AtenParallelFor{});
}

at::Tensor sketch_cpu(const at::Tensor& x, int64_t k, int64_t seed, int64_t offset,
                      const std::optional<at::Tensor>& scale) {
  check_sketch_inputs(x, k, seed, offset, scale);
  at::Tensor out = at::empty({x.size(0), k}, x.options().dtype(at::kFloat));
  run_sketch(out, /*accumulate=*/false, x, seed, offset, scale);
  return out;
}

void sketch_accumulate_cpu(at::Tensor& out, const at::Tensor& x, int64_t seed, int64_t offset,
                           const std::optional<at::Tensor>& scale) {
  check_sketch_accumulate_inputs(out, x, seed, offset, scale);
  check_sketch_accumulate_no_overlap(out, x, scale);
  run_sketch(out, /*accumulate=*/true, x, seed, offset, scale);
}

at::Tensor projection_cpu(int64_t rows, int64_t k, int64_t seed, int64_t offset) {
  check_projection_inputs(rows, k, seed, offset);
  at::Tensor out = at::empty({rows, k}, at::TensorOptions().dtype(at::kFloat));
  const float value = float(1.0 / std::sqrt(double(k)));
  float* base = out.data_ptr<float>();
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    cpu::fill_signs_f32(uint64_t(seed), uint64_t(offset + begin), end - begin, 0, k, value, base + begin * k, k);
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
