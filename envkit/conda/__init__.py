"""Environments as code: environment.yml specs, lint, lock, create, export, doctor, recreate."""
