"""The config file itself: where it is, its YAML read into plain data, ``${VAR}`` references expanded.

Kept apart from :mod:`migrator.config` (pydantic) so that a command on a fast path
(``migrator topology classify``) can read the few keys it needs without loading the whole model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from migrator.errors import ConfigError

DEFAULT_CONFIG_PATH = "migrator.yaml"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def config_path_from_env() -> Path:
    return Path(os.environ.get("MIGRATOR_CONFIG", DEFAULT_CONFIG_PATH))


def expand_env(value: Any, where: str = "") -> Any:
    """``value`` with every ``${VAR}`` in its strings replaced by the environment variable VAR."""
    if isinstance(value, str):

        def repl(m: re.Match) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(
                    f"config key {where or '?'} refers to ${{{name}}}, which is not set",
                    f"export {name}=... before running",
                )
            return os.environ[name]

        return _ENV_REF.sub(repl, value)
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where (line and column, 1-based) and what, instead of PyYAML's multi-line dump."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    context = getattr(exc, "context", None)
    if context:
        what = f"{what} ({context})"
    if mark is None:
        return what
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}"


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's mapping with ``${VAR}`` expanded (ConfigError: one line naming what is wrong)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        loaded = yaml.load(Path(path).read_text(), Loader=loader) or {}  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(exc)}",
                          "fix the YAML syntax there") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must be a mapping of keys", "see README.md, Configuration")
    return expand_env(loaded)
