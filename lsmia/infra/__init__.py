"""Machinery under the experiments: local services (PostgreSQL, an MLflow server), output locks, torchrun
process groups and the thread count."""
