"""The typed environment registry: every setting's environment names, read once at startup.

Every config field (common/config.py) can be set by `GENFLEET_<FIELD>`; fields that mirror a TGI
launcher flag also answer to TGI's bare name (`MAX_INPUT_TOKENS`, `MODEL_ID`, ...), so a TGI
deployment's environment carries over. The prefixed name wins when both are set. `HOSTNAME` is
never read bare: every shell and container sets it to the machine's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ENV_PREFIX", "EnvSnapshot", "env_names"]

ENV_PREFIX = "GENFLEET_"
_NEVER_BARE = frozenset({"HOSTNAME", "PORT"})


def env_names(field_name: str, tgi: bool) -> tuple[str, ...]:
    upper = field_name.upper()
    names = [ENV_PREFIX + upper]
    if tgi and upper not in _NEVER_BARE:
        names.append(upper)
    return tuple(names)


@dataclass(frozen=True)
class EnvSnapshot:
    """The process environment as read once; configs are built from it, never from os.environ."""

    values: Mapping[str, str]

    @classmethod
    def capture(cls, environ: Mapping[str, str] | None = None) -> EnvSnapshot:
        return cls(dict(os.environ if environ is None else environ))

    def lookup(self, field_name: str, tgi: bool) -> tuple[str, str] | None:
        for name in env_names(field_name, tgi):
            if name in self.values and self.values[name] != "":
                return name, self.values[name]
        return None
