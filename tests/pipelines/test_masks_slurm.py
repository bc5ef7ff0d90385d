"""The mask stage on SLURM (``masks.cluster: slurm``): the missing shards as one job array
on the local two-node cluster, the store byte for byte a local run's; a cancelled or failed
task costs only its shards; bad settings refused before submission; through `dvc repro`.
The first tests need no cluster: which shards are missing, settings, task states."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from detlab.methods.datasets import open_dataset
from detlab.methods.datasets.mask_store import write_shard
from detlab.pipelines.masks import generate
from detlab.pipelines.masks.shards import missing
from detlab.pipelines.masks.slurm import ArrayTaskError, MaskArray, cluster_settings

SHARD = 2  # tiny_shapes: 12 train images -> 6 shards; 2 a task -> 3 array tasks


def files(root: Path) -> dict[str, bytes]:
    """Every file of a store (shards, index, meta with its fingerprint, run state)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def settings(tmp_path: Path, **extra) -> dict:
    return {"log_dir": str(tmp_path / "logs"), "time_min": 10, **extra}


# ------------------------------------------------------------------------- no cluster


def test_only_missing_shards_are_selected(tmp_path):
    folder = tmp_path / "shards"
    for k in (0, 2):
        write_shard(folder, k, "boxes", [])
    (folder / "shard-00003.bin").write_bytes(b"half")  # data without offsets: not done
    assert missing(9, 2, folder) == [(1, 2, 4, str(folder)), (3, 6, 8, str(folder)),
                                     (4, 8, 9, str(folder))]  # fmt: skip


def test_settings_name_the_bad_key_and_keep_the_profiles_values():
    cluster, parallel, per_task = cluster_settings({"partition": None, "mem_gb": 2})
    assert cluster.partition is None and cluster.mem_gb == 2 and cluster.cpus_per_task == 1
    assert (parallel, per_task) == (16, 2)
    with pytest.raises(ValueError, match=r"unknown keys \['nodes'\]"):
        cluster_settings({"nodes": 2})  # a task is one process on one node
    with pytest.raises(ValueError, match="masks.slurm.shards_per_task=0"):
        cluster_settings({"shards_per_task": 0})
    with pytest.raises(ValueError, match="masks.slurm.cpus_per_task: Value 'x'"):
        cluster_settings({"cpus_per_task": "x"})


def test_a_task_neither_queued_nor_recorded_counts_as_cancelled(monkeypatch):
    """scancel of a task still pending leaves no trace in squeue or sacct."""
    from detlab.platform import slurm_query as launch
    from detlab.platform.progress import Progress

    polls = iter([{"7_0": "RUNNING", "7_1": "PENDING"}] + [{"7_0": "COMPLETED"}] * 5)
    monkeypatch.setattr(launch, "array_states", lambda job_id, cluster: next(polls))
    array = MaskArray.__new__(MaskArray)
    array.cluster, array.poll_s = None, 0.0
    jobs = [type("J", (), {"job_id": f"7_{i}"}) for i in range(2)]
    bar = Progress(4, "t", enabled=False)
    assert array.follow("7", jobs, [], bar) == ["COMPLETED", "CANCELLED"]


def test_a_stopped_task_ends_at_a_shard_boundary_and_resumes_past_its_shards(tiny_shapes, tmp_path):
    """USR2 (time limit) or TERM (preemption) in a task: it ends after the shard in
    progress and says it stopped (the platform's job then requeues it); the requeued task
    skips what it wrote."""
    from detlab.pipelines.masks.generators import DEFAULTS
    from detlab.pipelines.masks.slurm import MaskShardsJob

    folder = tmp_path / "shards"
    jobs = missing(12, SHARD, folder)[:3]
    init_args = ("grid", DEFAULTS["grid"], str(tiny_shapes), "train", "auto")
    calls = iter([False, True])  # asked before each shard: the second ask says stop
    job = MaskShardsJob()
    result = job.run(None, lambda: next(calls), init_args, jobs, 1)
    assert job.stopped(result) and result["left"] == 2
    assert [k for k, *_ in missing(12, SHARD, folder)] == [1, 2, 3, 4, 5]
    result = job.run(None, lambda: False, init_args, jobs, 1)
    assert not job.stopped(result) and [k for k, *_ in missing(12, SHARD, folder)] == [3, 4, 5]


# ---------------------------------------------------------------------- local cluster


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_store_is_bit_identical_to_a_local_run(tiny_shapes, tmp_path):
    t0 = time.time()
    local = generate("fh", tiny_shapes, tmp_path / "local", shard_size=SHARD, progress=False)
    t1 = time.time()
    on_slurm = generate("fh", tiny_shapes, tmp_path / "slurm", shard_size=SHARD,
                        progress=False, cluster="slurm", slurm=settings(tmp_path))  # fmt: skip
    t2 = time.time()
    assert files(on_slurm) == files(local)  # every shard, index.json, meta.json (fingerprint)
    logs = " ".join(p.read_text() for p in (tmp_path / "logs").rglob("*_log.out"))
    assert logs.count("2 written, 0 found done") == 3  # three tasks of two shards
    assert "on node1" in logs  # tasks ran on the cluster's nodes
    print(f"FH, 12 images of 64 px, 6 shards: local {t1 - t0:.1f} s, SLURM array of 3 tasks "
          f"{t2 - t1:.1f} s from submission to the finalised store")  # fmt: skip


def stage(tmp_path: Path, data: Path, out: Path, slurm: dict) -> subprocess.Popen:
    """The stage's command with masks.cluster slurm, its output line by line."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"masks": {"slurm": slurm}}))
    cmd = [sys.executable, "-m", "detlab.pipelines.masks.run", "--method", "fh", "--data",
           str(data), "--out", str(out), "--shard-size", str(SHARD), "--cluster", "slurm",
           "--params-file", str(params)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def submitted(proc: subprocess.Popen) -> str:
    """The job array's id, from the line the stage prints once it has submitted."""
    for line in proc.stdout:
        if "SLURM job array" in line:
            return line.split("SLURM job array ")[1].split(":")[0]
    pytest.fail(f"the stage submitted nothing: {proc.stderr.read()[-2000:]}")


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.faults
def test_a_cancelled_task_costs_only_its_shards(tiny_shapes, tmp_path):
    """Tasks run one at a time; the last is cancelled while it waits. The stage fails in one
    line naming it, its shards and its log; the rerun submits only its two shards."""
    local = generate("fh", tiny_shapes, tmp_path / "local", shard_size=SHARD, progress=False)
    out = tmp_path / "fh"
    proc = stage(tmp_path, tiny_shapes, out, settings(tmp_path, array_parallelism=1))
    array = submitted(proc)
    subprocess.run(["scancel", f"{array}_2"], check=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-2000:]
    (error,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert f"task {array}_2 CANCELLED (shards 4-5, log {tmp_path}/logs/masks-fh/" in error
    assert "the 4 shards written are kept: rerun to compute the 2 missing" in error
    assert not (out / "meta.json").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    assert len(kept) == 8  # shards 0-3, data and offsets

    proc = stage(tmp_path, tiny_shapes, out, settings(tmp_path))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    assert "1 task(s) for 2 shard(s)" in stdout
    after = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    redone = sorted(name for name in after if kept.get(name) != after[name])
    assert redone == ["shard-00004.bin", "shard-00004.off.npy", "shard-00005.bin",
                      "shard-00005.off.npy"]  # fmt: skip
    assert files(out) == files(local)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.faults
def test_a_failed_task_names_its_log_and_the_rerun_finishes(tiny_shapes, tmp_path):
    """An image of the last task's last shard disappears after submission: that task FAILS
    (its log holds the traceback) after writing its first shard; every shard written stays;
    the image back, a rerun computes the one missing shard."""
    data = Path(shutil.copytree(tiny_shapes, tmp_path / "shapes"))
    image = open_dataset(data, "train").records[11].path  # shard 5: the third task
    out = tmp_path / "fh"
    proc = stage(tmp_path, data, out, settings(tmp_path, array_parallelism=1))
    array = submitted(proc)
    image.rename(image.with_suffix(".away"))
    stdout, stderr = proc.communicate(timeout=300)
    image.with_suffix(".away").rename(image)
    assert proc.returncode == 1, stderr[-2000:]
    error = stderr.splitlines()[-1]
    assert error.startswith("error: masks-fh: 1 of 3 tasks") and f"task {array}_2 FAILED" in error
    log = Path(error.split("log ")[1].split(")")[0])
    assert log.exists() and image.name in log.read_text()
    assert "the 5 shards written are kept: rerun to compute the 1 missing" in error
    assert sorted(p.name for p in (out / "shards").glob("*.off.npy")) == [
        f"shard-0000{k}.off.npy" for k in range(5)
    ]  # 0-3, and 4: the failed task wrote it before it reached the missing image
    proc = stage(tmp_path, data, out, settings(tmp_path))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    assert files(out) == files(generate("fh", data, tmp_path / "ref", shard_size=SHARD,
                                        progress=False))  # fmt: skip


@pytest.mark.slurm
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"partition": "gpu"}, "masks.slurm.partition=gpu does not exist; partitions: ['debug']"),
        ({"cpus_per_task": 8}, "masks.slurm.cpus_per_task=8 but the nodes of debug have at most 2"),
        ({"time_min": 1000}, "masks.slurm.time_min=1000 exceeds partition debug's MaxTime"),
    ],
)
def test_impossible_settings_are_refused_before_anything_is_submitted(
    tiny_shapes, tmp_path, extra, message
):
    known = controller_jobs()
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        generate("fh", tiny_shapes, tmp_path / "fh", progress=False, cluster="slurm",
                 slurm=settings(tmp_path, **extra))  # fmt: skip
    assert not (tmp_path / "fh").exists()
    assert controller_jobs() - known == set()  # no job


def controller_jobs() -> set[str]:
    """The job ids slurmctld holds (every job for MinJobAge after it ends): it knows a
    submission at once, where accounting (sacct) records earlier tests' jobs late."""
    out = subprocess.run(["scontrol", "-o", "show", "jobs"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return set(re.findall(r"^JobId=(\d+)", out, flags=re.M))


@pytest.mark.slurm
@pytest.mark.dvc
@pytest.mark.slow
def test_dvc_repro_of_a_mask_set_on_slurm(tmp_path, tiny_params):
    """`dvc repro masks@fh` with masks.cluster: slurm in a copy of the repository: the
    store is a local run's, byte for byte; a second repro runs nothing."""
    from tests.pipelines.test_dvc import scratch_repo

    work, params = scratch_repo(tmp_path, tiny_params)
    params["masks"]["cluster"] = "slurm"
    params["masks"]["slurm"].update(time_min=10, log_dir=str(tmp_path / "logs"))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def repro() -> str:
        done = subprocess.run(["dvc", "repro", "masks@fh"], cwd=work, capture_output=True,
                              text=True, timeout=900, env=env)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    t0 = time.time()
    out = repro()
    assert "Running stage 'masks@fh'" in out and "SLURM job array" in out
    print(f"dvc repro masks@fh on SLURM (with prepare): {time.time() - t0:.1f} s")
    store = work / "data/masks/fh"
    local = generate("fh", work / "data/shapes", tmp_path / "local", params=params["masks"]
                     ["methods"]["fh"], progress=False)  # fmt: skip
    mine = files(store)
    ref = files(local)
    # the same bytes; meta.json names the dataset root as given (relative in the stage)
    assert {k: v for k, v in mine.items() if k != "meta.json"} == {
        k: v for k, v in ref.items() if k != "meta.json"
    }
    import json

    meta, ref_meta = json.loads(mine["meta.json"]), json.loads(ref["meta.json"])
    assert meta.pop("dataset_root") == "data/shapes"
    ref_meta.pop("dataset_root")
    assert meta == ref_meta  # fingerprint included
    assert "Running stage" not in repro()  # nothing reruns


def test_an_unfinished_array_is_an_error_of_its_own():
    assert issubclass(ArrayTaskError, RuntimeError) and not issubclass(ArrayTaskError, ValueError)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.faults
def test_a_stopped_stage_cancels_its_array(tiny_shapes, tmp_path):
    """TERM to the stage (`dvc repro` ending it, a Ctrl-C) while it follows its array:
    the tasks still queued or running are cancelled, not left to run for nobody."""
    proc = stage(tmp_path, tiny_shapes, tmp_path / "fh", settings(tmp_path, array_parallelism=1))
    array = submitted(proc)
    proc.terminate()
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    deadline = time.time() + 30
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-r", "-j", array], capture_output=True, text=True)
        if not queue.stdout.strip():
            break
        time.sleep(1)
    assert not queue.stdout.strip(), queue.stdout
