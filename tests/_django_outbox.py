"""Django for the outbox tests, set up the same way in the test process and in the relay
subprocesses: SQLite (``default``, a file, so several processes share it) and, when
given, PostgreSQL (``pg``), with the outbox app, the admin and a tiny shop app."""

from __future__ import annotations

import json
import os
from typing import Any

SQLITE_ENV = "OUTBOX_TEST_SQLITE"
POSTGRES_ENV = "OUTBOX_TEST_POSTGRES"


def configure(sqlite_path: str, postgres: dict[str, Any] | None) -> list[str]:
    """Configure and set up Django (once per process); return the database aliases."""
    import django
    from django.conf import settings

    databases: dict[str, Any] = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": sqlite_path,
            "OPTIONS": {"timeout": 30},
            "TEST": {"NAME": sqlite_path},
        }
    }
    if postgres:
        databases["pg"] = {"ENGINE": "django.db.backends.postgresql", **postgres}
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="outbox-tests-only",
            ALLOWED_HOSTS=["testserver"],
            USE_TZ=True,
            DATABASES=databases,
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
            INSTALLED_APPS=[
                "django.contrib.contenttypes",
                "django.contrib.auth",
                "django.contrib.sessions",
                "django.contrib.messages",
                "django.contrib.admin",
                "suprsend_celery.contrib.django",
                "outbox_shop",
            ],
            MIDDLEWARE=[
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
                "django.contrib.messages.middleware.MessageMiddleware",
            ],
            ROOT_URLCONF="outbox_shop.urls",
            TEMPLATES=[
                {
                    "BACKEND": "django.template.backends.django.DjangoTemplates",
                    "APP_DIRS": True,
                    "OPTIONS": {
                        "context_processors": [
                            "django.template.context_processors.request",
                            "django.contrib.auth.context_processors.auth",
                            "django.contrib.messages.context_processors.messages",
                        ]
                    },
                }
            ],
            PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        )
        django.setup()
    return list(databases)


def configure_from_env() -> list[str]:
    """``configure`` with what the test process put in the environment."""
    postgres = os.environ.get(POSTGRES_ENV)
    return configure(os.environ[SQLITE_ENV], json.loads(postgres) if postgres else None)


def environment(sqlite_path: str, postgres: dict[str, Any] | None) -> dict[str, str]:
    """Environment variables for a subprocess that calls ``configure_from_env``."""
    env = {SQLITE_ENV: sqlite_path}
    if postgres:
        env[POSTGRES_ENV] = json.dumps(postgres)
    return env
