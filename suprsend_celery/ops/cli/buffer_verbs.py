"""``status`` and ``flush``: the buffer's figures, and draining it now."""

from __future__ import annotations

import sys
from typing import Any

import click

from ...buffer.eviction import refusal
from ...buffer.outbox_figures import outbox_figures
from ...pipeline.flusher import FlushReport
from .base import app_of, buffer_of, clean_errors, cli, echo_json, fail, say_target, source_of

__all__ = ["flush", "status"]


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@clean_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the buffer: pending, in flight, retries, dead letters, the direct path's
    journal, breaker, the adaptive concurrency limit."""
    buffer = buffer_of(ctx)
    if not as_json:
        say_target(ctx, buffer, "read")
    snap = buffer.snapshot(due=True)
    figures: dict[str, Any] = {**source_of(buffer), **snap.stats(), **outbox_figures(buffer)}
    # track_event events no worker has settled yet (see README "Registering the tasks").
    figures["journal"] = snap.journal
    figures["journal_due"] = snap.journal_due
    figures["journal_overdue_seconds"] = snap.journal_overdue_seconds
    figures["journal_oldest_age_seconds"] = snap.journal_oldest_age_seconds
    is_open = snap.breaker.state != "closed"
    figures["breaker_reason"] = snap.breaker.reason if is_open else ""
    figures["breaker_retry_in"] = snap.breaker.retry_in if is_open else 0.0
    limit = snap.concurrency
    figures["concurrency_limit"] = limit.limit if limit else None
    figures["concurrency_flushers"] = limit.flushers if limit else 0
    memory = buffer.memory_info()
    figures["maxmemory_policy"] = memory.get("maxmemory_policy")
    figures["maxmemory"] = memory.get("maxmemory")
    figures["used_memory"] = memory.get("used_memory")
    if as_json:
        echo_json(figures)
        return
    rows = [
        ("pending", figures["pending"]),
        ("in flight", figures["in_flight"]),
        ("scheduled retries", figures["scheduled_retries"]),
        ("dead letters", figures["dead"]),
        ("sent past 24 h", figures["sent_past_dedup_window"]),
        ("oldest age", f"{figures['oldest_age_seconds']:.1f}s"),
        ("direct journal", _journal_text(figures)),
        ("breaker", figures["breaker"]),
        ("concurrency", _concurrency_text(figures)),
        ("outbox (Django)", _outbox_text(figures)),
    ]
    if figures["breaker"] != "closed":
        rows.append(("  reason", figures["breaker_reason"] or "-"))
        rows.append(("  next probe in", f"{figures['breaker_retry_in']:.1f}s"))
    rows.append(("maxmemory-policy", _policy_text(figures["maxmemory_policy"])))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label:<{width}}  {value}")


def _concurrency_text(figures: dict[str, Any]) -> str:
    """``24.5 requests in flight (2 flushers)``: the adaptive limit the flushers share."""
    limit = figures["concurrency_limit"]
    if limit is None:
        return "not adapted lately (flushers start at suprsend_flush_concurrency)"
    flushers = figures["concurrency_flushers"]
    shared = f"{flushers} flusher{'s' if flushers != 1 else ''}" if flushers else "no flusher now"
    return f"{limit:g} requests in flight ({shared})"


def _outbox_text(figures: dict[str, Any]) -> str:
    if not figures["outbox_pending"]:
        return "0"
    return f"{figures['outbox_pending']}, oldest {figures['outbox_oldest_age_seconds']:.1f}s"


def _journal_text(figures: dict[str, Any]) -> str:
    """``3 (2 due, overdue 75s; oldest 80.0s)``: direct events not settled by a worker."""
    count = figures["journal"]
    if not count:
        return "0"
    detail = f"oldest {figures['journal_oldest_age_seconds']:.1f}s"
    if figures["journal_due"]:
        overdue = figures["journal_overdue_seconds"]
        detail = f"{figures['journal_due']} due, overdue {overdue:.0f}s; {detail}"
    return f"{count} ({detail})"


def _policy_text(policy: str | None) -> str:
    if policy is None:
        return "unknown (INFO refused)"
    if refusal(policy, "") is not None:
        return f"{policy} (evicts keys: buffer_event refuses it; set noeviction)"
    return policy


# -- flush -------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="Stop after this many seconds even if records remain.",
)
@click.pass_context
@clean_errors
def flush(ctx: click.Context, timeout: float) -> None:
    """Drain the buffer now, in the foreground, with a progress bar.

    Sends what is pending (and retries that are due); retries scheduled for later
    stay scheduled. Exits 1 if the circuit breaker stopped the drain.
    """
    from ...pipeline.runtime import get_flusher

    flusher = get_flusher(app_of(ctx))
    say_target(ctx, flusher.buffer, "flushing")
    total = flusher.buffer.remaining()
    done = 0
    with click.progressbar(
        length=max(total, 1), label="flushing", show_pos=True, file=sys.stderr
    ) as bar:

        def progress(report: FlushReport) -> None:
            nonlocal done
            handled = report.sent + report.retry_scheduled + report.dead_lettered + report.returned
            step = min(handled, total) - done
            if step > 0:
                bar.update(step)
                done += step

        report = flusher.run(timeout, progress=progress)
        if report.remaining == 0:
            bar.update(max(total, 1) - done)
    click.echo(
        f"sent {report.sent}, retry scheduled {report.retry_scheduled}, "
        f"dead-lettered {report.dead_lettered}, remaining {report.remaining} "
        f"({report.requests} requests in {report.seconds:.2f}s)"
    )
    if report.breaker == "open":
        reason = flusher.buffer.breaker()["reason"]
        fail(f"the circuit breaker is open, so flushing stopped: {reason or 'SuprSend failing'}")
