"""Every CLI keeps its interface: the option strings of each parser (and sub-command) equal the
snapshot taken before flags were generated from config dataclasses (tests/data/cli_flags, written by
tests/cli_snapshot.py at commit 04f8d9e), plus the new names listed here, and nothing else."""
from __future__ import annotations

import os

import pytest

from cli_snapshot import CLIS, REPO, read, snapshot

SNAPSHOTS = os.path.join(REPO, "tests", "data", "cli_flags")

# Names added since the snapshot, per CLI and sub-command. Nothing was removed.
ADDED: dict[str, dict[str, set[str]]] = {
}


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_help_lists_the_snapshot_flags(cli):
    before = read(os.path.join(SNAPSHOTS, f"{cli}.txt"))
    now = snapshot(cli)
    assert set(now) == set(before), f"{cli}: sub-commands changed"
    for label, flags in before.items():
        expected = set(flags) | ADDED.get(cli, {}).get(label, set())
        assert set(now[label]) == expected, (f"{cli} [{label}]: missing {sorted(expected - set(now[label]))}, "
                                             f"unexpected {sorted(set(now[label]) - expected)}")
