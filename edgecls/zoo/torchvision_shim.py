"""The ONE place edgecls imports torchvision.

torchvision 0.28.0 matches torch 2.13.0 but is a CUDA build. With the CPU-only torch its
compiled extension does not load, and `import torchvision` fails in _meta_registrations
with "operator torchvision::nms does not exist", because it registers fake kernels for ops
whose schemas the extension would have defined. edgecls needs only the pure-Python model
builders and weight enums, so defining those schemas (without kernels) before the import
is enough. Detection ops stay unusable, which edgecls never calls.
"""
from __future__ import annotations

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # kept alive: dropping the Library object would unregister the schemas


def import_torchvision():
    global _library
    import torch
    try:
        import torchvision
        return torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    import sys
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # drop the half-imported package before trying again
    if _library is None:
        _library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS.values():
            try:
                _library.define(schema)
            except RuntimeError:
                pass  # already defined
    import torchvision
    return torchvision
