"""FX graph mode quantization internals (the public names live in ``ferroquant.quantize_fx``):
``tracer`` (symbolic tracing with automatic leaves for untraceable parts), ``ops`` (what each
graph op is for quantization), ``qconfig_resolver`` (which qconfig applies to a node), ``fuse``
(conv / linear / bn / relu patterns), ``prepare`` (observers) and ``convert`` (quantized modules,
quantize / dequantize at the float boundaries)."""
