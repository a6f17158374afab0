"""A name -> spec table for things chosen by string (normalizers, models)."""

from __future__ import annotations

from typing import Generic, TypeVar

Spec = TypeVar("Spec")


class Registry(Generic[Spec]):
    """Names to specs; a duplicate is refused, an unknown name is answered with the known ones."""

    def __init__(self, what: str):
        self.what = what
        self._specs: dict[str, Spec] = {}

    def add(self, name: str, spec: Spec) -> None:
        if name in self._specs:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._specs[name] = spec

    def __getitem__(self, name: str) -> Spec:
        try:
            return self._specs[name]
        except KeyError:
            raise ValueError(f"unknown {self.what} {name!r}; choose one of: {', '.join(sorted(self._specs))}") from None

    def all(self) -> dict[str, Spec]:
        return dict(self._specs)
