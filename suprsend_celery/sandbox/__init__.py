"""A local SuprSend event API for development and tests (work in progress)."""
