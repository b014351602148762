"""Settings: app.conf → environment → default, validated, with errors naming the key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from hypothesis import given, settings
from hypothesis import strategies as st

from suprsend_celery import ConfigurationError
from suprsend_celery.pipeline.settings import Settings, get_settings, load_settings, reset_settings

KEY = "WSKEY_config_0123456789"
SECRET = "WSSECRET_config_do_not_print"

#: name → (app.conf value, its parsed form, env value, its parsed form, default)
KEYS: dict[str, tuple[Any, Any, str, Any, Any]] = {
    "base_url": (
        "http://conf.example.com/",
        "http://conf.example.com/",
        "http://env.example.com/api",
        "http://env.example.com/api/",
        "https://hub.suprsend.com/",
    ),
    "redis_url": (
        "redis://conf:6379/1",
        "redis://conf:6379/1",
        "rediss://env:6380/2",
        "rediss://env:6380/2",
        None,
    ),
    "key_prefix": ("conf_prefix", "conf_prefix", " env_prefix ", "env_prefix", "suprsend_celery"),
    "buffer_max_length": (10, 10, "20", 20, 1_000_000),
    "flush_interval": (0, 0.0, "2.5", 2.5, 5.0),
    "flush_linger": (0, 0.0, "0.05", 0.05, 0.02),
    "flush_wait": (True, True, "0", False, True),
    "flush_batch_size": (1, 1, "50", 50, 100),
    "max_retries": (0, 0, "3", 3, 10),
    "retry_backoff_max": (30, 30.0, "60", 60.0, 600.0),
    "request_timeout": (1.5, 1.5, "2", 2.0, 10.0),
    "max_event_bytes": (1024, 1024, "2048", 2048, 102_400),
}
ALL_NAMES = [
    "workspace_key",
    "workspace_secret",
    "workspace_uid",
    "api_key",
    "before_send",
    "dry_run",
    "proxy_url",
    "ca_bundle",
    *KEYS,
]
UID = "ws_uid_config_0123456789"
API_KEY = "SSAPIKEY_config_do_not_print"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SUPRSEND_* variable from the outer environment leaks into these tests."""
    for name in ALL_NAMES:
        monkeypatch.delenv(f"SUPRSEND_{name.upper()}", raising=False)


@pytest.fixture
def make_app() -> Iterator[Any]:
    apps: list[Celery] = []

    def factory(credentials: bool = True, **conf: Any) -> Celery:
        app = Celery("suprsend_celery_config_tests", set_as_current=False)
        if credentials:
            conf.setdefault("suprsend_workspace_key", KEY)
            conf.setdefault("suprsend_workspace_secret", SECRET)
        app.conf.update(conf)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.close()


def config_error(call: Any) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        call()
    assert SECRET not in str(info.value)
    return info.value


class TestResolution:
    """Each key comes from app.conf, else the upper-case env var, else its default."""

    @pytest.mark.parametrize("name", list(KEYS))
    def test_conf_wins_over_env(
        self, make_app: Any, monkeypatch: pytest.MonkeyPatch, name: str
    ) -> None:
        """An app.conf value beats the environment variable."""
        conf_value, conf_parsed, env_value, _, _ = KEYS[name]
        monkeypatch.setenv(f"SUPRSEND_{name.upper()}", env_value)
        app = make_app(**{f"suprsend_{name}": conf_value})
        assert getattr(load_settings(app.conf), name) == conf_parsed

    @pytest.mark.parametrize("name", list(KEYS))
    def test_env_wins_over_default(
        self, make_app: Any, monkeypatch: pytest.MonkeyPatch, name: str
    ) -> None:
        """Without an app.conf value, the environment variable is used, parsed."""
        _, _, env_value, env_parsed, _ = KEYS[name]
        monkeypatch.setenv(f"SUPRSEND_{name.upper()}", env_value)
        assert getattr(load_settings(make_app().conf), name) == env_parsed

    @pytest.mark.parametrize("name", list(KEYS))
    def test_default(self, make_app: Any, name: str) -> None:
        """With neither, the documented default (README, Configuration) applies."""
        assert getattr(load_settings(make_app().conf), name) == KEYS[name][4]

    @pytest.mark.parametrize("name", list(KEYS))
    def test_empty_env_is_unset(
        self, make_app: Any, monkeypatch: pytest.MonkeyPatch, name: str
    ) -> None:
        """An empty environment variable counts as unset."""
        monkeypatch.setenv(f"SUPRSEND_{name.upper()}", "")
        assert getattr(load_settings(make_app().conf), name) == KEYS[name][4]

    def test_conf_none_falls_back_to_env(
        self, make_app: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``app.conf.suprsend_x = None`` means "not set here"."""
        monkeypatch.setenv("SUPRSEND_MAX_RETRIES", "4")
        assert load_settings(make_app(suprsend_max_retries=None).conf).max_retries == 4

    def test_credentials_from_env_only(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no Celery config at all, everything comes from the environment."""
        monkeypatch.setenv("SUPRSEND_WORKSPACE_KEY", f"  {KEY} ")
        monkeypatch.setenv("SUPRSEND_WORKSPACE_SECRET", SECRET)
        loaded = load_settings(None)
        assert (loaded.workspace_key, loaded.workspace_secret) == (KEY, SECRET)
        assert loaded.redis_url is None
        assert loaded.visibility_timeout == 3600.0

    def test_credentials_conf_beats_env(
        self, make_app: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The credentials follow the same order."""
        monkeypatch.setenv("SUPRSEND_WORKSPACE_KEY", "WSKEY_from_env_000000")
        assert load_settings(make_app().conf).workspace_key == KEY

    def test_django_namespace(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``config_from_object(settings, namespace="CELERY")`` reads CELERY_SUPRSEND_*."""

        class DjangoSettings:
            CELERY_BROKER_URL = "redis://broker:6379/0"
            CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 900}
            CELERY_SUPRSEND_WORKSPACE_KEY = KEY
            CELERY_SUPRSEND_WORKSPACE_SECRET = SECRET
            CELERY_SUPRSEND_BASE_URL = "http://sandbox.local:8787"
            CELERY_SUPRSEND_FLUSH_BATCH_SIZE = 25
            CELERY_SUPRSEND_MAX_RETRIES = "7"
            SUPRSEND_KEY_PREFIX = "not-namespaced-so-ignored"

        monkeypatch.setenv("SUPRSEND_MAX_RETRIES", "1")
        monkeypatch.setenv("SUPRSEND_REQUEST_TIMEOUT", "3")
        app = Celery("django_style", set_as_current=False)
        try:
            app.config_from_object(DjangoSettings, namespace="CELERY")
            loaded = load_settings(app.conf)
        finally:
            app.close()
        assert (loaded.workspace_key, loaded.workspace_secret) == (KEY, SECRET)
        assert loaded.base_url == "http://sandbox.local:8787/"
        assert (loaded.flush_batch_size, loaded.max_retries) == (25, 7)
        assert loaded.request_timeout == 3.0
        assert loaded.key_prefix == "suprsend_celery"
        assert loaded.redis_url == "redis://broker:6379/0"
        assert loaded.visibility_timeout == 900.0


class TestValidation:
    """A missing or invalid value raises ConfigurationError naming the key."""

    @pytest.mark.parametrize("name", ["workspace_key", "workspace_secret"])
    def test_required(self, make_app: Any, name: str) -> None:
        """Missing credentials name the Celery key, the Django setting and the env var."""
        other = "workspace_secret" if name == "workspace_key" else "workspace_key"
        app = make_app(credentials=False, **{f"suprsend_{other}": "x"})
        message = str(config_error(lambda: load_settings(app.conf)))
        assert f"suprsend_{name}" in message
        assert f"SUPRSEND_{name.upper()}" in message
        assert f"CELERY_SUPRSEND_{name.upper()}" in message

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("workspace_key", ""),
            ("workspace_key", "   "),
            ("workspace_key", 5),
            ("workspace_secret", ""),
            ("base_url", "hub.suprsend.com"),
            ("base_url", "ftp://hub.suprsend.com/"),
            ("base_url", "http://"),
            ("base_url", "http://[::1"),
            ("base_url", 5),
            ("redis_url", "localhost:6379"),
            ("redis_url", "http://redis:6379/0"),
            ("redis_url", ""),
            ("key_prefix", ""),
            ("key_prefix", 5),
            ("buffer_max_length", "lots"),
            ("buffer_max_length", 0),
            ("buffer_max_length", True),
            ("flush_interval", "soon"),
            ("flush_interval", -1),
            ("flush_interval", "nan"),
            ("flush_interval", float("inf")),
            ("flush_linger", -0.01),
            ("flush_linger", 2),
            ("flush_linger", "soon"),
            ("flush_wait", "maybe"),
            ("flush_batch_size", 0),
            ("flush_batch_size", 101),
            ("flush_batch_size", "ten"),
            ("flush_batch_size", [50]),
            ("max_retries", -1),
            ("max_retries", "many"),
            ("retry_backoff_max", 0),
            ("retry_backoff_max", "long"),
            ("request_timeout", 0),
            ("request_timeout", "-5"),
            ("request_timeout", "inf"),
            ("request_timeout", [10]),
            ("max_event_bytes", 0),
            ("max_event_bytes", 102_401),
            ("max_event_bytes", "big"),
        ],
    )
    def test_invalid_conf_value(self, make_app: Any, name: str, value: Any) -> None:
        """Each bad app.conf value is refused with the key in the message."""
        app = make_app(**{f"suprsend_{name}": value})
        assert f"suprsend_{name}" in str(config_error(lambda: load_settings(app.conf)))

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("flush_batch_size", "0"),
            ("flush_batch_size", "101"),
            ("request_timeout", "ten"),
            ("max_retries", "1.5"),
            ("base_url", "not a url"),
            ("redis_url", "amqp://guest@rabbit//"),
        ],
    )
    def test_invalid_env_value(
        self, make_app: Any, monkeypatch: pytest.MonkeyPatch, name: str, value: str
    ) -> None:
        """A bad environment variable is refused the same way."""
        monkeypatch.setenv(f"SUPRSEND_{name.upper()}", value)
        app = make_app()
        assert f"suprsend_{name}" in str(config_error(lambda: load_settings(app.conf)))

    @pytest.mark.parametrize("size", [1, 100])
    def test_batch_size_bounds(self, make_app: Any, size: int) -> None:
        """Batch sizes 1 and 100 are the valid extremes."""
        assert load_settings(make_app(suprsend_flush_batch_size=size).conf).flush_batch_size == size

    @pytest.mark.parametrize("value", [1, 8, 64, "32"])
    def test_flush_concurrency_bounds(self, make_app: Any, value: Any) -> None:
        """1 to 64 bulk requests in flight per flush run."""
        loaded = load_settings(make_app(suprsend_flush_concurrency=value).conf)
        assert loaded.flush_concurrency == int(value)

    @pytest.mark.parametrize("value", [0, 65, -1, "many", True])
    def test_flush_concurrency_refused(self, make_app: Any, value: Any) -> None:
        """Out of range or not an integer: ConfigurationError naming the key."""
        app = make_app(suprsend_flush_concurrency=value)
        assert "suprsend_flush_concurrency" in str(config_error(lambda: load_settings(app.conf)))

    def test_flush_concurrency_from_env_and_default(
        self, make_app: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Default 8; SUPRSEND_FLUSH_CONCURRENCY when the config is silent."""
        assert load_settings(make_app().conf).flush_concurrency == 8
        monkeypatch.setenv("SUPRSEND_FLUSH_CONCURRENCY", "16")
        assert load_settings(make_app().conf).flush_concurrency == 16

    @pytest.mark.parametrize(("value", "expected"), [(0.1, 0.1), ("0.5", 0.5), (30, 30.0)])
    def test_accept_timeout_bounds(self, make_app: Any, value: Any, expected: float) -> None:
        """0.1 to 30 seconds for accepting an event."""
        loaded = load_settings(make_app(suprsend_accept_timeout=value).conf)
        assert loaded.accept_timeout == expected

    @pytest.mark.parametrize("value", [0, 0.05, 31, "soon", True, float("nan")])
    def test_accept_timeout_refused(self, make_app: Any, value: Any) -> None:
        """Out of range or not a number: ConfigurationError naming the key."""
        app = make_app(suprsend_accept_timeout=value)
        assert "suprsend_accept_timeout" in str(config_error(lambda: load_settings(app.conf)))

    def test_accept_timeout_default_is_at_most_two_seconds(
        self, make_app: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Default 2 s; SUPRSEND_ACCEPT_TIMEOUT when the config is silent."""
        assert load_settings(make_app().conf).accept_timeout == 2.0
        monkeypatch.setenv("SUPRSEND_ACCEPT_TIMEOUT", "1.5")
        assert load_settings(make_app().conf).accept_timeout == 1.5

    def test_secret_never_shown(self, make_app: Any) -> None:
        """A bad secret is refused without echoing it; repr(Settings) hides it."""
        app = make_app(suprsend_workspace_secret=[SECRET])
        assert "<hidden>" in str(config_error(lambda: load_settings(app.conf)))
        loaded = load_settings(make_app().conf)
        assert loaded.workspace_secret == SECRET
        assert SECRET not in repr(loaded)
        assert SECRET not in str(loaded)
        assert "workspace_secret='<hidden>'" in repr(loaded)


class TestRedisUrl:
    """``suprsend_redis_url`` falls back to a Redis broker URL."""

    @pytest.mark.parametrize(
        ("broker", "expected"),
        [
            ("redis://broker:6379/0", "redis://broker:6379/0"),
            ("rediss://:pw@broker:6380/1", "rediss://:pw@broker:6380/1"),
            ("redis://a:6379/0;redis://b:6379/0", "redis://a:6379/0"),
            (["redis://a:6379/0", "redis://b:6379/0"], "redis://a:6379/0"),
            ("amqp://guest:guest@rabbit:5672//", None),
            ("sqs://", None),
            ("memory://", None),
        ],
    )
    def test_broker_fallback(self, make_app: Any, broker: Any, expected: str | None) -> None:
        """A Redis broker doubles as the buffer; any other broker leaves it unset."""
        assert load_settings(make_app(broker_url=broker).conf).redis_url == expected

    def test_explicit_wins(self, make_app: Any) -> None:
        """An explicit suprsend_redis_url beats the broker."""
        app = make_app(broker_url="redis://broker/0", suprsend_redis_url="redis://buffer/5")
        assert load_settings(app.conf).redis_url == "redis://buffer/5"

    def test_required_for_buffering(self, make_app: Any) -> None:
        """Without any Redis, buffering asks for suprsend_redis_url."""
        loaded = load_settings(make_app(broker_url="amqp://rabbit//").conf)
        assert "suprsend_redis_url" in str(config_error(loaded.require_redis_url))
        with_redis = load_settings(make_app(broker_url="redis://r/0").conf)
        assert with_redis.require_redis_url() == "redis://r/0"


class TestVisibilityTimeout:
    """Retry countdowns stay below the broker's visibility timeout (celery#5935)."""

    def test_default(self, make_app: Any) -> None:
        """Kombu's default of one hour applies when the broker sets none."""
        loaded = load_settings(make_app().conf)
        assert loaded.visibility_timeout == 3600.0
        assert loaded.max_countdown == 600.0

    def test_from_transport_options(self, make_app: Any) -> None:
        """The broker's visibility timeout is read and caps the countdown."""
        app = make_app(
            broker_transport_options={"visibility_timeout": 300}, suprsend_retry_backoff_max=900
        )
        loaded = load_settings(app.conf)
        assert loaded.visibility_timeout == 300.0
        assert loaded.max_countdown < 300

    def test_invalid(self, make_app: Any) -> None:
        """A non-numeric visibility timeout names the option."""
        app = make_app(broker_transport_options={"visibility_timeout": "long"})
        assert "visibility_timeout" in str(config_error(lambda: load_settings(app.conf)))

    @settings(max_examples=200, deadline=None)
    @given(
        visibility=st.floats(2, 10**7, allow_nan=False),
        backoff=st.floats(1, 10**7, allow_nan=False),
    )
    def test_countdown_below_visibility(self, visibility: float, backoff: float) -> None:
        """The countdown cap is positive, within the backoff cap and below the visibility."""
        loaded = Settings(
            workspace_key=KEY,
            workspace_secret=SECRET,
            retry_backoff_max=backoff,
            visibility_timeout=visibility,
        )
        assert 1.0 <= loaded.max_countdown < visibility
        assert loaded.max_countdown <= backoff


class TestCache:
    """Settings are read once per app and forgotten on request."""

    def test_cached_until_reset(self, make_app: Any) -> None:
        """``get_settings`` caches on the app; ``reset_settings`` re-reads app.conf."""
        app = make_app(suprsend_max_retries=2)
        first = get_settings(app)
        assert get_settings(app) is first
        app.conf.suprsend_max_retries = 5
        assert get_settings(app).max_retries == 2
        reset_settings(app)
        assert get_settings(app).max_retries == 5

    def test_apps_are_independent(self, make_app: Any) -> None:
        """Two apps keep their own settings."""
        one, two = make_app(suprsend_key_prefix="one"), make_app(suprsend_key_prefix="two")
        assert (get_settings(one).key_prefix, get_settings(two).key_prefix) == ("one", "two")

    def test_errors_are_not_cached(self, make_app: Any) -> None:
        """A failed load raises again until the config is fixed."""
        app = make_app(suprsend_flush_batch_size=0)
        config_error(lambda: get_settings(app))
        app.conf.suprsend_flush_batch_size = 10
        assert get_settings(app).flush_batch_size == 10


class TestRedisUrlMasking:
    """A Redis password never reaches a repr or an error message."""

    def test_repr_masks_the_password(self) -> None:
        """``repr(Settings)`` shows the Redis host but not its password."""
        from suprsend_celery.pipeline.settings import load_settings

        settings = load_settings(
            {
                "suprsend_workspace_key": "WSKEY_config_0123456789",
                "suprsend_workspace_secret": "s3cr3t",
                "suprsend_redis_url": "redis://user:hunter2pw@cache:6379/0",
            }
        )
        assert "hunter2pw" not in repr(settings)
        assert "redis://user:***@cache:6379/0" in repr(settings)

    def test_invalid_url_message_masks_the_password(self) -> None:
        """A refused URL is named without its password."""
        import pytest

        from suprsend_celery.exceptions import ConfigurationError
        from suprsend_celery.pipeline.settings import load_settings

        with pytest.raises(ConfigurationError) as caught:
            load_settings(
                {
                    "suprsend_workspace_key": "WSKEY_config_0123456789",
                    "suprsend_workspace_secret": "s3cr3t",
                    "suprsend_redis_url": "http://:hunter2pw@cache:6379/0",
                }
            )
        assert "hunter2pw" not in str(caught.value)
        assert "suprsend_redis_url" in str(caught.value)


class TestCredentialModes:
    """Key + secret (HMAC) or workspace UID + API key (Bearer): exactly one complete pair."""

    def test_api_key_mode(self, make_app: Any) -> None:
        """UID + API key alone configure Bearer mode; records carry the UID as env."""
        app = make_app(credentials=False, suprsend_workspace_uid=UID, suprsend_api_key=API_KEY)
        loaded = load_settings(app.conf)
        assert loaded.credentials.mode == "api_key"
        assert loaded.env == UID
        assert (loaded.workspace_key, loaded.workspace_secret) == (None, None)

    def test_api_key_mode_from_env(self, make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """SUPRSEND_WORKSPACE_UID / SUPRSEND_API_KEY work like every other key."""
        monkeypatch.setenv("SUPRSEND_WORKSPACE_UID", UID)
        monkeypatch.setenv("SUPRSEND_API_KEY", API_KEY)
        loaded = load_settings(make_app(credentials=False).conf)
        assert (loaded.credentials.mode, loaded.env) == ("api_key", UID)

    def test_hmac_mode_env_is_the_key(self, make_app: Any) -> None:
        """Key + secret keep HMAC mode with the key as env."""
        loaded = load_settings(make_app().conf)
        assert (loaded.credentials.mode, loaded.env) == ("hmac", KEY)

    def test_both_modes_refused(self, make_app: Any) -> None:
        """Both pairs complete is ambiguous: refused, naming all four keys."""
        app = make_app(suprsend_workspace_uid=UID, suprsend_api_key=API_KEY)
        message = str(config_error(lambda: load_settings(app.conf)))
        for name in ("workspace_key", "workspace_secret", "workspace_uid", "api_key"):
            assert f"suprsend_{name}" in message
        assert API_KEY not in message

    def test_neither_mode_refused(self, make_app: Any) -> None:
        """No credentials at all: refused, naming both ways to configure them."""
        message = str(config_error(lambda: load_settings(make_app(credentials=False).conf)))
        for name in ("workspace_key", "workspace_secret", "workspace_uid", "api_key"):
            assert f"suprsend_{name}" in message

    @pytest.mark.parametrize(
        ("given", "missing"),
        [
            ({"suprsend_workspace_uid": UID}, "suprsend_api_key"),
            ({"suprsend_api_key": API_KEY}, "suprsend_workspace_uid"),
        ],
    )
    def test_half_a_pair_refused(self, make_app: Any, given: dict[str, str], missing: str) -> None:
        """Half an API-key pair is refused naming the missing half, even beside key + secret."""
        for credentials in (False, True):
            app = make_app(credentials=credentials, **given)
            message = str(config_error(lambda app=app: load_settings(app.conf)))
            assert f"{missing} is required" in message
            assert missing.upper() in message
            assert API_KEY not in message

    @pytest.mark.parametrize("value", ["", "  ", 5, [API_KEY]])
    def test_invalid_api_key(self, make_app: Any, value: Any) -> None:
        """A bad API key is refused by name and never echoed."""
        app = make_app(credentials=False, suprsend_workspace_uid=UID, suprsend_api_key=value)
        message = str(config_error(lambda: load_settings(app.conf)))
        assert "suprsend_api_key" in message
        assert API_KEY not in message

    def test_api_key_never_shown(self, make_app: Any) -> None:
        """repr(Settings) and repr(credentials) hide the API key."""
        app = make_app(credentials=False, suprsend_workspace_uid=UID, suprsend_api_key=API_KEY)
        loaded = load_settings(app.conf)
        assert loaded.api_key == API_KEY
        for text in (repr(loaded), str(loaded), repr(loaded.credentials)):
            assert API_KEY not in text
        assert "api_key='<hidden>'" in repr(loaded)


def refused(app: Celery) -> str:
    """The ConfigurationError message loading this app's settings gives."""
    return str(config_error(lambda: load_settings(app.conf)))


class TestFeatureSettings:
    """before_send, dry_run, proxy_url and ca_bundle: parsed, or refused naming the key."""

    def test_defaults(self, make_app: Any) -> None:
        loaded = load_settings(make_app().conf)
        assert (loaded.before_send, loaded.dry_run) == (None, False)
        assert (loaded.proxy_url, loaded.ca_bundle) == (None, None)

    @pytest.mark.parametrize("path", ["_hooks.scrub", "_hooks:scrub"])
    def test_before_send_path(self, make_app: Any, path: str) -> None:
        """A dotted (or colon) path names the hook; it is imported once, at load."""
        import _hooks

        assert load_settings(make_app(suprsend_before_send=path).conf).before_send is _hooks.scrub

    def test_before_send_from_env(self, make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        import _hooks

        monkeypatch.setenv("SUPRSEND_BEFORE_SEND", "_hooks.drop_internal")
        assert load_settings(make_app().conf).before_send is _hooks.drop_internal

    @pytest.mark.parametrize(
        ("value", "why"),
        [
            ("no_such_module_xyz.scrub", "cannot import"),
            ("_hooks.no_such_function", "has no attribute"),
            ("_hooks.NOT_CALLABLE", "not a callable"),
            ("scrub", "must look like"),
            ("", "dotted path"),
            (5, "dotted path"),
        ],
    )
    def test_before_send_refused(self, make_app: Any, value: Any, why: str) -> None:
        message = str(
            config_error(lambda: load_settings(make_app(suprsend_before_send=value).conf))
        )
        assert "suprsend_before_send" in message
        assert why in message

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False)],
    )
    def test_dry_run_from_env(
        self, make_app: Any, monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
    ) -> None:
        """SUPRSEND_DRY_RUN takes true/false/1/0."""
        monkeypatch.setenv("SUPRSEND_DRY_RUN", value)
        assert load_settings(make_app().conf).dry_run is expected

    @pytest.mark.parametrize("value", ["yes", "on", "2", "", 2.5, [True]])
    def test_dry_run_refused(self, make_app: Any, value: Any) -> None:
        message = refused(make_app(suprsend_dry_run=value))
        assert "suprsend_dry_run" in message

    def test_dry_run_conf_bool(self, make_app: Any) -> None:
        assert load_settings(make_app(suprsend_dry_run=True).conf).dry_run is True

    def test_proxy_url(self, make_app: Any) -> None:
        """An http(s) proxy URL; its password never shows in repr."""
        url = "http://user:pr0xyPW@proxy.internal:3128"
        loaded = load_settings(make_app(suprsend_proxy_url=url).conf)
        assert loaded.proxy_url == url
        assert "pr0xyPW" not in repr(loaded)

    @pytest.mark.parametrize(
        "value", ["proxy.internal:3128", "socks5://proxy:1080", "http://", "http://u:pr0xyPW@"]
    )
    def test_proxy_url_refused(self, make_app: Any, value: str) -> None:
        message = refused(make_app(suprsend_proxy_url=value))
        assert "suprsend_proxy_url" in message
        assert "pr0xyPW" not in message

    def test_ca_bundle(self, make_app: Any, tmp_path: Any) -> None:
        bundle = tmp_path / "ca.pem"
        bundle.write_text("not checked here")
        loaded = load_settings(make_app(suprsend_ca_bundle=str(bundle)).conf)
        assert loaded.ca_bundle == str(bundle)

    def test_ca_bundle_missing(self, make_app: Any, tmp_path: Any) -> None:
        missing = str(tmp_path / "nope.pem")
        message = str(
            config_error(lambda: load_settings(make_app(suprsend_ca_bundle=missing).conf))
        )
        assert "suprsend_ca_bundle" in message
        assert "not found" in message


def ignored_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "suprsend_celery.pipeline.settings" and r.levelname == "WARNING"
    ]


class TestUnknownSettings:
    """A misspelt ``suprsend_*`` key or ``SUPRSEND_*`` variable is reported, once per
    process, as a WARNING naming the nearest setting (never a Python warning, which
    would break users' ``filterwarnings = error`` suites). Each test uses names of its
    own, since a name reported once is not reported again."""

    def test_conf_typos_name_the_nearest_setting(
        self, make_app: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        app = make_app(suprsend_flush_intervall=3, suprsend_dry_rn=True, suprsend_zq_nothing=1)
        with caplog.at_level("WARNING"):
            loaded = load_settings(app.conf)
        assert (loaded.flush_interval, loaded.dry_run) == (5.0, False)  # ignored, as said
        lines = ignored_lines(caplog)
        assert any(
            "app.conf key suprsend_flush_intervall" in line
            and "did you mean suprsend_flush_interval?" in line
            for line in lines
        ), lines
        assert any(
            "suprsend_dry_rn" in line and "did you mean suprsend_dry_run?" in line for line in lines
        ), lines
        assert any("suprsend_zq_nothing" in line and "Configuration" in line for line in lines)

    def test_environment_typo(
        self, make_app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("SUPRSEND_MAX_RETRIE", "2")
        monkeypatch.setenv("SUPRSEND_REDIS_SERVER", "/usr/bin/redis-server")  # ours, not a typo
        with caplog.at_level("WARNING"):
            assert load_settings(make_app().conf).max_retries == 10
        lines = ignored_lines(caplog)
        assert any(
            "environment variable SUPRSEND_MAX_RETRIE" in line
            and "did you mean SUPRSEND_MAX_RETRIES?" in line
            for line in lines
        ), lines
        assert not any("SUPRSEND_REDIS_SERVER" in line for line in lines)

    def test_django_namespace(self, caplog: pytest.LogCaptureFixture) -> None:
        """CELERY_SUPRSEND_* typos, and a SUPRSEND_* setting missing its namespace."""

        class DjangoSettings:
            CELERY_SUPRSEND_WORKSPACE_KEY = KEY
            CELERY_SUPRSEND_WORKSPACE_SECRET = SECRET
            CELERY_SUPRSEND_BATCH_SIZE = 10
            SUPRSEND_MAX_EVENT_BYTES = 2048  # forgot the namespace
            SUPRSEND_TEMPLATE_SLUG = "the project's own setting"

        app = Celery("django_unknown", set_as_current=False)
        try:
            app.config_from_object(DjangoSettings, namespace="CELERY")
            with caplog.at_level("WARNING"):
                load_settings(app.conf)
        finally:
            app.close()
        lines = ignored_lines(caplog)
        assert any(
            "CELERY_SUPRSEND_BATCH_SIZE" in line
            and "did you mean CELERY_SUPRSEND_FLUSH_BATCH_SIZE?" in line
            for line in lines
        ), lines
        assert any(
            "app.conf key SUPRSEND_MAX_EVENT_BYTES" in line
            and "did you mean CELERY_SUPRSEND_MAX_EVENT_BYTES?" in line
            for line in lines
        ), lines
        assert not any("SUPRSEND_TEMPLATE_SLUG" in line for line in lines)
        assert not any("WORKSPACE" in line for line in lines)

    def test_reported_once_per_process(
        self, make_app: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        app = make_app(suprsend_once_only_typo=1)
        with caplog.at_level("WARNING"):
            load_settings(make_app(suprsend_once_only_typo=2).conf)
            get_settings(app)
            reset_settings(app)
            get_settings(app)
        reset_settings(app)
        assert sum("suprsend_once_only_typo" in line for line in ignored_lines(caplog)) == 1

    def test_misspelt_dry_run_says_so_when_events_are_accepted(
        self, app_factory: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """``suprsend_dryrun=True`` is not dry run: the first accept says so."""
        from suprsend_celery import buffer_event, buffer_stats

        app = app_factory(suprsend_dryrun=True)
        with caplog.at_level("WARNING"):
            buffer_event("u1", "signed_up", app=app)
        assert buffer_stats(app=app)["pending"] == 1  # accepted for sending, not dry run
        assert any(
            "suprsend_dryrun" in line and "did you mean suprsend_dry_run?" in line
            for line in ignored_lines(caplog)
        )

    def test_known_keys_are_quiet(self, make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
        conf = {f"suprsend_{name}": value for name, (value, *_) in KEYS.items()}
        with caplog.at_level("WARNING"):
            load_settings(make_app(**conf).conf)
        assert ignored_lines(caplog) == []

    def test_redis_only_view_needs_no_credentials(self, make_app: Any) -> None:
        """``require_credentials=False``: what operations load; credentials, hooks, proxy
        and CA bundle are not read (a placeholder or a missing file is no error)."""
        app = make_app(
            credentials=False,
            broker_url="redis://broker:6379/0",
            suprsend_workspace_key="WSKEY_...",
            suprsend_ca_bundle="/no/such/ca.pem",
        )
        config_error(lambda: load_settings(app.conf))
        view = get_settings(app, require_credentials=False)
        assert (view.redis_url, view.workspace_key, view.ca_bundle) == (
            "redis://broker:6379/0",
            None,
            None,
        )
        reset_settings(app)
