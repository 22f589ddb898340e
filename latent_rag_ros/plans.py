"""What the ``*Plan`` dataclasses share: :class:`PlanError` and the field checks their ``__post_init__`` runs.

A plan (``ReplayPlan``, ``BuildPlan``, ``BagPlan``) replaces a long parameter list. A bad field fails
when the plan is made, before a model, a store or a bag is opened, with one line naming
``Plan.field`` and what it needs. Bottom layer: the plans live in nodes, store and eval.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Collection
from typing import Any

__all__ = ["PlanError", "at_least", "non_negative", "one_of", "path", "positive", "require", "text"]


class PlanError(ValueError):
    """A plan's field is invalid; the message names ``Plan.field``, what it must be and what it got."""


def _shown(value: Any) -> str:
    """The value as the error shows it: a path in full, anything else cut at 80 characters."""
    if isinstance(value, os.PathLike):
        return repr(os.fspath(value))
    r = repr(value)
    return r if len(r) <= 80 or isinstance(value, str) else r[:77] + "..."


def require(plan: object, name: str, ok: bool, want: str) -> None:
    """Raise ``PlanError("Plan.name must be WANT, got VALUE")`` unless ``ok``."""
    if not ok:
        raise PlanError(f"{type(plan).__name__}.{name} must be {want}, got {_shown(getattr(plan, name))}")


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def positive(plan: object, name: str) -> None:
    """``Plan.name`` is a finite number > 0."""
    value = getattr(plan, name)
    require(plan, name, _number(value) and value > 0, "a finite number > 0")


def non_negative(plan: object, name: str) -> None:
    """``Plan.name`` is a finite number >= 0."""
    value = getattr(plan, name)
    require(plan, name, _number(value) and value >= 0, "a finite number >= 0")


def at_least(plan: object, name: str, low: int, optional: bool = False) -> None:
    """``Plan.name`` is an int >= ``low`` (or None when ``optional``)."""
    value = getattr(plan, name)
    integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok = (optional and value is None) or (integer and value >= low)
    require(plan, name, ok, f"an integer >= {low}" + (" or None" if optional else ""))


def one_of(plan: object, name: str, choices: Collection[Any]) -> None:
    """``Plan.name`` is one of ``choices``."""
    require(plan, name, getattr(plan, name) in choices, "one of " + ", ".join(map(repr, choices)))


def text(plan: object, name: str, optional: bool = False) -> None:
    """``Plan.name`` is a non-empty string (or None when ``optional``)."""
    value = getattr(plan, name)
    ok = (optional and value is None) or (isinstance(value, str) and bool(value.strip()))
    require(plan, name, ok, "a non-empty string" + (" or None" if optional else ""))


def path(plan: object, name: str) -> None:
    """``Plan.name`` is a non-empty path (str or os.PathLike)."""
    value = getattr(plan, name)
    ok = isinstance(value, (str, os.PathLike)) and bool(os.fspath(value).strip())
    require(plan, name, ok, "a non-empty path")
