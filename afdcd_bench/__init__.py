"""afdcd-bench: reproduction and benchmark suite for Af-DCD (NeurIPS 2023)."""
__version__ = "0.1.0"
