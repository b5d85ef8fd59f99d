"""Orchestration: the Prefect flow, its configuration and presets, and the CLI."""
