"""Faults injected into real runs and hostile files handed to every command (issue 12):
numerical divergence, a full disk, a read-only folder, a run about to be overwritten, files
that would run code, safetensors headers that lie, and every user mistake we know of. Each
ends in one line on stderr and exit code 2, with nothing lost. Crash safety under SIGKILL and
exact resume are in test_crash.py; fuzzing of the readers in test_fuzz.py."""

import contextlib
import errno
import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import idx_bytes, write_cifar_python, write_mnist
from safetensors.torch import save

import resnetkit
from resnetkit import checkpoint
from resnetkit import train as train_module
from resnetkit.cli import main as cli_main
from resnetkit.config import make_config
from resnetkit.errors import UserError
from resnetkit.train import train

PWNED_NAME = "pwned-by-test"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "resnetkit", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def main_in_process(capsys, *args) -> subprocess.CompletedProcess:
    capsys.readouterr()
    try:
        code = cli_main([str(a) for a in args])
    except SystemExit as e:  # argparse's own exit
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def one_line_error(run, *expected: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "warning" not in run.stderr.lower(), run.stderr  # no library warning leaks through
    for text in expected:
        assert text in run.stderr, (text, run.stderr)


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def tiny(tmp_path: Path, **kw):
    folder = tmp_path / "mnist"
    if not folder.exists():
        write_mnist(folder, 256, 64)
    base = {"model": "resnet20", "widths": [4, 8, 16], "blocks": [1, 1, 1], "data": "mnist",
            "data_dir": str(folder), "epochs": 2, "batch_size": 32, "lr": 0.05, "precision": "fp32",
            "channels_last": False, "log_every": 2, "out": str(tmp_path / "run")}
    return make_config({**base, **kw})


TINY_FLAGS = ["--widths", 4, 8, 16, "--blocks", 1, 1, 1, "--data", "mnist", "--batch-size", 32,
              "--precision", "fp32", "--no-tensorboard"]


class Evil:
    """Unpickling this runs a shell command that leaves a marker file behind."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(tmp_path):
    """A .pt whose unpickling would run a command, the marker it would create, and a folder
    holding it as a run's checkpoint.pt."""
    marker = tmp_path / PWNED_NAME
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil(marker), "model_name": "resnet20"}, path)
    run = tmp_path / "evil-run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(path.read_bytes())
    return path, run, marker


# --- 3. safe loading -----------------------------------------------------------------------


def test_a_pickle_that_runs_code_is_refused_by_every_command(tmp_path, hostile):
    path, run_dir, marker = hostile
    mnist = write_mnist(tmp_path / "m", 64, 32)
    image_dir = tmp_path / "imgs"
    image_dir.mkdir()
    cases = [
        ("eval", path, "--data", "mnist", "--data-dir", mnist),
        ("predict", path, image_dir),
        ("predict", path, "--model", "resnet18", image_dir),
        ("export", path, "--out", tmp_path / "x.onnx"),
        ("train", "--init", path, "--max-steps", 1, "--data-dir", mnist, "--out", tmp_path / "t1", *TINY_FLAGS),
        ("train", "--resume", "--max-steps", 1, "--data-dir", mnist, "--out", run_dir, *TINY_FLAGS),
    ]
    for args in cases:
        run = cli(*args)
        # Our own words, naming the file and what it asked for; not PyTorch's advice to set
        # weights_only=False, which is exactly what must not be done with such a file.
        one_line_error(run, "refusing to load", path.name if "--resume" not in args else "checkpoint.pt",
                       "posix.system")
        assert "weights_only" not in run.stderr
        assert not marker.exists(), args


def test_report_never_unpickles(tmp_path, hostile):
    """report reads a run's folder; a hostile checkpoint.pt beside a finished run is not opened."""
    _, _, marker = hostile
    cfg = tiny(tmp_path, max_steps=2, epochs=1)
    train(cfg, tensorboard=False, verbose=False)
    run_dir = Path(cfg.out)
    (run_dir / "checkpoint.pt").write_bytes((tmp_path / "evil.pt").read_bytes())
    run = cli("report", run_dir, "--out", tmp_path / "report.html")
    assert run.returncode in (0, 2), run.stderr
    assert not marker.exists()


def test_a_crafted_cifar_pickle_is_refused(tmp_path):
    root = write_cifar_python(tmp_path / "c", n_per_batch=8)
    marker = tmp_path / PWNED_NAME
    batch = next(root.rglob("data_batch_1"))
    batch.write_bytes(pickle.dumps(Evil(marker)))
    run = cli("train", "--data", "cifar10", "--data-dir", root, "--max-steps", 1, "--out", tmp_path / "o",
              "--no-tensorboard")
    one_line_error(run, "data_batch_1", "posix.system")
    assert not marker.exists()


def safetensors_bytes(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


@pytest.mark.parametrize("name, blob, expected", [
    ("huge-header", safetensors_bytes({}, length=10**15), "not a"),
    ("offset-past-end", safetensors_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                          b"\0" * 8), "not a"),
    ("size-mismatch", safetensors_bytes({"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 8]}},
                                        b"\0" * 8), "not a"),
    ("unknown-dtype", safetensors_bytes({"w": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}},
                                        b"\0" * 8), "not a"),
    ("overlap", safetensors_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                                  b"\0" * 12), "not a"),
    ("unknown-model", save({"w": torch.zeros(2)}, metadata={"model_name": "resnet999", "model_args": "{}"}),
     "unknown model 'resnet999'"),
    ("impossible-args", save({"w": torch.zeros(2)},
                             metadata={"model_name": "resnet20", "model_args": '{"widths": [-3, 8, 16]}'}),
     "cannot be built"),
    ("bad-arg-name", save({"w": torch.zeros(2)},
                          metadata={"model_name": "resnet20", "model_args": '{"colour": 1}'}),
     "cannot be built"),
    ("other-model", None, "do not fit resnet20: unexpected layer1.3"),
])
def test_safetensors_that_lie_are_refused(tmp_path, name, blob, expected):
    path = tmp_path / f"{name}.safetensors"
    if blob is None:  # resnet32's weights under resnet20's metadata
        tensors = {k: v.contiguous() for k, v in resnetkit.create_model("resnet32").state_dict().items()}
        blob = save(tensors, metadata={"model_name": "resnet20", "model_args": "{}"})
    path.write_bytes(blob)
    with pytest.raises(UserError) as e:
        checkpoint.load(path)
    assert path.name in str(e.value) and expected in str(e.value), str(e.value)
    one_line_error(cli("eval", path), path.name, expected)


# --- 5. numerical faults -------------------------------------------------------------------


def test_divergence_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """The 6th training forward returns NaN: the run stops naming step 6, checkpoint.pt still
    holds step 4 (--checkpoint-every 2) with finite weights, and no final weights are written."""
    calls = {"n": 0}
    build = train_module.build_model

    def poisoned(*a, **kw):
        model = build(*a, **kw)

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] >= 6:
                    return output * float("nan")
            return output
        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_module, "build_model", poisoned)
    cfg = tiny(tmp_path, checkpoint_every=2, log_every=100)
    with pytest.raises(UserError) as e:
        train(cfg, tensorboard=False, verbose=False)
    msg = str(e.value)
    assert "loss is nan at step 6" in msg and "lower --lr" in msg and "--max-grad-norm" in msg
    assert "checkpoint.pt) is kept" in msg
    ckpt = checkpoint.load_checkpoint(Path(cfg.out) / "checkpoint.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (Path(cfg.out) / "model.safetensors").exists()


def test_max_grad_norm_bounds_the_update(tmp_path, monkeypatch):
    """Plain SGD (no momentum, decay or EMA; cosine starts at the full lr) moves the weights by
    lr x the clipped gradient, so one step moves them by exactly lr x max_grad_norm in L2."""
    starts = []
    build = train_module.build_model

    def capture(*a, **kw):
        model = build(*a, **kw)
        starts.append({k: v.clone() for k, v in model.named_parameters()})
        return model

    monkeypatch.setattr(train_module, "build_model", capture)
    moved = {}
    for clip in (0.0, 0.01):
        cfg = tiny(tmp_path, max_steps=1, momentum=0.0, nesterov=False, weight_decay=0.0, ema=0.0, lr=0.5,
                   schedule="cosine", warmup=0, max_grad_norm=clip, out=str(tmp_path / f"clip{clip}"))
        train(cfg, tensorboard=False, verbose=False)
        end = resnetkit.load(Path(cfg.out) / "model.safetensors").state_dict()
        moved[clip] = torch.sqrt(sum(((end[k] - v) ** 2).sum() for k, v in starts[-1].items())).item()
    assert moved[0.01] == pytest.approx(0.5 * 0.01, rel=1e-3)
    assert moved[0.0] > 20 * moved[0.01]  # unclipped, the gradient norm here is far above 0.01


# --- 6. resource faults --------------------------------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(where: Path, options: str):
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path):
    """A real process on a real full disk: a tmpfs with room for one checkpoint but not for the
    new one beside it. The run ends with one line, and the previous checkpoint still loads."""
    mnist = write_mnist(tmp_path / "m", 256, 64)
    probe = tmp_path / "probe"
    assert cli("train", "--max-steps", 1, "--epochs", 1, "--data-dir", mnist, "--out", probe,
               "--widths", 32, 64, 128, "--blocks", 2, 2, 2, *TINY_FLAGS[8:]).returncode == 0
    size = (probe / "checkpoint.pt").stat().st_size
    with mounted_tmpfs(tmp_path / "disk", f"size={int(1.5 * size) // 4096 * 4096 + 64 * 1024}") as disk:
        out = disk / "run"
        run = cli("train", "--epochs", 2, "--data-dir", mnist, "--out", out, "--widths", 32, 64, 128,
                  "--blocks", 2, 2, 2, *TINY_FLAGS[8:])
        one_line_error(run, "checkpoint.pt", "No space left on device", "the previous version is intact")
        ckpt = checkpoint.load_checkpoint(out / "checkpoint.pt")
        assert ckpt["step"] == 8  # the end of epoch 1 of 256 images in batches of 32
        assert not list(out.glob(".*.tmp"))  # the partial file was removed


def test_disk_full_during_a_weights_write_keeps_the_previous_file(tmp_path, monkeypatch):
    model = resnetkit.create_model("resnet20")
    path = tmp_path / "model.safetensors"
    checkpoint.save_weights(path, model)
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(UserError, match="No space left on device; the previous version is intact"):
        checkpoint.save_weights(path, resnetkit.create_model("resnet20"))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_a_read_only_output_folder_is_one_line(tmp_path):
    mnist = write_mnist(tmp_path / "m", 64, 32)
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        run = cli("train", "--max-steps", 1, "--data-dir", mnist, "--out", ro / "run", *TINY_FLAGS)
        one_line_error(run, str(ro / "run"), "Read-only file system")
        run = cli("train", "--max-steps", 1, "--data-dir", mnist, "--out", ro, *TINY_FLAGS)
        one_line_error(run, str(ro), "not writable")


def test_a_finished_run_is_not_overwritten_without_overwrite(tmp_path):
    mnist = write_mnist(tmp_path / "m", 64, 32)
    out = tmp_path / "run"
    base = ["--max-steps", 2, "--data-dir", mnist, "--out", out, *TINY_FLAGS]
    assert cli("train", *base).returncode == 0
    before = digest(out)
    one_line_error(cli("train", *base, "--model", "resnet32", "--lr", 0.01), str(out), "already holds a run",
                   "--overwrite")
    assert digest(out) == before
    run = cli("train", *base, "--lr", 0.01, "--overwrite")
    assert run.returncode == 0, run.stderr
    assert digest(out)["model.safetensors"] != before["model.safetensors"]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_a_folder_another_process_trains_in_is_refused_and_freed_after(tmp_path):
    """Two processes resuming one run would interleave their checkpoints and log lines: the
    second is refused while the first holds the folder, in one line, touching nothing."""
    mnist = write_mnist(tmp_path / "m", 64, 32)
    out = tmp_path / "run"
    base = ["--max-steps", 2, "--data-dir", mnist, "--out", out, *TINY_FLAGS]
    assert cli("train", *base).returncode == 0
    before = digest(out)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
                               "print('held', flush=True); time.sleep(60)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        one_line_error(cli("train", *base, "--resume"), str(out), "in use")
        assert digest(out) == before
    finally:
        holder.kill()
        holder.wait()
    assert cli("train", *base, "--resume").returncode == 0  # the kernel dropped the lock with its holder
    assert digest(out) == before  # and resuming a finished run changes nothing


def test_a_run_that_fails_releases_its_folder(tmp_path, monkeypatch):
    """A run that stops with an error (here: a NaN loss) frees the folder for the next attempt
    in the same process, as an experiment's next run or a notebook's retry needs."""
    build = train_module.build_model

    def poisoned(*a, **kw):
        model = build(*a, **kw)
        model.register_forward_hook(lambda module, inputs, output: output * float("nan"))
        return model

    with monkeypatch.context() as m:
        m.setattr(train_module, "build_model", poisoned)
        with pytest.raises(UserError, match="diverged"):
            train(tiny(tmp_path, max_steps=4), tensorboard=False, verbose=False)
    assert train(tiny(tmp_path, max_steps=2, overwrite=True), tensorboard=False, verbose=False)["steps"] == 2


def test_experiment_copies_share_runs_and_wait_for_each_other(tmp_path, monkeypatch):
    """Two copies of one experiment command (one per core): each passes over the runs the
    other holds and waits for them before drawing its tables, so neither trains a run twice."""
    from resnetkit import experiments
    from resnetkit.rundir import RunInUse

    held = {("b", 0): 2}  # "b" is busy in another copy for two attempts
    calls = []

    def fake_run_one(name, kwargs, common, seed, out, resume, quiet):
        calls.append(name)
        if held.get((name, seed), 0) > 0:
            held[(name, seed)] -= 1
            raise RunInUse("busy")
        return {"name": name, "seed": seed}

    monkeypatch.setattr(experiments, "run_one", fake_run_one)
    monkeypatch.setattr(experiments.time, "sleep", lambda s: None)
    runs = experiments.run_many([("a", {}, 0), ("b", {}, 0), ("c", {}, 0)], {}, tmp_path, True, True)
    assert [r["name"] for r in runs] == ["a", "b", "c"]  # results in job order
    assert calls == ["a", "b", "c", "b", "b"]  # b passed over, the others trained, then b waited for


# --- 7. every user mistake: one line, exit 2 -------------------------------------------------


def test_every_user_mistake_is_one_line_and_exit_2(tmp_path, capsys):
    mnist = write_mnist(tmp_path / "m", 64, 32)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    r32 = tmp_path / "r32.safetensors"
    checkpoint.save_weights(r32, resnetkit.create_model("resnet32"))
    r32_pth = tmp_path / "r32.pth"
    torch.save(resnetkit.create_model("resnet32").state_dict(), r32_pth)
    yaml_typo = tmp_path / "typo.yaml"
    yaml_typo.write_text("learning_rat: 0.1\nepoch: 3\n")
    yaml_type = tmp_path / "type.yaml"
    yaml_type.write_text("epochs: three\n")
    truncated = write_mnist(tmp_path / "t", 32, 8, gz=False)
    images = truncated / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    wrong = write_mnist(tmp_path / "w", 32, 8, gz=False)
    (wrong / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(31, np.uint8)))
    run_r20 = tmp_path / "r20run"
    assert cli("train", "--max-steps", 1, "--data-dir", mnist, "--out", run_r20, *TINY_FLAGS).returncode == 0
    out = ["--out", tmp_path / "o", "--max-steps", 1, "--no-tensorboard"]
    cases = [
        (["train", "--model", "resnet21", *out], ["unknown model 'resnet21'", "did you mean", "resnet20"]),
        (["summary", "resnt50"], ["unknown model 'resnt50'", "resnet50"]),
        (["train", "--lr", "abc", *out], ["--lr", "invalid float value: 'abc'"]),
        (["train", "--batch-size", "-3", *out], ["--batch-size must be positive"]),
        (["train", "--momentum", "0", *out], ["--nesterov needs --momentum above 0"]),
        (["train", "--shortcut", "D", *out], ["--shortcut must be one of A, B, C, none, got 'D'"]),
        (["train", "--modle", "resnet20", *out], ["unrecognized arguments: --modle", "did you mean --model?"]),
        (["tran"], ["invalid choice: 'tran'"]),
        (["train", "--data", "mnist", "--data-dir", tmp_path / "nowhere", *out], ["nowhere"]),
        (["train", "--data", "mnist", "--data-dir", truncated, *out], ["train-images-idx3-ubyte"]),
        (["train", "--data", "mnist", "--data-dir", wrong, *out], ["label count 31"]),
        (["train", "--data", "folder", "--data-dir", tmp_path / "nofolder", *out], ["nofolder"]),
        (["train", "--config", tmp_path / "missing.yaml", *out], ["missing.yaml"]),
        (["train", "--recipe", "paper-mnist", *out], ["unknown recipe"]),
        (["train", "--ema", "1.5", *out], ["--ema must be in [0, 1)"]),
        (["train", "--erase", "2", *out], ["--erase must be a probability"]),
        (["train", "--config", yaml_typo, *out], ["typo.yaml", "did you mean 'epochs'"]),
        (["train", "--config", yaml_type, *out], ["type.yaml", "'epochs' in", "must be int"]),
        (["eval", notes, "--data", "mnist", "--data-dir", mnist], ["notes.txt"]),
        (["eval", tmp_path / "absent.safetensors"], ["absent.safetensors"]),
        (["predict", r32, notes], ["notes.txt"]),
        (["export", notes, "--out", tmp_path / "x.onnx"], ["notes.txt"]),
        (["report", notes], ["notes.txt"]),
        (["train", "--init", r32, "--data", "mnist", "--data-dir", mnist, "--batch-size", 32, *out],
         ["r32.safetensors", "do not fit resnet20", "layer1.3"]),
        (["predict", r32_pth, "--model", "resnet20", notes], ["r32.pth", "layer1.3"]),
        (["train", "--resume", "--model", "resnet32", "--data", "mnist", "--data-dir", mnist, "--out", run_r20,
          "--max-steps", 3, "--batch-size", 32, "--no-tensorboard"], ["holds resnet20, not resnet32"]),
        (["train", "--data-dir", mnist, "--data", "mnist", "--out", run_r20, *TINY_FLAGS],
         ["already holds a run"]),
    ]
    # In-process through cli.main, what `python -m resnetkit` runs, to spare 24 interpreter starts.
    for args, expected in cases:
        one_line_error(main_in_process(capsys, *args), *expected)
    run = cli("--debug", "summary", "resnt50")
    assert run.returncode != 0 and "Traceback" in run.stderr
