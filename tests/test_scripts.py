"""Each Lua script's ``KEYS``/``ARGV`` header against its ``Script`` and builder in
``scripts.py``, read from the source, so the two sides cannot drift.

Every script binds its ``KEYS`` and ``ARGV`` entries to named locals in its first
lines (``local a, b = KEYS[1], KEYS[2]``, ``local n = tonumber(ARGV[1])``) and, when
more values follow, marks where with ``local first_<name> = <position>``. ``Script``
declares the same names in the same order, and each builder fills them by name.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any, NamedTuple

import pytest

from suprsend_celery.buffer import scripts as lua
from suprsend_celery.buffer.keys import Keys
from suprsend_celery.delivery.decisions import Settlement
from suprsend_celery.delivery.tally import Tally

LUA = resources.files("suprsend_celery.buffer") / "lua"
_BINDING = re.compile(r"^local\s+([\w\s,]+?)\s*=\s*(.+)$")
_SLOT = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")


class Header(NamedTuple):
    keys: list[str]
    args: list[str]
    #: ``first_<name> = N``: where ARGV's tail begins (None: no tail).
    tail_from: int | None


def header(name: str) -> Header:
    """The names a script's header binds, in ``KEYS``/``ARGV`` order."""
    lines = (LUA / f"{name}.lua").read_text("utf-8").splitlines()
    statements: list[str] = []
    for line in lines:
        if not line.strip() and statements:
            break  # the header ends at the first blank line after it began
        code = line.split("--", 1)[0].rstrip()
        if not code:
            continue  # a comment
        if code.startswith("local "):
            statements.append(code.strip())
        elif statements:
            statements[-1] += " " + code.strip()  # a binding continued on the next line
    bound: dict[str, dict[int, str]] = {"KEYS": {}, "ARGV": {}}
    tail_from = None
    for statement in statements:
        match = _BINDING.match(statement)
        assert match, f"{name}.lua: not a binding: {statement!r}"
        names = [n.strip() for n in match.group(1).split(",")]
        values = (
            [v.strip() for v in match.group(2).split(",")] if len(names) > 1 else [match.group(2)]
        )
        assert len(names) == len(values), f"{name}.lua: {statement!r}"
        for local, value in zip(names, values, strict=True):
            slots = _SLOT.findall(value)
            if slots:
                ((table, position),) = slots
                assert int(position) not in bound[table], (
                    f"{name}.lua binds {table}[{position}] twice"
                )
                bound[table][int(position)] = local
            elif local.startswith("first_") and value.isdigit():
                tail_from = int(value)
    ordered = {}
    for table, found in bound.items():
        assert sorted(found) == list(range(1, len(found) + 1)), f"{name}.lua: gaps in {table}"
        ordered[table] = [found[i] for i in sorted(found)]
    return Header(ordered["KEYS"], ordered["ARGV"], tail_from)


@pytest.mark.parametrize("script", lua.SCRIPTS, ids=lambda s: s.name)
class TestHeaders:
    """Declared names and order equal the script's own."""

    def test_keys_and_args_in_order(self, script: lua.Script) -> None:
        """``Script.keys``/``args`` are the locals the header binds, in its order."""
        found = header(script.name)
        assert (list(script.keys), list(script.args)) == (found.keys, found.args)

    def test_tail_starts_after_the_named_args(self, script: lua.Script) -> None:
        """A script that reads more values reads them right after the named ones."""
        found = header(script.name)
        if script.tail:
            assert found.tail_from == len(script.args) + 1
        else:
            assert found.tail_from is None

    def test_no_positional_access_outside_the_header(self, script: lua.Script) -> None:
        """``KEYS[n]``/``ARGV[n]`` with a literal n appear only in the header."""
        source = (LUA / f"{script.name}.lua").read_text("utf-8")
        found = header(script.name)
        literal = _SLOT.findall(source)
        assert len(literal) == len(found.keys) + len(found.args)

    def test_preludes_and_source(self, script: lua.Script) -> None:
        """The header comment names the builder, and the source is the preludes plus it."""
        own = (LUA / f"{script.name}.lua").read_text("utf-8")
        assert f"scripts.{script.name}_call()" in own.splitlines()[0]
        assert script.source.endswith(own)


K = Keys.of("p")
COUNTS = Tally()
COUNTS.add("records:x", 2)


class Labelled(NamedTuple):
    call: lua.Call
    keys: dict[str, str]
    args: dict[str, Any]


def _calls() -> dict[str, Labelled]:
    """Every builder with recognisable values, and where each must land, by name."""
    settlement = Settlement(back=[b"{back}"], verdict="fail", open_for=7.5, reason="why")
    return {
        "push": Labelled(
            lua.push_call(K, 11, [b"{r}"]),
            {
                "pending": K.pending,
                "dead": K.dead,
                "inflight": K.inflight,
                "retry": K.retry,
                "wake_key": K.wake,
            },
            {"max_length": 11},
        ),
        "claim": Labelled(
            lua.claim_call(K, "cid", 12, 13.5, 14.5, use_breaker=False, fill=20),
            {"claim": K.claim("cid"), "breaker": K.breaker, "metrics": K.metrics},
            {
                "count": 12,
                "lease": 13.5,
                "claim_id": "cid",
                "claim_prefix": K.claim_prefix,
                "probe_lease": 14.5,
                "use_breaker": "0",
                "fill": 20,
            },
        ),
        "gate": Labelled(
            lua.gate_call(K, "empty", 3.0),
            {"breaker": K.breaker},
            {"action": "empty", "probe_lease": 3.0},
        ),
        "concurrency": Labelled(
            lua.concurrency_call(
                K,
                "f1",
                -2.5,
                refused=11.0,
                start=8,
                floor=1,
                ceiling=64,
                leaving=True,
                active_seconds=2.5,
                keep_seconds=60,
            ),
            {"concurrency": K.concurrency, "flushers": K.flushers},
            {
                "flusher": "f1",
                "delta": -2.5,
                "refused": 11.0,
                "start": 8,
                "floor": 1,
                "ceiling": 64,
                "leaving": "1",
                "active_seconds": 2.5,
                "keep_seconds": 60,
            },
        ),
        "settle": Labelled(
            lua.settle_call(K, "cid", settlement, breaker=lua.Breaker(4, 5.0, 6.0), counts=COUNTS),
            {"claim": K.claim("cid"), "settled": K.settled("cid"), "breaker_key": K.breaker},
            {
                "claim_id": "cid",
                "n_retry": 0,
                "n_dead": 0,
                "n_back": 1,
                "verdict": "fail",
                "threshold": 4,
                "cooldown_base": 5.0,
                "cooldown_max": 6.0,
                "floor": 7.5,
                "reason": "why",
            },
        ),
        "extend": Labelled(
            lua.extend_call(K, "cid", 9.0), {"claims": K.claims}, {"claim_id": "cid", "lease": 9.0}
        ),
        "requeue": Labelled(
            lua.requeue_call(K, [b"e"]), {"dead": K.dead, "pending": K.pending}, {}
        ),
        "rehome": Labelled(
            lua.rehome_call(K, 15, b"{rec}", b"entry"),
            {"dead": K.dead, "pending": K.pending},
            {"max_length": 15, "record": b"{rec}", "dead_entry": b"entry"},
        ),
        "journal": Labelled(
            lua.journal_call(K, b"{rec}", 16.0, COUNTS, 17.0),
            {
                "journal": K.journal,
                "metrics": K.metrics,
                "expiring": K.journal_expires,
                "taken": K.journal_taken,
            },
            {"seconds": 16.0, "record": b"{rec}", "expires_in": 17.0},
        ),
        "settle_journal": Labelled(
            lua.settle_journal_call(K, b"{rec}", COUNTS),
            {"journal": K.journal, "expiring": K.journal_expires, "taken": K.journal_taken},
            {"record": b"{rec}"},
        ),
        "hold_journal": Labelled(
            lua.hold_journal_call(K, b"{rec}", 19.5),
            {"journal": K.journal, "expiring": K.journal_expires, "taken": K.journal_taken},
            {"record": b"{rec}", "seconds": 19.5},
        ),
        "finish_run": Labelled(
            lua.finish_run_call(K, COUNTS), {"metrics": K.metrics, "retry": K.retry}, {}
        ),
        "recover_journal": Labelled(
            lua.recover_journal_call(K, 18, 20.5),
            {
                "journal": K.journal,
                "pending": K.pending,
                "expiring": K.journal_expires,
                "taken": K.journal_taken,
                "metrics": K.metrics,
                "wake_key": K.wake,
            },
            {"limit": 18, "keep_seconds": 20.5},
        ),
        "duty": Labelled(
            lua.duty_call(K, "renew", "m", 19.0, 3),
            {"duty": K.duty, "metrics": K.metrics},
            {"action": "renew", "member": "m", "lease": 19.0, "cap": 3},
        ),
    }


def test_every_script_has_a_labelled_call() -> None:
    assert sorted(_calls()) == sorted(s.name for s in lua.SCRIPTS)


@pytest.mark.parametrize("script", lua.SCRIPTS, ids=lambda s: s.name)
def test_builder_puts_each_value_where_the_script_reads_it(script: lua.Script) -> None:
    """Each builder's values land at the positions the Lua header binds their names to."""
    found = header(script.name)
    labelled = _calls()[script.name]
    assert len(labelled.call.keys) == len(found.keys)
    assert len(labelled.call.args) >= len(found.args)
    for name, value in labelled.keys.items():
        assert labelled.call.keys[found.keys.index(name)] == value, name
    for name, value in labelled.args.items():
        assert labelled.call.args[found.args.index(name)] == value, name


def test_settle_tail_carries_items_then_counts() -> None:
    """SETTLE's tail: retries as pairs, dead entries, returned records, then metrics."""
    call = _calls()["settle"].call
    assert call.args[len(lua.SETTLE.args) :] == [b"{back}", "records:x", 2]


def test_names_given_must_be_the_declared_ones() -> None:
    """A builder naming a key or argument the script does not bind fails at once."""
    with pytest.raises(KeyError):
        lua.EXTEND.call({"claimz": "k"}, {"claim_id": "c", "lease": 1})
    with pytest.raises(ValueError, match="wants"):
        lua.EXTEND.call({"claims": "k"}, {"claim_id": "c"})
    with pytest.raises(ValueError, match="takes nothing"):
        lua.EXTEND.call({"claims": "k"}, {"claim_id": "c", "lease": 1}, [b"x"])
