"""Run the sandbox in the foreground: ``suprsend-celery sandbox`` and ``-m`` entry."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

from .server import (
    DEFAULT_API_KEY,
    DEFAULT_WORKSPACE_KEY,
    DEFAULT_WORKSPACE_SECRET,
    DEFAULT_WORKSPACE_UID,
    Sandbox,
)

__all__ = ["DEFAULT_PORT", "build_parser", "export_lines", "main", "serve"]

DEFAULT_PORT = 8787


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    workspace_key: str | None = None,
    workspace_secret: str | None = None,
    *,
    workspace_uid: str | None = None,
    api_key: str | None = None,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve until Ctrl-C, SIGTERM or ``stop`` is set; print the URL and credentials first.

    Credentials (both modes are accepted) default to ``SUPRSEND_WORKSPACE_KEY``/
    ``SUPRSEND_WORKSPACE_SECRET`` and ``SUPRSEND_WORKSPACE_UID``/``SUPRSEND_API_KEY``,
    then to the sandbox's own. The first line printed is ``... listening on <url>`` so a
    parent process started with ``port=0`` can read the URL; ``export`` lines to paste
    follow. Returns an exit status.
    """
    out = sys.stdout if out is None else out
    env = os.environ.get
    key = workspace_key or env("SUPRSEND_WORKSPACE_KEY") or DEFAULT_WORKSPACE_KEY
    secret = workspace_secret or env("SUPRSEND_WORKSPACE_SECRET") or DEFAULT_WORKSPACE_SECRET
    uid = workspace_uid or env("SUPRSEND_WORKSPACE_UID") or DEFAULT_WORKSPACE_UID
    token = api_key or env("SUPRSEND_API_KEY") or DEFAULT_API_KEY
    stop = threading.Event() if stop is None else stop
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sandbox = Sandbox(
        workspace_key=key,
        workspace_secret=secret,
        host=host,
        port=port,
        workspace_uid=uid,
        api_key=token,
    )
    try:
        sandbox.start()
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"SuprSend sandbox listening on {sandbox.url}", file=out)
        for line in export_lines(sandbox.url, key, secret, uid, token):
            print(line, file=out)
        print(f"# inspect: {sandbox.url}_sandbox/stats  {sandbox.url}_sandbox/events", file=out)
        print("Press Ctrl-C to stop.", file=out, flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    stats = sandbox.stats()
    print(
        f"stopped: {stats['events_processed']} events processed, "
        f"{stats['duplicates_skipped']} duplicates skipped",
        file=out,
        flush=True,
    )
    return 0


def export_lines(url: str, key: str, secret: str, uid: str, api_key: str) -> list[str]:
    """Shell lines that point an app and its worker at this sandbox, ready to paste.

    The sandbox's own credentials are public and printed as they are; a secret or API
    key the user gave is never printed (its line is a comment saying so). API-key mode
    is commented out: setting both credential pairs is a configuration error.
    """

    def assign(name: str, value: str, default: str | None = None) -> str:
        if default is not None and value != default:
            return f"{name}=<the one you gave; not shown>"
        return f"export {name}={shlex.quote(value)}"

    secret_line = assign("SUPRSEND_WORKSPACE_SECRET", secret, DEFAULT_WORKSPACE_SECRET)
    return [
        "# paste into each shell that runs your app or its worker:",
        assign("SUPRSEND_BASE_URL", url),
        assign("SUPRSEND_WORKSPACE_KEY", key),
        secret_line if secret_line.startswith("export ") else f"# {secret_line}",
        "# or, in API-key mode, instead of the key and the secret:",
        f"#   {assign('SUPRSEND_WORKSPACE_UID', uid)}",
        f"#   {assign('SUPRSEND_API_KEY', api_key, DEFAULT_API_KEY)}",
    ]


def build_parser(prog: str = "suprsend-celery sandbox") -> argparse.ArgumentParser:
    """The sandbox's command-line options (also usable as a sub-command's parser)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a local SuprSend event API for development and tests."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port, 0 for any ({DEFAULT_PORT})"
    )
    parser.add_argument("--workspace-key", help="default: $SUPRSEND_WORKSPACE_KEY or a sandbox key")
    parser.add_argument(
        "--workspace-secret", help="default: $SUPRSEND_WORKSPACE_SECRET or a sandbox secret"
    )
    parser.add_argument("--workspace-uid", help="default: $SUPRSEND_WORKSPACE_UID or a sandbox UID")
    parser.add_argument("--api-key", help="default: $SUPRSEND_API_KEY or a sandbox API key")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and serve; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    return serve(
        args.host,
        args.port,
        args.workspace_key,
        args.workspace_secret,
        workspace_uid=args.workspace_uid,
        api_key=args.api_key,
    )
