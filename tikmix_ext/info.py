"""``python -m tikmix_ext.info``: which kernels (CPU/CUDA) the installed build contains."""
from __future__ import annotations

import json

from . import build_info


def main() -> None:
    info = build_info()
    kernels = info.pop("kernels")
    print(json.dumps(info, indent=2))
    print(f"{'op':<22} kernels")
    for op, keys in kernels.items():
        print(f"{op:<22} {', '.join(keys) or '(none)'}")


if __name__ == "__main__":
    main()
