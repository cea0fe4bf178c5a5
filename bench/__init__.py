"""Benchmarks: `python -m bench.run_all` (or `make bench`); results in bench/results/."""

import os

# Benchmarks never download: models come from installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
