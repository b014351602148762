"""Fault plans: scripted failures the sandbox injects into event-API responses.

A plan is JSON (``POST /_sandbox/faults``) or a dict / :class:`FaultPlan`
(``Sandbox.set_faults``). Faults apply only to the event routes, only after the
signature was verified, and are decided per request, in rule order::

    {
      "seed": 7,                        # optional: seeds the RNG used by every "rate"
      "paths": ["/v2/bulk/event/"],     # optional: default path filter for all rules
      "capacity": 100,                  # optional: a server that works through this many
                                        #   requests a second, in order; beyond it they
                                        #   queue, so answers slow down with load
      "max_concurrent": 10,             # optional: 429 (at once, nothing processed) for a
                                        #   request beyond this many being handled
      "rules": [
        # which requests a rule applies to (all optional):
        #   "paths": [...]   overrides the plan's paths for this rule
        #   "after": 2       let the first 2 matching requests through untouched
        #   "count": 3       apply to at most 3 requests (then the rule is spent)
        #   "rate": 0.3      apply with this probability (combines with count)
        #   "containing_event": "x"  only requests holding a record of event "x"
        #                    (with "status": 400, a request refused as a whole
        #                    because of one bad record)
        # what it does, "delay" plus at most one outcome:
        #   "delay": 0.5                           sleep before answering (seconds)
        #   "status": 503                          answer 503 and process nothing,
        #       "retry_after": "2"                 ... with this Retry-After header
        #                                              (seconds or an HTTP-date, verbatim),
        #       "html": true                       ... with an HTML error page,
        #       "body": "oops",                    ... or with exactly this body
        #       "content_type": "text/plain"       ... of this type (default text/plain),
        #       "process": true                    ... after processing the events anyway
        #                                              (a lost response: retries must dedupe)
        #   "drop_connection": true                close the socket without answering
        #       "process": true                    ... after processing the events
        #   "record_errors": [spec, ...]           bulk only: 207 with some records failed
        #   "truncate_records": 1                  bulk only: process every record but
        #                                              return only the first N results
        {"status": 503, "count": 2},
        {"status": 429, "retry_after": "2", "count": 1},
        {"status": 502, "html": true, "rate": 0.3},
        {"delay": 0.5, "count": 5},
        {"drop_connection": true, "count": 1},
        {"record_errors": [{"index": 0, "status": 400, "message": "bad"},
                           {"rate": 0.2, "status": 500}]}
      ]
    }

A record error spec fails the records it selects; those records are not processed,
the rest of the request is. Selectors (all optional, combined with AND; none means
every record): ``"index"`` (an int or a list of ints, position in the request),
``"event"`` (the record's event name), ``"rate"`` (probability per record) and
``"count"`` (fail at most this many records in total). ``"status"`` defaults to 500
(transient); use 400 for a permanent rejection. ``"message"`` and ``"type"`` fill the
record's ``error`` object. The first spec that selects a record decides its error.

Every rule whose selectors match adds its ``delay``; the first matching rule with an
outcome decides the response and later rules are not consulted (nor spent).

The two load models apply to every event request the plan's ``paths`` select, before
the rules: ``max_concurrent`` answers 429 ("too many concurrent requests") to a
request that arrives while that many are being handled (delays included);
``capacity`` holds each request until the server, working through ``capacity``
requests a second one after the other, reaches it, plus its rules' delays: below the
capacity an answer takes ``1 / capacity`` more than the delay, above it the queue (and
every answer's latency) grows until senders slow down. Rules
with a record-level outcome only match bulk requests. Unknown keys are an error, so a
typo never silently disables a fault.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaultDecision", "FaultPlan", "FaultPlanError", "FaultRule", "RecordErrorSpec"]

_RULE_KEYS = frozenset(
    {
        "paths",
        "after",
        "count",
        "rate",
        "containing_event",
        "delay",
        "status",
        "retry_after",
        "html",
        "body",
        "content_type",
        "process",
        "drop_connection",
        "record_errors",
        "truncate_records",
    }
)
_RECORD_KEYS = frozenset({"index", "event", "rate", "count", "status", "message", "type"})
_PLAN_KEYS = frozenset({"seed", "paths", "rules", "capacity", "max_concurrent"})


class FaultPlanError(ValueError):
    """A fault plan that does not follow the schema in this module's docstring."""


def _int(value: object, where: str, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultPlanError(f"{where} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise FaultPlanError(f"{where} must be {bound}, got {value!r}")
    return value


def _number(value: object, where: str, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FaultPlanError(f"{where} must be a number, got {value!r}")
    number = float(value)
    if not number >= 0 or (maximum is not None and number > maximum):
        limit = f"between 0 and {maximum}" if maximum is not None else ">= 0"
        raise FaultPlanError(f"{where} must be {limit}, got {value!r}")
    return number


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise FaultPlanError(f"{where} must be a string, got {value!r}")
    return value


def _header(value: object, where: str) -> str:
    text = _str(value, where)
    if "\r" in text or "\n" in text:
        raise FaultPlanError(f"{where} must be a single header line, got {value!r}")
    return text


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise FaultPlanError(f"{where} must be true or false, got {value!r}")
    return value


def _paths(value: object, where: str) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise FaultPlanError(f"{where} must be a list of paths, got {value!r}")
    return frozenset(_str(p, f"{where}[]") for p in value)


def _check_keys(data: object, allowed: frozenset[str], where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise FaultPlanError(f"{where} must be an object, got {data!r}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise FaultPlanError(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    return data


@dataclass(frozen=True)
class RecordErrorSpec:
    """Which bulk records to fail, and with what per-record error."""

    index: frozenset[int] | None = None
    event: str | None = None
    rate: float | None = None
    count: int | None = None
    status: int = 500
    message: str = "sandbox fault"
    type: str = "SandboxFault"

    @classmethod
    def from_dict(cls, data: object, where: str = "record_errors[]") -> RecordErrorSpec:
        """Validate one record error spec."""
        d = _check_keys(data, _RECORD_KEYS, where)
        index: frozenset[int] | None = None
        if "index" in d:
            raw = d["index"]
            items = raw if isinstance(raw, list) else [raw]
            index = frozenset(_int(i, f"{where}.index") for i in items)
        return cls(
            index=index,
            event=_str(d["event"], f"{where}.event") if "event" in d else None,
            rate=_number(d["rate"], f"{where}.rate", 1.0) if "rate" in d else None,
            count=_int(d["count"], f"{where}.count", 1) if "count" in d else None,
            status=_int(d.get("status", 500), f"{where}.status", 400, 599),
            message=_str(d.get("message", cls.message), f"{where}.message"),
            type=_str(d.get("type", cls.type), f"{where}.type"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON, omitting unset selectors."""
        out: dict[str, Any] = {}
        if self.index is not None:
            out["index"] = sorted(self.index)
        if self.event is not None:
            out["event"] = self.event
        if self.rate is not None:
            out["rate"] = self.rate
        if self.count is not None:
            out["count"] = self.count
        out.update(status=self.status, message=self.message, type=self.type)
        return out


@dataclass(frozen=True)
class FaultRule:
    """One rule of a plan: a request selector, an optional delay and an outcome."""

    paths: frozenset[str] | None = None
    after: int = 0
    count: int | None = None
    rate: float | None = None
    containing_event: str | None = None
    delay: float = 0.0
    status: int | None = None
    retry_after: str | None = None
    html: bool = False
    body: str | None = None
    content_type: str | None = None
    process: bool = False
    drop_connection: bool = False
    record_errors: tuple[RecordErrorSpec, ...] = ()
    truncate_records: int | None = None

    @classmethod
    def from_dict(cls, data: object, where: str = "rules[]") -> FaultRule:
        """Validate one rule; raises :class:`FaultPlanError` naming the bad field."""
        d = _check_keys(data, _RULE_KEYS, where)
        retry_after = d.get("retry_after")
        if retry_after is not None:
            if isinstance(retry_after, bool) or not isinstance(retry_after, (str, int, float)):
                raise FaultPlanError(
                    f"{where}.retry_after must be seconds or an HTTP-date string, "
                    f"got {retry_after!r}"
                )
            retry_after = _header(str(retry_after), f"{where}.retry_after")
        records = d.get("record_errors", [])
        if not isinstance(records, list):
            raise FaultPlanError(f"{where}.record_errors must be a list, got {records!r}")
        rule = cls(
            paths=_paths(d["paths"], f"{where}.paths") if "paths" in d else None,
            after=_int(d.get("after", 0), f"{where}.after"),
            count=_int(d["count"], f"{where}.count", 1) if "count" in d else None,
            rate=_number(d["rate"], f"{where}.rate", 1.0) if "rate" in d else None,
            containing_event=(
                _str(d["containing_event"], f"{where}.containing_event")
                if "containing_event" in d
                else None
            ),
            delay=_number(d.get("delay", 0.0), f"{where}.delay", 600.0),
            status=_int(d["status"], f"{where}.status", 200, 599) if "status" in d else None,
            retry_after=retry_after,
            html=_bool(d.get("html", False), f"{where}.html"),
            body=_str(d["body"], f"{where}.body") if "body" in d else None,
            content_type=(
                _header(d["content_type"], f"{where}.content_type") if "content_type" in d else None
            ),
            process=_bool(d.get("process", False), f"{where}.process"),
            drop_connection=_bool(d.get("drop_connection", False), f"{where}.drop_connection"),
            record_errors=tuple(
                RecordErrorSpec.from_dict(r, f"{where}.record_errors[{i}]")
                for i, r in enumerate(records)
            ),
            truncate_records=(
                _int(d["truncate_records"], f"{where}.truncate_records")
                if "truncate_records" in d
                else None
            ),
        )
        rule._check_consistency(where)
        return rule

    def _check_consistency(self, where: str) -> None:
        outcomes = [
            name
            for name, present in (
                ("status", self.status is not None),
                ("drop_connection", self.drop_connection),
                ("record_errors", bool(self.record_errors)),
                ("truncate_records", self.truncate_records is not None),
            )
            if present
        ]
        if len(outcomes) > 1:
            raise FaultPlanError(f"{where} has several outcomes {outcomes}; use one per rule")
        if self.status is None:
            extras = [
                name
                for name, present in (
                    ("retry_after", self.retry_after is not None),
                    ("html", self.html),
                    ("body", self.body is not None),
                    ("content_type", self.content_type is not None),
                )
                if present
            ]
            if extras:
                raise FaultPlanError(f"{where}: {extras} only make sense with 'status'")
        if self.html and self.body is not None:
            raise FaultPlanError(f"{where}: use 'html' or 'body', not both")
        if self.process and self.status is None and not self.drop_connection:
            raise FaultPlanError(f"{where}: 'process' needs 'status' or 'drop_connection'")

    @property
    def has_outcome(self) -> bool:
        """Whether the rule decides the response (rather than only adding delay)."""
        return (
            self.status is not None
            or self.drop_connection
            or bool(self.record_errors)
            or self.truncate_records is not None
        )

    @property
    def bulk_only(self) -> bool:
        """Record-level outcomes need a list of records to act on."""
        return bool(self.record_errors) or self.truncate_records is not None

    def describe(self) -> str:
        """A short label for the request log, e.g. ``"status 503"``."""
        if self.status is not None:
            label = f"status {self.status}"
        elif self.drop_connection:
            label = "drop_connection"
        elif self.record_errors:
            label = "record_errors"
        elif self.truncate_records is not None:
            label = f"truncate_records {self.truncate_records}"
        else:
            return f"delay {self.delay:g}s"
        if self.process:
            label += " after processing"
        return label

    def to_dict(self) -> dict[str, Any]:
        """The rule as JSON, omitting defaults."""
        out: dict[str, Any] = {}
        if self.paths is not None:
            out["paths"] = sorted(self.paths)
        for name, value, default in (
            ("after", self.after, 0),
            ("count", self.count, None),
            ("rate", self.rate, None),
            ("containing_event", self.containing_event, None),
            ("delay", self.delay, 0.0),
            ("status", self.status, None),
            ("retry_after", self.retry_after, None),
            ("html", self.html, False),
            ("body", self.body, None),
            ("content_type", self.content_type, None),
            ("process", self.process, False),
            ("drop_connection", self.drop_connection, False),
            ("truncate_records", self.truncate_records, None),
        ):
            if value != default:
                out[name] = value
        if self.record_errors:
            out["record_errors"] = [r.to_dict() for r in self.record_errors]
        return out


@dataclass(frozen=True)
class FaultDecision:
    """What the server should do to one request: wait, then maybe apply ``rule``."""

    delay: float = 0.0
    rule: FaultRule | None = None
    rule_index: int | None = None


_NO_FAULT = FaultDecision()


@dataclass
class FaultPlan:
    """A validated plan plus its run-time state (counts used, RNG). Thread-safe."""

    rules: tuple[FaultRule, ...] = ()
    paths: frozenset[str] | None = None
    seed: int | None = None
    #: Requests a second the server works through, one after the other (None: no limit).
    capacity: float | None = None
    #: Requests handled at once beyond which a request gets 429 (None: no limit).
    max_concurrent: int | None = None
    _matched: list[int] = field(default_factory=list, repr=False)
    _applied: list[int] = field(default_factory=list, repr=False)
    _record_hits: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: When the modelled server is free again (``time.monotonic``), for ``capacity``.
    _free_at: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._matched = [0] * len(self.rules)
        self._applied = [0] * len(self.rules)
        self._rng = random.Random(self.seed)

    @classmethod
    def from_dict(cls, data: object) -> FaultPlan:
        """Validate a plan (see the module docstring); ``None`` or ``{}`` means no faults."""
        if data is None:
            return cls()
        if isinstance(data, list):  # a bare list of rules is a convenient shorthand
            data = {"rules": data}
        d = _check_keys(data, _PLAN_KEYS, "fault plan")
        rules = d.get("rules", [])
        if not isinstance(rules, list):
            raise FaultPlanError(f"fault plan 'rules' must be a list, got {rules!r}")
        seed = d.get("seed")
        capacity = d.get("capacity")
        if capacity is not None and not _number(capacity, "fault plan 'capacity'") > 0:
            raise FaultPlanError(f"fault plan 'capacity' must be above 0, got {capacity!r}")
        limit = d.get("max_concurrent")
        return cls(
            rules=tuple(FaultRule.from_dict(r, f"rules[{i}]") for i, r in enumerate(rules)),
            paths=_paths(d["paths"], "fault plan 'paths'") if "paths" in d else None,
            seed=None if seed is None else _int(seed, "fault plan 'seed'"),
            capacity=None if capacity is None else float(capacity),
            max_concurrent=None if limit is None else _int(limit, "fault plan 'max_concurrent'", 1),
        )

    @classmethod
    def coerce(cls, plan: FaultPlan | Mapping[str, Any] | Iterable[Any] | None) -> FaultPlan:
        """Accept a plan, its dict form, a list of rules or ``None``; always a fresh state."""
        if isinstance(plan, FaultPlan):
            return cls.from_dict(plan.to_dict())
        if plan is not None and not isinstance(plan, Mapping):
            plan = list(plan)
        return cls.from_dict(plan)

    def to_dict(self, with_state: bool = False) -> dict[str, Any]:
        """The plan as JSON; ``with_state`` adds how often each rule matched and applied."""
        rules = []
        for i, rule in enumerate(self.rules):
            entry = rule.to_dict()
            if with_state:
                with self._lock:
                    entry["matched"] = self._matched[i]
                    entry["applied"] = self._applied[i]
            rules.append(entry)
        out: dict[str, Any] = {"rules": rules}
        if self.paths is not None:
            out["paths"] = sorted(self.paths)
        if self.seed is not None:
            out["seed"] = self.seed
        if self.capacity is not None:
            out["capacity"] = self.capacity
        if self.max_concurrent is not None:
            out["max_concurrent"] = self.max_concurrent
        return out

    def __bool__(self) -> bool:
        return bool(self.rules) or self.capacity is not None or self.max_concurrent is not None

    def selects(self, path: str) -> bool:
        """Whether the load models (``capacity``, ``max_concurrent``) apply to ``path``."""
        return self.paths is None or path in self.paths

    def over_concurrency(self, path: str, active: int) -> bool:
        """Whether a request to ``path`` arriving with ``active`` requests being handled
        (itself included) is one too many (``max_concurrent``)."""
        limit = self.max_concurrent
        return limit is not None and active > limit and self.selects(path)

    def queue_delay(self, path: str, now: float) -> float:
        """Seconds until the server working through ``capacity`` requests a second in
        order has served a request to ``path`` arriving at ``now`` (0 without one)."""
        capacity = self.capacity
        if capacity is None or not self.selects(path):
            return 0.0
        with self._lock:
            start = max(now, self._free_at)
            self._free_at = start + 1.0 / capacity
            return self._free_at - now

    def decide(self, path: str, bulk: bool, events: Collection[object] = ()) -> FaultDecision:
        """Pick the delay and the outcome for one request to ``path`` (holding ``events``)."""
        if not self.rules:
            return _NO_FAULT
        delay = 0.0
        with self._lock:
            for i, rule in enumerate(self.rules):
                paths = rule.paths if rule.paths is not None else self.paths
                if paths is not None and path not in paths:
                    continue
                if rule.bulk_only and not bulk:
                    continue
                if rule.containing_event is not None and rule.containing_event not in events:
                    continue
                self._matched[i] += 1
                if self._matched[i] <= rule.after:
                    continue
                if rule.count is not None and self._applied[i] >= rule.count:
                    continue
                if rule.rate is not None and self._rng.random() >= rule.rate:
                    continue
                self._applied[i] += 1
                delay += rule.delay
                if rule.has_outcome:
                    return FaultDecision(delay, rule, i)
        return FaultDecision(delay) if delay else _NO_FAULT

    def record_error(
        self, rule_index: int, rule: FaultRule, index: int, record: object
    ) -> RecordErrorSpec | None:
        """The spec failing record ``index`` of a bulk request, or ``None`` to process it."""
        event = record.get("event") if isinstance(record, dict) else None
        with self._lock:
            for j, spec in enumerate(rule.record_errors):
                if spec.index is not None and index not in spec.index:
                    continue
                if spec.event is not None and event != spec.event:
                    continue
                hits = self._record_hits.get((rule_index, j), 0)
                if spec.count is not None and hits >= spec.count:
                    continue
                if spec.rate is not None and self._rng.random() >= spec.rate:
                    continue
                self._record_hits[rule_index, j] = hits + 1
                return spec
        return None
