"""Experiments: run settings, sweeps, the main job, health checks and benchmarks. Imports
``reporting`` and everything below it."""
