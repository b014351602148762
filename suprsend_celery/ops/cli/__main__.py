"""``python -m suprsend_celery.ops.cli``."""

from . import main

main()
