"""Console commands (setup.py's CONSOLE_SCRIPTS): each names a `main` that exists, every tool has one, and
an installed copy runs both as `flm-<tool>` and as `python tools/<tool>.py` with no path set-up (the tools
carry no sys.path preamble: they find flm_ext because it is installed)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _console_scripts() -> dict[str, str]:
    """{command: 'module:function'} read from setup.py's source (setup.py is not imported: it calls setup())."""
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CONSOLE_SCRIPTS":
            entries = ast.literal_eval(node.value)
            return dict((part.strip() for part in entry.split("=")) for entry in entries)
    raise AssertionError("setup.py defines no CONSOLE_SCRIPTS")


def _source(module: str) -> str:
    if module.startswith("flm_tools."):
        return os.path.join(REPO, "tools", module.split(".", 1)[1] + ".py")
    return os.path.join(REPO, *module.split(".")) + ".py"


def test_every_tool_has_a_console_command_whose_main_exists():
    scripts = _console_scripts()
    targets = {}
    for command, target in scripts.items():
        module, func = target.split(":")
        path = _source(module)
        assert os.path.isfile(path), f"{command}: {path} does not exist"
        body = ast.parse(open(path).read()).body
        defined = {n.name for n in body if isinstance(n, ast.FunctionDef)}
        imported = {a.asname or a.name for n in body if isinstance(n, ast.ImportFrom) for a in n.names}
        assert func in defined | imported, f"{command}: {path} has no {func}()"
        targets[os.path.normpath(path)] = command
    tools = [f for f in os.listdir(os.path.join(REPO, "tools")) if f.endswith(".py") and f != "__init__.py"]
    for name in tools:
        path = os.path.join(REPO, "tools", name)
        runs = "if __name__ == \"__main__\"" in open(path).read()
        main_module = {"predict_loss.py": "flm_ext/mup/cli.py", "torchrun.py": "flm_ext/elastic.py"}.get(name)
        listed = os.path.normpath(os.path.join(REPO, main_module)) if main_module else os.path.normpath(path)
        assert not runs or listed in targets, f"tools/{name} has no console command in setup.py"
    assert "sys.path.insert" not in "".join(open(os.path.join(REPO, "tools", n)).read() for n in tools)


@pytest.mark.slow
def test_installed_commands_run_without_path_setup(tmp_path):
    """Build the wheel, install it into a folder (no dependencies: the venv has them), and run a console
    command and a tool script from outside the repository with only that folder on the path."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), REPO], check=True, env=env, timeout=600, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").iterdir()
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "flm_tools/grow_checkpoint.py" in names and "flm-grow = flm_tools.grow_checkpoint:main" in entry_points
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, env=env, timeout=600)
    clean = dict(env, PYTHONPATH=str(target))  # the installed copy only: not the repository
    command = subprocess.run([sys.executable, str(target / "bin" / "flm-grow"), "--help"], capture_output=True,
                             text=True, env=clean, cwd=tmp_path, timeout=300)
    assert command.returncode == 0 and "--num-layers" in command.stdout, command.stderr[-2000:]
    assert "usage: flm-grow" in command.stdout
    script = subprocess.run([sys.executable, os.path.join(REPO, "tools", "export_hf.py"), "--help"],
                            capture_output=True, text=True, env=clean, cwd=tmp_path, timeout=300)
    assert script.returncode == 0 and "--ckpt-step" in script.stdout, script.stderr[-2000:]
    probe = subprocess.run([sys.executable, "-c", "import flm_ext, flm_tools; print(flm_ext.__file__)"],
                           capture_output=True, text=True, env=clean, cwd=tmp_path, timeout=120)
    assert probe.stdout.startswith(str(target)), probe  # found in the install, not the checkout
