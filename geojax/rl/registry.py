"""Named tables of interchangeable pieces (advantage estimators, KL estimators, loss aggregations)."""
from __future__ import annotations

from typing import Callable, TypeVar

Fn = TypeVar("Fn", bound=Callable)


def add_to(table: dict[str, Fn], name: str, fn: Fn, what: str) -> Fn:
  """Puts `fn` in `table` under `name`; a second piece under the same name is an error, not an override."""
  if name in table:
    raise ValueError(f"{what} {name!r} is already registered")
  table[name] = fn
  return fn
