"""Prefect flows that wire `pipeline` stages into tasks over shard paths."""
