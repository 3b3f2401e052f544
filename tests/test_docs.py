"""The documentation stays true to the repository: README.md is short, every relative link, every
repository path, module and section it or docs/*.md names exists, example paths are ones the demo
writes (or the same page's commands), and the flags in their commands are flags the tools take.
Each check has a control: a planted dangling reference must be reported."""
from __future__ import annotations

import ast
import fnmatch
import functools
import glob
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from markdown_blocks import FENCE, fences, section

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_LINES = 160
INLINE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
# a path into the repository: one of its tracked top-level folders, then anything path-like
REPO_PATH = re.compile(r"(?<![\w./$~-])((?:flm_ext|tools|tests|docs|examples|benchmarks|\.ci)/[\w./*{},<>:-]*"
                       r"[\w*}>/])")
MODULE = re.compile(r"(?<![\w./-])(flm_ext(?:\.\w+)+)")
SECTION_REF = re.compile(r"((?:docs/)?[\w]+\.md|README)(?:\)|,)?\s*\(?\"([^\"\n]+)\"")
SECTION_REF_STRICT = re.compile(r"((?:docs/)?\w+\.md),? \(\"([^\"\n]+)\"\)")  # in code: `docs/X.md ("Title")` only
SECTION_NUMBER = re.compile(r"(docs/FLM\.md)(?:'s)?,? sections? (\d+(?:\.\d+)?)")
BARE_MD = re.compile(r"(?<![\w/.-])([\w-]+\.md)\b")  # DESIGN.md, KINDS.md: a page named without its folder
FILE_BLOCK = re.compile(r"(?:file|append)=(\S+)")


def doc_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def prose(text: str) -> str:
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(text: str) -> list[str]:
    return [h.strip() for h in re.findall(r"^#{1,6} (.+)$", prose(text), re.M)]


# --- paths ----------------------------------------------------------------------------------------

def _expand_braces(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in _expand_braces(path[:m.start()] + alt + path[m.end():])]


def _defines(source: str, name: str) -> bool:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def path_problem(token: str, root: Path = REPO) -> str | None:
    """Why `token` (a path into the repository, maybe with a glob, braces, ::test or a <placeholder>)
    does not resolve, or None."""
    path, _, member = token.partition("::")
    member = member.split("[")[0]
    if "<" in path:  # tools/<name>.py: the folder before the placeholder must exist
        folder = path[:path.index("<")].rsplit("/", 1)[0]
        return None if (root / folder).is_dir() else f"no folder {folder}"
    for candidate in _expand_braces(path.rstrip("/")):
        matches = [Path(m) for m in glob.glob(str(root / candidate))]
        if not matches:
            return f"no {candidate}"
        if member and not any(m.is_file() and _defines(m.read_text(encoding="utf-8"), member) for m in matches):
            return f"{candidate} defines no {member}"
    return None


def created_by_examples(text: str) -> set[str]:
    """Files a page's own worked examples create (docs/extending.md's ```python file=PATH blocks)."""
    return {m for info, _ in fences(text) for m in FILE_BLOCK.findall(info)}


def dangling_paths(text: str, root: Path = REPO) -> list[str]:
    created = created_by_examples(text)
    bad = []
    for token in sorted(set(REPO_PATH.findall(text))):
        if token.split("::")[0] in created:
            continue
        problem = path_problem(token, root)
        if problem:
            bad.append(f"{token}: {problem}")
    return bad


def module_problem(dotted: str, root: Path = REPO) -> str | None:
    """flm_ext.a.b[.name]: the longest prefix that is a module or package, and the rest defined in it."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:i])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if source.is_file():
            rest = parts[i:]
            if not rest:
                return None
            if len(rest) > 2:  # module.Class.method: the class is enough to check statically
                rest = rest[:2]
            text = source.read_text(encoding="utf-8")
            if _defines(text, rest[0]) or (base.is_dir() and (base / f"{rest[0]}.py").is_file()):
                return None
            if re.search(rf"[\"']{rest[0]}[\"']", text):  # lazily exported names (PEP 562 tables)
                return None
            return f"{'.'.join(parts[:i])} defines no {rest[0]}"
    return "no such module"


def dangling_modules(text: str, root: Path = REPO) -> list[str]:
    created = {p[:-3].replace("/", ".") for p in created_by_examples(text) if p.endswith(".py")}
    bad = []
    for dotted in sorted(set(MODULE.findall(text))):
        dotted = dotted.rstrip(".")
        if any(dotted == c or dotted.startswith(c + ".") for c in created):
            continue
        problem = module_problem(dotted, root)
        if problem:
            bad.append(f"{dotted}: {problem}")
    return bad


# --- links and sections ---------------------------------------------------------------------------

def dangling_links(doc: Path) -> list[str]:
    bad = []
    for target in LINK.findall(prose(doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in {slug(h) for h in headings(dest.read_text())}:
            bad.append(f"{target}: no heading with that anchor")
    return bad


def dangling_sections(doc: Path, refs: re.Pattern = SECTION_REF) -> list[str]:
    """docs/X.md ("Title") must name a heading of X (a prefix is enough); docs/FLM.md section N one of its."""
    text = doc.read_text(encoding="utf-8")
    bad = []
    for name, title in refs.findall(text):
        name = "README.md" if name == "README" else name
        target = REPO / "docs" / Path(name).name if not (REPO / name).is_file() else REPO / name
        if not target.is_file():
            continue  # reported by the path check
        want = title.replace("`", "")
        if not any(h.replace("`", "").startswith(want) for h in headings(target.read_text())):
            bad.append(f'{name} ("{title}"): no such heading')
    for name, number in SECTION_NUMBER.findall(text):
        if not any(re.match(rf"{re.escape(number)}[. ]", h) for h in headings((REPO / name).read_text())):
            bad.append(f"{name} section {number}: no such section")
    return bad


# --- example output paths -------------------------------------------------------------------------

# What `make demo` (examples/tiny_recipe.py --out runs/demo) writes, as paths under runs/demo/.
DEMO_LAYOUT = ("data/bpe4096.json", "data/corpus/*.jsonl", "data/*_document", "data/teacher*", "data/cache",
               "stage1/ckpt", "stage2/ckpt", "stage3/ckpt", "stage1_no_teacher/ckpt", "stage2_grown", "stage3_grown",
               "*/metrics.jsonl", "export", "summary.json", "loss.png", "tensorboard", "eval_*.json",
               "eval_*.md", "demo.log")
OUTPUT_FLAGS = ("--save", "--out", "--output", "--output-prefix", "--markdown", "--work")
INPUT_FLAGS = ("--load", "--tokenizer-model", "--input", "--teacher-data", "--valid-data", "--from-search",
               "--sweep", "--prediction", "--points", "--iq-dir", "--include-path", "--include_path",
               "--grown-from", "--demo-run", "--teacher-data-path", "--data-path")


ASSIGNMENT = re.compile(r'^(\w+)="([^"]*)"', re.M)


def commands(text: str) -> list[list[str]]:
    """The shell commands of a page's bash/sh/console blocks (continuations joined, comments cut, the
    page's own NAME="..." variables expanded)."""
    out = []
    variables: dict[str, str] = {}
    for info, body in fences(text):
        if info.split(" ")[0] not in ("bash", "sh", "console", ""):
            continue
        for name, value in ASSIGNMENT.findall(body):
            variables[name] = " ".join(value.split())
        body = ASSIGNMENT.sub("", body)
        for name, value in variables.items():
            body = re.sub(rf"\$(?:{name}\b|{{{name}}})", lambda _: value, body)
        body = re.sub(r"\\\n\s*", " ", body)
        for line in body.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            for part in re.split(r"\s(?:&&|\|\||;|\|)\s|;$", line):
                if part.strip():
                    out.append(part.split())
    return out


def _in_demo(path: str) -> bool:
    """runs/demo/X is the demo's when X, or a folder above it, matches a DEMO_LAYOUT pattern."""
    parts = path[len("runs/demo/"):].rstrip("/").split("/")
    return any(len(parts) >= p.count("/") + 1 and fnmatch.fnmatchcase("/".join(parts[:p.count("/") + 1]), p)
               for p in DEMO_LAYOUT)


@functools.lru_cache(maxsize=1)
def launcher_checkpoints() -> set[str]:
    """The folders under checkpoints/ that the 24-node launchers (examples/*.sh) save to or grow into."""
    return {m for script in (REPO / "examples").glob("*.sh")
            for m in re.findall(r"\$CKPT_ROOT/([\w.-]+)", script.read_text())}


def written_paths(cmds: list[list[str]]) -> set[str]:
    """What a page's commands write: the values of OUTPUT_FLAGS, `tee FILE`, `> FILE`, `>> FILE`."""
    return {v.rstrip("/") for cmd in cmds for flag, v in zip(cmd, cmd[1:])
            if flag in OUTPUT_FLAGS + (">", ">>") or flag == "tee" and cmd[0] == "tee"}


def dangling_examples(text: str) -> list[str]:
    """Relative paths that commands read must be the demo's outputs, the repository's files, or what an
    earlier command on the same page writes."""
    cmds = commands(text)
    written = written_paths(cmds)
    written |= {v.split("=", 1)[1].rstrip("/") for cmd in cmds for v in cmd if "=" in v and
                v.split("=", 1)[0] in ("OLD", "NEW", "CKPT", "GROWN")}
    bad = []
    for cmd in cmds:
        for i, word in enumerate(cmd[:-1]):
            if word not in INPUT_FLAGS:
                continue
            for value in cmd[i + 1:]:
                if value.startswith("-"):
                    break
                value = value.split("=", 1)[1] if re.match(r"^[a-z]+=", value) else value
                if "$" in value or "/" not in value or value.startswith(("/", "~")) or re.fullmatch(r"[A-Z_]+", value):
                    continue
                if not re.fullmatch(r"[\w./*-]+", value) or re.fullmatch(r"[0-9.]+", value):
                    continue
                if (REPO / value).exists() or any(value == w or value.startswith(w + "/") for w in written):
                    continue
                if value.rstrip("/") == "runs/demo" or value.startswith("runs/demo/") and _in_demo(value):
                    continue
                if re.fullmatch(r"[A-Z_]+", value.split("/")[0]):  # DATA/..., CKPT/...: a placeholder
                    continue
                if value.startswith("checkpoints/") and value.split("/")[1] in launcher_checkpoints():
                    continue
                bad.append(f"{word} {value}: neither written by make demo, the repository, nor this page")
    return bad


# --- flags ----------------------------------------------------------------------------------------

ENTRY = re.compile(r"^(?:tools/\w+\.py|pretrain_flm\.py|benchmarks/\w+\.py)$")
SUBCOMMAND_TOOLS = ("tools/predict_loss.py",)
# Flags the pages name for programs that are not this repository's (vLLM, pip, venv, SLURM, Megatron-LM),
# and placeholders; a flag of ours is checked against the tool's --help instead.
FOREIGN_FLAGS = {
    "vLLM": {"--chat-template", "--enforce-eager", "--model-impl", "--gpu-memory-utilization"},
    "pip / venv": {"--no-build-isolation", "--report", "--system-site-packages", "--dry-run"},
    "SLURM": {"--kill-on-bad-exit", "--requeue", "--signal"},
    "Megatron-LM": {"--rerun-mode", "--legacy-tokenizer", "--fp16"},
    "placeholders": {"--no-FLAG", "--x"},
}


def entry_points() -> list[tuple[str, str]]:
    """The CLIs whose --help is run: tools/ and pretrain_flm.py."""
    return [(rel(p), "") for p in sorted((REPO / "tools").glob("*.py")) if p.name != "__init__.py"] + \
        [("pretrain_flm.py", "")]  # tools/__init__.py only makes tools/ the installed package flm_tools


def benchmark_flags() -> dict[str, set[str]]:
    """The benchmark scripts' flags, read from their add_argument calls (running a benchmark that parses
    no flags would start measuring; importing all of them costs more than this whole file)."""
    scripts = {p.stem: p.read_text() for p in sorted((REPO / "benchmarks").glob("*.py"))}
    own = {name: set(re.findall(r"add_argument\(\s*[\"'](--[\w-]+)", text)) for name, text in scripts.items()}
    return {f"benchmarks/{name}.py": own[name].union(*(own[other] for other in scripts if other != name and
                                                       re.search(rf"^\s*(?:from|import) {other}\b", text, re.M)))
            for name, text in scripts.items()}  # with the flags of a sibling it takes its parser from


def tool_invocations(text: str) -> dict[tuple[str, str], set[str]]:
    """{(tool, subcommand): flags} of the pages' commands that run a tool of this repository."""
    found: dict[tuple[str, str], set[str]] = {}
    inline = [span.split() for _, span in INLINE.findall(prose(text))]  # `tools/evaluate.py --lengths 1x,2x`
    for cmd in commands(text) + [words for words in inline if words and ENTRY.match(words[0])]:
        idx = next((i for i, w in enumerate(cmd) if ENTRY.match(w)), None)
        if idx is None:
            continue
        tool, args = cmd[idx], cmd[idx + 1:]
        args = args[:args.index("--")] if "--" in args else args  # the rest goes to another program
        sub = args[0] if tool in SUBCOMMAND_TOOLS and args and not args[0].startswith("-") else ""
        flags = {a.split("=")[0] for a in args if re.match(r"^--[a-z][\w-]*", a)}
        found.setdefault((tool, sub), set()).update(flags)
    return found


_HELP_SCRIPT = r"""
import contextlib, io, json, os, runpy, sys
out = {}
for tool, sub in json.loads(sys.argv[1]):
    sys.argv = [tool] + ([sub] if sub else []) + ["--help"]
    buf = io.StringIO()
    sys.path.insert(0, os.path.dirname(os.path.abspath(tool)))  # as `python tool` would
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_path(tool, run_name="__main__")
    except SystemExit:
        pass
    except BaseException as e:
        buf.write(f"\nFAILED: {type(e).__name__}: {e}")
    sys.path.pop(0)
    out[tool + " " + sub] = buf.getvalue()
print("@@JSON@@" + json.dumps(out))
"""


@functools.lru_cache(maxsize=1)
def help_texts(keys: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Each tool's `--help` (with its subcommand), from one interpreter (megatron is imported once)."""
    proc = subprocess.run([sys.executable, "-c", _HELP_SCRIPT, json.dumps(keys)], cwd=REPO, capture_output=True,
                          text=True, timeout=400)
    assert "@@JSON@@" in proc.stdout, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("@@JSON@@", 1)[1])


def flags_in_help(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-zA-Z][\w-]*)", help_text))


# --- the tests ------------------------------------------------------------------------------------

def test_readme_fits_on_a_few_screens():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES}: move detail to docs/"


def dangling_bare_pages(doc: Path) -> list[str]:
    """A page named without its folder (`KINDS.md`) must be next to the doc, in the root or in docs/,
    or be written by one of the page's own commands (`--markdown eval.md`)."""
    text = doc.read_text(encoding="utf-8")
    written = {Path(v).name for v in written_paths(commands(text))}
    return [f"{name}: not in this repository" for name in sorted(set(BARE_MD.findall(text)))
            if name not in written and not any((d / name).is_file() for d in (doc.parent, REPO, REPO / "docs"))]


@pytest.mark.parametrize("doc", doc_files(), ids=rel)
def test_links_paths_modules_and_sections_resolve(doc):
    text = doc.read_text(encoding="utf-8")
    bad = (dangling_links(doc) + dangling_paths(text) + dangling_modules(text) + dangling_sections(doc)
           + dangling_bare_pages(doc))
    assert not bad, f"{rel(doc)}: dangling references:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("doc", doc_files(), ids=rel)
def test_example_paths_are_the_demos_or_the_pages_own(doc):
    bad = dangling_examples(doc.read_text(encoding="utf-8"))
    assert not bad, f"{rel(doc)}:\n  " + "\n  ".join(bad)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in LINK.findall(README.read_text(encoding="utf-8"))}
    missing = [rel(p) for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_the_readme_map_lists_the_layers_of_importlinter():
    """The README's table of layers is .importlinter's layer list, top to bottom, no layer left out."""
    config = (REPO / ".importlinter").read_text()
    block = config.split("layers =", 1)[1]
    layers = []
    for line in block.splitlines()[1:]:
        if not line.startswith((" ", "\t")) or not line.strip():
            break
        layers.append(sorted(name.strip() for name in line.split("|")))
    house = section(README.read_text(encoding="utf-8"), "A map of the house")
    rows = [sorted(re.findall(r"`(\w+)`", row.split("|")[1])) for row in house.splitlines()
            if row.startswith("| `")]
    assert rows == layers


def unknown_flags(pages: dict[str, str]) -> list[str]:
    """`where: tool flag` for each flag a page's command gives a tool whose --help does not list it, and
    `where: flag` for each flag written in backticks that no CLI here (nor a FOREIGN_FLAGS program) takes."""
    wanted: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for where, text in pages.items():
        for key, flags in tool_invocations(text).items():
            wanted.setdefault(key, set()).update((f, where) for f in flags)
    benches = benchmark_flags()
    helps = help_texts(tuple(sorted({k for k in wanted if k[0] not in benches} | set(entry_points()))))
    bad, every = [], set().union(*FOREIGN_FLAGS.values(), *benches.values())
    for key, text in helps.items():
        assert "FAILED" not in text and "usage" in text.lower(), f"{key} --help: {text[-500:]}"
        every |= flags_in_help(text)
    for (tool, sub), uses in sorted(wanted.items()):
        known = benches[tool] if tool in benches else flags_in_help(helps[f"{tool} {sub}"])
        bad += [f"{where}: {tool} {sub} {flag}".replace("  ", " ") for flag, where in sorted(uses) if flag not in known]
    for where, text in pages.items():
        spans = " ".join(span for _, span in INLINE.findall(prose(text)))
        for flag in sorted(set(re.findall(r"(?<![\w-])(--[a-zA-Z][\w-]*)", spans))):
            if flag not in every and not (flag.startswith("--no-") and "--" + flag[5:] in every):
                bad.append(f"{where}: {flag}")
    return bad


def test_every_flag_the_pages_name_is_one_a_tool_takes():
    pages = {rel(doc): doc.read_text(encoding="utf-8") for doc in doc_files()}
    assert {("pretrain_flm.py", ""), ("tools/grow_checkpoint.py", ""), ("tools/evaluate.py", "")} <= \
        set().union(*(tool_invocations(t) for t in pages.values()))  # the scan sees the commands
    bad = unknown_flags(pages)
    assert not bad, "flags no tool takes:\n  " + "\n  ".join(bad)


def test_the_code_cites_docs_that_exist():
    """Docstrings and comments point readers at docs/*.md (and their sections): those resolve too."""
    files = [p for d in ("flm_ext", "tools", "benchmarks", "examples", "tests") for p in (REPO / d).rglob("*")
             if p.suffix in (".py", ".sh") and p.name != "test_docs.py"] + [REPO / "pretrain_flm.py", REPO / "Makefile"]
    bad = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        docs_only = "\n".join(t for t in REPO_PATH.findall(text) if t.startswith("docs/"))
        bad += [f"{rel(path)}: {b}" for b in dangling_paths(docs_only) + dangling_sections(path, SECTION_REF_STRICT)]
    assert not bad, "\n".join(bad)


# --- controls: each check reports what it is there to catch ---------------------------------------

def test_controls_a_planted_dangling_reference_is_reported(tmp_path):
    text = ("See `flm_ext/no_such.py`, `tests/test_docs.py::no_such_test`, `examples/flm101b_stage{1,9}.sh`,"
            " `flm_ext.growth.no_such_name` and `tests/test_faults_*.py`, `tools/<name>.py`.\n")
    assert dangling_paths(text) == ["examples/flm101b_stage{1,9}.sh: no examples/flm101b_stage9.sh",
                                    "flm_ext/no_such.py: no flm_ext/no_such.py",
                                    "tests/test_docs.py::no_such_test: tests/test_docs.py defines no no_such_test"]
    assert dangling_modules(text) == ["flm_ext.growth.no_such_name: flm_ext.growth defines no no_such_name"]
    mention = "`flm_ext/growth/methods/toy.py`, `flm_ext.growth.methods.toy.Toy`"
    example = "```python file=flm_ext/growth/methods/toy.py\n```\n" + mention
    assert dangling_paths(example) == [] and dangling_modules(example) == []  # what a worked example creates
    assert dangling_paths(mention) == ["flm_ext/growth/methods/toy.py: no flm_ext/growth/methods/toy.py"]
    page = tmp_path / "page.md"
    page.write_text('# Title\n\n[a](#title) [b](#no-such) [c](nowhere.md) docs/FLM.md section 77, '
                    'docs/growth.md ("No such heading"), README "Evaluation".\n')
    assert dangling_links(page) == ["#no-such: no heading with that anchor", "nowhere.md: no such file"]
    assert dangling_sections(page) == ['docs/growth.md ("No such heading"): no such heading',
                                       'README.md ("Evaluation"): no such heading',
                                       "docs/FLM.md section 77: no such section"]
    page.write_text("a measured matmul (H200, KINDS.md); see FLM.md\n"
                    "```bash\npython tools/evaluate.py --markdown e.md | tee t.md\n```\ne.md, t.md\n")
    assert dangling_bare_pages(page) == ["KINDS.md: not in this repository"]  # FLM.md in docs/, e.md, t.md written


def test_controls_stray_example_paths_are_reported():
    text = ("```bash\npython tools/generate.py --load exports/flm-tiny --prompt x\n"
            "python tools/export_hf.py --load runs/s3 --save runs/mine --tokenizer-model data/bpe.json\n"
            "python tools/generate.py --load runs/mine --prompt y\n"
            "python tools/generate.py --load runs/demo/stage3/ckpt \\\n"
            "    --tokenizer-model runs/demo/data/bpe4096.json\n```\n")
    assert dangling_examples(text) == [
        "--load exports/flm-tiny: neither written by make demo, the repository, nor this page",
        "--load runs/s3: neither written by make demo, the repository, nor this page",
        "--tokenizer-model data/bpe.json: neither written by make demo, the repository, nor this page"]


def test_controls_the_demo_layout_is_what_the_recipe_writes():
    """DEMO_LAYOUT's names are spelt in the recipe's code (a renamed output breaks this test)."""
    source = (REPO / "flm_ext" / "recipe.py").read_text()
    for name in ("data", "corpus", "bpe{cfg.vocab_size}.json", "ckpt", "export", "summary.json", "loss.png",
                 "tensorboard", "eval_{label}.json", "metrics.jsonl", "demo.log", "stage1", "stage1_no_teacher",
                 "{stage.name}_grown", "cache"):
        assert f'"{name}"' in source or f"f\"{name}\"" in source, name
    assert "4096" in source or "vocab_size: int = 4096" in source


def test_controls_a_flag_the_tool_does_not_take_is_reported():
    page = ('```bash\nRUN="--tasks perplexity --no-such-eval-flag"\n'
            "python tools/evaluate.py --load runs/demo/stage3/ckpt $RUN\n```\n"
            "and `tools/evaluate.py --lengths 1x,2x --nor-this-one`.\n")
    assert unknown_flags({"page": page + "`--gone-flag`, `--no-bf16`, `--no-gone-flag`\n"}) == [
        "page: tools/evaluate.py --no-such-eval-flag", "page: tools/evaluate.py --nor-this-one",
        "page: --gone-flag", "page: --no-gone-flag", "page: --nor-this-one"]


def test_sections_and_fences_as_rendered():
    """The one markdown reader of the doc tests: a section ends at the next `##`, a fence indented in a
    list item counts and its body loses that indentation (a heredoc in it runs as shown)."""
    page = ("# Page\n\n## Setup: by hand\n\n1. run\n\n   ```bash\n   cat <<EOF\n   x\n     y\n   EOF\n   ```\n\n"
            "```python file=a.py\nprint(1)\n```\n\n## Next\n\n```bash\nnot here\n```\n")
    part = section(page, "Setup")
    assert part.startswith("## Setup: by hand\n") and "## Next" not in part
    assert fences(part) == [("bash", "cat <<EOF\nx\n  y\nEOF\n"), ("python file=a.py", "print(1)\n")]
    with pytest.raises(ValueError, match="no '## Missing' heading"):
        section(page, "Missing")
