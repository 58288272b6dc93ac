"""Engine selection: which ISA path the kernels run on.

``ferroquant.backends.engine`` reads and writes the engine: ``"auto"`` (the best this CPU has)
or one of ``supported_engines``. The ``FERROQUANT_ENGINE`` environment variable takes the same
strings and is read at import. Results are bit-identical on every engine; forcing one is for
tests and benchmarks. ``torch.backends.quantized.engine`` plays no role in ferroquant.
"""

from __future__ import annotations

import os
import sys
import types

from . import _core

ENGINE_NAMES = ("avx512vnni", "avxvnni", "avx2", "neon_dotprod", "neon", "scalar")

#: The engines this CPU supports, best first (a subset of ENGINE_NAMES, always with "scalar").
supported_engines: list[str] = list(_core.available_engines())


def _set(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"engine must be a string, got {type(name).__name__}")
    if name != "auto" and name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}; choose 'auto' or one of {list(ENGINE_NAMES)}")
    if name != "auto" and name not in supported_engines:
        raise RuntimeError(f"engine {name!r} is not available on this CPU; available: {supported_engines} (or 'auto')")
    _core.set_engine(name)


def current_engine() -> str:
    """The engine kernels run on now ("auto" resolved)."""
    return _core.current_engine()


class _BackendsModule(types.ModuleType):
    @property
    def engine(self) -> str:
        """ "auto" or the forced engine name."""
        return _core.engine_setting()

    @engine.setter
    def engine(self, name: str) -> None:
        _set(name)


sys.modules[__name__].__class__ = _BackendsModule

_env = os.environ.get("FERROQUANT_ENGINE")
if _env:
    try:
        _set(_env.strip())
    except (ValueError, RuntimeError) as e:
        raise RuntimeError(f"FERROQUANT_ENGINE={_env!r}: {e}") from None
