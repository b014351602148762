"""``python -m suprsend_celery.cli``."""

from . import main

main()
