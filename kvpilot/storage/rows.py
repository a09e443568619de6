"""The shape of one sample row, in a module of its own so the torch- and SQLAlchemy-free protocols and the
table declarations can both name it without importing each other."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SampleRow = Mapping[str, Any]  # one sample: column name -> value, checked against the table's declaration
