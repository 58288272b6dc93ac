"""What the quantized halves of torch's custom-module pairs share (``fq.nn.quantized.LSTM``,
``MultiheadAttention``): built only from an observed module, by converting its parts."""

from __future__ import annotations

from typing import Any


class FromObserved:
    """``from_observed(observed)``: ``convert`` inside the observed (quantizable) module, then the
    result takes this class; ``from_float`` says how to get there."""

    _FLOAT_MODULE: Any
    _OBSERVED_NAME = ""

    @classmethod
    def from_float(cls, *args: Any, **kwargs: Any) -> Any:
        name = cls._OBSERVED_NAME
        raise NotImplementedError(
            f"the quantized {name} is made from an observed one: map the float {name} to "
            f"ferroquant.nn.quantizable.{name} in prepare's float_to_observed_custom_module_class and that to "
            f"ferroquant.nn.quantized.{name} in convert's observed_to_quantized_custom_module_class"
        )

    @classmethod
    def from_observed(cls, other: Any) -> Any:
        from ...quantize import convert

        if not isinstance(other, cls._FLOAT_MODULE):
            raise TypeError(
                f"quantized {cls._OBSERVED_NAME}.from_observed expects a quantizable {cls._OBSERVED_NAME}, got "
                f"{type(other).__name__}"
            )
        converted = convert(other, inplace=False, remove_qconfig=True)
        converted.__class__ = cls
        cls._finish(converted)
        return converted

    @classmethod
    def _finish(cls, converted: Any) -> None:
        """Class-specific work after the conversion (none by default)."""
