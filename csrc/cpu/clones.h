// Internal to csrc/cpu: TIKMIX_CLONES builds a plain, compiler-vectorised loop for several x86 ISAs, chosen once at
// load time (GCC/Clang target_clones, an ifunc). The kernels library is compiled with -ffp-contract=off and the loops
// marked with it only do element-wise multiplies and adds in a fixed order, so every clone gives the same bits.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__)
#define TIKMIX_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TIKMIX_CLONES
#endif
