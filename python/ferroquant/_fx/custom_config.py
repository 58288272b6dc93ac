"""``PrepareCustomConfig``, ``ConvertCustomConfig``, ``FuseCustomConfig`` (torch.ao's classes of the
same names, with their dict forms)."""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["PrepareCustomConfig", "ConvertCustomConfig", "FuseCustomConfig"]

_QUANT_TYPES = ("static", "dynamic", "weight_only")


def _check_quant_type(quant_type: str) -> str:
    if quant_type not in _QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {list(_QUANT_TYPES)}, got {quant_type!r}")
    return quant_type


class PrepareCustomConfig:
    """What ``prepare_fx`` / ``prepare_qat_fx`` should leave to you: modules that cannot be traced
    (by name or class; they run as they are, in float), custom module classes (float → observed,
    per quant type), graph inputs / outputs that are already quantized, attributes to keep."""

    def __init__(self) -> None:
        self.standalone_module_names: dict[str, Any] = {}
        self.standalone_module_classes: dict[type, Any] = {}
        self.float_to_observed_mapping: dict[str, dict[type, type]] = {}
        self.non_traceable_module_names: list[str] = []
        self.non_traceable_module_classes: list[type] = []
        self.input_quantized_indexes: list[int] = []
        self.output_quantized_indexes: list[int] = []
        self.preserved_attributes: list[str] = []

    def set_float_to_observed_mapping(
        self, float_class: type, observed_class: type, quant_type: str = "static"
    ) -> PrepareCustomConfig:
        self.float_to_observed_mapping.setdefault(_check_quant_type(quant_type), {})[float_class] = observed_class
        return self

    def set_non_traceable_module_names(self, module_names: list[str]) -> PrepareCustomConfig:
        self.non_traceable_module_names = list(module_names)
        return self

    def set_non_traceable_module_classes(self, module_classes: list[type]) -> PrepareCustomConfig:
        self.non_traceable_module_classes = list(module_classes)
        return self

    def set_input_quantized_indexes(self, indexes: list[int]) -> PrepareCustomConfig:
        self.input_quantized_indexes = list(indexes)
        return self

    def set_output_quantized_indexes(self, indexes: list[int]) -> PrepareCustomConfig:
        self.output_quantized_indexes = list(indexes)
        return self

    def set_preserved_attributes(self, attributes: list[str]) -> PrepareCustomConfig:
        self.preserved_attributes = list(attributes)
        return self

    def set_standalone_module_name(self, *args: Any) -> PrepareCustomConfig:
        raise NotImplementedError(
            "standalone modules are not supported; use set_non_traceable_module_names to keep a part as it is"
        )

    set_standalone_module_class = set_standalone_module_name

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]]) -> PrepareCustomConfig:
        c = cls()
        for key in d or {}:
            if key not in _PREPARE_KEYS:
                raise ValueError(f"unknown prepare_custom_config key {key!r}; known: {sorted(_PREPARE_KEYS)}")
        d = d or {}
        for quant_type, mapping in d.get("float_to_observed_custom_module_class", {}).items():
            for f, o in mapping.items():
                c.set_float_to_observed_mapping(f, o, quant_type)
        c.set_non_traceable_module_names(d.get("non_traceable_module_name", []))
        c.set_non_traceable_module_classes(d.get("non_traceable_module_class", []))
        c.set_input_quantized_indexes(d.get("input_quantized_idxs", []))
        c.set_output_quantized_indexes(d.get("output_quantized_idxs", []))
        c.set_preserved_attributes(d.get("preserved_attributes", []))
        return c

    def to_dict(self) -> dict[str, Any]:
        return {
            "float_to_observed_custom_module_class": {k: dict(v) for k, v in self.float_to_observed_mapping.items()},
            "non_traceable_module_name": list(self.non_traceable_module_names),
            "non_traceable_module_class": list(self.non_traceable_module_classes),
            "input_quantized_idxs": list(self.input_quantized_indexes),
            "output_quantized_idxs": list(self.output_quantized_indexes),
            "preserved_attributes": list(self.preserved_attributes),
        }


_PREPARE_KEYS = {
    "float_to_observed_custom_module_class",
    "non_traceable_module_name",
    "non_traceable_module_class",
    "input_quantized_idxs",
    "output_quantized_idxs",
    "preserved_attributes",
}


class ConvertCustomConfig:
    """Custom module classes (observed → quantized, per quant type) and attributes to keep."""

    def __init__(self) -> None:
        self.observed_to_quantized_mapping: dict[str, dict[type, type]] = {}
        self.preserved_attributes: list[str] = []

    def set_observed_to_quantized_mapping(
        self, observed_class: type, quantized_class: type, quant_type: str = "static"
    ) -> ConvertCustomConfig:
        self.observed_to_quantized_mapping.setdefault(_check_quant_type(quant_type), {})[observed_class] = (
            quantized_class
        )
        return self

    def set_preserved_attributes(self, attributes: list[str]) -> ConvertCustomConfig:
        self.preserved_attributes = list(attributes)
        return self

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]]) -> ConvertCustomConfig:
        c = cls()
        d = d or {}
        for key in d:
            if key not in ("observed_to_quantized_custom_module_class", "preserved_attributes"):
                raise ValueError(f"unknown convert_custom_config key {key!r}")
        for quant_type, mapping in d.get("observed_to_quantized_custom_module_class", {}).items():
            for o, q in mapping.items():
                c.set_observed_to_quantized_mapping(o, q, quant_type)
        c.set_preserved_attributes(d.get("preserved_attributes", []))
        return c

    def to_dict(self) -> dict[str, Any]:
        return {
            "observed_to_quantized_custom_module_class": {
                k: dict(v) for k, v in self.observed_to_quantized_mapping.items()
            },
            "preserved_attributes": list(self.preserved_attributes),
        }


class FuseCustomConfig:
    """Attributes of the model to keep on the fused GraphModule."""

    def __init__(self) -> None:
        self.preserved_attributes: list[str] = []

    def set_preserved_attributes(self, attributes: list[str]) -> FuseCustomConfig:
        self.preserved_attributes = list(attributes)
        return self

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]]) -> FuseCustomConfig:
        c = cls()
        d = d or {}
        for key in d:
            if key != "preserved_attributes":
                raise ValueError(f"unknown fuse_custom_config key {key!r}")
        return c.set_preserved_attributes(d.get("preserved_attributes", []))

    def to_dict(self) -> dict[str, Any]:
        return {"preserved_attributes": list(self.preserved_attributes)}


def as_config(value: Any, cls: type) -> Any:
    """``value`` as an instance of ``cls`` (it may be None, a dict, or an instance)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value)
    raise TypeError(f"expected a {cls.__name__}, a dict or None, got {type(value).__name__}")
