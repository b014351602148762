"""pytest plugin providing the ``suprsend_sandbox`` fixture (work in progress)."""
