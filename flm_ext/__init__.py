"""FLM-101B on megatron-core: configs, CPU runtime, model, data, training and growth."""

__version__ = "0.1.0"
