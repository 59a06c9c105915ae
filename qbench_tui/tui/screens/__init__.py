"""Screens: startup (server launch), dashboard, help, concurrency input."""
