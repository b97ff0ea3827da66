"""Scripts that sit beside the library: run from the repository root as `python3 -m tools.NAME`."""
