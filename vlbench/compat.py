"""Import-time fixes for the environments vlbench runs in. Import this before open_clip or transformers.

On machines with a CPU-only torch and a CUDA torchvision wheel, torchvision's C ops fail to
load and its meta registrations then raise "operator torchvision::nms does not exist" at import,
which breaks open_clip, timm and transformers. Declaring the two op schemas first lets the import
succeed; vlbench never calls these ops. Where torchvision loads its ops, nothing is done.
"""

import os

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _declare_missing_torchvision_ops() -> None:
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return  # torchvision's own library is loaded, or the schemas were declared already
    except RuntimeError:
        pass
    try:
        import torchvision  # noqa: F401  (loads its ops when it can)

        return
    except RuntimeError:
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _declare_missing_torchvision_ops.library = lib  # keep the registration alive
    import sys

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # drop the half-imported package so the next import is clean


_declare_missing_torchvision_ops()
