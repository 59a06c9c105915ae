"""Dashboard panels. Each panel takes a Snapshot and repaints only what changed."""
