"""Name -> callable tables (advantage estimators, rewards, ...) filled by a decorator."""

from __future__ import annotations


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str):
        def deco(fn):
            if name in self:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self[name] = fn
            return fn

        return deco
