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
    defer_torch_compile_of_functions()


def defer_torch_compile_of_functions() -> None:
    """`torch.compile(fn)` of a plain function returns a wrapper that compiles `fn` on its first call.

    megatron-core decorates its fusions with `torch.compile` at import time, and that decoration alone
    imports TorchDynamo and Inductor: about 1.5 s of every process's start-up (more on a loaded
    machine), paid by every tool and test process, though on CPU they never call a fusion. Here the
    decoration is deferred to the first call, where torch.compile would compile anyway; every other
    use (modules, keyword arguments) goes to torch.compile unchanged.
    """
    import functools

    import torch

    real = torch.compile
    if getattr(real, "_flm_deferred", False):
        return

    @functools.wraps(real)
    def compile(model=None, **kwargs):
        if kwargs or not callable(model) or isinstance(model, torch.nn.Module):
            return real(model, **kwargs) if model is not None else real(**kwargs)
        compiled = None

        @functools.wraps(model)
        def first_call_compiles(*args, **kw):
            nonlocal compiled
            if compiled is None:
                compiled = real(model)
            return compiled(*args, **kw)
        return first_call_compiles

    compile._flm_deferred = True
    torch.compile = compile


def lazy_exports(package: str, exports: dict[str, str]):
    """A package's `__getattr__` that imports `exports[name]` (a submodule) on first use (PEP 562),
    so that importing one light submodule does not import the package's heavy ones."""
    import importlib

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
