"""No giant modules (DEVELOPERS: "no giant modules (> 500 lines)"): every module under aimetcli/
has at most MAX_LINES lines, so a file stays something a reader takes in as one piece."""

from __future__ import annotations

from pathlib import Path

import aimetcli

PACKAGE = Path(aimetcli.__file__).parent
MAX_LINES = 500


def line_counts() -> dict[str, int]:
    return {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_over_500_lines():
    over = {name: n for name, n in line_counts().items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them along a seam): {over}"


def test_the_rule_sees_every_module():
    """The count covers subpackages too (a module there once passed 500 lines: calibration/readers.py)."""
    counts = line_counts()
    assert "model_io.py" in counts and "calibration/data.py" in counts and "passes/chains.py" in counts
