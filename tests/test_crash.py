"""Crash safety and deterministic resume (issue 12).

1. A training process killed with SIGKILL at any moment (between steps, in an evaluation, half
   way through writing a checkpoint or the final weights) leaves a folder every reader accepts,
   and ``--resume`` carries on from the last complete checkpoint to the very bits an
   uninterrupted run ends with, each step logged once. ``RESNETKIT_TEST_WRITE_PAUSE`` makes
   every atomic write stop half done for a while (checkpoint.py), so a kill can land there.
   20 kills here; ``RESNETKIT_SOAK=1`` (``make test-soak``) makes it 200.
2. In process (cheaper), runs that crash many times mid-epoch, with and without ``--ema`` and
   ``--time-limit`` (on a fake clock), or that read an image folder through DataLoader workers,
   resume to the bits of the run that never stopped; ``--resume`` on a finished run changes nothing.

Every kill needs a new process, and ``python -m resnetkit train`` takes 5-8 s on the shared
machine before its first step (importing torch, then torch._dynamo, which the meta-device model
check pulls in). So the killed processes are forked from a *zygote*: one Python that imported
resnetkit once and then forks a child per run, each child running the command line's
``main(argv)`` as ``python -m resnetkit`` would. The child is a real, separate process, killed
with a real SIGKILL; only the interpreter's start-up is shared. ``--resume`` on a finished run
runs the real ``python -m resnetkit``.
"""

import contextlib
import hashlib
import io
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from fakedata import write_image_folder, write_mnist
from safetensors.torch import load_file

import resnetkit
from resnetkit import rundir
from resnetkit import train as train_module
from resnetkit.checkpoint import load, load_checkpoint, read_metadata, save_weights
from resnetkit.cli import build_parser
from resnetkit.config import make_config
from resnetkit.rundir import read_metrics
from resnetkit.train import TrainState, cmd_train, train

SOAK = os.environ.get("RESNETKIT_SOAK") == "1"
KILLS = 200 if SOAK else 20
PAUSE = 0.15  # seconds each atomic write of the killed runs holds half done
CHECKPOINT_EVERY = 2
STEPS_PER_EPOCH = 8  # 256 training images in batches of 32
NOT_REPRODUCIBLE = {"images_per_sec", "train_time", "train_time_sec"}  # wall-clock readings

# A ResNet-8 of 4-8-16 channels (5k parameters) on a small MNIST-format set, logging every step,
# with everything that draws random numbers on: crops, flips, erase boxes (per-epoch generators),
# drop path (the global RNG, restored from the checkpoint) and a moving average of the weights.
RUN_FLAGS = ["--data", "mnist", "--widths", "4", "8", "16", "--blocks", "1", "1", "1", "--batch-size", "32",
             "--precision", "fp32", "--no-channels-last", "--no-tta", "--ema", "0.9", "--drop-path-rate", "0.1",
             "--erase", "0.25", "--log-every", "1", "--checkpoint-every", str(CHECKPOINT_EVERY), "--seed", "3",
             "--no-tensorboard"]


@contextlib.contextmanager
def one_thread():
    """The processes under test run with OMP_NUM_THREADS=1; a run in this process that they are
    compared with bit for bit must use one thread too (reductions split differently over more)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reproducible(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in NOT_REPRODUCIBLE}


def same_state(a: dict, b: dict, rng: bool = True) -> bool:
    """Two checkpoints hold the same training state: weights, average, momentum, schedule, RNG."""
    def equal(x, y):
        return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)

    momentum = [(a["optimizer"]["state"][i], b["optimizer"]["state"].get(i, {})) for i in a["optimizer"]["state"]]
    return (a["step"] == b["step"] and equal(a["model"], b["model"]) and equal(a.get("ema", {}), b.get("ema", {}))
            and all(equal(x, y) for x, y in momentum) and a["scheduler"] == b["scheduler"]
            and [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
            and (not rng or (torch.equal(a["rng"]["torch"], b["rng"]["torch"])
                             and a["rng"]["python"] == b["rng"]["python"])))


# --- part 1: SIGKILL ---------------------------------------------------------------------------

ZYGOTE = r"""
import json, os, sys, traceback
from resnetkit.cli import main
from resnetkit.config import check_model

check_model("resnet20", {})  # pays torch's one-off imports once, not in every child
print("ready", flush=True)
child = None
for line in sys.stdin:
    if child is not None:
        os.waitpid(child, 0)  # reaped only now: until the test's next word its pid stays ours
    job = json.loads(line)
    child = os.fork()
    if child == 0:
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            code = main(job["argv"])
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(child, flush=True)
    info = os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)  # ended, left unreaped
    print(info.si_status if info.si_code == os.CLD_EXITED else -info.si_status, flush=True)
if child is not None:
    os.waitpid(child, 0)
"""


class Zygote:
    """Forks ``resnetkit`` command lines from one process that has already imported everything."""

    def __init__(self, env: dict) -> None:
        # Unbuffered: select() on the pipe must see every line not yet read.
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, bufsize=0)
        self.pid: int | None = None
        self.ready = False  # it imports while the caller gets on with other work

    def _line(self) -> str:
        line = self.proc.stdout.readline()  # raw: reads byte by byte, never past the newline
        if not line:
            raise RuntimeError("the zygote process died")
        return line.decode().strip()

    def start(self, argv: list[str], log: Path) -> int:
        if not self.ready:
            assert self._line() == "ready"
            self.ready = True
        self.proc.stdin.write((json.dumps({"argv": argv, "log": str(log)}) + "\n").encode())
        self.pid = int(self._line())
        return self.pid

    def ended(self) -> bool:
        return bool(select.select([self.proc.stdout], [], [], 0)[0])

    def kill(self) -> None:
        """SIGKILL the child. Safe even if it has just ended: the zygote has not reaped it."""
        os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> int:
        """The child's exit code, -9 when killed."""
        return int(self._line())

    def close(self) -> None:
        if self.pid is not None and not self.ended():
            self.kill()
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def last_step(path: Path) -> int:
    """The step of the last training row in metrics.jsonl (0 if none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    for line in reversed(text.splitlines()):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "train_loss" in row:
            return row["step"]
    return 0


def writes_of(out: Path, name: str, pid: int) -> set[str]:
    """Temporary files of ``atomic_write`` to ``name`` by process ``pid``: one per write under way."""
    return {p.name for p in out.glob(f".{name}.{pid}.*.tmp")}


class Plan:
    """Where to kill the next process: what to wait for, then how long after it."""

    def __init__(self, rng: random.Random, resumed_at: int, total: int, has_log: bool) -> None:
        if resumed_at == total:  # training done: the resumed process only evaluates and writes the end
            kinds, weights = ["final write", "start-up write", "any time"], [3, 1, 1]
        else:
            kinds = ["checkpoint write", "step", "any time", "start-up write", "final write"]
            weights = [4, 4, 2, 1, 2 if total - resumed_at <= 6 else 0]
        self.kind = rng.choices(kinds, weights)[0]
        self.name, self.nth, self.step, self.delay = None, 1, 0, 0.0
        self.seen: set[str] = set()  # the writes to ``name`` met so far
        if self.kind == "checkpoint write":  # the 1st leaves no new checkpoint, later ones do
            self.name, self.nth = "checkpoint.pt", rng.choice([1, 2, 2, 3])
        elif self.kind == "start-up write":  # the log truncated to the checkpoint, or the settings
            self.name = rng.choice(["metrics.jsonl", "config.yaml"] if has_log else ["config.yaml"])
        elif self.kind == "final write":
            self.name = rng.choice(["model.safetensors", "summary.json", "curves.png"])
        elif self.kind == "step":  # past the rows a killed predecessor left beyond the checkpoint
            self.step = min(total, resumed_at + CHECKPOINT_EVERY + rng.randint(1, 4))
        if self.name:
            self.delay = rng.uniform(0, 0.8 * PAUSE)  # still inside the pause
        elif self.kind == "step":
            self.delay = rng.uniform(0, 0.05)
        else:
            self.delay = rng.uniform(0, 2.0)

    def __str__(self) -> str:
        what = {"checkpoint write": f"in checkpoint write #{self.nth}", "step": f"after step {self.step}",
                "any time": "after start"}.get(self.kind, f"in the write of {self.name}")
        return f"{what} + {self.delay:.3f}s"

    def due(self, out: Path, pid: int, started: float) -> bool:
        if self.name:
            self.seen |= writes_of(out, self.name, pid)
            return len(self.seen) >= self.nth
        if self.kind == "step":
            return last_step(out / "metrics.jsonl") >= self.step
        return time.monotonic() - started >= self.delay


def check_folder(out: Path, ref: dict, total: int) -> tuple[int, int]:
    """What a reader finds after a kill: every file whole and equal to the uninterrupted run's at
    the same step, the log holding each step once. Returns (checkpoint step, last logged step)."""
    step = 0
    if (out / "checkpoint.pt").exists():
        ckpt = load_checkpoint(out / "checkpoint.pt")
        step = ckpt["step"]
        assert step in ref["checkpoints"], f"a checkpoint at step {step}, which the uninterrupted run never wrote"
        assert same_state(ckpt, ref["checkpoints"][step]), f"checkpoint at step {step} differs from the reference"
    if (out / "model.safetensors").exists():
        load(out / "model.safetensors")  # rebuilds the model from the file alone
        weights = load_file(out / "model.safetensors")
        assert weights.keys() == ref["weights"].keys()
        assert all(torch.equal(weights[k], ref["weights"][k]) for k in weights), "final weights differ"
    if (out / "summary.json").exists():
        json.loads((out / "summary.json").read_text())
    if (out / "config.yaml").exists():
        yaml.safe_load((out / "config.yaml").read_text())
    rows = []
    if (out / "metrics.jsonl").exists():
        # Every line that ends in a newline is whole; only what follows the last one could be torn.
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().split("\n")[:-1]]
        assert read_metrics(out / "metrics.jsonl")[:len(rows)] == rows
    steps = [r["step"] for r in rows if "train_loss" in r]
    logged = steps[-1] if steps else 0
    assert steps == list(range(1, logged + 1)), f"steps logged out of order or twice: {steps}"
    assert logged >= step, "the checkpoint is ahead of the log"
    assert [reproducible(r) for r in rows] == [reproducible(r) for r in ref["rows"][:len(rows)]], \
        "a logged step differs from the uninterrupted run's"
    return step, logged


def test_sigkill_at_any_moment_then_resume_ends_bit_identical(tmp_path, monkeypatch):
    data = write_mnist(tmp_path / "mnist", 32 * STEPS_PER_EPOCH, 64)
    epochs = max(3, KILLS // 4)  # about 2 steps of progress per killed process: the last kills meet the end
    total = epochs * STEPS_PER_EPOCH
    argv = ["train", *RUN_FLAGS, "--data-dir", str(data), "--epochs", str(epochs)]

    # The killed processes' parent starts importing while the reference runs.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RESNETKIT_TEST_WRITE_PAUSE": str(PAUSE)}
    zygote = Zygote(env)

    # The uninterrupted run, in this process, keeping every checkpoint it writes.
    checkpoints = {}
    real_save = rundir.save_checkpoint

    def save(path, state):
        real_save(path, state)
        checkpoints[state["step"]] = torch.load(io.BytesIO(Path(path).read_bytes()), weights_only=True)

    monkeypatch.setattr(rundir, "save_checkpoint", save)
    try:
        with one_thread():
            cmd_train(build_parser().parse_args([*argv, "--out", str(tmp_path / "reference")]))
        monkeypatch.undo()
        ref = {"checkpoints": checkpoints, "rows": read_metrics(tmp_path / "reference" / "metrics.jsonl"),
               "weights": load_file(tmp_path / "reference" / "model.safetensors")}
        assert max(checkpoints) == total

        # The same run, killed KILLS times, each time resumed.
        out = tmp_path / "killed"
        rng = random.Random(12)
        history, kills, step, logged = [], 0, 0, 0
        in_writes = []  # the files whose write a kill cut short
        while kills < KILLS:
            assert len(history) < 3 * KILLS, f"processes keep ending before their kill: {history}"
            plan = Plan(rng, step, total, (out / "metrics.jsonl").exists())
            log = tmp_path / f"process-{len(history)}.log"
            pid = zygote.start([*argv, "--out", str(out), "--resume"], log)
            started, deadline = time.monotonic(), time.monotonic() + 120
            while not zygote.ended() and not plan.due(out, pid, started):
                assert time.monotonic() < deadline, f"kill {plan} never came due: {log.read_text()}"
                time.sleep(0.01)
            if plan.kind != "any time" and not zygote.ended():
                time.sleep(plan.delay)
            if not zygote.ended():
                zygote.kill()
            code = zygote.wait()
            output = log.read_text()
            history.append(f"from checkpoint {step}, killed {plan}: exit {code}")
            assert code in (0, -signal.SIGKILL), f"process failed ({code}): {output}"
            if code == -signal.SIGKILL:
                kills += 1
                in_writes += [p.name.split(f".{pid}.")[0][1:] for p in out.glob(f".*.{pid}.*.tmp")]
            # It started where the last complete checkpoint left off (if it got as far as saying).
            said = [line for line in output.splitlines() if line.startswith(("resuming from step", "no checkpoint"))]
            if said:
                expected = f"resuming from step {step} of {total}" if step else "no checkpoint at"
                assert said[0].startswith(expected), (said[0], history)
            resumed_at, previous_log = step, logged
            assert previous_log - resumed_at <= CHECKPOINT_EVERY  # at most that many steps are redone
            step, logged = check_folder(out, ref, total)
            assert step >= resumed_at, "the checkpoint went back"

        # Finally, resumed once more and left to finish.
        pid = zygote.start([*argv, "--out", str(out), "--resume"], tmp_path / "last.log")
        assert zygote.wait() == 0, (tmp_path / "last.log").read_text()
    finally:
        zygote.close()

    step, logged = check_folder(out, ref, total)
    assert step == logged == total
    rows = read_metrics(out / "metrics.jsonl")
    assert [reproducible(r) for r in rows] == [reproducible(r) for r in ref["rows"]]  # each step exactly once
    assert [r["step"] for r in rows if "test_loss" in r] == list(range(STEPS_PER_EPOCH, total + 1, STEPS_PER_EPOCH))
    assert reproducible(json.loads((out / "summary.json").read_text())) == \
        reproducible(json.loads((tmp_path / "reference" / "summary.json").read_text()))
    # The kills did land inside writes, checkpoints among them (the pause makes that likely, not certain).
    assert len(in_writes) >= KILLS // 5 and "checkpoint.pt" in in_writes, (in_writes, history)


# --- part 2: deterministic resume, in process --------------------------------------------------

class Crash(Exception):
    """Stands in for the process dying."""


class Ticks:
    """A clock that advances one tick each time it is read: --time-limit without the machine's speed."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def crash_at(monkeypatch, after_steps=(), in_checkpoint_at=()) -> None:
    """Make training raise ``Crash`` once just after each step of ``after_steps`` (taken, not yet
    logged or saved) and once inside the checkpoint write of each step of ``in_checkpoint_at``
    (the previous checkpoint left in place, as an interrupted atomic write leaves it)."""
    after, inside = set(after_steps), set(in_checkpoint_at)
    real_after_step, real_save = TrainState.after_step, rundir.save_checkpoint

    def after_step(self, started):
        real_after_step(self, started)
        if self.step in after:
            after.discard(self.step)
            raise Crash(f"after step {self.step}")

    def save(path, state):
        if state["step"] in inside:
            inside.discard(state["step"])
            raise Crash(f"writing checkpoint {state['step']}")
        real_save(path, state)

    monkeypatch.setattr(TrainState, "after_step", after_step)
    monkeypatch.setattr(rundir, "save_checkpoint", save)


def run_until_done(cfg, limit: int = 30) -> int:
    """Train with --resume until a run gets through without crashing; returns the crashes."""
    for crashes in range(limit):
        try:
            train(cfg, tensorboard=False, verbose=False)
            return crashes
        except Crash:
            continue
    raise AssertionError("still crashing")


def assert_same_run(a: Path, b: Path, *, rng: bool = True) -> None:
    """Two run folders hold the same final state, weights and (reproducible) log."""
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert same_state(ca, cb, rng), "the resumed run's final state differs from the uninterrupted run's"
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "final weights differ"
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    steps = [r["step"] for r in rb if "train_loss" in r]
    assert steps == list(range(1, ca["step"] + 1)), f"each step must be logged once: {steps}"
    assert [reproducible(r) for r in ra] == [reproducible(r) for r in rb]


def tiny(tmp_path, out: str, **kw):
    """A ResNet-8 of 4-8-16 channels on 256 MNIST-format images: 8 steps of 32 per epoch."""
    folder = tmp_path / "mnist"
    if not folder.exists():
        write_mnist(folder, 256, 64)
    base = {"model": "resnet20", "widths": [4, 8, 16], "blocks": [1, 1, 1], "data": "mnist",
            "data_dir": str(folder), "epochs": 3, "batch_size": 32, "precision": "fp32", "channels_last": False,
            "tta": False, "log_every": 1, "checkpoint_every": 3, "drop_path_rate": 0.1, "erase": 0.25,
            "out": str(tmp_path / out)}
    return make_config({**base, **kw})


# 24 steps, checkpoints at 3, 6, 9, 12, 15, 18, 21 (--checkpoint-every 3) and at the epoch ends
# 8, 16, 24. Crashes before the first checkpoint, twice in one epoch, on an epoch's last step
# (before its evaluation and checkpoint), inside a mid-epoch and an end-of-epoch checkpoint write.
CRASH_AFTER = (2, 5, 7, 8, 11, 13, 20, 23)
CRASH_IN_CHECKPOINT = (6, 16)
# A clock read about 3 times a step, 2 of them billed: the run stops by time after about 20 steps.
TIME_LIMIT = 41 * 0.25


@pytest.mark.parametrize("kw", [{}, {"ema": 0.9}, {"ema": 0.9, "time_limit": TIME_LIMIT, "epochs": 50}],
                         ids=["plain", "ema", "ema-time-limit"])
def test_many_crashes_mid_epoch_resume_bit_identical(tmp_path, monkeypatch, kw):
    # Under --time-limit the horizon is 50 epochs, compressed into the time: the clock drives the schedule.
    time_limit = kw.get("time_limit")
    monkeypatch.setattr(train_module, "clock", Ticks(0.25))
    full = train(tiny(tmp_path, "full", **kw), tensorboard=False, verbose=False)
    assert full["steps"] < 50 * 8 if time_limit else full["steps"] == 24

    monkeypatch.setattr(train_module, "clock", Ticks(0.25))
    crash_at(monkeypatch, CRASH_AFTER, CRASH_IN_CHECKPOINT)
    crashes = run_until_done(tiny(tmp_path, "crashed", resume=True, **kw))
    assert crashes == len([s for s in CRASH_AFTER + CRASH_IN_CHECKPOINT if s <= full["steps"]])
    assert_same_run(tmp_path / "full", tmp_path / "crashed")


def test_time_limit_resume_right_after_a_checkpoint_stops_where_the_uninterrupted_run_did(tmp_path, monkeypatch):
    # The training time the checkpoint of step 6 records (the clock is read the same way under any limit)...
    saved = {}
    monkeypatch.setattr(rundir, "save_checkpoint", lambda path, state: saved.setdefault(state["step"], state))
    monkeypatch.setattr(train_module, "clock", Ticks(0.25))
    train(tiny(tmp_path, "probe", epochs=1, time_limit=1e9), tensorboard=False, verbose=False)
    monkeypatch.undo()
    # ... is the limit: the uninterrupted run, whose clock read less at step 6, goes on to step 7.
    kw = {"epochs": 50, "time_limit": saved[6]["train_time"]}
    monkeypatch.setattr(train_module, "clock", Ticks(0.25))
    full = train(tiny(tmp_path, "full", **kw), tensorboard=False, verbose=False)
    monkeypatch.setattr(train_module, "clock", Ticks(0.25))
    crash_at(monkeypatch, after_steps=[7])  # resumed from the checkpoint of step 6
    run_until_done(tiny(tmp_path, "crashed", resume=True, **kw))
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["step"] == full["steps"]
    assert_same_run(tmp_path / "full", tmp_path / "crashed")


def test_checkpoints_between_log_rows_do_not_lose_training_time(tmp_path, monkeypatch):
    # A clock that reads one second per step taken: 8 steps are 8 seconds of training.
    steps = []
    real_after_step = TrainState.after_step

    def after_step(self, started):
        steps.append(self.step)
        real_after_step(self, started)

    monkeypatch.setattr(TrainState, "after_step", after_step)
    monkeypatch.setattr(train_module, "clock", lambda: float(len(steps)))
    summary = train(tiny(tmp_path, "run", epochs=1, log_every=4, checkpoint_every=2), tensorboard=False,
                    verbose=False)
    assert summary["train_time_sec"] == 8.0


def test_folder_data_with_workers_crashed_mid_epoch_resumes_bit_identical(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "imgs", n_per_class=8, size=20)  # 24 images, 3 classes
    kw = {"data": "folder", "data_dir": str(root), "image_size": 16, "workers": 2, "epochs": 3, "batch_size": 8,
          "checkpoint_every": 1, "drop_path_rate": 0.0}
    train(tiny(tmp_path, "full", **kw), tensorboard=False, verbose=False)
    # 3 steps per epoch: crash after the first and the second step of an epoch, and inside the
    # first checkpoint of the last epoch.
    crash_at(monkeypatch, after_steps=[2, 4, 5], in_checkpoint_at=[7])
    assert run_until_done(tiny(tmp_path, "crashed", resume=True, **kw)) == 4
    # Weights, average, momentum and log; not the global RNG, which nothing here draws from
    # but which a folder run resumed mid-epoch does not restore (next test).
    assert_same_run(tmp_path / "full", tmp_path / "crashed", rng=False)


def test_folder_run_resumed_mid_epoch_draws_the_same_random_numbers(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "imgs", n_per_class=4, size=20)  # 12 images: 3 steps of 4
    kw = {"data": "folder", "data_dir": str(root), "image_size": 16, "workers": 0, "epochs": 1, "batch_size": 4,
          "checkpoint_every": 1, "drop_path_rate": 0.1}
    train(tiny(tmp_path, "full", **kw), tensorboard=False, verbose=False)
    crash_at(monkeypatch, after_steps=[2])  # resumed from the checkpoint of step 1
    run_until_done(tiny(tmp_path, "crashed", resume=True, **kw))
    assert_same_run(tmp_path / "full", tmp_path / "crashed")


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    data = write_mnist(tmp_path / "mnist", 64, 32)
    out = tmp_path / "run"
    argv = ["train", *RUN_FLAGS, "--data-dir", str(data), "--epochs", "2", "--out", str(out)]
    with one_thread():
        cmd_train(build_parser().parse_args(argv))
    files = sorted(p.name for p in out.iterdir())
    settings = yaml.safe_load((out / "config.yaml").read_text())
    before = {name: sha(out / name) for name in files}
    metadata, weights = read_metadata(out / "model.safetensors"), load_file(out / "model.safetensors")
    run = subprocess.run([sys.executable, "-m", "resnetkit", *argv, "--resume"], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert "resuming from step 4 of 4" in run.stdout
    assert sorted(p.name for p in out.iterdir()) == files  # no new files, no temporary ones left
    assert [name for name in files if sha(out / name) != before[name]] == []  # not one byte changed
    assert yaml.safe_load((out / "config.yaml").read_text()) == settings
    assert read_metadata(out / "model.safetensors") == metadata
    assert all(torch.equal(weights[k], v) for k, v in load_file(out / "model.safetensors").items())


def test_the_same_weights_make_the_same_file(tmp_path):
    model = resnetkit.create_model("resnet20", widths=[4, 8, 16], blocks=[1, 1, 1], in_chans=1)
    meta = {"dataset": "mnist", "classes": list("0123456789"), "mean": [0.1], "std": [0.3], "normalize": "dataset"}
    for name in "abc":
        save_weights(tmp_path / f"{name}.safetensors", model, meta)
    assert sha(tmp_path / "a.safetensors") == sha(tmp_path / "b.safetensors") == sha(tmp_path / "c.safetensors")
