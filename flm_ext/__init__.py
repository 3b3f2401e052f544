"""FLM-101B on megatron-core: configs, CPU runtime, model, data, checkpoints, training, growth, export and evaluation."""

__version__ = "0.2.0"


def quiet_megatron_import_warnings() -> None:
    """Hide megatron-core's import-time notices that Transformer Engine / Apex are absent.

    They say nothing to our users: flm_ext never needs either (always absent on CPU), and each
    tool would otherwise start with four of them. Every entry point calls this before importing
    megatron; other warnings still show.
    """
    import warnings

    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|Transformer-Engine) .*not installed",
                            category=UserWarning)
