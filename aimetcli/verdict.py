"""The outcome of a check on a node: ok (with what the check matched, if anything), or the
reason the node is skipped. After onnxscript's ``MatchResult`` (rewriter/_basics.py), without
its backtracking: a verdict is truthy when ok, and ``reason`` is the one line that goes,
verbatim, into a pass result's or a placement's ``skipped`` (and so into ``-v`` and ``--json``).

    v = check_weight(layer)
    if not v:
        result.skipped.append((layer.name, v.reason))

A check that finds something returns it with the verdict (``ok(layer)``; ``v.match``), so a
caller never reads a match that a failed check left behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Verdict(Generic[T]):
    """ok when ``reason`` is None; ``match``: what an ok check found (None after a skip)."""

    reason: str | None = None
    match: T | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def __bool__(self) -> bool:
        return self.reason is None


OK: Verdict = Verdict()


def ok(match: T | None = None) -> Verdict[T]:
    """An ok verdict, carrying what the check matched."""
    return OK if match is None else Verdict(None, match)


def skip(reason: str) -> Verdict:
    """A failed check: the node is skipped, and ``reason`` says why."""
    if not reason:
        raise ValueError("a skip needs its reason")
    return Verdict(reason)
