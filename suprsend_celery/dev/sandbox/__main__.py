"""``python -m suprsend_celery.sandbox``: run the sandbox in the foreground."""

import sys

from .command import main

sys.exit(main())
