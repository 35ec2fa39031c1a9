"""Base for the small frozen result objects the scoring functions return."""

from __future__ import annotations

from dataclasses import asdict


class Result:
    """Mixin for result dataclasses: ``to_dict`` gives plain JSON-able values."""

    def to_dict(self) -> dict:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()  # type: ignore[call-overload]
        }
