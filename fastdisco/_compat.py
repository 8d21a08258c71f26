"""The torchvision import fix, applied just before torchvision is first imported.

torchvision's compiled ops (`_C.so`) only load beside a CUDA build of torch. Next to the CPU
build of torch, `import torchvision` (which timm does) fails with "operator torchvision::nms does
not exist", because its Python side registers fake kernels for `torchvision::nms` /
`torchvision::qnms` whose schemas `_C.so` would have defined. We define exactly those two
schemas, and only when `_C.so` cannot load, so a working CUDA install is untouched. fastdisco
never calls nms.

Importing this module installs a tiny import hook (no torch import: `fastdisco --help` stays
fast) that applies the fix when torchvision is about to be imported. `tools/install.sh` runs
`python -m fastdisco._compat --install-pth` so that, on machines that need it, a `.pth` file in
the environment's site-packages imports this module at interpreter start-up: a plain
`python -c "import timm"` then works there too. Modules of fastdisco that import timm also import
this module, for installs made without that step.
"""
from __future__ import annotations

import ctypes
import glob
import importlib.abc
import importlib.util
import os
import sys

PTH_NAME = "fastdisco_torchvision_fix.pth"
# one line, run by `site` at start-up; harmless once fastdisco is uninstalled
PTH_LINE = ('import importlib.util; importlib.util.find_spec("fastdisco") is not None '
            'and __import__("fastdisco._compat")\n')


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


class _FixBeforeTorchvision(importlib.abc.MetaPathFinder):
    """Finds nothing; on the first `import torchvision` it removes itself and applies the fix."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            uninstall()
            fix_torchvision_import()
        return None


_HOOK = _FixBeforeTorchvision()


def install() -> None:
    if "torchvision" not in sys.modules and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def _install_pth() -> int:
    """Write the start-up .pth where torchvision's compiled ops cannot load; remove it elsewhere."""
    import sysconfig

    path = os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)
    if _torchvision_c_loads():
        if os.path.exists(path):
            os.remove(path)
        print(f"fastdisco: torchvision's compiled ops load here; no start-up fix needed")
        return 0
    with open(path, "w") as f:
        f.write(PTH_LINE)
    print(f"fastdisco: torchvision's compiled ops cannot load beside this torch; start-up fix in {path}")
    return 0


install()

if __name__ == "__main__":
    if sys.argv[1:] != ["--install-pth"]:
        raise SystemExit("usage: python -m fastdisco._compat --install-pth")
    raise SystemExit(_install_pth())
