"""Benchmarks: `python -m bench NAME` runs bench/NAME.py's main() and prints one JSON object."""
