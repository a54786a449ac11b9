"""prefselect as users deploy it: an installed package (not a checkout) that carries its schema, the rule
environment's post-deploy script that installs it, and the workflow as a `module` of another Snakefile in another
folder, whose jobs import prefselect from their environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from snakemake.sourcecache import GithubFile, GitlabFile, LocalSourceFile
from test_workflow import jobs_of

from prefselect.deploy import package_source

REPO = Path(__file__).resolve().parents[1]
MODULE_SNAKEFILE = """configfile: "config.yaml"


module prefselect:
    snakefile:
        "{workflow}/Snakefile"
    config:
        config


use rule * from prefselect as prefselect_*


rule all:
    default_target: True
    input:
        rules.prefselect_all.input,
"""


def build_wheel(tmp_path: Path) -> Path:
    """A wheel of prefselect, built from a copy so that building leaves nothing in the checkout."""
    source = tmp_path / "source"
    shutil.copytree(
        REPO / "workflow" / "prefselect",
        source / "workflow" / "prefselect",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(source),
            "-w",
            str(tmp_path / "wheel"),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("prefselect-*.whl")
    return wheel


def test_an_installed_package_validates_configs_with_the_schema_it_carries(tmp_path):
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(tmp_path / "site"),
            str(build_wheel(tmp_path)),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    check = (
        "import prefselect, prefselect.config as c; print(prefselect.__file__); "
        "print(c.validate({'model': {'path': 'org/m'}, 'data': {'source': 'p.jsonl'}})['training']['save_steps']); "
        "print(c.judge_settings('vader')['batch_size'])"
    )
    run = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    location, save_steps, batch_size = run.stdout.split()
    assert location.startswith(str(tmp_path / "site")) and not location.startswith(str(REPO))
    assert (save_steps, batch_size) == ("200", "16")  # the schema's defaults, read from the installed package


def test_the_source_of_the_package_is_where_the_workflow_came_from():
    assert package_source(LocalSourceFile("/srv/prefselect/Snakefile").get_basedir()) == "/srv/prefselect"
    github = GithubFile(repo="lab/prefselect", path="Snakefile", tag="v0.1.0")  # as snakedeploy writes it
    assert package_source(github.get_basedir()) == "prefselect @ git+https://github.com/lab/prefselect@v0.1.0"
    gitlab = GitlabFile(repo="lab/prefselect", path="Snakefile", commit="0a1b2c3")
    assert package_source(gitlab.get_basedir()) == "prefselect @ git+https://gitlab.com/lab/prefselect@0a1b2c3"


def test_the_post_deploy_script_installs_prefselect_into_the_rule_environment(tmp_path):
    """What Snakemake runs in a new conda environment (envs/prefselect.post-deploy.sh), here in a bare venv: from a
    checkout an editable install, from anything else (a wheel here, a git URL for a module) a plain one."""
    wheel = build_wheel(tmp_path)
    for name, source, expected in (
        ("checkout-env", tmp_path / "source", tmp_path / "source" / "workflow"),
        ("wheel-env", wheel, tmp_path / "wheel-env" / "lib"),
    ):
        env = tmp_path / name
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        environ = {"PATH": f"{env / 'bin'}:/usr/bin:/bin", "PREFSELECT_SOURCE": str(source), "HOME": str(tmp_path)}
        deploy = subprocess.run(
            ["bash", str(REPO / "envs" / "prefselect.post-deploy.sh")], capture_output=True, text=True, env=environ
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        find = "import importlib.util as u; print(u.find_spec('prefselect.config').origin)"
        origin = subprocess.run([env / "bin" / "python", "-c", find], capture_output=True, text=True, cwd=tmp_path)
        assert origin.stdout.startswith(str(expected)), (name, origin.stdout, origin.stderr)
    unset = subprocess.run(
        ["bash", str(REPO / "envs" / "prefselect.post-deploy.sh")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert unset.returncode != 0 and "PREFSELECT_SOURCE" in unset.stderr


def test_the_workflow_runs_as_a_module_of_another_snakefile(tmp_path):
    """The workflow's files without the package beside them, as a deployed module: planning and jobs import
    prefselect from the environment."""
    workflow = tmp_path / "prefselect-workflow"
    shutil.copytree(REPO / "workflow", workflow / "workflow", ignore=shutil.ignore_patterns("prefselect*"))
    for name in ("Snakefile", "config", "envs"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, workflow / name)
    project = tmp_path / "project"
    project.mkdir()
    (project / "Snakefile").write_text(MODULE_SNAKEFILE.format(workflow=workflow))
    (project / "config.yaml").write_text((REPO / "tests/e2e/config.yaml").read_text())
    command = [sys.executable, "-m", "snakemake", "--directory", str(project), "--cores", "1"]
    plan = subprocess.run([*command, "-n"], capture_output=True, text=True, cwd=project)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    planned = jobs_of(plan.stdout)
    assert {"prefselect_prepare", "prefselect_warmup", "prefselect_tournament", "prefselect_evaluate"} <= set(planned)
    # Its first job for real: the demo's snippets, downloaded from PyPI into the user's folder.
    run = subprocess.run([*command, "results/demo/snippets.parquet"], capture_output=True, text=True, cwd=project)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (project / "results/demo/snippets.parquet").is_file()


def test_the_workflow_is_lint_clean_and_formatted():
    """`snakemake --lint` (the workflow catalog's check) and `snakefmt --check` on the Snakefile and every rule file."""
    lint = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], capture_output=True, text=True, cwd=REPO)
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    rules = sorted(str(p) for p in (REPO / "workflow/rules").glob("*.smk"))
    fmt = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", str(REPO / "Snakefile"), *rules], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_the_python_code_is_ruff_clean_and_formatted():
    """`ruff check` and `ruff format --check` (settings in pyproject.toml) on the package, tests and benchmarks."""
    paths = [str(REPO / p) for p in ("workflow/prefselect", "tests", "benchmarks")]
    for check in (["check"], ["format", "--check"]):
        ruff = subprocess.run([sys.executable, "-m", "ruff", *check, *paths], capture_output=True, text=True, cwd=REPO)
        assert ruff.returncode == 0, ruff.stdout + ruff.stderr


def test_the_command_line_answers_help_without_loading_torch():
    """`prefselect --help` and argument errors come before any model library is imported (the benchmark script
    times it: `prefselect --help`)."""
    check = (
        "import sys, runpy; sys.argv = ['prefselect', '--help']\n"
        "try:\n    runpy.run_module('prefselect', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert run.returncode == 0 and "usage: prefselect" in run.stdout, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"
