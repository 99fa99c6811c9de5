// Kernel launch and runtime headers shared by csrc/cuda/*.cu. With -DTIKMIX_CPU_EMULATION (tests only) the same
// kernels run on the CPU through tests/cpp/cuda_emu.h, which replaces the CUDA headers and the launch syntax.
#pragma once
#if defined(TIKMIX_CPU_EMULATION)
#include "cuda_emu.h"
// TIKMIX_LAUNCH(kernel, grid, block, smem_bytes, stream, args...)
#define TIKMIX_LAUNCH(kernel, grid, block, smem, stream, ...) \
  emu::launch(dim3(grid), dim3(block), (smem), [&] { kernel(__VA_ARGS__); })
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define TIKMIX_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#endif
