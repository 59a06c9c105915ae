"""qbench-tui: live load tuner and benchmark for vLLM."""
__version__ = "0.1.0"
