"""train.report_to (TensorBoard, W&B offline, MLflow's local store) and train.callbacks (users' own
Callbacks, found from the config's folder, their state resumed exactly after a kill)."""

import glob
import json
import signal
import struct
import time

import pytest
import yaml
from helpers import cli, write_config
from tiny import tiny_config

from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.run import run
from tunesmith.train.reporters import installed
from tunesmith.train.track import read_metrics

pytestmark = pytest.mark.slow

COUNTER = '''
from tunesmith.train.callbacks import Callback


class Counter(Callback):
    """Counts steps and evaluations; its counts are logged, so a lost state would show in metrics.jsonl."""

    def __init__(self):
        self.steps, self.evals, self.starts = 0, 0, 0

    def on_train_start(self, trainer):
        self.starts += 1

    def on_step_end(self, trainer, output):
        self.steps += 1
        return {"cb_steps": self.steps, "cb_evals": self.evals}

    def on_evaluate(self, trainer, metrics):
        self.evals += 1

    def state_dict(self):
        return {"steps": self.steps, "evals": self.evals}

    def load_state_dict(self, state):
        self.steps, self.evals = state["steps"], state["evals"]


def make_counter():
    return Counter()


NOT_A_CALLBACK = dict
'''


@pytest.fixture
def no_tracker_env(monkeypatch, tmp_path):
    """No W&B key or mode and no MLflow server from the machine running the tests."""
    # WANDB_SERVICE: an earlier in-process run's wandb service, which runs started here must not share
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_NAME", "WANDB_DIR",
                 "WANDB_SERVICE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def config_file(tiny_bert, folder, module="counting", **train):
    """A config in `folder`, beside a callbacks module of the given name (unique per test: imported once)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(COUNTER)
    return write_config(folder / "cfg.yaml", tiny_config(tiny_bert, folder / "d", **train))


def train_lines(run_dir):
    return [r for r in read_metrics(run_dir) if "train_loss" in r]


def test_default_reports_nowhere_else_and_user_callbacks_run(tiny_bert, tmp_path):
    path = config_file(tiny_bert, tmp_path / "c", module="cb_default", callbacks=["cb_default:make_counter"],
                       eval_every=4)
    cfg = load_config(path)
    assert cfg.train.callbacks == [f"{tmp_path / 'c' / 'cb_default.py'}:make_counter"]  # found from any cwd later
    run(cfg, tmp_path / "r")
    for name in ("tensorboard", "wandb", "mlflow.db", "report_to.json"):
        assert not (tmp_path / "r" / name).exists(), name
    last = train_lines(tmp_path / "r")[-1]
    assert last["cb_steps"] == 12 and last["cb_evals"] == 2  # 12 steps, evaluated at 4 and 8 (and 12, after)


def wandb_records(run_dir, folders="offline-run-*"):
    """Every record of the run's offline .wandb files: LevelDB-log blocks of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for path in sorted(glob.glob(str(run_dir / "wandb" / folders / "run-*.wandb"))):
        raw, pos, chunk = open(path, "rb").read(), 7, b""  # header: ':W&B', magic, version
        while pos + 7 <= len(raw):
            if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
            chunk, pos = chunk + raw[pos + 7 : pos + 7 + length], pos + 7 + length
            if kind in (1, 4):  # full, or last piece
                if pos > len(raw):  # a record the service is still writing
                    break
                record = pb.Record()
                record.ParseFromString(chunk)
                records.append((path, record))
                chunk = b""
    return records


def wait_for_wandb(run_dir, timeout=60.0):
    """wandb's service writes the run's file after finish() returns, in its own process: wait for its
    exit record."""
    deadline = time.monotonic() + timeout
    while not any(r.WhichOneof("record_type") == "exit" for _, r in wandb_records(run_dir)):
        assert time.monotonic() < deadline, "wandb never wrote the run's exit record"
        time.sleep(0.2)


def wandb_history(run_dir, folders="offline-run-*"):
    rows = []
    for _, r in wandb_records(run_dir, folders):
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


def mlflow_run(run_dir):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    return client, client.get_run(json.loads((run_dir / "report_to.json").read_text())["mlflow"]["run_id"])


def tracker_names():
    """The trackers installed here (each needs its pip extra)."""
    found = {"tensorboard": installed("tensorboard"), "wandb": installed("wandb"),
             "mlflow": installed("mlflow") and installed("sqlalchemy")}
    return [name for name, ok in found.items() if ok]


def test_each_tracker_has_the_metrics_and_the_config(tiny_bert, tmp_path, no_tracker_env, capfd):
    names = tracker_names()
    if not names:
        pytest.skip("no tracker installed (pip install 'tunesmith[tensorboard,wandb,mlflow]')")
    run(load_config(config_file(tiny_bert, tmp_path / "c", report_to=names)), tmp_path / "r")
    expected = [(r["step"], pytest.approx(r["train_loss"])) for r in train_lines(tmp_path / "r")]
    kept = json.loads((tmp_path / "r" / "report_to.json").read_text())

    if "tensorboard" in names:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
        events.Reload()
        assert [(e.step, e.value) for e in events.Scalars("train_loss")] == expected
        assert "test_accuracy" in events.Tags()["scalars"]  # the final metrics, at the last step
        assert "config" in str(events.Tags()["tensors"])

    if "wandb" in names:
        assert "no W&B API key" in capfd.readouterr().err  # so it logged offline, and said so
        wait_for_wandb(tmp_path / "r")
        history = wandb_history(tmp_path / "r")
        assert [(h["_step"], h["train_loss"]) for h in history if "train_loss" in h] == expected
        assert any("test_accuracy" in h for h in history)
        runs = [r.run for _, r in wandb_records(tmp_path / "r") if r.WhichOneof("record_type") == "run"]
        assert runs[0].run_id == kept["wandb"]["id"] and runs[0].project == "tunesmith"
        config = {u.key: json.loads(u.value_json) for u in runs[0].config.update}
        assert config["train"]["lr"] == 1e-3 and config["model"]["max_length"] == 16

    if "mlflow" in names:
        client, found = mlflow_run(tmp_path / "r")
        assert found.info.status == "FINISHED" and found.info.run_name == "r"
        assert found.data.params["train.lr"] == "0.001" and found.data.params["method.name"] == "full"
        history = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, "train_loss"))
        assert history == expected
        assert "test_accuracy" in found.data.metrics
        assert not glob.glob(str(tmp_path / "*" / "mlartifacts")) and not glob.glob(str(tmp_path / "*.db"))


def test_a_killed_run_resumes_its_callbacks_and_tracker_runs_exactly(tiny_bert, tmp_path, no_tracker_env,
                                                                     monkeypatch):
    """Killed after step 7 of 12 (checkpoint at 4): steps 5-7 are trained again, their lines are not sent twice,
    the callback's counts continue from the checkpoint, and each tracker continues its own run."""
    names = tracker_names()
    path = config_file(tiny_bert, tmp_path / "c", callbacks=["counting:Counter"], report_to=names, epochs=2,
                       checkpoint_every=4, eval_every=5, checkpoint_minutes=None)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {"NETRC": str(tmp_path / "no-netrc"), "WANDB_SILENT": "true"}
    killed = cli("train", str(path), "--out", str(tmp_path / "r"), cwd=elsewhere,
                 env=env | {"TUNESMITH_KILL_AT_STEP": "7"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = cli("train", "--resume", str(tmp_path / "r"), cwd=elsewhere, env=env)  # the run's own config
    assert resumed.returncode == 0, resumed.stderr

    lines = train_lines(tmp_path / "r")
    assert [r["cb_steps"] for r in lines] == [r["step"] for r in lines]  # 2, 4, ..., 12: the count went on
    evals = [r["step"] for r in read_metrics(tmp_path / "r") if "val_loss" in r]
    for r in lines:  # evaluations before each line's step (the callback counts them as they happen)
        assert r["cb_evals"] == sum(s < r["step"] for s in evals)
    steps = [r["step"] for r in lines]
    if "tensorboard" in names:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
        events.Reload()
        assert [e.step for e in events.Scalars("train_loss")] == steps
    if "wandb" in names:
        # a folder per process, one W&B run (wandb sync joins them); the killed process's service died with
        # it, losing what it had not written, so the resumed one sent every line again
        folders = glob.glob(str(tmp_path / "r" / "wandb" / "offline-run-*"))
        assert len(folders) == 2 and len({f.rsplit("-", 1)[1] for f in folders}) == 1
        assert [h["_step"] for h in wandb_history(tmp_path / "r", "latest-run") if "train_loss" in h] == steps
    if "mlflow" in names:
        client, found = mlflow_run(tmp_path / "r")
        assert found.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(found.info.run_id, "train_loss")] == steps
        assert len(client.search_runs([found.info.experiment_id])) == 1


def test_config_errors_name_the_field(tiny_bert, tmp_path, monkeypatch):
    path = config_file(tiny_bert, tmp_path / "c", module="cb_errors")

    def error(**train):
        data = yaml.safe_load(path.read_text())
        data["train"] |= train
        write_config(path, data)
        with pytest.raises(ConfigError) as e:
            load_config(path)
        return str(e.value)

    message = error(report_to=["tensorbored"])
    assert "train.report_to[0]" in message and "tensorboard, wandb, mlflow" in message
    from tunesmith.train.reporters import wandb_log

    monkeypatch.setattr(wandb_log, "installed", lambda module: False)
    message = error(report_to=["wandb"])
    assert "train.report_to[0]" in message and "pip install 'tunesmith[wandb]'" in message
    monkeypatch.undo()

    message = error(report_to=[], callbacks=["no_such_module:Counter"])
    assert "train.callbacks[0]" in message and "no_such_module" in message and str(tmp_path / "c") in message
    message = error(callbacks=["cb_errors:NOT_A_CALLBACK"])
    assert "train.callbacks[0]" in message and "not a tunesmith.train.callbacks.Callback" in message
    message = error(callbacks=["cb_errors"])
    assert "train.callbacks[0]" in message and "module:Class" in message
    assert str(path) in message  # file:line of the field
