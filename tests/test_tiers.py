"""tests/tiers.py against the suite as written: every slow row names a test that exists, and a cover
that exists and is not itself a SLOW row; `-m "not slow"` leaves out the listed tests."""
import re
import subprocess
import sys
from pathlib import Path

import tiers

TESTS = Path(__file__).resolve().parent
DECORATED_SLOW = r"@pytest\.mark\.slow\n(?:@.*\n)*def "  # the decorator, maybe others after it, then the def


def _exists(ref: str) -> bool:
    name, _, func = ref.split("[")[0].partition("::")
    path = TESTS / name
    if not func:  # a whole file
        return path.is_file() and name.startswith("test_")
    return path.is_file() and re.search(rf"^def {re.escape(func)}\(", path.read_text(), re.M) is not None


def _decorated_slow(ref: str) -> bool:
    name, _, func = ref.partition("::")
    text = (TESTS / name).read_text()
    if re.search(r"^pytestmark\s*=.*mark\.slow", text, re.M):
        return True
    return re.search(rf"{DECORATED_SLOW}{re.escape(func)}\(", text) is not None


def test_every_slow_test_has_a_fast_cover_that_exists():
    for table in (tiers.SLOW, tiers.DECORATED):
        for slow, cover in table.items():
            assert _exists(slow), f"tiers.py names {slow}, which is not a test in tests/"
            ref = cover.split()[0].rstrip(":,;")
            assert _exists(ref), f"{slow}: its fast cover {ref} is not a test in tests/"
            assert ref not in tiers.SLOW and not _decorated_slow(ref), f"{slow}: its cover {ref} is slow too"
            if ref == slow.split("[")[0]:  # a parametrization covered by the same test's fast ones
                assert "[" in slow, f"{slow} cannot cover itself"
    for slow in tiers.DECORATED:
        assert _decorated_slow(slow), f"{slow} is listed as decorated slow but has no @pytest.mark.slow"


def test_every_heavy_row_names_a_test():
    for ref in tiers.HEAVY:
        assert _exists(ref), f"tiers.py HEAVY names {ref}, which is not a test in tests/"
    assert len(set(tiers.HEAVY)) == len(tiers.HEAVY) and not set(tiers.HEAVY) & set(tiers.SLOW)


def test_every_decorated_slow_test_is_listed():
    """A new @pytest.mark.slow says in tiers.py what keeps its behaviour in the fast tier."""
    listed = set(tiers.DECORATED) | set(tiers.SLOW)
    for path in sorted(TESTS.glob("test_*.py")):
        for func in re.findall(rf"{DECORATED_SLOW}(\w+)\(", path.read_text()):
            assert f"{path.name}::{func}" in listed, f"{path.name}::{func} is slow but not in tests/tiers.py"


def _collect_fast_tier(name: str) -> subprocess.CompletedProcess:
    """What pytest itself collects from tests/<name> under -m "not slow"."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "not slow", str(TESTS / name)],
                          capture_output=True, text=True, cwd=TESTS.parent, timeout=300)


def test_the_fast_tier_leaves_out_the_slow_rows():
    """What pytest itself collects under -m "not slow" for a file with a listed row: not that test."""
    rows = [k for k in tiers.SLOW if "[" not in k and k.split("::")[0] not in tiers.HEAVY]
    slow = max(rows, key=lambda k: (TESTS / k.split("::")[0]).read_text().count("\ndef test_"))  # others stay
    name, _, func = slow.partition("::")
    proc = _collect_fast_tier(name)
    assert proc.returncode in (0, 5), proc.stdout[-2000:] + proc.stderr[-2000:]  # 5: every test deselected
    collected = [line.split("[")[0] for line in proc.stdout.splitlines() if "::" in line]
    assert collected and not any(line.endswith(f"::{func}") for line in collected), proc.stdout[-2000:]


def test_a_heavy_file_is_left_out_whole():
    name = min(k for k in tiers.HEAVY if "::" not in k)
    proc = _collect_fast_tier(name)
    assert proc.returncode == 5 and "deselected" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
