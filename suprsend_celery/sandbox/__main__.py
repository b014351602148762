"""``python -m suprsend_celery.sandbox``: run the sandbox in the foreground."""

import sys

from ..dev.sandbox.command import main

sys.exit(main())
