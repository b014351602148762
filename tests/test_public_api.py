"""The public surface of ``import suprsend_celery`` is the documented one, name for name."""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import pickle

import pytest

import suprsend_celery
from suprsend_celery import (
    BufferFullError,
    BufferUnavailableError,
    ConfigurationError,
    DeliveryError,
    InvalidEventError,
    PermanentDeliveryError,
    PublishError,
    SuprsendCeleryError,
    TransientDeliveryError,
)

#: The public API the README documents, plus the version, BulkResult's item type and
#: ``atrack_event`` (issue 13: the direct path from async code), and the errors of a
#: failed accept (issue 11).
EXPECTED_ALL = {
    "Event",
    "track_event",
    "buffer_event",
    "buffer_events",
    "abuffer_event",
    "abuffer_events",
    "atrack_event",
    "aclose",
    "flush_buffer",
    "buffer_stats",
    "SuprsendClient",
    "BulkResult",
    "RecordResult",
    "SuprsendCeleryError",
    "ConfigurationError",
    "InvalidEventError",
    "BufferFullError",
    "BufferUnavailableError",
    "PublishError",
    "DeliveryError",
    "TransientDeliveryError",
    "PermanentDeliveryError",
    "__version__",
}


class TestAll:
    """``__all__`` is complete, exact and importable."""

    def test_exact(self) -> None:
        """``__all__`` lists exactly the documented names, once each."""
        assert set(suprsend_celery.__all__) == EXPECTED_ALL
        assert len(suprsend_celery.__all__) == len(EXPECTED_ALL)

    @pytest.mark.parametrize("name", sorted(EXPECTED_ALL))
    def test_importable(self, name: str) -> None:
        """Every name resolves, also through ``from suprsend_celery import name``."""
        assert getattr(suprsend_celery, name) is not None
        namespace: dict[str, object] = {}
        exec(f"from suprsend_celery import {name}", namespace)
        assert namespace[name] is getattr(suprsend_celery, name)

    def test_no_public_strays(self) -> None:
        """Public classes and callables defined by the package are all in ``__all__``."""
        public = {
            name
            for name, value in vars(suprsend_celery).items()
            if not name.startswith("_")
            and not inspect.ismodule(value)
            and getattr(value, "__module__", "").startswith("suprsend_celery")
        }
        assert public <= EXPECTED_ALL

    def test_version(self) -> None:
        """``__version__`` is a non-empty version string."""
        assert isinstance(suprsend_celery.__version__, str)
        assert suprsend_celery.__version__[:1].isdigit()

    def test_py_typed_shipped(self) -> None:
        """The package carries a ``py.typed`` marker for type checkers."""
        assert importlib.resources.files("suprsend_celery").joinpath("py.typed").is_file()


class TestErrorTree:
    """One exception tree, as drawn in ``exceptions``' docstring and the README."""

    @pytest.mark.parametrize(
        ("cls", "parent"),
        [
            (ConfigurationError, SuprsendCeleryError),
            (InvalidEventError, SuprsendCeleryError),
            (InvalidEventError, ValueError),
            (BufferFullError, SuprsendCeleryError),
            (BufferUnavailableError, SuprsendCeleryError),
            (PublishError, SuprsendCeleryError),
            (DeliveryError, SuprsendCeleryError),
            (TransientDeliveryError, DeliveryError),
            (PermanentDeliveryError, DeliveryError),
            (SuprsendCeleryError, Exception),
        ],
    )
    def test_subclass(self, cls: type, parent: type) -> None:
        """Each error sits where the documented tree puts it."""
        assert issubclass(cls, parent)

    def test_siblings_are_distinct(self) -> None:
        """Transient and permanent delivery errors never overlap."""
        assert not issubclass(TransientDeliveryError, PermanentDeliveryError)
        assert not issubclass(PermanentDeliveryError, TransientDeliveryError)
        assert not issubclass(ConfigurationError, ValueError)

    @pytest.mark.parametrize("cls", [BufferUnavailableError, PublishError])
    def test_accept_error_keys_pickle(self, cls: type[BufferUnavailableError]) -> None:
        """A failed accept names the events' keys, and survives pickling."""
        error = cls("redis down", idempotency_keys=("k1", "k2"))
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.idempotency_keys) == (cls, "redis down", ("k1", "k2"))
        assert cls("x").idempotency_keys == ()

    @pytest.mark.parametrize("cls", [DeliveryError, TransientDeliveryError, PermanentDeliveryError])
    def test_delivery_error_attributes(self, cls: type[DeliveryError]) -> None:
        """``status_code``, ``idempotency_key`` and ``retry_after`` default to None and pickle."""
        bare = cls("boom")
        assert (bare.status_code, bare.idempotency_key, bare.retry_after) == (None, None, None)
        full = cls("boom", status_code=503, idempotency_key="k", retry_after=1.5)
        copy = pickle.loads(pickle.dumps(full))
        assert type(copy) is cls
        assert (copy.status_code, copy.idempotency_key, copy.retry_after) == (503, "k", 1.5)
        assert str(copy) == "boom"

    def test_retryable_flag(self) -> None:
        """Only transient errors say they are worth retrying."""
        assert TransientDeliveryError("x").retryable
        assert not PermanentDeliveryError("x").retryable

    def test_invalid_event_error_field(self) -> None:
        """InvalidEventError names the offending field."""
        error = InvalidEventError("bad", field="distinct_id")
        assert error.field == "distinct_id"
        assert isinstance(error, ValueError)


class TestTasks:
    """The two Celery tasks keep their documented names."""

    def test_names(self) -> None:
        """``track_event`` and ``flush_buffer`` are registered under fixed names."""
        assert suprsend_celery.track_event.name == "suprsend_celery.track_event"
        assert suprsend_celery.flush_buffer.name == "suprsend_celery.flush_buffer"

    def test_task_api(self) -> None:
        """Both are Celery tasks with ``delay`` and ``apply_async``."""
        for task in (suprsend_celery.track_event, suprsend_celery.flush_buffer):
            assert callable(task.delay)
            assert callable(task.apply_async)


class TestSignatures:
    """Constructors and helpers take the documented parameters."""

    def test_event(self) -> None:
        """``Event(distinct_id, event_name, properties=None, idempotency_key=None, ...)``."""
        params = inspect.signature(suprsend_celery.Event).parameters
        assert list(params) == [
            "distinct_id",
            "event_name",
            "properties",
            "idempotency_key",
            "tenant_id",
            "brand_id",
        ]
        assert all(params[n].default is None for n in list(params)[2:])

    def test_add_attachment(self) -> None:
        """``Event.add_attachment(url, filename=None, ignore_if_error=False)``."""
        params = inspect.signature(suprsend_celery.Event.add_attachment).parameters
        assert list(params) == ["self", "url", "filename", "ignore_if_error"]
        assert params["filename"].default is None
        assert params["ignore_if_error"].default is False

    def test_client(self) -> None:
        """``SuprsendClient(workspace_key, workspace_secret, base_url=..., timeout=...)``."""
        params = list(inspect.signature(suprsend_celery.SuprsendClient).parameters)
        assert params[:4] == ["workspace_key", "workspace_secret", "base_url", "timeout"]
        for method in ("send_event", "send_bulk"):
            assert callable(getattr(suprsend_celery.SuprsendClient, method))

    def test_buffer_functions(self) -> None:
        """The buffer helpers are plain functions."""
        for name in ("buffer_event", "buffer_events", "buffer_stats"):
            assert inspect.isfunction(getattr(suprsend_celery, name))

    def test_async_producers(self) -> None:
        """``abuffer_event``/``abuffer_events``/``atrack_event`` are coroutine functions
        taking what their sync twins take."""
        pairs = {
            "abuffer_event": suprsend_celery.buffer_event,
            "abuffer_events": suprsend_celery.buffer_events,
            "atrack_event": None,
        }
        for name, twin in pairs.items():
            function = getattr(suprsend_celery, name)
            assert inspect.iscoroutinefunction(function)
            if twin is not None:
                assert inspect.signature(function).parameters == inspect.signature(twin).parameters

    @pytest.mark.parametrize(
        ("name", "extra"),
        [
            ("buffer_event", ["app"]),
            ("abuffer_event", ["app"]),
            ("suprsend_celery.contrib.django.buffer_event_on_commit", ["using"]),
            ("suprsend_celery.contrib.django.track_event_on_commit", []),
            ("suprsend_celery.contrib.django.outbox_event", ["using", "app"]),
        ],
    )
    def test_producers_name_their_parameters(self, name: str, extra: list[str]) -> None:
        """``buffer_event(distinct_id, event_name, properties=None, *, idempotency_key=None,
        tenant_id=None, brand_id=None, app=None)``, never ``*args, **kwargs``."""
        module, _, attr = name.rpartition(".")
        function = getattr(importlib.import_module(module or "suprsend_celery"), attr)
        params = inspect.signature(function).parameters
        fields = ["distinct_id", "event_name", "properties"]
        keywords = ["idempotency_key", "tenant_id", "brand_id", *extra]
        assert list(params) == fields + keywords
        kinds = {p.kind for n, p in params.items() if n in fields}
        assert kinds == {inspect.Parameter.POSITIONAL_OR_KEYWORD}
        assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in keywords)
        assert all(params[n].default is None for n in [*fields[1:], *keywords])

    @pytest.mark.parametrize(
        ("args", "kwargs", "field"),
        [
            ((), {}, "distinct_id"),
            (("u", "ev", {}, "extra"), {}, None),
            (("u", "ev"), {"event_name": "other"}, "event_name"),
            (("u", "ev"), {"colour": "red"}, "colour"),
        ],
    )
    def test_wrong_call_shapes_are_invalid_events(
        self, args: tuple[object, ...], kwargs: dict[str, object], field: str | None
    ) -> None:
        """A call of the wrong shape raises ``InvalidEventError`` (not ``TypeError``),
        with ``event_from_call``'s message, before any app or Redis is needed."""
        import asyncio

        from suprsend_celery.contrib.django import (
            buffer_event_on_commit,
            outbox_event,
            track_event_on_commit,
        )
        from suprsend_celery.events.model import event_from_call

        with pytest.raises(InvalidEventError) as expected:
            event_from_call(args, kwargs)
        calls = [
            lambda: suprsend_celery.buffer_event(*args, **kwargs),
            lambda: asyncio.run(suprsend_celery.abuffer_event(*args, **kwargs)),
            lambda: buffer_event_on_commit(*args, **kwargs),
            lambda: track_event_on_commit(*args, **kwargs),
            lambda: outbox_event(*args, **kwargs),
        ]
        for call in calls:
            with pytest.raises(InvalidEventError) as info:
                call()
            assert (str(info.value), info.value.field) == (str(expected.value), field)

    def test_another_producers_keyword_is_unexpected(self) -> None:
        """Each producer refuses the other's keyword: ``using`` (Django's), ``app``."""
        from suprsend_celery.contrib.django import buffer_event_on_commit

        with pytest.raises(InvalidEventError, match="unexpected argument 'using'"):
            suprsend_celery.buffer_event("u", "ev", using="default")
        with pytest.raises(InvalidEventError, match="unexpected argument 'app'"):
            buffer_event_on_commit("u", "ev", app=None)

    def test_reimport_is_stable(self) -> None:
        """Re-importing the package hands back the same objects."""
        again = importlib.import_module("suprsend_celery")
        assert again.Event is suprsend_celery.Event


class TestRuntimeDependencies:
    """The runtime set stays small: celery, kombu, redis and requests, plus click and
    urllib3, which the package imports directly and which those already install."""

    def test_only_the_runtime_dependencies(self) -> None:
        """Every other requirement is behind an extra."""
        import re
        from importlib.metadata import requires

        runtime = {
            re.split(r"[\s<>=!;\[~]", req, maxsplit=1)[0].lower()
            for req in requires("suprsend-celery") or []
            if "extra ==" not in req
        }
        assert runtime == {"celery", "kombu", "redis", "requests", "click", "urllib3"}
