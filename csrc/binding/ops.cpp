// The one file that owns the tikmix op namespace: every schema is written here, once.
// Backend files (*_cpu.cpp, *_cuda.cpp in this folder) only add implementations with TORCH_LIBRARY_IMPL.
// Contracts: each op's typed wrapper docstring in tikmix_ext/ and the docs' op reference; RNG contract:
// csrc/include/tikmix/rng.h.
#include <torch/extension.h>

#include "sketch_checks.h"
#include "tikmix/rng.h"
#include "tikmix/sketch_kernels.h"

TORCH_LIBRARY(tikmix, m) {
  // y[N,k] = (x ⊙ scale) · R[offset : offset + d, :], fp32 accumulation and output.
  m.def("sketch(Tensor x, int k, int seed, int offset=0, Tensor? scale=None) -> Tensor");
  // out[N,k] += (x ⊙ scale) · R[offset : offset + d, :], k = out.size(1); streams parameter segments.
  m.def("sketch_accumulate_(Tensor(a!) out, Tensor x, int seed, int offset=0, Tensor? scale=None) -> ()");
  // R[offset : offset + rows, 0 : k] materialised as float32 (tests, small dense projections).
  m.def("projection(int rows, int k, int seed, int offset=0) -> Tensor");
  // Per-sample sketch of a linear layer's weight gradient Σ_t g_t a_tᵀ, projected by R_out ⊗ R_in.
  m.def("sketch_kron(Tensor a, Tensor g, int k_in, int k_out, int seed, int layer) -> Tensor");
  // Deterministic segment reductions over rows: out[G,k].
  m.def("segment_sum(Tensor x, Tensor ids, int num_groups) -> Tensor");
  m.def("segment_mean(Tensor x, Tensor ids, int num_groups) -> Tensor");
  // per_sample[z,i] = target_i · (P · train_z) (P = I when precond is None); S[i,j] = Σ_{z: ids[z]=j} per_sample[z,i].
  m.def("group_influence(Tensor train, Tensor ids, int num_groups, Tensor target, Tensor? precond=None) -> (Tensor, Tensor)");
  // scores[c,i]: mean of per_sample rows resampled with candidate c's proportions (draw hash: rng.h).
  m.def("mixture_scores(Tensor per_sample, Tensor ids, Tensor candidates, int draws, int seed) -> Tensor");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = TIKMIX_TORCH_VERSION;
#ifdef TIKMIX_WITH_CUDA
  info["with_cuda"] = true;
  info["cuda_archs"] = TIKMIX_CUDA_ARCHS;
#else
  info["with_cuda"] = false;
  info["cuda_archs"] = "";
#endif
#if defined(__clang__)
  info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = "gcc " __VERSION__;
#endif
  info["rng"] = "splitmix64-rademacher-v1";
  info["cpu_isa"] = tikmix::cpu::sketch_isa();  // the CPU sketch path chosen at run time
#ifdef _OPENMP
  info["openmp"] = true;  // at::parallel_for in the CPU ops really runs on torch.get_num_threads() threads
#else
  info["openmp"] = false;
#endif
  return info;
}

// The C++ checks, raising Python's ValueError/TypeError like the ops do.
void check_projection_inputs(int64_t rows, int64_t k, int64_t seed, int64_t offset) {
  try {
    tikmix::binding::check_projection_inputs(rows, k, seed, offset);
  } catch (const c10::ValueError& e) {
    throw pybind11::value_error(e.what_without_backtrace());
  } catch (const c10::TypeError& e) {
    throw pybind11::type_error(e.what_without_backtrace());
  }
}

}  // namespace

PYBIND11_MODULE(_C, module) {
  module.doc() = "tikmix native ops; the ops themselves are reached through torch.ops.tikmix";
  module.def("build_info", &build_info, "Versions and features this extension was built with.");
  module.def("check_projection_inputs", &check_projection_inputs, pybind11::arg("rows"), pybind11::arg("k"),
             pybind11::arg("seed"), pybind11::arg("offset"),
             "projection's input checks (its fake calls them; the kernel calls the same C++ function).");
  module.attr("rng_max_rows") = pybind11::int_(tikmix::kMaxRows);
  module.attr("rng_max_k") = pybind11::int_(tikmix::kMaxK);
}
