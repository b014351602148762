"""``celery -A proj report``, what users paste into bug reports, shows no suprsend secret.

Each case writes a user's app module and runs the real ``celery report`` on it in a
subprocess: the ``suprsend_*`` settings are listed (so the report stays useful) and
no password or secret appears, however the app imports suprsend_celery.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "report-pw-marker-91c3"
PROXY_PASSWORD = "report-proxy-pw-5e0a"
SECRET = "WSSECRET_report_marker_77ab"
API_KEY = "report-api-key-marker-2f4d"

_SETTINGS = f"""
class Settings:
    CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    CELERY_SUPRSEND_REDIS_URL = "redis://:{PASSWORD}@127.0.0.1:1/0"
    CELERY_SUPRSEND_PROXY_URL = "http://proxyuser:{PROXY_PASSWORD}@proxy.example:3128"
    CELERY_SUPRSEND_WORKSPACE_KEY = "WSKEY_report"
    CELERY_SUPRSEND_WORKSPACE_SECRET = "{SECRET}"
    CELERY_SUPRSEND_API_KEY = "{API_KEY}"
"""

APPS = {
    # app.conf set directly, the module importing suprsend_celery first
    "imports_package": f"""
import suprsend_celery
from celery import Celery

app = Celery("report_app")
app.conf.update(
    broker_url="redis://127.0.0.1:1/0",
    suprsend_redis_url="redis://:{PASSWORD}@127.0.0.1:1/0",
    suprsend_proxy_url="http://proxyuser:{PROXY_PASSWORD}@proxy.example:3128",
    suprsend_workspace_key="WSKEY_report",
    suprsend_workspace_secret="{SECRET}",
    suprsend_api_key="{API_KEY}",
)
""",
    # Django's namespace, the tasks listed in CELERY_IMPORTS only
    "conf_imports": f"""
from celery import Celery
{_SETTINGS}
Settings.CELERY_IMPORTS = ("suprsend_celery.tasks",)
app = Celery("report_app")
app.config_from_object(Settings, namespace="CELERY")
""",
    # as with Django: suprsend_celery first imported by django.setup(), which Celery's
    # Django fixup runs from the import_modules signal, before the config is loaded
    "imported_during_setup": f"""
from celery import Celery
from celery.signals import import_modules
{_SETTINGS}
app = Celery("report_app")
app.config_from_object(Settings, namespace="CELERY")


@import_modules.connect
def setup(sender=None, **kwargs):
    import suprsend_celery.contrib.django  # noqa: F401
""",
}


@pytest.mark.parametrize("case", sorted(APPS))
def test_report_masks_every_suprsend_secret(tmp_path: Path, case: str) -> None:
    """The Redis and proxy passwords, the workspace secret and the API key stay out of
    ``celery report``, which still lists the settings (masked)."""
    (tmp_path / "report_app.py").write_text(APPS[case])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPRSEND_", "CELERY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "report_app", "report"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "suprsend_redis_url: 'redis://:***@127.0.0.1:1/0'" in output.replace(
        "CELERY_SUPRSEND_REDIS_URL", "suprsend_redis_url"
    ), output
    assert "proxyuser:***@proxy.example" in output, output
    for hidden in (PASSWORD, PROXY_PASSWORD, SECRET, API_KEY):
        assert hidden not in output, (hidden, output)
