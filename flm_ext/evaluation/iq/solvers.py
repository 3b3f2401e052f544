"""Independent solvers: each reads a prompt (the text the model sees) and answers by the sub-test's
rule, without any of the generator's state. They back two checks: every generated item's stored
answer is the solver's (and, for choices, occurs exactly once among them), and the scripted oracle
model that answers through lm-eval with them scores 100%.

Where a rule must be inferred from demonstrations, the solver infers it and refuses an item whose
demonstrations fit no rule or more than one (`Ambiguous`): that is the "exactly one correct
answer" check. Symbolic mapping of real reviews is the one case where the class itself cannot be
derived from text: the solver takes the review's source label from `meta` and still reads the
symbol of that class off the demonstrations.

Every public solver has the signature `(prompt, lang, meta=None) -> answer text`; `suite.register`
pairs each with its generator.
"""
from __future__ import annotations

import re
import string

from flm_ext.evaluation.iq import vocab as V


class Ambiguous(ValueError):
    """An item whose prompt does not determine exactly one answer."""


def _blocks(prompt: str) -> list[str]:
    return prompt.split("\n\n")


def _last_line_value(block: str, key: str) -> str:
    line = block.rstrip("\n").split("\n")[-1]
    if not line.startswith(key):
        raise Ambiguous(f"expected a line starting with {key!r}, got {line!r}")
    return line[len(key):].strip()


# --------------------------------------------------------------------------- symbolic mapping
def _demo_symbols(prompt: str, lang: str, classify) -> str:
    """Read each demonstration's symbol and class; return the symbol the query's class maps to."""
    answer = V.WORDS[lang]["answer"]
    *demos, query = _blocks(prompt)
    mapping: dict = {}
    for demo in demos:
        text, _, line = demo.rpartition("\n")
        symbol = _last_line_value(line, answer)
        cls = classify(text)
        if mapping.setdefault(cls, symbol) != symbol:
            raise Ambiguous(f"class {cls!r} shown with two symbols")
    if len(set(mapping.values())) != len(mapping):
        raise Ambiguous("two classes share a symbol")
    cls = classify(query.rpartition("\n")[0])
    if cls not in mapping:
        raise Ambiguous(f"no demonstration of class {cls!r}")
    return mapping[cls]


def _comparisons(text: str, lang: str) -> tuple[set, tuple]:
    """(ordered pairs of the premise's chain, closed transitively; the hypothesis pair)."""
    if lang == "en":
        found = re.findall(r"(\w+) is \w+ than (\w+)\.", text)
    else:
        names = "|".join(V.NAMES["zh"])
        found = re.findall(rf"({names})比({names})", text)
    *premise, hypothesis = found
    order = set(premise)
    changed = True
    while changed:
        extra = {(a, d) for a, b in order for c, d in order if b == c} - order
        changed, order = bool(extra), order | extra
    return order, hypothesis


def _entailment_class(lang: str):
    def classify(text: str) -> str:
        order, (x, y) = _comparisons(text, lang)
        if (x, y) in order:
            return "entailed"
        if (y, x) in order:
            return "contradicted"
        raise Ambiguous(f"{x} and {y} are not ordered by the premise")
    return classify


def _boolq_class(text: str) -> str:
    counts = {c: int(n) for c, n in re.findall(r"The (\w+) box holds (\d+) coins\.", text)}
    x, y = re.search(r"Does the (\w+) box hold more coins than the (\w+) box\?", text).groups()
    if counts[x] == counts[y]:
        raise Ambiguous("equal counts")
    return "yes" if counts[x] > counts[y] else "no"


# --------------------------------------------------------------------------- rule understanding
def counting(prompt: str, lang: str, meta: dict | None = None) -> str:
    lines = prompt.split("\n")
    target = re.search(r'"(.+?)"' if lang == "en" else r"“(.+?)”", lines[0]).group(1)
    items = lines[1].split(", " if lang == "en" else "、")
    return str(items.count(target))


def _io_pairs(prompt: str, lang: str) -> tuple[list[tuple[str, str]], str]:
    w = V.WORDS[lang]
    *demos, query = _blocks(prompt)
    pairs = []
    for demo in demos:
        first, second = demo.split("\n")
        pairs.append((_last_line_value(first, w["input"]), _last_line_value(second, w["output"])))
    return pairs, _last_line_value(query.split("\n")[0], w["input"])


def replace_lowercase(prompt: str, lang: str, meta: dict | None = None) -> str:
    pairs, query = _io_pairs(prompt, lang)
    marks = {o for i, out in pairs for c, o in zip(i, out) if c in string.ascii_lowercase}
    kept = all(len(i) == len(out) and all(c == o for c, o in zip(i, out) if c not in string.ascii_lowercase)
               for i, out in pairs)
    if len(marks) != 1 or not kept:
        raise Ambiguous(f"the demonstrations show no single replacement ({sorted(marks)})")
    mark = marks.pop()
    return "".join(mark if c in string.ascii_lowercase else c for c in query)


def _changed_span(a: str, b: str) -> tuple[str, str]:
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[-1 - s] == b[-1 - s]:
        s += 1
    return a[p:len(a) - s], b[p:len(b) - s]


def replace_word(prompt: str, lang: str, meta: dict | None = None) -> str:
    pairs, query = _io_pairs(prompt, lang)
    spans = {_changed_span(i, o) for i, o in pairs}
    if len(spans) != 1:
        raise Ambiguous(f"the demonstrations change different words: {sorted(spans)}")
    old, new = spans.pop()
    if not old or query.count(old) != 1:
        raise Ambiguous(f"{old!r} occurs {query.count(old)} times in the query")
    return query.replace(old, new)


# --------------------------------------------------------------------------- pattern mining
def pattern_rules() -> dict:
    """The candidate rules a pattern-mining item is checked against (its own must be the only fit)."""
    rules = {"head_tail": lambda xs: [xs[0], xs[-1]], "full_repeating": lambda xs: xs + xs}
    for k in range(1, 9):
        rules[f"head_slicing_{k}"] = lambda xs, k=k: xs[:k]
        rules[f"tail_slicing_{k}"] = lambda xs, k=k: xs[-k:]
    return rules


def pattern(prompt: str, lang: str, meta: dict | None = None) -> str:
    """Head & tail, full repeating and head slicing alike: the one rule that fits the demonstrations."""
    pairs, query = _io_pairs(prompt, "en")
    fits = [rule for name, rule in pattern_rules().items()
            if all(" ".join(rule(i.split())) == o for i, o in pairs)]
    if len(fits) != 1:
        raise Ambiguous(f"{len(fits)} rules fit the demonstrations")
    return " ".join(fits[0](query.split()))


# --------------------------------------------------------------------------- anti-interference
def _story(prompt: str, lang: str) -> tuple[list[str], str]:
    lines = prompt.split("\n")
    return lines[:-2], _last_line_value(lines[-2], V.WORDS[lang]["question"])


def _template_regex(template: str, lang: str) -> re.Pattern:
    names = "|".join(V.NAMES[lang])
    places = "|".join(V.LOCATIONS[lang])
    things = "|".join(V.OBJECTS[lang])
    pattern = re.escape(template).replace(r"\{p\}", f"(?P<p>{names})").replace(r"\{l\}", f"(?P<l>{places})")
    return re.compile("^" + pattern.replace(r"\{o\}", f"(?P<o>{things})") + "$")


def _events(lines: list[str], lang: str) -> list[tuple[str, dict]]:
    """Each line that is a fact: ("move" | "take" | "drop", fields); noise lines match nothing."""
    kinds = [(kind, _template_regex(t, lang)) for kind, ts in (("move", V.MOVES), ("take", V.TAKES),
                                                               ("drop", V.DROPS)) for t in ts[lang]]
    events = []
    for line in lines:
        hits = [(kind, m.groupdict()) for kind, rx in kinds for m in [rx.match(line)] if m]
        if len(hits) > 1:
            raise Ambiguous(f"{line!r} reads as two facts")
        events += hits
    return events


def single_fact(prompt: str, lang: str, meta: dict | None = None) -> str:
    lines, question = _story(prompt, lang)
    person = question.removeprefix("Where is ").removesuffix("?") if lang == "en" else question[:-len("在哪里？")]
    places = [f["l"] for kind, f in _events(lines, lang) if kind == "move" and f["p"] == person]
    if not places:
        raise Ambiguous(f"{person} never moves")
    return places[-1]


def two_facts(prompt: str, lang: str, meta: dict | None = None) -> str:
    lines, question = _story(prompt, lang)
    thing = question.removeprefix("Where is the ").removesuffix("?") if lang == "en" else question[:-len("在哪里？")]
    where, holder, placed = {}, {}, {}
    for kind, f in _events(lines, lang):
        if kind == "move":
            where[f["p"]] = f["l"]
        elif kind == "take":
            holder[f["o"]] = f["p"]
            placed.pop(f["o"], None)
        else:
            placed[f["o"]] = where[f["p"]]
            holder.pop(f["o"], None)
    if thing in holder:
        return where[holder[thing]]
    if thing in placed:
        return placed[thing]
    raise Ambiguous(f"nobody handled the {thing}")


def multikey(prompt: str, lang: str, meta: dict | None = None) -> str:
    lines, question = _story(prompt, lang)
    if lang == "en":
        codes = re.findall(r"^The passcode for door (\w+) is (\d+)\.$", "\n".join(lines), re.M)
        door = re.fullmatch(r"What is the passcode for door (\w+)\?", question).group(1)
    else:
        codes = re.findall(r"^(\w+?)号门的密码是(\d+)。$", "\n".join(lines), re.M)
        door = re.fullmatch(r"(\w+?)号门的密码是多少？", question).group(1)
    found = [code for d, code in codes if d == door]
    if len(found) != 1:
        raise Ambiguous(f"door {door} has {len(found)} codes")
    return found[0]


# --------------------------------------------------------------------------- symbolic mapping, per kind
def symbolic_nli(prompt: str, lang: str, meta: dict | None = None) -> str:
    return _demo_symbols(prompt, lang, _entailment_class(lang))


def symbolic_boolq(prompt: str, lang: str, meta: dict | None = None) -> str:
    return _demo_symbols(prompt, lang, _boolq_class)


def symbolic_sentiment(prompt: str, lang: str, meta: dict | None = None) -> str:
    """The class of a review is its source label; demonstrations show theirs through `meta`."""
    return _demo_symbols_by_label(prompt, lang, meta or {})


def _demo_symbols_by_label(prompt: str, lang: str, meta: dict) -> str:
    """Reviews: the symbol shown with the query's label. The demonstrations' labels are read from
    `meta["demo_labels"]` (source labels, in prompt order)."""
    labels = iter(meta["demo_labels"] + [meta["label"]])
    return _demo_symbols(prompt, lang, lambda text: next(labels))
