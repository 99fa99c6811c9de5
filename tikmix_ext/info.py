"""``python -m tikmix_ext.info``: which kernels (CPU/CUDA) the installed build contains, and which CPU path runs."""
from __future__ import annotations

import json

import torch

from . import build_info


def cpu_path_line(info: dict) -> str:
    """One line on the CPU sketch path chosen at run time and the threads the CPU ops run on."""
    threads = torch.get_num_threads()
    parallel = "yes" if info.get("openmp") else "NO (built without OpenMP: the CPU ops run on one thread)"
    return (
        f"CPU sketch kernels: {info.get('cpu_isa', '?')} (levels: avx512-bf16 > avx512 > avx2 > generic; "
        f"TIKMIX_CPU_ISA caps it; no AMX kernel yet); CPU ops on {threads} threads, OpenMP: {parallel}"
    )


def main() -> None:
    info = build_info()
    kernels = info.pop("kernels")
    print(json.dumps(info, indent=2))
    print(cpu_path_line(info))
    print(f"{'op':<22} kernels")
    for op, keys in kernels.items():
        print(f"{op:<22} {', '.join(keys) or '(none)'}")


if __name__ == "__main__":
    main()
