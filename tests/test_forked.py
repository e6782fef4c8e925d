"""kernels/forked.py: a second piece of work in a forked child, and the caller's fallbacks."""

from __future__ import annotations

import os

import pytest

from aimetcli.kernels import forked

needs_fork = pytest.mark.skipif(not forked.available(), reason="needs fork and two cores")


@needs_fork
def test_theirs_runs_in_a_child_and_mine_here():
    here = os.getpid()
    mine, theirs = forked.beside(os.getpid, lambda: (os.getpid(), [1.5] * 1000))
    assert mine == here and theirs[0] != here and theirs[1] == [1.5] * 1000


@needs_fork
def test_a_child_that_dies_or_raises_is_computed_here():
    here = os.getpid()

    def dies():
        if os.getpid() != here:
            os._exit(3)
        return "here"

    def raises():
        if os.getpid() != here:
            raise RuntimeError("in the child")
        return "here"

    assert forked.beside(lambda: 1, dies) == (1, "here")
    assert forked.beside(lambda: 1, raises) == (1, "here")


@needs_fork
def test_an_error_in_the_callers_work_ends_the_child_and_propagates(monkeypatch):
    pids, real_fork = [], os.fork
    monkeypatch.setattr(os, "fork", lambda: pids.append(real_fork()) or pids[-1])

    def mine():
        raise KeyError("mine")

    with pytest.raises(KeyError):
        forked.beside(mine, lambda: __import__("time").sleep(60))
    assert len(pids) == 1 and pids[0] > 0
    with pytest.raises(ChildProcessError):  # the child was killed and reaped: nothing is left of it
        os.waitpid(pids[0], os.WNOHANG)


def test_without_fork_both_run_here(monkeypatch):
    monkeypatch.setattr(forked, "available", lambda: False)
    assert forked.beside(os.getpid, os.getpid) == (os.getpid(), os.getpid())
