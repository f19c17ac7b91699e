"""The Celery face of cells-migrator: ``celery -A tasks worker`` / ``celery -A tasks flower``."""

from tasks.app import app

celery = app

__all__ = ["app", "celery"]
