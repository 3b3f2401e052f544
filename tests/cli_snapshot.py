"""Record every CLI's interface: its option strings (sorted) and `--help` text, per parser.

    PYTHONPATH=$PWD python tests/cli_snapshot.py tests/data/cli_flags

Each CLI's `main` is called with its parser's `parse_args` replaced by a recorder, so the parser is
captured exactly as the CLI builds it, whatever the code that builds it looks like (hand-written or
generated from dataclass fields). tests/test_cli_flags.py compares the current parsers with the
snapshot written from commit 04f8d9e (before flags were generated from configs).
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (file to load, its entry function); torchrun.py is torch's own parser, not ours.
CLIS = {
    "pretrain_flm": ("pretrain_flm.py", "main"),
    "build_demo_corpus": ("tools/build_demo_corpus.py", "main"),
    "evaluate": ("tools/evaluate.py", "main"),
    "export_hf": ("tools/export_hf.py", "main"),
    "generate": ("tools/generate.py", "main"),
    "grow_checkpoint": ("tools/grow_checkpoint.py", "main"),
    "import_hf": ("tools/import_hf.py", "main"),
    "make_iq_tasks": ("tools/make_iq_tasks.py", "main"),
    "plan_schedule": ("tools/plan_schedule.py", "main"),
    "predict_loss": ("flm_ext/mup/cli.py", "main"),
    "preprocess_data": ("tools/preprocess_data.py", "main"),
    "serve": ("tools/serve.py", "main"),
    "train_punkt": ("tools/train_punkt.py", "main"),
    "train_tokenizer": ("tools/train_tokenizer.py", "main"),
}


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def capture_parser(name: str) -> argparse.ArgumentParser:
    """The parser CLI `name` builds, caught at its first parse_args / parse_known_args call."""
    path, func = CLIS[name]
    spec = importlib.util.spec_from_file_location(f"_cli_{name}", os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses defined in it resolve their annotations there
    sys.path.insert(0, os.path.dirname(os.path.join(REPO, path)))  # serve.py used to import export_hf
    original = argparse.ArgumentParser.parse_known_args

    def record(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = record
    try:
        spec.loader.exec_module(module)
        getattr(module, func)([])
    except _Captured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_known_args = original
        sys.path.pop(0)
    raise RuntimeError(f"{name}: main() returned without parsing arguments")


@functools.lru_cache(maxsize=None)
def _parser_once(name: str) -> argparse.ArgumentParser:
    """capture_parser, once per CLI and process (read only: the snapshots below do not change it)."""
    return capture_parser(name)


def parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    """(label, parser) for the parser and each sub-command's parser, depth first."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from parsers(subparser, f"{prefix}{sub} ")


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(s for a in parser._actions for s in a.option_strings)


def snapshot(name: str) -> dict[str, list[str]]:
    """{sub-command label ('' for the top level): sorted option strings}."""
    return {label.strip(): option_strings(p) for label, p in parsers(_parser_once(name))}


def defaults(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{option string: repr of its default and dest} of every option of the parser."""
    return {s: f"dest={a.dest} default={a.default!r}".replace(REPO, "<repo>") for a in parser._actions
            for s in a.option_strings if not isinstance(a, argparse._HelpAction)}


def snapshot_help(name: str) -> dict[str, str]:
    """{sub-command label: its --help text}."""
    return {label.strip(): p.format_help() for label, p in parsers(_parser_once(name))}


def snapshot_defaults(name: str) -> dict[str, dict[str, str]]:
    return {label.strip(): defaults(p) for label, p in parsers(_parser_once(name))}


def write(name: str, folder: str) -> None:
    root = capture_parser(name)
    with open(os.path.join(folder, f"{name}.txt"), "w") as f:
        for label, parser in parsers(root):
            f.write(f"[{label.strip()}]\n" + "".join(s + "\n" for s in option_strings(parser)))
    with open(os.path.join(folder, f"{name}.defaults.txt"), "w") as f:
        for label, parser in parsers(root):
            f.write(f"[{label.strip()}]\n" + "".join(f"{k} {v}\n" for k, v in sorted(defaults(parser).items())))
    with open(os.path.join(folder, f"{name}.help.txt"), "w") as f:
        os.environ["COLUMNS"] = "100"
        for label, parser in parsers(root):
            f.write(f"===== [{label.strip()}]\n{parser.format_help()}\n")


def read(path: str) -> dict[str, list[str]]:
    """A snapshot file back as {label: lines} (option strings; in .defaults.txt 'option dest=.. default=..')."""
    result, label = {}, None
    for line in open(path).read().splitlines():
        if line.startswith("["):
            label = line[1:-1]
            result[label] = []
        elif line:
            result[label].append(line)
    return result


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "tests", "data", "cli_flags")
    os.makedirs(out, exist_ok=True)
    for cli in CLIS:
        write(cli, out)
        print(f"wrote {out}/{cli}.txt")
