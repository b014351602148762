"""``dead-letters list|requeue|purge``: what could not be delivered, and what to do with it."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import click

from ... import defaults
from ...buffer.protocol import Buffer
from ...delivery.dead_letters import DeadLetter
from ...events.records import accepted_before
from .base import age_text, buffer_of, clean_errors, cli, echo_json, say_target, source_of

__all__ = ["dead_letters"]


@cli.group("dead-letters")
def dead_letters() -> None:
    """Inspect, re-send or drop events that could not be delivered."""


def _letter_row(letter: DeadLetter, show_properties: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "idempotency_key": letter.idempotency_key,
        "event": letter.event,
        "error": letter.error,
        "status_code": letter.status_code,
        "attempts": letter.attempts,
        "age_seconds": round(letter.age_seconds, 1),
        "source": letter.source,
    }
    if show_properties:
        try:
            record = letter.record_dict()
        except ValueError:
            record = {}
        row["distinct_id"] = record.get("distinct_id")
        row["properties"] = record.get("properties")
    return row


@dead_letters.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--show-properties",
    is_flag=True,
    help="Also show distinct_id and properties (may contain personal data).",
)
@click.pass_context
@clean_errors
def list_dead_letters(ctx: click.Context, limit: int, as_json: bool, show_properties: bool) -> None:
    """List dead letters, newest first: key, event, error, attempts, age."""
    buffer = buffer_of(ctx)
    if not as_json:
        say_target(ctx, buffer, "read")
    letters = buffer.dead_letters(limit=limit)
    rows = [_letter_row(letter, show_properties) for letter in letters]
    if as_json:
        echo_json({**source_of(buffer), "dead_letters": rows})
        return
    total = buffer.stats()["dead"]
    if not rows:
        click.echo("no dead letters")
        return
    header = ("KEY", "EVENT", "ATTEMPTS", "AGE")
    cells = [
        (str(r["idempotency_key"]), str(r["event"]), str(r["attempts"]), age_text(r["age_seconds"]))
        for r in rows
    ]
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header))]

    def line(values: Sequence[str], last: str) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + "  " + last

    click.echo(line(header, "ERROR"))
    for r, c in zip(rows, cells, strict=True):
        click.echo(line(c, r["error"]))
        if show_properties:
            props = json.dumps(r["properties"], ensure_ascii=False)
            click.echo(f"    distinct_id={r['distinct_id']!s} properties={props}")
    if total > len(rows):
        click.echo(f"({len(rows)} of {total} shown; use --limit)")


def _past_window(buffer: Buffer, selection: Sequence[str] | None) -> int:
    """Dead letters (all, or these keys) accepted over 24 h ago: SuprSend no longer
    deduplicates their keys if they are sent again."""
    wanted = None if selection is None else set(selection)
    letters = buffer.dead_letters(limit=max(1, buffer.stats()["dead"]))
    records = [d.record for d in letters if wanted is None or (d.idempotency_key or "") in wanted]
    return len(accepted_before(records, int((time.time() - defaults.DEDUP_WINDOW) * 1000)))


def _selection(keys: Sequence[str], all_: bool) -> list[str] | None:
    if keys and all_:
        raise click.UsageError("give either --key (repeatable) or --all, not both")
    if not keys and not all_:
        raise click.UsageError("give --key K (repeatable) or --all")
    return None if all_ else list(keys)


_KEY_OPTION = click.option(
    "--key", "keys", multiple=True, metavar="KEY", help="Idempotency key of a dead letter."
)
_ALL_OPTION = click.option("--all", "all_", is_flag=True, help="Every dead letter.")


@dead_letters.command("requeue")
@_KEY_OPTION
@_ALL_OPTION
@click.pass_context
@clean_errors
def requeue_dead_letters(ctx: click.Context, keys: tuple[str, ...], all_: bool) -> None:
    """Put dead letters back in the buffer (attempts reset); the next flush sends them.

    Exits 1 when a ``--key`` is not among the dead letters (the others are requeued).
    """
    selection = _selection(keys, all_)
    buffer = buffer_of(ctx)
    say_target(ctx, buffer, "requeueing from")
    late = _past_window(buffer, selection)
    moved, kept = buffer.requeue_dead_letters(selection)
    click.echo(f"requeued {moved} dead letter(s)")
    if kept:
        click.echo(
            f"kept {kept} dead letter(s) whose record is unreadable (not requeued, nothing "
            "dropped): inspect them with `suprsend-celery dead-letters list`, remove them "
            "with `purge`"
        )
    if late:
        click.echo(
            f"{late} of them were first accepted more than 24 h ago: SuprSend deduplicates "
            "a key for 24 h only, so one it already processed will be processed again"
        )
    missing = 0 if selection is None else len(set(selection)) - moved - kept
    if missing > 0:
        # A mistyped key must not pass for done in a script: the others are requeued,
        # and the exit status says that some were not found.
        click.echo(f"{missing} key(s) not found among the dead letters", err=True)
        ctx.exit(1)


@dead_letters.command("purge")
@_KEY_OPTION
@_ALL_OPTION
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@clean_errors
def purge_dead_letters(ctx: click.Context, keys: tuple[str, ...], all_: bool, yes: bool) -> None:
    """Drop dead letters for good (asks first unless --yes)."""
    selection = _selection(keys, all_)
    buffer = buffer_of(ctx)
    say_target(ctx, buffer, "purging from")
    what = "every dead letter" if selection is None else f"{len(set(selection))} dead letter(s)"
    if not yes:
        held = buffer.stats()["dead"]
        click.confirm(f"Drop {what} ({held} held)? This cannot be undone", abort=True)
    removed = buffer.purge_dead_letters(selection)
    click.echo(f"purged {removed} dead letter(s)")
