"""Integrations with other frameworks; each module imports its framework (e.g. `qrerank.integrations.ray`)."""
