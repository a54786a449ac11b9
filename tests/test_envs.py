"""The rules' conda environments, checked offline: their shape, every spec parses, pins agree with pyproject.toml."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

rattler = pytest.importorskip("rattler", reason="py-rattler (the test extra) parses conda match specs")

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
DRIVER_ONLY = {"snakemake"}  # runs the workflow; no rule imports it
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name


def env_specs(path: Path) -> tuple[dict[str, str], str]:
    """{name: version spec} of every conda and pip dependency of an environment file, and its python spec."""
    env = yaml.safe_load(path.read_text())
    assert set(env) <= {"name", "channels", "dependencies"} and env["channels"], path.name
    assert all(isinstance(channel, str) for channel in env["channels"]), path.name
    specs, python = {}, None
    for dependency in env["dependencies"]:
        if isinstance(dependency, dict):
            assert list(dependency) == ["pip"], f"{path.name}: {dependency}"
            for line in dependency["pip"]:
                requirement = Requirement(line)
                specs[canonicalize_name(requirement.name)] = str(requirement.specifier)
            continue
        match = rattler.MatchSpec(dependency, strict=True)
        name = match.name.normalized
        version = str(match.version) if match.version else ""
        if name == "python":
            python = version
        else:
            specs[name] = version
    return specs, python


def test_every_rule_environment_exists_and_is_used():
    rules = "".join(path.read_text() for path in (REPO / "workflow" / "rules").glob("*.smk"))
    used = set(re.findall(r'"\.\./\.\./envs/([^"]+\.yaml)"', rules))
    assert used and used == {path.name for path in ENVS}


@pytest.mark.parametrize("path", ENVS, ids=lambda path: path.name)
def test_environment_pins_agree_with_pyproject(path):
    specs, python = env_specs(path)
    assert python and Version(python.rstrip(".*")) in SpecifierSet(PYPROJECT["requires-python"])
    extras = PYPROJECT["optional-dependencies"]
    wanted = PYPROJECT["dependencies"] + extras["deepspeed"] + extras["lora"]
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name in DRIVER_ONLY:
            continue
        env_name = CONDA_NAMES.get(name, name)
        assert env_name in specs, f"{path.name} lacks {line}"
        pinned = specs[env_name]
        assert SpecifierSet(pinned) == requirement.specifier, f"{path.name}: {env_name} {pinned} vs {line}"
