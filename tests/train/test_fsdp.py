"""FSDP2 under torchrun on CPU (gloo): runs match one process (full, frozen and trainable parameters
mixed, DPO with LoRA, prompt tuning with generation in lockstep, a reward model, COSINE relabeling in
lockstep, bf16 with CPU offload), a run saved
on 2 processes resumes on 1 and on 4, a kill during a save leaves the previous checkpoint, the DPO
reference under fsdp is the base model, each process holds 1/N of the parameters, gradients and AdamW
state, and mistakes are one-line errors before any work."""

import json

import pytest
import yaml
from helpers import ROOT, cli, write_config
from helpers import torchrun as run_processes
from safetensors.torch import load_file
from tiny import LORA, chat_rows, pref_config, tiny_config, write_jsonl

pytestmark = pytest.mark.slow
WORKER = ROOT / "tests" / "train" / "fsdp_worker.py"


def torchrun(n: int, *args: str, env: dict | None = None, script: str | None = None):
    return run_processes(n, *args, env=env, script=script, timeout=600)  # fsdp runs take longer


def saved(run_dir):
    folder = run_dir / ("adapter" if (run_dir / "adapter").exists() else "model")
    return load_file(str(folder / ("adapter_model.safetensors" if folder.name == "adapter" else "model.safetensors")))


def worst(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def case(name, tiny_bert_nodrop, tiny_llama, tmp):
    if name in ("full", "freeze", "full-bf16-offload"):
        cfg = tiny_config(tiny_bert_nodrop, tmp / "d", n_train=90, epochs=2, lr=1e-2, grad_accum=2, eval_every=3,
                          log_every=1)
        if name == "freeze":
            cfg["method"] = {"name": "freeze", "freeze_layers": 1}  # frozen and trainable parameters in one block
        if name == "full-bf16-offload":
            cfg["train"] |= {"precision": "bf16"}
        return cfg
    data = tmp / "d"
    data.mkdir(parents=True, exist_ok=True)
    if name == "reward":  # an encoder with a scalar head; pairs
        from tiny import sentiment_rows

        texts = sentiment_rows(200, 1)
        pos = [r["text"] for r in texts if r["label"] == "pos"]
        neg = [r["text"] for r in texts if r["label"] == "neg"]
        rows = [{"prompt": "the film", "chosen": p, "rejected": n} for p, n in zip(pos, neg, strict=False)][:60]
        return {"model": {"name": str(tiny_bert_nodrop), "max_length": 32}, "objective": "reward",
                "method": {"name": "full"}, "data": {"train": str(write_jsonl(data / "t.jsonl", rows)),
                                                     "split": {"validation": 0.2, "test": 0.2}},
                "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "progress": False, "eval_every": 3}}
    if name == "weak-cosine":  # COSINE relabels every 3 steps: its inference runs in lockstep
        from tiny import NEGATIVE, POSITIVE, sentiment_rows

        lfs = [{"name": "p", "label": "pos", "keywords": POSITIVE[:2]}, {"name": "n", "label": "neg",
                                                                         "keywords": NEGATIVE[:2]}]
        return {"model": {"name": str(tiny_bert_nodrop), "max_length": 16},
                "objective": {"name": "weak", "lfs": lfs, "update_period": 3, "eps": 0.05,
                              "self_training_stage": "main"},
                "data": {"train": str(write_jsonl(data / "t.jsonl", [{"text": r["text"]} for r in sentiment_rows(61, 1)])),
                         "validation": str(write_jsonl(data / "v.jsonl", sentiment_rows(20, 2))),
                         "test": str(write_jsonl(data / "e.jsonl", sentiment_rows(20, 3)))},
                "train": {"epochs": 2, "batch_size": 16, "lr": 1e-2, "progress": False, "eval_every": 3,
                          "eval_batch_size": 8}}
    if name == "lora-dpo":
        return pref_config(tiny_llama, tmp, {"name": "dpo", "beta": 0.5}, LORA, epochs=2)
    # prompt tuning on chat rows, 7 test prompts: the processes generate 4 and 3 answers, in lockstep
    return {"model": {"name": str(tiny_llama), "max_length": 48}, "objective": "causal_lm",
            "method": {"name": "prompt", "prompt": {"num_virtual_tokens": 4}},
            "data": {"train": str(write_jsonl(data / "train.jsonl", chat_rows(40, 1))),
                     "validation": str(write_jsonl(data / "val.jsonl", chat_rows(8, 2))),
                     "test": str(write_jsonl(data / "test.jsonl", chat_rows(7, 3)))},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "progress": False, "warmup_ratio": 0.0,
                      "log_every": 1, "eval_every": 3}}


@pytest.mark.parametrize("name", ["full", "freeze", "lora-dpo", "prompt", "reward", "weak-cosine", "full-bf16-offload"])
def test_fsdp_matches_one_process(name, tiny_bert_nodrop, tiny_llama, tmp_path):
    cfg = case(name, tiny_bert_nodrop, tiny_llama, tmp_path)
    # reward: some of its pooler's gradients are near zero, where Adam turns the rounding of a sum over two
    # processes into differences of 1e-4 (measured the same for DDP); it is compared with DDP, exactly
    if name == "reward":
        one = torchrun(2, "train", str(write_config(tmp_path / "one.yaml", cfg | {"train": cfg["train"] | {
            "parallelism": "ddp"}})), "--out", str(tmp_path / "one"))
    else:
        one = cli("train", str(write_config(tmp_path / "one.yaml", cfg)), "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    cfg["train"] |= {"parallelism": "fsdp"} | ({"fsdp_cpu_offload": True} if "offload" in name else {})
    sharded = torchrun(2, "train", str(write_config(tmp_path / "fsdp.yaml", cfg)), "--out", str(tmp_path / "fsdp"))
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    # bf16: FSDP computes with bf16 copies of every weight, one process autocasts (norms stay fp32): the
    # same training, not the same rounding
    exact = "bf16" not in name
    if exact:
        assert worst(saved(tmp_path / "one"), saved(tmp_path / "fsdp")) < 1e-5
    s1, s2 = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "fsdp"))
    assert s2["world_size"] == 2 and s1["steps"] == s2["steps"] and s2["parallelism"] == "fsdp"
    for key, value in s1["final"].items():
        if not key.endswith("_seconds"):  # times are not results
            assert s2["final"][key] == pytest.approx(value, rel=1e-4 if exact else 2e-2, abs=1e-6), key
    if name == "prompt":  # generation in lockstep: every test prompt answered, in the file's order
        rows = [json.loads(x) for x in (tmp_path / "fsdp" / "exact_match.jsonl").read_text().splitlines()]
        assert len(rows) == 7 and "test_exact_match" in s2["final"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert_nodrop, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp-resume")
    cfg = case("full", tiny_bert_nodrop, None, tmp)
    cfg["train"] |= {"parallelism": "fsdp", "checkpoint_every": 2, "checkpoint_minutes": None}
    path = write_config(tmp / "cfg.yaml", cfg)
    out = torchrun(2, "train", str(path), "--out", str(tmp / "whole"))
    assert out.returncode == 0, out.stderr[-3000:]
    return path, tmp / "whole"


@pytest.mark.parametrize("resume_on", [1, 4])
def test_saved_on_two_processes_resumes_on_another_number(uninterrupted, tmp_path, resume_on):
    path, whole = uninterrupted
    killed = torchrun(2, "train", str(path), "--out", str(tmp_path / "r"), env={"TUNESMITH_KILL_AT_STEP": "7"})
    assert killed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("step-*")) == ["step-00000004", "step-00000006"]
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints" / "step-00000006").iterdir()) == [
        "meta.json", "model", "optimizer", "rank-00000.pt", "rank-00001.pt", "state.pt"]
    resumed = torchrun(resume_on, "train", "--resume", str(tmp_path / "r"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"written by 2 processes, resumed on {resume_on}" in resumed.stderr
    assert "resumed from step 6 of 12" in resumed.stderr
    assert worst(saved(whole), saved(tmp_path / "r")) < 1e-5


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(uninterrupted, tmp_path):
    path, whole = uninterrupted
    killed = torchrun(2, "train", str(path), "--out", str(tmp_path / "r"), env={"TUNESMITH_KILL_IN_SAVE": "6"})
    assert killed.returncode != 0
    checkpoints = tmp_path / "r" / "checkpoints"
    assert (checkpoints / ".step-00000006.tmp").is_dir() and not (checkpoints / "step-00000006").exists()
    resumed = torchrun(2, "train", "--resume", str(tmp_path / "r"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 4 of 12" in resumed.stderr and "a checkpoint write that was killed" in resumed.stderr
    assert worst(saved(whole), saved(tmp_path / "r")) < 1e-5


def test_the_reference_under_fsdp_is_the_base_model(tiny_llama, tmp_path):
    out = torchrun(2, "reference", str(tiny_llama), str(tmp_path / "r.json"), script=str(WORKER))
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads((tmp_path / "r.json").read_text())
    assert found["reference"] == pytest.approx(found["base"], abs=1e-5)  # adapters off, trained biases put back
    assert abs(found["policy"][0] - found["base"][0]) > 1e-2  # the update did change the model
    assert found["after"] == found["policy"]  # and the trained values are back after the block


def test_each_process_holds_one_nth_of_weights_gradients_and_optimizer_state(tiny_llama, tmp_path):
    out = torchrun(2, "memory", str(tiny_llama), str(tmp_path / "m.json"), script=str(WORKER))
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads((tmp_path / "m.json").read_text())
    whole = found["whole"]
    for process in found["processes"]:
        assert process["params"] == pytest.approx(whole / 2, rel=0.05)
        assert process["grads"] == pytest.approx(whole / 2, rel=0.05)
        assert process["optimizer"] == pytest.approx(whole, rel=0.05)  # AdamW: two moments of its half


def test_mistakes_are_one_line_errors_before_any_work(tiny_bert_nodrop, tmp_path):
    cfg = case("full", tiny_bert_nodrop, None, tmp_path)
    cfg["train"]["parallelism"] = "fsdp"
    plain = cli("train", str(write_config(tmp_path / "a.yaml", cfg)), "--out", str(tmp_path / "a"))
    assert plain.returncode == 2 and "launch it with torchrun --nproc_per_node=N" in plain.stderr
    assert not (tmp_path / "a").exists()
    for change, message in ((("train", "precision", "fp16"), "fp16 under fsdp"),
                            (("train", "precision", "fp8"), "'fp8' is not one of fp32, bf16, fp16"),
                            (("stages", None, [{"name": "a"}, {"name": "b"}]), "fsdp trains one stage per run")):
        bad = yaml.safe_load(yaml.safe_dump(cfg))
        section, key, value = change
        if key is None:
            bad[section] = value
        else:
            bad[section][key] = value
        out = torchrun(1, "train", str(write_config(tmp_path / "b.yaml", bad)), "--out", str(tmp_path / "b"))
        assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
    offload = tiny_config(tiny_bert_nodrop, tmp_path / "d2", fsdp_cpu_offload=True)
    out = cli("train", str(write_config(tmp_path / "c.yaml", offload)), "--out", str(tmp_path / "c"))
    assert out.returncode == 2 and "train.fsdp_cpu_offload: is for train.parallelism: fsdp" in out.stderr
