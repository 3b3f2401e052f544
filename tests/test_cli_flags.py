"""Every CLI keeps its interface: the option strings of each parser (and sub-command) equal the
snapshot taken before flags were generated from config dataclasses (tests/data/cli_flags, written by
tests/cli_snapshot.py at commit 04f8d9e), plus the new names listed here, and nothing else; and each
option keeps its default (and the attribute it sets, but for the renames listed here)."""
from __future__ import annotations

import os

import pytest

from cli_snapshot import CLIS, REPO, read, snapshot, snapshot_defaults

SNAPSHOTS = os.path.join(REPO, "tests", "data", "cli_flags")

# Names added since the snapshot, per CLI and sub-command ('' = top level). Nothing was removed.
ADDED: dict[str, dict[str, set[str]]] = {
    "pretrain_flm": {"": {"--iteration"}},  # the checkpoint step's old name, kept as an alias everywhere
}
# Options whose parsed attribute changed on purpose: the checkpoint step is `ckpt_step` everywhere.
RENAMED_DEST = {"iteration": "ckpt_step"}


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_help_lists_the_snapshot_flags(cli):
    before = read(os.path.join(SNAPSHOTS, f"{cli}.txt"))
    now = snapshot(cli)
    assert set(now) == set(before), f"{cli}: sub-commands changed"
    for label, flags in before.items():
        expected = set(flags) | ADDED.get(cli, {}).get(label, set())
        assert set(now[label]) == expected, (f"{cli} [{label}]: missing {sorted(expected - set(now[label]))}, "
                                             f"unexpected {sorted(set(now[label]) - expected)}")


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_every_flag_keeps_its_default(cli):
    before = read(os.path.join(SNAPSHOTS, f"{cli}.defaults.txt"))
    now = snapshot_defaults(cli)
    for label, lines in before.items():
        for line in lines:
            option, described = line.split(" ", 1)
            for old, new in RENAMED_DEST.items():
                described = described.replace(f"dest={old} ", f"dest={new} ")
            assert now[label][option] == described, f"{cli} [{label}] {option}"
