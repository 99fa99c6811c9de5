// Autograd kernel of sketch_accumulate_: the op mutates `out` and has no gradient formula. Without this kernel the
// dispatcher would run it on tensors that require grad without a word (gradients silently missing) and without
// bumping out's version counter (autograd could not notice that a tensor saved for backward was overwritten).
// It refuses what torch's own in-place ops refuse, refuses differentiable inputs, and bumps the version.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include "sketch_checks.h"

namespace tikmix::binding {
namespace {

void sketch_accumulate_autograd(at::Tensor& out, const at::Tensor& x, int64_t seed, int64_t offset,
                                const std::optional<at::Tensor>& scale) {
  check_defined("sketch_accumulate_", out, "out");
  check_defined("sketch_accumulate_", x, "x");
  if (at::GradMode::is_enabled()) {
    // The message of torch's in-place ops on such a leaf (e.g. torch.Tensor.add_).
    TORCH_CHECK(!(out.is_leaf() && out.requires_grad()),
                "a leaf Variable that requires grad is being used in an in-place operation "
                "(tikmix.sketch_accumulate_ writes out). Call it under torch.no_grad() to update out.");
    TORCH_CHECK_NOT_IMPLEMENTED(!out.requires_grad(), "tikmix.sketch_accumulate_ is not differentiable: out requires "
                                "grad; accumulate into a tensor outside the graph, or use tikmix.sketch and add");
    TORCH_CHECK_NOT_IMPLEMENTED(!x.requires_grad(), "tikmix.sketch_accumulate_ is not differentiable: x requires "
                                "grad; use tikmix.sketch (differentiable) and add, or pass x.detach()");
    TORCH_CHECK_NOT_IMPLEMENTED(!(scale.has_value() && scale->requires_grad()), "tikmix.sketch_accumulate_ is not "
                                "differentiable: scale requires grad; use tikmix.sketch, or pass scale.detach()");
  }
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("tikmix::sketch_accumulate_", "")
                             .typed<void(at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                         const std::optional<at::Tensor>&)>();
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    op.call(out, x, seed, offset, scale);
  }
  out.unsafeGetTensorImpl()->bump_version();  // what ADInplaceOrView does for torch's in-place ops
}

}  // namespace

TORCH_LIBRARY_IMPL(tikmix, Autograd, m) {
  m.impl("sketch_accumulate_", &sketch_accumulate_autograd);
}

}  // namespace tikmix::binding
