"""Settings of the example shop; every deployment-specific value comes from the environment.

The suprsend-celery part is the block of ``CELERY_SUPRSEND_*`` settings below; see the
configuration table in docs/configuration.md for every key.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver").split(",")

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    # The outbox table (python manage.py migrate), and suprsend-celery's tasks for the
    # worker: shop/celery.py's autodiscover_tasks() finds them in this app.
    "suprsend_celery.contrib.django",
    "orders",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# -- Celery: shop/celery.py reads every CELERY_* setting (namespace="CELERY") -----------

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
# Task events, so Flower shows each send, its retries and results.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True

# -- suprsend-celery: CELERY_SUPRSEND_<KEY> is the suprsend_<key> setting ----------------

CELERY_SUPRSEND_WORKSPACE_KEY = os.environ.get("SUPRSEND_WORKSPACE_KEY")
CELERY_SUPRSEND_WORKSPACE_SECRET = os.environ.get("SUPRSEND_WORKSPACE_SECRET")
CELERY_SUPRSEND_BASE_URL = os.environ.get("SUPRSEND_BASE_URL", "https://hub.suprsend.com/")
# Buffered events live in the broker's Redis unless SUPRSEND_REDIS_URL names another.
CELERY_SUPRSEND_REDIS_URL = os.environ.get("SUPRSEND_REDIS_URL") or CELERY_BROKER_URL
CELERY_SUPRSEND_FLUSH_INTERVAL = float(os.environ.get("SUPRSEND_FLUSH_INTERVAL", "5"))
CELERY_SUPRSEND_MAX_RETRIES = int(os.environ.get("SUPRSEND_MAX_RETRIES", "10"))
CELERY_SUPRSEND_REQUEST_TIMEOUT = float(os.environ.get("SUPRSEND_REQUEST_TIMEOUT", "10"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"suprsend_celery": {"handlers": ["console"], "level": "INFO"}},
}
