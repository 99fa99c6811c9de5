// Meta implementations (output shapes, dtypes and devices; no data) of the ops with tensor inputs. They run for meta
// tensors and, through FakeTensor, when torch.compile traces an op. Each calls the same check_<op>_inputs as the CPU
// and CUDA kernels, so a bad call fails at trace time with the real kernel's message; checks that need the data
// (ids in range, finite values, candidate weights, memory overlap) happen only in the real kernels.
// projection has no tensor inputs: its fake is the Python one in tikmix_ext/sketch.py (calling the same check).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "reduce_checks.h"
#include "sketch_checks.h"

namespace tikmix::binding {
namespace {

at::Tensor sketch_meta(const at::Tensor& x, int64_t k, int64_t seed, int64_t offset,
                       const std::optional<at::Tensor>& scale) {
  check_sketch_inputs(x, k, seed, offset, scale);
  return at::empty_symint({x.sym_size(0), k}, x.options().dtype(at::kFloat));
}

void sketch_accumulate_meta(at::Tensor& out, const at::Tensor& x, int64_t seed, int64_t offset,
                            const std::optional<at::Tensor>& scale) {
  check_sketch_accumulate_inputs(out, x, seed, offset, scale);
}

at::Tensor sketch_kron_meta(const at::Tensor& a, const at::Tensor& g, int64_t k_in, int64_t k_out, int64_t seed,
                            int64_t layer) {
  check_sketch_kron_inputs(a, g, k_in, k_out, seed, layer);
  return at::empty_symint({a.sym_size(0), k_out * k_in}, a.options().dtype(at::kFloat));
}

at::Tensor segment_sum_meta(const at::Tensor& x, const at::Tensor& ids, int64_t num_groups) {
  check_segment_inputs("segment_sum", x, ids, num_groups);
  return at::empty_symint({num_groups, x.sym_size(1)}, x.options());
}

at::Tensor segment_mean_meta(const at::Tensor& x, const at::Tensor& ids, int64_t num_groups) {
  check_segment_inputs("segment_mean", x, ids, num_groups);
  return at::empty_symint({num_groups, x.sym_size(1)}, x.options());
}

std::tuple<at::Tensor, at::Tensor> group_influence_meta(const at::Tensor& train, const at::Tensor& ids,
                                                        int64_t num_groups, const at::Tensor& target,
                                                        const std::optional<at::Tensor>& precond) {
  check_group_influence_inputs(train, ids, num_groups, target, precond);
  return {at::empty_symint({target.sym_size(0), num_groups}, train.options()),
          at::empty_symint({train.sym_size(0), target.sym_size(0)}, train.options())};
}

at::Tensor mixture_scores_meta(const at::Tensor& per_sample, const at::Tensor& ids, const at::Tensor& candidates,
                               int64_t draws, int64_t seed) {
  check_mixture_scores_inputs(per_sample, ids, candidates, draws, seed);
  return at::empty_symint({candidates.sym_size(0), per_sample.sym_size(1)}, per_sample.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(tikmix, Meta, m) {
  m.impl("sketch", &sketch_meta);
  m.impl("sketch_accumulate_", &sketch_accumulate_meta);
  m.impl("sketch_kron", &sketch_kron_meta);
  m.impl("segment_sum", &segment_sum_meta);
  m.impl("segment_mean", &segment_mean_meta);
  m.impl("group_influence", &group_influence_meta);
  m.impl("mixture_scores", &mixture_scores_meta);
}

}  // namespace tikmix::binding
