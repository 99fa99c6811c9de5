// CUDA implementations of the sketch family: the same checks as the CPU (sketch_checks.h), a device guard, the
// current stream (c10's: <ATen/cuda/CUDAContext.h> would pull in cuBLAS/cuSPARSE headers for nothing), then the torch-free launcher of csrc/cuda/sketch.cu (tikmix/cuda_kernels.h).
// `projection` has no tensor inputs and stays a CPU (CompositeExplicitAutograd) op.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

#include "sketch_checks.h"
#include "tikmix/cuda_kernels.h"

namespace tikmix::binding {
namespace {

cuda::DType cuda_dtype(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kBFloat16: return cuda::DType::kBFloat16;
    case at::kHalf: return cuda::DType::kFloat16;
    default: return cuda::DType::kFloat32;
  }
}

// out[N,k] (=|+=) s_k · (x ⊙ scale) · R[offset : offset+d, :]; out: float32 on x's device with contiguous rows.
void run_sketch_cuda(at::Tensor& out, bool accumulate, const at::Tensor& x_in, int64_t seed, int64_t offset,
                     const std::optional<at::Tensor>& scale) {
  const int64_t n = x_in.size(0), d = x_in.size(1), k = out.size(1);
  if (n == 0) return;
  if (d == 0) {  // an empty sum (and x may have no storage)
    if (!accumulate) out.zero_();
    return;
  }
  // The kernel reads rows with any stride (16-byte aligned rows take the cp.async path) but needs unit column stride.
  const at::Tensor x = (x_in.stride(1) == 1 || d <= 1) ? x_in : x_in.contiguous();
  const int64_t ldx = n <= 1 ? d : x.stride(0);
  at::Tensor sc;
  if (scale.has_value()) sc = scale->contiguous();
  const int64_t ws = cuda::sketch_workspace_floats(n, d, k);
  at::Tensor workspace = ws > 0 ? at::empty({ws}, out.options()) : at::Tensor();
  const cudaError_t err = cuda::sketch(
      x.data_ptr(), cuda_dtype(x), n, d, ldx, sc.defined() ? sc.data_ptr<float>() : nullptr, uint64_t(seed),
      uint64_t(offset), k, float(1.0 / std::sqrt(double(k))), out.data_ptr<float>(), out.stride(0), accumulate,
      ws > 0 ? workspace.data_ptr<float>() : nullptr, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_CHECK(err);
}

at::Tensor sketch_cuda(const at::Tensor& x, int64_t k, int64_t seed, int64_t offset,
                       const std::optional<at::Tensor>& scale) {
  check_sketch_inputs(x, k, seed, offset, scale);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({x.size(0), k}, x.options().dtype(at::kFloat));
  run_sketch_cuda(out, /*accumulate=*/false, x, seed, offset, scale);
  return out;
}

void sketch_accumulate_cuda(at::Tensor& out, const at::Tensor& x, int64_t seed, int64_t offset,
                            const std::optional<at::Tensor>& scale) {
  check_sketch_accumulate_inputs(out, x, seed, offset, scale);
  check_sketch_accumulate_no_overlap(out, x, scale);
  const c10::cuda::CUDAGuard guard(x.device());
  run_sketch_cuda(out, /*accumulate=*/true, x, seed, offset, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(tikmix, CUDA, m) {
  // sketch(x[N,d], k, seed, offset, scale[d]?) -> [N,k] float32 (tensor cores, R generated in registers)
  m.impl("sketch", &sketch_cuda);
  // sketch_accumulate_(out[N,k], x[N,d], seed, offset, scale[d]?): out += …
  m.impl("sketch_accumulate_", &sketch_accumulate_cuda);
}

}  // namespace tikmix::binding
