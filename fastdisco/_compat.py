"""Import fixes that must run before torchvision is imported (timm imports it).

torchvision's compiled ops (`_C.so`) only load beside a CUDA build of torch. Next to the CPU
build that these machines use, `import torchvision` fails with
"operator torchvision::nms does not exist", because its Python side registers fake kernels
for `torchvision::nms` / `torchvision::qnms` whose schemas `_C.so` would have defined.
We define exactly those two schemas -- and only when `_C.so` cannot load, so a working
CUDA install is untouched. fastdisco never calls nms.
"""
from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import sys


def _torchvision_c_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: nothing to fix
    libs = glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so"))
    if not libs:
        return False
    try:
        ctypes.CDLL(libs[0])
        return True
    except OSError:
        return False


def fix_torchvision_import() -> None:
    if "torchvision" in sys.modules or _torchvision_c_loads():
        return
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in (
        "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
    ):
        try:
            lib.define(schema)
        except RuntimeError:
            pass  # already defined (e.g. fix applied twice)
    # Keep the Library object alive: dropping it would unregister the schemas.
    globals()["_TORCHVISION_FRAGMENT"] = lib


fix_torchvision_import()
