"""Many machines: which part of a batch a process runs (options; SLURM job arrays, torchrun,
srun tasks, and their combinations), the per-part batch reports, and merging them."""

import csv
import json
import logging
import os
import subprocess
import sys

import pytest

from engine_helpers import run_cli, sphere_image
from lkm_core import cli
from lkm_core.batch.report import merge_reports
from lkm_core.cli.common import UsageError
from lkm_core.cli.predict import _shard
from lkm_core.cli.root import _parser
from lkm_core.batch.sharding import ShardError, resolve_shard

SLURM = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
         "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_COUNT", "RANK", "WORLD_SIZE", "SLURM_PROCID",
         "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NUM_TASKS")


def slurm(task, lo, hi, step=None, count=None, **more):
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(lo),
           "SLURM_ARRAY_TASK_MAX": str(hi)}
    if step is not None:
        env["SLURM_ARRAY_TASK_STEP"] = str(step)
    if count is not None:
        env["SLURM_ARRAY_TASK_COUNT"] = str(count)
    env.update({k: str(v) for k, v in more.items()})
    return env


@pytest.mark.parametrize("env, parts, part", [
    (slurm(0, 0, 3, count=4), 4, 0),
    (slurm(3, 0, 3, count=4), 4, 3),
    (slurm(1, 1, 8, count=8), 8, 0),              # --array=1-8: task 1 is part 0
    (slurm(8, 1, 8), 8, 7),                       # no COUNT: from MIN/MAX
    (slurm(20, 0, 30, step=10, count=4), 4, 2),   # --array=0-30:10
    (slurm(15, 5, 25, step=5), 5, 2),             # --array=5-25:5
])
def test_slurm_job_array_task_becomes_a_part(env, parts, part):
    shard = resolve_shard(environ=env)
    assert (shard.parts, shard.part, shard.source) == (parts, part, "slurm")
    assert f"SLURM_ARRAY_TASK_ID={env['SLURM_ARRAY_TASK_ID']}" in shard.describe(1, 10)


def test_slurm_count_without_max_and_every_task_covered_once():
    cases = [f"c{i}" for i in range(11)]
    chosen = []
    for task in (3, 5, 7):                                  # --array=3-7:2, COUNT only
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "3",
               "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "3"}
        chosen += resolve_shard(environ=env).select(cases)
    assert sorted(chosen) == sorted(cases) and len(chosen) == len(cases)


@pytest.mark.parametrize("env, words", [
    (slurm(4, 1, 9, count=3), "not a regular range"),      # --array=1,4,9
    (slurm(4, 1, 9, step=2), "not a regular range"),       # 4 is not on the 1-9:2 grid
    (slurm(12, 1, 9), "not a regular range"),
    ({"SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_TASK_MIN"),
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0"}, "SLURM_ARRAY_TASK_COUNT"),
    (slurm("x", 0, 3), "not an integer"),
])
def test_irregular_or_incomplete_slurm_arrays_are_refused(env, words):
    with pytest.raises(ShardError, match=words):
        resolve_shard(environ=env)


def test_options_override_the_environment():
    both = slurm(2, 0, 3, RANK=1, WORLD_SIZE=2)
    explicit = resolve_shard(3, 0, environ=both)
    assert (explicit.parts, explicit.part, explicit.source) == (3, 0, "options")
    assert resolve_shard(environ={}).source == "none"
    assert resolve_shard(environ={}).select([1, 2, 3]) == [1, 2, 3]


def srun(procid, ntasks, **more):
    """What `srun -n NTASKS` sets in each task (besides node and job variables)."""
    env = {"SLURM_PROCID": str(procid), "SLURM_NTASKS": str(ntasks), "SLURM_STEP_ID": "0",
           "SLURM_STEPID": "0", "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_LOCALID": "0",
           "SLURM_JOB_ID": "4242", "SLURM_NPROCS": str(ntasks)}
    env.update({k: str(v) for k, v in more.items()})
    return env


def test_srun_tasks_split_the_batch_and_cover_every_case_once():
    cases = [f"c{i}" for i in range(10)]
    chosen = []
    for task in range(4):
        shard = resolve_shard(environ=srun(task, 4))
        assert (shard.parts, shard.part, shard.source) == (4, task, "srun")
        assert f"SLURM_PROCID={task}" in shard.describe(1, 10)
        chosen += shard.select(cases)
    assert sorted(chosen) == sorted(cases) and len(chosen) == len(cases)


def test_a_batch_scripts_own_ntasks_splits_nothing():
    # sbatch --ntasks=4 sets SLURM_NTASKS in the script, which runs once: not a job step
    env = {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "4242", "SLURM_NPROCS": "4"}
    assert resolve_shard(environ=env).source == "none"
    assert resolve_shard(environ=srun(0, 1)).source == "none"  # one srun task: the whole batch


def test_torchrun_with_one_process_does_not_override_the_array():
    env = slurm(2, 0, 3, RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1)
    shard = resolve_shard(environ=env)
    assert (shard.parts, shard.part, shard.source) == (4, 2, "slurm")
    assert resolve_shard(environ={"RANK": "0", "WORLD_SIZE": "1"}).source == "none"


@pytest.mark.parametrize("inner, source", [
    ({"RANK": None, "WORLD_SIZE": 3}, "slurm+torchrun"),
    ({"SLURM_PROCID": None, "SLURM_STEP_NUM_TASKS": 3, "SLURM_NTASKS": 3, "SLURM_STEP_ID": 0},
     "slurm+srun"),
])
def test_processes_inside_array_tasks_split_each_tasks_part(inner, source):
    """--array=1-2, each task launching 3 processes: 6 parts, every case once."""
    cases = [f"c{i}" for i in range(13)]
    chosen, parts = [], set()
    for task in (1, 2):
        for rank in range(3):
            env = slurm(task, 1, 2, **{k: rank if v is None else v for k, v in inner.items()})
            shard = resolve_shard(environ=env)
            assert shard.source == source and shard.parts == 6
            parts.add(shard.part)
            chosen += shard.select(cases)
    assert parts == set(range(6))
    assert sorted(chosen) == sorted(cases) and len(chosen) == len(cases)


def test_torchrun_world_spans_the_srun_tasks_that_started_it():
    # srun -N 2 --ntasks-per-node 1 torchrun --nproc-per-node 2: the world is 4, global RANK
    env = {**srun(1, 2), "RANK": "3", "WORLD_SIZE": "4"}
    shard = resolve_shard(environ=env)
    assert (shard.parts, shard.part, shard.source) == (4, 3, "torchrun")


@pytest.mark.parametrize("env, words", [
    (srun(4, 4), "SLURM_PROCID=4 does not fit SLURM_STEP_NUM_TASKS=4"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 does not fit WORLD_SIZE=2"),
])
def test_ranks_outside_their_world_are_refused(env, words):
    with pytest.raises(ShardError, match=words):
        resolve_shard(environ=env)


def test_cli_shard_says_which_source_it_used(monkeypatch, caplog):
    for name in SLURM:
        monkeypatch.delenv(name, raising=False)
    for name, value in slurm(2, 1, 3).items():
        monkeypatch.setenv(name, value)
    cases = [(f"c{i}", None) for i in range(7)]
    args = _parser().parse_args(["predict", "x", "-o", "o"])
    monkeypatch.setattr(logging.getLogger("lkm_core"), "propagate", True)   # a CLI run before may have turned it off
    with caplog.at_level("INFO", logger="lkm_core"):
        assert [c for c, _ in _shard(cases, args)] == ["c1", "c4"]
    assert "part 1 of 3 (2 of 7 case(s)), from SLURM_ARRAY_TASK_ID=2 (array 1-3" in caplog.text
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "9")
    with pytest.raises(UsageError, match="not a regular range"):
        _shard(cases, args)


def test_parts_of_a_slurm_array_write_their_reports_and_merge_covers_every_case(tmp_path):
    """Two array tasks (--array=1-2) over three images, then `lkm-segment report merge`."""
    import SimpleITK as sitk

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        image, _ = sphere_image(size=(24, 20, 16), spacing=(3.0, 3.0, 3.0), radius_mm=12 + i,
                                value=300, background=-100)
        sitk.WriteImage(image, str(images / f"case{i}.nii.gz"))
    bundle = tmp_path / "bundle"
    assert run_cli("bundle", "init", "--preset", "3d_small", "--labels", "liver,spleen",
                   "-o", bundle).returncode == 0
    out = tmp_path / "out"
    for task in (1, 2):
        env = {k: v for k, v in os.environ.items() if k not in SLURM}
        env.update(slurm(task, 1, 2, count=2), OMP_NUM_THREADS="1")
        done = subprocess.run([sys.executable, "-m", "lkm_core", "predict", str(images), "-o",
                               str(out), "--model", str(bundle), "--threads", "1", "--format",
                               "nii.gz", "--progress", "json"], capture_output=True, text=True,
                              timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        logs = [e for e in map(json.loads, done.stdout.splitlines()) if e["event"] == "log"]
        said = [e for e in logs if f"running part {task - 1} of 2" in e["message"]]
        assert len(said) == 1 and f"from SLURM_ARRAY_TASK_ID={task}" in said[0]["message"]
    parts = sorted(p.name for p in out.glob("batch_report*.csv"))
    assert parts == ["batch_report_part-0-of-2.csv", "batch_report_part-1-of-2.csv"]

    merged = tmp_path / "all.csv"
    done = run_cli("report", "merge", out, "-o", merged)
    assert done.returncode == 0, done.stderr
    assert "merged 2 report(s)" in done.stdout and "3 done" in done.stdout
    with open(merged, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["case0", "case1", "case2"]
    assert {r["status"] for r in rows} == {"done"} and {r["device"] for r in rows} == {"cpu"}
    assert all(float(r["seconds"]) > 0 for r in rows)
    assert set(rows[0]) >= {"case", "series", "status", "seconds", "device", "liver_ml", "spleen_ml"}
    # the volumes are the JSON summaries' (the report repeats them, it does not recompute them)
    for r in rows:
        summary = json.loads((out / f"{r['case']}.json").read_text(encoding="utf-8"))
        liver = next(lab for lab in summary["labels"] if lab["name"] == "liver")
        assert float(r["liver_ml"]) == pytest.approx(liver["volume_ml"])


def test_merge_refuses_a_file_that_is_not_a_report(tmp_path, capsys):
    (tmp_path / "batch_report_x.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    assert cli.main(["report", "merge", str(tmp_path), "-o", str(tmp_path / "m.csv")]) == 1
    assert "is not a batch report" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists()


def test_merge_unites_structure_columns_and_lists_skipped_objects_once(tmp_path):
    from lkm_core.batch.report import BatchReport
    a = BatchReport(tmp_path / "batch_report_part-0-of-2.csv")
    a.add("MR_s1_x", "1.2.3", "skipped", message="a localiser")
    a.add("b", "b.nii.gz", "done", seconds=1.5, device="cpu", volumes={"liver_ml": 2.0})
    c = BatchReport(tmp_path / "batch_report_part-1-of-2.csv")
    c.add("a", "a.nii.gz", "failed", seconds=0.1, message="bad\nfile")
    c.add("c", "c.nii.gz", "done", seconds=1.0, device="cuda:0", volumes={"spleen_ml": 3.0})
    counts = merge_reports(sorted(tmp_path.glob("*.csv")), tmp_path / "merged.csv")
    assert counts == {"done": 2, "failed": 1, "skipped": 1}
    with open(tmp_path / "merged.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[-2:] == ["liver_ml", "spleen_ml"]
    assert [r["case"] for r in rows] == ["a", "b", "c", "MR_s1_x"]
    assert rows[0]["message"] == "bad file" and rows[2]["liver_ml"] == ""


def test_report_rows_name_the_case_not_its_path_unless_paths_are_kept(tmp_path):
    from lkm_core.batch.report import private_row, scores_from_summary
    path = tmp_path / "Doe_Jane_1957" / "ct.nii.gz"
    message = f"Could not read {path.absolute()} as an image (bad header)."
    assert private_row("ct", path, message, False) == (
        "", "Could not read <ct> as an image (bad header).")
    assert private_row("ct", path, message, True) == (str(path), message)
    # the review scores of a summary, a structure not found without a score
    summary = {"confidence": {"case_score": 0.41, "absent": ["gallbladder"], "structures": {
        "liver": {"found": True, "score": 0.41}, "gallbladder": {"found": False, "score": None}}}}
    assert scores_from_summary(summary) == {"case_score": "0.4100", "absent": "gallbladder",
                                            "liver_score": "0.4100", "gallbladder_score": ""}
    assert scores_from_summary({"labels": []}) == {}
