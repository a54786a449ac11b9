"""Where a rule environment installs prefselect from: the source of the workflow that runs."""

from __future__ import annotations


def package_source(basedir) -> str:
    """What `pip install` takes for the prefselect of the workflow whose Snakefile lies in `basedir`.

    `basedir` is Snakemake's source file of that folder: a local checkout (its folder, which holds pyproject.toml)
    or a module fetched from a git host such as GitHub or GitLab, as snakedeploy writes it (that repository at
    the same tag or commit).
    """
    if basedir.is_local:
        return basedir.get_path_or_uri(secret_free=True)
    if hasattr(basedir, "repo") and hasattr(basedir, "ref"):
        return f"prefselect @ git+https://{basedir.host}/{basedir.repo}@{basedir.ref}"
    raise ValueError(
        f"cannot install prefselect from {basedir}: use a local checkout or a git host (github, gitlab), "
        "or install prefselect into the rule environment yourself and set PREFSELECT_SOURCE"
    )
