"""Load an exported folder without running code that came with it.

An export carries copies of configuration_flm.py / modeling_flm.py so that users load it with
`trust_remote_code=True`. Our own tools need not trust the folder: when every code file its
config.json (or tokenizer_config.json) names through `auto_map` is byte-equal to the copy this
package ships, the folder was written by this flm_ext and the package's own classes load it
(the same code, imported from flm_ext, not from the folder). Any other code (edited, from another
version, another repository's) runs only with an explicit `trust_remote_code=True`
(`--trust-remote-code`), as the trainer never runs code from a checkpoint.
"""
from __future__ import annotations

import filecmp
import json
import os

from flm_ext.export.errors import ExportError

_HERE = os.path.dirname(os.path.abspath(__file__))


def _json(path: str, folder: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ExportError(f"--load {folder}: {path} is not readable JSON ({e})") from None


def _references(auto_map) -> list[str]:
    """The "module.Class" (or "repo--module.Class") strings of an auto_map."""
    refs = []
    for value in (auto_map or {}).values() if isinstance(auto_map, dict) else [auto_map]:
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if ref is not None:
                refs.append(str(ref))
    return refs


def foreign_code(folder: str) -> list[str]:
    """The code files (or other repositories) that loading ``folder`` with transformers would run
    and that are not byte-equal to this package's own; [] for a folder this flm_ext wrote."""
    refs = []
    for name in ("config.json", "tokenizer_config.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            record = _json(path, folder)
            refs += _references(record.get("auto_map") if isinstance(record, dict) else None)
    from flm_ext.export.export import MODEL_CODE  # what the export copies into every folder

    foreign = set()
    for ref in refs:
        if "--" in ref:  # code from another Hub repository
            foreign.add(ref.split("--")[0])
            continue
        file = ref.rsplit(".", 1)[0] + ".py"
        mine = os.path.join(_HERE, file)
        theirs = os.path.join(folder, file)
        if file not in MODEL_CODE or not os.path.isfile(theirs) or not filecmp.cmp(theirs, mine, shallow=False):
            foreign.add(file)
    return sorted(foreign)


def check_code(folder: str, trust_remote_code: bool) -> list[str]:
    """Raise ExportError when ``folder`` would run code this package does not ship, unless trusted;
    returns that code's names."""
    foreign = foreign_code(folder)
    if foreign and not trust_remote_code:
        raise ExportError(f"--load {folder}: its code ({', '.join(foreign)}) is not the code this flm_ext ships "
                          f"(edited, from another version, or another model's) and was not run; export the "
                          f"checkpoint again with tools/export_hf.py, or pass --trust-remote-code if you trust it")
    return foreign


def load_export_model(folder: str, *, dtype=None, trust_remote_code: bool = False):
    """The causal LM in ``folder``: this package's FLMForCausalLM for a folder it wrote, else
    transformers' Auto class (running the folder's code only when ``trust_remote_code``)."""
    foreign = check_code(folder, trust_remote_code)
    config = _json(os.path.join(folder, "config.json"), folder)
    kwargs = {} if dtype is None else {"dtype": dtype}
    if isinstance(config, dict) and config.get("model_type") == "flm" and not foreign:
        from flm_ext.export.modeling_flm import FLMForCausalLM

        return FLMForCausalLM.from_pretrained(folder, **kwargs).eval()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust_remote_code, **kwargs).eval()


def load_export_tokenizer(folder: str, model_config, *, trust_remote_code: bool = False):
    """The folder's transformers tokenizer (config= so AutoTokenizer does not load config.json
    through AutoConfig, which would ask about its code although the tokenizer needs none)."""
    from transformers import AutoTokenizer

    check_code(folder, trust_remote_code)
    return AutoTokenizer.from_pretrained(folder, config=model_config, trust_remote_code=trust_remote_code)
