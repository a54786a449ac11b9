"""config/README.md's tables of config keys, rendered from the schema: each key's type, default and description.

A setting is declared once, in the schema (a default lives nowhere else); the README keeps the prose that a table
cannot hold, and between markers the tables that this module writes:

    <!-- keys: model data -->
    (every key of `model` and `data`)
    <!-- end keys -->

A marker names config keys (a section, or one key) or a shared definition (`$defs.packaged_file`). Rewrite the
tables with `python -m prefselect.schema_docs config/README.md`; tests/test_config_docs.py fails while they differ.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import yaml

from .config import SCHEMA_PATH

MARKER = re.compile(r"(?P<start><!-- keys: (?P<paths>[^>]*?) -->\n).*?(?P<end><!-- end keys -->)", re.S)
ANY_NAME = "<name>"  # in a key, a name the user chooses (a selector's)
HEADER = "| key | type | default | meaning |\n|---|---|---|---|"
COMMAND = "python -m prefselect.schema_docs config/README.md"


class Row(NamedTuple):
    key: str
    type: str
    default: str
    description: str


def code(value) -> str:
    """A value as the user writes it in the config: YAML, inline."""
    text = (
        value
        if isinstance(value, str)
        else yaml.safe_dump(value, default_flow_style=True, width=sys.maxsize, sort_keys=False)
    )
    return "`" + text.removesuffix("\n...\n").strip() + "`"  # a scalar's YAML document ends in `...`


def type_of(node: dict) -> str:
    if "$ref" in node:  # a shared definition has a table of its own, named after it
        return node["$ref"].rsplit("/", 1)[-1].replace("_", " ")
    if "enum" in node:
        return ", ".join(code(value) for value in node["enum"])
    if "oneOf" in node:
        return " or ".join(type_of(option) for option in node["oneOf"])
    types = node["type"] if isinstance(node["type"], list) else [node["type"]]
    return " or ".join(f"list of {type_of(node['items'])}" if name == "array" else name for name in types)


def defaults_by_case(node: dict) -> dict[str, list[tuple[str, object]]]:
    """The defaults that the schema's `allOf` if/then cases fill in (a selector's by kind): {key: [(case, default)]}."""
    found: dict[str, list[tuple[str, object]]] = {}
    for case in node.get("allOf", []):
        ((on, condition),) = case["if"]["properties"].items()
        for name, then in case["then"]["properties"].items():
            found.setdefault(name, []).append((f"{on} `{condition['const']}`", then["default"]))
    return found


def default_of(node: dict, required: bool, by_case: list[tuple[str, object]]) -> str:
    if required:
        return "required"
    shown = [code(node["default"])] if "default" in node else []
    shown += [f"{code(value)} ({case})" for case, value in by_case]
    return ", ".join(shown) or "–"


def rows(node: dict, key: str, required: bool = False, by_case: list | None = None) -> Iterator[Row]:
    """The row of `key`, unless it only groups keys that have rows of their own, then the rows of its keys."""
    inside = node.get("properties", {})
    if key and ("description" in node or not inside):  # a shared definition's own description is no key's
        yield Row(key, type_of(node), default_of(node, required, by_case or []), node.get("description", ""))
    entries = node.get("additionalProperties")  # false, or the schema of every entry of a user-named mapping
    if isinstance(entries, dict) and "properties" in entries:
        yield from rows(entries, f"{key}.{ANY_NAME}")
    cases = defaults_by_case(node)
    for name, sub in inside.items():
        yield from rows(sub, f"{key}.{name}".lstrip("."), name in node.get("required", []), cases.get(name))


def section(schema: dict, path: str) -> tuple[dict, str]:
    """The schema node that a marker names, and the key its rows start from: a shared definition
    (`$defs.<name>`) is the value of several keys, so its keys are shown without one."""
    if path.startswith("$defs."):
        return schema["$defs"][path.removeprefix("$defs.")], ""
    node = schema
    for part in path.split("."):
        node = node["properties"][part]
    return node, path


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def table(schema: dict, paths: list[str]) -> str:
    lines = [HEADER]
    for path in paths:
        for row in rows(*section(schema, path)):
            key = f"`{row.key}`"
            lines.append(f"| {key} | {cell(row.type)} | {cell(row.default)} | {cell(row.description)} |")
    return "\n".join(lines)


def rewrite(text: str, schema: dict) -> str:
    """`text` with the table between each pair of markers rendered anew; the prose around them is kept."""

    def render(match: re.Match) -> str:
        return f"{match['start']}\n{table(schema, match['paths'].split())}\n\n{match['end']}"

    return MARKER.sub(render, text)


def marker_paths(text: str) -> list[str]:
    """Every key or definition that a table of `text` documents."""
    return [path for match in MARKER.finditer(text) for path in match["paths"].split()]


def main(argv: list[str] | None = None) -> None:
    (readme,) = sys.argv[1:] if argv is None else argv
    path = Path(readme)
    old = path.read_text()
    new = rewrite(old, yaml.safe_load(SCHEMA_PATH.read_text()))
    path.write_text(new)
    print(f"{readme}: {'tables rewritten from the schema' if new != old else 'tables already match the schema'}")


if __name__ == "__main__":
    main()
