"""FX graph mode quantization (``prepare_fx``, ``convert_fx``, ``fuse_fx``).

Not available yet: ferroquant's FX workflow is open work. Use eager mode
(``ferroquant.quantize_dynamic``, ``ferroquant.prepare`` / ``ferroquant.convert``).
"""

__all__: list[str] = []
