"""Two-process DDP fine-tuning on the CPU through ``accelerate launch``, then a resume.

``ACCELERATE_USE_CPU=true`` with ``--multi_gpu --num_processes 2`` starts two gloo processes
(``--cpu`` alone would start one).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

import mgm2fp
from conftest import MDLM_TINY, REPO_ROOT
from finetune_helpers import tiny_fixed_point, write_token_stream

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(arguments: list[str]) -> subprocess.CompletedProcess:
    environment = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
        "-m", "mgm2fp", "finetune", *arguments,
    ]
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)


def test_two_processes_train_and_resume(tmp_path):
    model_folder = tmp_path / "fp"
    tiny_fixed_point(model_folder)
    data = write_token_stream(tmp_path / "tokens.npy")
    output = tmp_path / "out"
    common = [
        str(model_folder), "--data", str(data), "--output", str(output), "--batch-size", "2", "--save-every", "2", "--log-every", "1",
        "--validation-sequences", "4", "--warmup-steps", "0", "--distill-weight", "0.1", "--consistency-weight", "0.1",
        "--teacher", str(MDLM_TINY), "--grad-iterations", "1", "2", "--no-grad-iterations", "0", "1",
    ]
    first = launch([*common, "--max-steps", "2"])
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = output / "checkpoints" / "step-00000002"
    assert (checkpoint / "random_states_0.pkl").is_file()
    assert (checkpoint / "random_states_1.pkl").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["data"] == {"epoch": 0, "offset": 8}

    second = launch([*common, "--max-steps", "4", "--resume"])
    assert second.returncode == 0, second.stderr[-3000:]
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if line["split"] == "train"]
    assert [line["step"] for line in train] == [1, 2, 3, 4]  # one line per step: only the main process writes
    assert all(line["loss_kl"] is not None and line["loss_consistency"] is not None for line in train)
    summary = json.loads((output / "config.json").read_text())["finetune"]
    assert summary["num_processes"] == 2
    assert summary["global_batch_size"] == 4
    assert mgm2fp.load(output).metadata["finetune"]["steps"] == 4
