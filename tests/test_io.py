"""Outputs appear under their name only once complete: a write that fails leaves the previous file, or none, and a
job killed inside its write leaves a temporary file that its rerun removes."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from prefselect import provenance
from prefselect.cli import main
from prefselect.io import write_parquet

REPO = Path(__file__).resolve().parents[1]
# Loaded by the killed job's interpreter (sitecustomize): when the job is about to rename its complete temporary
# file onto the output, the worst moment for a kill, it says so and waits to be killed.
PAUSE_AT_RENAME = """
import os, sys, time
_replace = os.replace
def _pause(src, dst, *args, **kwargs):
    print(f"renaming {src} -> {dst}", flush=True)
    time.sleep(600)
os.replace = _pause
"""


def test_a_failed_write_leaves_no_partial_file_and_keeps_the_previous_one(tmp_path):
    path = tmp_path / "scores.parquet"
    unwritable = pd.DataFrame({"id": ["a", "b"], "value": [1.0, object()]})  # pyarrow cannot convert an object
    with pytest.raises(pa.ArrowInvalid):
        write_parquet(unwritable, path)
    assert list(tmp_path.iterdir()) == []
    write_parquet(pd.DataFrame({"id": ["a"], "value": [1.0]}), path)
    with pytest.raises(pa.ArrowInvalid):
        write_parquet(unwritable, path)
    assert list(tmp_path.iterdir()) == [path]
    assert pd.read_parquet(path)["value"].tolist() == [1.0]


def test_a_job_killed_inside_its_write_leaves_no_output_and_its_rerun_removes_the_temporary(tmp_path):
    """A real step (merging score shards), killed with SIGKILL between writing its output and renaming it."""
    ids = [f"p{i}" for i in range(2000)]
    pd.DataFrame({"id": ids}).to_parquet(tmp_path / "train.parquet")
    shards = []
    for i, part in enumerate((ids[:1200], ids[1200:])):
        shards.append(str(tmp_path / f"{i}-of-2.parquet"))
        pd.DataFrame({"id": part, "irm": [len(p) * 0.1 for p in part]}).to_parquet(shards[-1])
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PAUSE_AT_RENAME)
    out = tmp_path / "out" / "scores.parquet"
    argv = ["merge-scores", "--shards", *shards, "--data", str(tmp_path / "train.parquet"), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{REPO / 'workflow'}"}
    process = subprocess.Popen([sys.executable, "-m", "prefselect", *argv], stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    assert line.startswith("renaming ") and line.rstrip().endswith(f" -> {out}"), line
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    (temporary,) = out.parent.iterdir()  # the complete file, never renamed
    assert temporary.name.startswith(".scores.parquet.") and not out.exists()
    (out.parent / ".scores.parquet.bak").write_text("not a temporary of this output")  # kept: no mkstemp name

    main(argv)  # the rerun
    assert sorted(p.name for p in out.parent.iterdir()) == [".scores.parquet.bak", "scores.parquet"]
    main([*argv[:-1], str(tmp_path / "uninterrupted.parquet")])
    pd.testing.assert_frame_equal(
        pd.read_parquet(out), pd.read_parquet(tmp_path / "uninterrupted.parquet"), check_exact=True
    )
    assert provenance.read(out) == provenance.read(tmp_path / "uninterrupted.parquet")
