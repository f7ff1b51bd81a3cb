"""Alembic migrations of the service's database (env.py, versions/). Run through service.db.Database.upgrade."""
