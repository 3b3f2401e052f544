"""docs/extending.md's worked examples, run as written: each section's blocks are applied to a temporary
copy of the repository (``python file=PATH`` creates a file, ``python append=PATH`` appends to one,
``diff apply`` patches one) and its ``bash`` blocks run there in order. A newcomer's path that stops
working fails here."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distributed import lone_process_env
from markdown_blocks import fences, section

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "extending.md"
SECTIONS = ("Add a growth operator", "Add an evaluation task", "Add a checkpoint field")


def blocks(title: str) -> list[tuple[str, str, str]]:
    """(language, attributes, body) of each fenced block in the section, in order."""
    found = []
    for info, body in fences(section(DOC.read_text(), title)):
        lang, _, attrs = info.partition(" ")
        found.append((lang, attrs.strip(), body))
    return found


def copy_repo(dst: Path) -> None:
    """The tracked and untracked-but-not-ignored files, as a fresh clone plus local edits would have them."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in names:
        src = REPO / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def apply_and_run(title: str, root: Path) -> str:
    script = ["set -euo pipefail"]
    for lang, attrs, body in blocks(title):
        target = re.match(r"(file|append)=(\S+)$", attrs)
        if lang == "diff" and attrs == "apply":  # a change inside a file, as a unified diff
            proc = subprocess.run(["patch", "-p1", "--forward", "--no-backup-if-mismatch"], input=body, cwd=root,
                                  capture_output=True, text=True)
            assert proc.returncode == 0, f"{title}: the diff does not apply:\n{proc.stdout}{proc.stderr}"
        elif target:
            path = root / target.group(2)
            path.parent.mkdir(parents=True, exist_ok=True)
            if target.group(1) == "file":
                assert not path.exists(), f"{title}: {target.group(2)} already exists; use append="
                path.write_text(body)
            else:
                assert path.exists(), f"{title}: append to missing {target.group(2)}"
                with path.open("a") as fh:
                    fh.write(body)
        elif lang == "bash":
            script.append(body)
    env = lone_process_env({**os.environ, "PYTHONPATH": str(root), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
                            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")})
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{title}: the example failed:\n{out[-4000:]}"
    return out


def test_every_section_has_an_example_that_edits_and_runs():
    for title in SECTIONS:
        found = blocks(title)
        assert any(re.match(r"(file|append)=", attrs) for _, attrs, _ in found), f"{title}: no file block"
        assert any(lang == "bash" for lang, _, _ in found), f"{title}: no bash block"


@pytest.mark.parametrize("title", SECTIONS)
def test_example_runs_in_a_copy(title, tmp_path):
    if not any(lang == "bash" for lang, _, _ in blocks(title)):
        pytest.fail(f"{title}: not written yet")
    copy_repo(tmp_path)
    apply_and_run(title, tmp_path)
