"""Render the flags table of README.md from the config dataclasses (the single source)."""

from __future__ import annotations

import sys

from common.config import settings_of
from common.env import env_names
from genfleet.cli import ROLE_CLASSES

__all__ = ["flags_table"]


def flags_table() -> str:
    rows = ["| flag | env | default | roles | meaning |", "|---|---|---|---|---|"]
    seen: dict[str, list[str]] = {}
    fields = {}
    for role, classes in ROLE_CLASSES.items():
        for cls in classes:
            for f in settings_of(cls):
                seen.setdefault(f.name, [])
                if role not in seen[f.name]:
                    seen[f.name].append(role)
                fields[f.name] = f
    for name, roles in seen.items():
        f = fields[name]
        envs = " / ".join(f"`{e}`" for e in env_names(name, f.metadata["tgi"]))
        default = "—" if f.default is None else f"`{f.default}`"
        flag = "--" + name.replace("_", "-")
        rows.append(f"| `{flag}` | {envs} | {default} | {', '.join(roles)} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(flags_table())
