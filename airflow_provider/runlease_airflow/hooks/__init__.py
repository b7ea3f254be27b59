"""Hooks of the runlease provider."""
