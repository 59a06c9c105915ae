"""One module per `qbench` sub-command; `common` holds what they share. Nothing here imports qbench_tui.cli."""
