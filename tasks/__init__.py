"""Pipeline stages: pure functions that do the work, each with a thin Prefect task wrapper."""
