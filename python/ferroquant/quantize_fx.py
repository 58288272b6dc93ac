"""FX graph mode quantization (``prepare_fx``, ``convert_fx``, ``fuse_fx``).

Not available yet: ferroquant's FX workflow is planned work. Use eager mode
(``ferroquant.quantize_dynamic`` now; ``prepare`` / ``convert`` next).
"""

__all__: list[str] = []
