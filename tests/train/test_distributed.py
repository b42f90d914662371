"""torchrun with 2 CPU processes (gloo) matches one process with the same global batch."""

import json
import sys

import pytest
from helpers import ROOT, cli, model_weights, write_config
from tiny import tiny_config

pytestmark = pytest.mark.slow


def test_ddp_two_processes_match_single_process(tiny_bert_nodrop, tmp_path):
    # 90 examples, global batch 16, 2 micro-batches per process: uneven last step included
    cfg = tiny_config(tiny_bert_nodrop, tmp_path / "d", n_train=90, epochs=2, lr=1e-2, grad_accum=2,
                      eval_every=3)
    path = write_config(tmp_path / "cfg.yaml", cfg)
    single = cli("train", str(path), "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    ddp = cli("--standalone", "--nproc_per_node=2", "-m", "tunesmith", "train", str(path),
              "--out", str(tmp_path / "ddp"), module="torch.distributed.run",
              env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = model_weights(tmp_path / "single"), model_weights(tmp_path / "ddp")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    s1 = json.loads((tmp_path / "single" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert s2["world_size"] == 2 and s1["steps"] == s2["steps"]
    assert s2["final"]["test_accuracy"] == pytest.approx(s1["final"]["test_accuracy"])
    # only rank 0 wrote: one metrics line per step, not two
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [x["step"] for x in lines if "train_loss" in x]
    assert train_steps == sorted(set(train_steps))
    assert sys.executable  # the same interpreter ran both
