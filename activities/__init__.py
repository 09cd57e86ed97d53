"""Temporal activities: every piece of I/O the follow-up workflows need."""
