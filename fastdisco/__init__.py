"""fastdisco: distill big frozen vision teachers into lightweight students (DisCo, SSLD).

The public API, imported on first use (so `import fastdisco` and `fastdisco --help` never load torch):

    from fastdisco import Config, load_config, train, make_loader, load_teacher, export_student
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "Config": ("fastdisco.config", "Config"),
    "load_config": ("fastdisco.config", "build_config"),
    "train": ("fastdisco.engine.trainer", "train"),
    "make_loader": ("fastdisco.loader", "make_loader"),
    "load_teacher": ("fastdisco.models.teacher", "load_teacher"),
    "export_student": ("fastdisco.export", "export_student"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'fastdisco' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
