"""prefselect as users deploy it: an installed package (not a checkout) that carries its schema, and the workflow
as a `module` of another Snakefile in another folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from test_workflow import jobs_of

REPO = Path(__file__).resolve().parents[1]
MODULE_SNAKEFILE = f'''configfile: "config.yaml"


module prefselect:
    snakefile:
        "{REPO / "Snakefile"}"
    config:
        config


use rule * from prefselect as prefselect_*


rule all:
    default_target: True
    input:
        rules.prefselect_all.input,
'''


def test_an_installed_package_validates_configs_with_the_schema_it_carries(tmp_path):
    source = tmp_path / "source"  # a copy, so that building leaves nothing in the checkout
    shutil.copytree(REPO / "workflow" / "prefselect", source / "workflow" / "prefselect",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                            "-w", str(tmp_path / "wheel")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("prefselect-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                              str(tmp_path / "site"), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    check = ("import prefselect, prefselect.config as c; print(prefselect.__file__); "
             "print(c.validate({'model': {'path': 'org/m'}, 'data': {'source': 'p.jsonl'}})['training']['save_steps']); "
             "print(c.judge_settings('vader')['batch_size'])")
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    location, save_steps, batch_size = run.stdout.split()
    assert location.startswith(str(tmp_path / "site")) and not location.startswith(str(REPO))
    assert (save_steps, batch_size) == ("200", "16")  # the schema's defaults, read from the installed package


def test_the_workflow_runs_as_a_module_of_another_snakefile(tmp_path):
    (tmp_path / "Snakefile").write_text(MODULE_SNAKEFILE)
    (tmp_path / "config.yaml").write_text((REPO / "tests/e2e/config.yaml").read_text())
    command = [sys.executable, "-m", "snakemake", "--directory", str(tmp_path), "--cores", "1"]
    plan = subprocess.run([*command, "-n"], capture_output=True, text=True, cwd=tmp_path)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    planned = jobs_of(plan.stdout)
    assert {"prefselect_prepare", "prefselect_warmup", "prefselect_tournament", "prefselect_evaluate"} <= set(planned)
    # Its first job for real: the demo's snippets, downloaded from PyPI into the user's folder.
    run = subprocess.run([*command, "results/demo/snippets.parquet"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "results/demo/snippets.parquet").is_file()


def test_the_workflow_is_lint_clean_and_formatted():
    """`snakemake --lint` (the workflow catalog's check) and `snakefmt --check` on the Snakefile and every rule file."""
    lint = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], capture_output=True, text=True, cwd=REPO)
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    rules = sorted(str(p) for p in (REPO / "workflow/rules").glob("*.smk"))
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", str(REPO / "Snakefile"), *rules],
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
