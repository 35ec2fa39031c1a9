"""The distributed training Job's own command, run as two "nodes" on loopback (CPU, gloo).

The container command and arguments come from the rendered Indexed Job
(deploy/kubernetes/training/indexed-job); only what differs between a cluster and one machine
is replaced: the rendezvous endpoint (pod 0's DNS name -> 127.0.0.1), one process per node
instead of two GPUs, `--device cpu`, a tiny model and few steps. Two torchrun agents meet,
train one DDP run (world size 2), and a second start of both resumes it from its checkpoint
(the script's --resume choice), as a restarted Job would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_deploy_support import container, find, free_port, render

pytestmark = pytest.mark.slow

NODES = 2


def run_job(tmp_path: Path, run_dir: Path, max_steps: int, attempt: str) -> None:
    """Both nodes of the Job at once; each node's output goes to a log file."""
    c = container(find(render("training/indexed-job"), "Job", "sculpt-train"))
    args = list(c["args"])
    for name, value in (("--device", "cpu"), ("--max-steps", str(max_steps))):
        args[args.index(name) + 1] = value
    args[args.index("--batch-size") + 1] = "16"
    args += ["--width", "4", "--no-report", "--checkpoint-every", "2", "--val-every", "2"]
    env = {
        **os.environ,
        **{e["name"]: e["value"] for e in c["env"] if "value" in e},
        "NPROC_PER_NODE": "1",
        "RDZV_ENDPOINT": f"127.0.0.1:{free_port()}",
        "RDZV_ID": f"test-{attempt}",
        "RUN_DIR": str(run_dir),
        "HOME": str(tmp_path),
        "MPLCONFIGDIR": str(tmp_path / "matplotlib"),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "OMP_NUM_THREADS": "1",
    }
    assert env["NNODES"] == str(NODES)
    logs = [tmp_path / f"{attempt}-node{i}.log" for i in range(NODES)]
    command = c["command"] + args
    procs = []
    try:
        for log in logs:
            with log.open("wb") as out:  # the child keeps its own copy of the descriptor
                procs.append(
                    subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
                )
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    tails = "\n".join(log.read_text(errors="replace")[-2000:] for log in logs)
    assert codes == [0] * NODES, tails


def test_job_command_trains_with_ddp_and_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "shapes-ddp"
    run_job(tmp_path, run_dir, max_steps=4, attempt="first")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == NODES and summary["step"] == 4
    assert summary["stopped"] == "completed"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["batch_size"] == 16 and config["device"] == "cpu"

    # A second start finds config.json, so the script adds --resume: training goes on from
    # step 4 (without it `sculpt train` would refuse the existing run dir and exit 1).
    run_job(tmp_path, run_dir, max_steps=6, attempt="restart")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == NODES and summary["step"] == 6
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    baselines = [r for r in records if r.get("split") == "val" and r["step"] == 0]
    assert len(baselines) == 1, "the resumed run must not start over from step 0"
