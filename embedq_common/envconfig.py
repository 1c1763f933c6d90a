"""Settings as frozen dataclasses whose every field has an environment variable twin and a
command-line flag; `--help` names both. Used by the server and the worker alike."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Self


def convert(kind: Any, raw: str) -> Any:
    """Text from the environment or a flag -> the field's type (annotations are strings)."""
    kind = str(kind)
    if kind == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if "tuple" in kind:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    if "Path" in kind:
        from pathlib import Path

        return Path(raw)
    return raw


class EnvSettings:
    """Mixin for a frozen dataclass whose fields carry {"env": NAME, "help": text} metadata."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Build settings from environment variables; keyword overrides win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            name = f.metadata.get("env")
            if name and env.get(name, "") != "":
                values[f.name] = convert(f.type, env[name])
        values.update(overrides)
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field, its environment twin and default named in the help."""
        for f in fields(cls):  # type: ignore[arg-type]
            flag = "--" + f.name.replace("_", "-")
            env, text = f.metadata["env"], f.metadata.get("help", "")
            if f.type == "bool":
                parser.add_argument(
                    flag,
                    dest=f.name,
                    action="store_const",
                    const="1",
                    default=None,
                    help=f"{text} [env {env}]",
                )
                continue
            default = f.metadata.get("default_text", f.default)
            parser.add_argument(
                flag, dest=f.name, default=None, help=f"{text} [env {env}; default {default}]"
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Self:
        """Flags given on the command line win over the environment."""
        overrides = {
            f.name: convert(f.type, getattr(args, f.name))
            for f in fields(cls)  # type: ignore[arg-type]
            if getattr(args, f.name, None) is not None
        }
        return cls.from_env(env, **overrides)
