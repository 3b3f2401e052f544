"""Markdown as the doc tests read it (test_docs, test_extending, test_readme_walkthrough): a `##`
section of a page and its fenced code blocks. A fence may be indented (inside a list item, as in
docs/serving.md); its body then loses that indentation, as a Markdown renderer shows it."""
from __future__ import annotations

import re

FENCE = re.compile(r"^([ \t]*)```([^\n]*)\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)


def section(text: str, title: str) -> str:
    """From the first `## ` heading that starts with `title` to the next level-2 heading (or the end)."""
    match = re.search(rf"^## {re.escape(title)}[^\n]*$", text, re.M)
    if match is None:
        raise ValueError(f"no '## {title}' heading")
    end = text.find("\n## ", match.end())
    return text[match.start():end if end != -1 else None]


def fences(text: str) -> list[tuple[str, str]]:
    """(info string, body) of each fenced block, in order: ```python file=x.py gives ("python file=x.py", ...)."""
    return [(info.strip(), _dedent(body, len(indent))) for indent, info, body in FENCE.findall(text)]


def _dedent(body: str, width: int) -> str:
    """Up to `width` leading spaces off each line (CommonMark's rule for an indented fence)."""
    if not width:
        return body
    return "".join(line[min(width, len(line) - len(line.lstrip(" "))):] for line in body.splitlines(True))
