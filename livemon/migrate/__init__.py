"""
Legacy databases into the unified one: their layouts and the conversion
of their rows (``legacy``), and the reconciled, archived copy
(``migrator``).
"""

from __future__ import annotations

from livemon.migrate.legacy import LAYOUTS, load_mapping
from livemon.migrate.migrator import TableReport, migrate

__all__ = ["LAYOUTS", "TableReport", "load_mapping", "migrate"]
