"""Framework integrations, imported on demand."""
