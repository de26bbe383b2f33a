"""YAML from users: safe tags only, string keys only, and a key written twice is an error, not a silent win."""

from __future__ import annotations

from typing import Any

import yaml


class YamlInputError(ValueError):
    """YAML that does not parse, or a mapping with duplicate or non-string keys: the message says where."""


class _StrictLoader(yaml.SafeLoader):
    pass


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    written: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise YamlInputError(f"line {line}: key {key!r} is a {type(key).__name__}; keys must be names (strings)")
        if key in written:
            raise YamlInputError(f"line {line}: key '{key}' appears twice in one mapping; keep one")
        written.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text``; ``source`` (a path, ``--set key``) goes into every error."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except YamlInputError as err:
        raise YamlInputError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        raise YamlInputError(f"{source} is not valid YAML: {err}") from None
