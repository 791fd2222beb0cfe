"""Runnable examples (not part of the installed package): run them from the repository root."""
