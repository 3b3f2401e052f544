"""The package's layering contract (.importlinter) holds, and the check is real: adding a forbidden
import (a lower layer importing a higher one) makes it fail and name the import."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lint(root: Path) -> subprocess.CompletedProcess:
    # grimp finds the package through sys.path: point it at `root`'s copy only.
    env = dict(os.environ, PYTHONPATH=str(root))
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--config", str(root / ".importlinter"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "flm_ext", root / "flm_ext", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", root / ".importlinter")
    return root


def test_layering_contract_is_kept(tmp_path):
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_a_forbidden_import_breaks_the_contract(tmp_path):
    root = _copy(tmp_path)
    with open(root / "flm_ext" / "config.py", "a") as f:
        f.write("\nfrom flm_ext.training import trainer  # noqa: E402,F401  (forbidden: config imports training)\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "flm_ext.config -> flm_ext.training.trainer" in result.stdout, result.stdout


def test_the_engine_builds_an_optimizer_without_the_training_cli():
    """`OptimConfig` has its own module: the step engine (and the tools and tests that build an
    optimizer) never import the training CLI's argument module."""
    code = ("import sys, flm_ext.training.engine as e; from flm_ext.training.optim import OptimConfig; "
            "assert e.OptimConfig is OptimConfig; print(sorted(m for m in sys.modules if m.startswith('flm_ext.training')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    assert "flm_ext.training.optim" in out.stdout and "flm_ext.training.arguments" not in out.stdout, out.stdout
