"""The small JSON files checkpoints carry (config.json, tokenizer and preprocessor configs), with one-line errors."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping


def read_json(path: str) -> dict:
    """A JSON object from `path`; FileNotFoundError / ValueError naming the file otherwise."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object")
    return value


def json_object(parent: Mapping, key: str, where: str) -> Mapping:
    """`parent[key]`, a nested JSON object (`{}` when it is absent or null); a one-line ValueError naming
    `where` when it is something else."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {key} is not a JSON object")
    return value


def special_token(config: Mapping, key: str, default: str, where: str) -> str:
    """The special token `config[key]` names, as a tokenizer_config.json or special_tokens_map.json stores it
    (a string or an AddedToken object with its `content`); `default` when it is absent or null; a one-line
    ValueError naming `where` for anything else."""
    value = config.get(key)
    if value is None:
        return default
    token = value.get("content") if isinstance(value, Mapping) else value
    if not isinstance(token, str) or not token:
        raise ValueError(f"{where}: {key} {value!r} is not a token")
    return token


def write_json(path: str, value: dict) -> None:
    """`value` as indented JSON with a final newline."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
