"""A setting declared once: config/README.md's key tables are the schema's, and the settings objects have the
schema's keys."""

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import get_type_hints

import pytest
import yaml

from prefselect import schema_docs
from prefselect.config import SCHEMA_PATH
from prefselect.settings import Settings

README = Path(__file__).parents[1] / "config" / "README.md"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())

# Keys whose value a step reads as a plain dict, as the schema defines it, rather than as a settings object.
PLAIN_DICTS = {
    "model.gguf": "a packaged file, handed whole to the fetch step",
    "data.package": "a packaged file, handed whole to the fetch step",
    "training.lora": "null or PEFT's LoraConfig arguments (lora.peft_config), handed whole to peft",
    "evaluation.judge": "a judge's keys depend on its kind; judges.py reads them",
    "selectors": "user-named selectors, whose keys depend on their kind",
}


def test_the_readme_tables_are_the_schemas():
    text = README.read_text()
    assert schema_docs.rewrite(text, SCHEMA) == text, (
        f"config/README.md's key tables differ from the schema: run `{schema_docs.COMMAND}`"
    )


def test_the_readme_has_a_table_of_every_key_and_every_row_a_description():
    documented = {path.split(".")[0] for path in schema_docs.marker_paths(README.read_text())}
    assert documented == set(SCHEMA["properties"]) | {"$defs"}
    for path in schema_docs.marker_paths(README.read_text()):
        assert all(row.description for row in schema_docs.rows(*schema_docs.section(SCHEMA, path))), path


def test_a_table_shows_each_key_its_type_and_its_default_by_kind():
    table = schema_docs.table(SCHEMA, ["training", "selectors"])
    assert "| `training.lora.r` | integer | `16` |" in table
    assert "| `training.lora.target_modules` | string or list of string | `all-linear` |" in table
    assert "| `selectors.<name>.fallback` | string or null | `full` (kind `auto`) |" in table
    assert "| `selectors.<name>.final.label_smoothing` | number | `0` |" in table
    # A key that only groups keys of its own, with no description, gets no row of its own.
    assert "| `training` |" not in table


def test_rewriting_keeps_the_prose_and_renders_only_between_markers():
    text = "intro\n<!-- keys: method -->\nstale\n<!-- end keys -->\noutro\n"
    rewritten = schema_docs.rewrite(text, SCHEMA)
    assert rewritten.startswith("intro\n<!-- keys: method -->\n") and rewritten.endswith("<!-- end keys -->\noutro\n")
    assert "stale" not in rewritten and "| `method.beta` | number | `0.1` |" in rewritten
    assert schema_docs.rewrite(rewritten, SCHEMA) == rewritten


def has_keys_of_its_own(node: dict) -> bool:
    return "properties" in node or "$ref" in node or isinstance(node.get("additionalProperties"), dict)


def schema_keys(node: dict, at: str) -> set[str]:
    return {f"{at}{name}" for name in node.get("properties", {})}


def section_keys(cls, at: str = "") -> set[str]:
    return {f"{at}{field.name}" for field in fields(cls)}


def mismatches(cls, node: dict, at: str = "") -> list[str]:
    """Keys the schema has and the settings object `cls` has not, or the other way, down every section."""
    found = [
        f"{key}: in the schema, not in settings.{cls.__name__}" for key in schema_keys(node, at) - section_keys(cls, at)
    ]
    found += [
        f"{key}: in settings.{cls.__name__}, not in the schema" for key in section_keys(cls, at) - schema_keys(node, at)
    ]
    types = get_type_hints(cls)
    for field in fields(cls):
        key, inner = f"{at}{field.name}", node.get("properties", {}).get(field.name)
        if inner is not None and is_dataclass(types[field.name]):
            found += mismatches(types[field.name], inner, f"{key}.")
        elif inner is not None and has_keys_of_its_own(inner) and key not in PLAIN_DICTS:
            found.append(f"{key}: keys of its own in the schema, a plain value in settings (or list it in PLAIN_DICTS)")
    return found


def test_the_settings_objects_have_the_schemas_keys():
    assert not mismatches(Settings, SCHEMA)


def test_a_key_in_one_place_only_is_named():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    schema["properties"]["training"]["properties"]["warmup_steps"] = {"type": "integer", "default": 0}
    del schema["properties"]["scoring"]["properties"]["shards"]
    assert sorted(mismatches(Settings, schema)) == [
        "scoring.shards: in settings.Scoring, not in the schema",
        "training.warmup_steps: in the schema, not in settings.Training",
    ]


@pytest.mark.parametrize("key", sorted(PLAIN_DICTS))
def test_each_plain_dict_exemption_is_a_key_of_both(key):
    *parents, last = key.split(".")
    node, cls = SCHEMA, Settings
    for part in parents:
        node, cls = node["properties"][part], get_type_hints(cls)[part]
    assert last in node["properties"] and last in {field.name for field in fields(cls)}
