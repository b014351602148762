"""A tiny Django app for the outbox tests: orders, and the admin's URLs."""
