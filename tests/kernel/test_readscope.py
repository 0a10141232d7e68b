"""kernel.readscope: which reads a block shares, and with whom (pure bookkeeping: no kernel)."""

from __future__ import annotations

from reconciler.kernel import readscope


def test_nothing_is_shared_outside_a_scope() -> None:
    assert readscope.slot("a") is None


def test_a_scope_of_every_kind_gives_each_kind_one_cache_for_the_block() -> None:
    with readscope.scope():
        cache = readscope.slot("a")
        assert cache == {} and readscope.slot("a") is cache
        assert readscope.slot("b") is not cache
        with readscope.scope("a"):  # already shared: the same cache
            assert readscope.slot("a") is cache
    assert readscope.slot("a") is None


def test_a_scope_of_one_kind_shares_that_kind_and_keeps_the_outer_ones() -> None:
    with readscope.scope("a"):
        a = readscope.slot("a")
        assert a is not None and readscope.slot("b") is None
        with readscope.scope("b"):
            assert readscope.slot("a") is a and readscope.slot("b") is not None
        assert readscope.slot("b") is None
        with readscope.scope():  # a pass inside: the kinds already shared stay shared
            assert readscope.slot("a") is a and readscope.slot("b") is not None
        assert readscope.slot("a") is a and readscope.slot("b") is None
