"""NaN injected into the loss, and Ctrl-C in the middle of training.

Both are injected with a global forward hook on the backbone (whatever the trainer looks like
inside): at the 6th training forward pass it returns NaN, or raises KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib

import torch
from faultkit import TINY_TRAIN, assert_same_state, cli, digests, one_error_line, temp_files

from irepa.models.sit import SiT
from irepa.train.checkpoint import checkpoint_damage, checkpoint_path, checkpoint_steps
from irepa.utils import io
from irepa.utils.io import file_digest


@contextlib.contextmanager
def at_training_forward(n: int, action):
    """Run ``action(output)`` (its result replaces the output) at the ``n``-th forward of a SiT in training mode."""
    seen = {"calls": 0}

    def hook(module, inputs, output):
        if not isinstance(module, SiT) or not module.training:
            return None
        seen["calls"] += 1
        return action(output) if seen["calls"] == n else None

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def poison(output):
    velocity, *rest = output if isinstance(output, tuple) else (output,)
    poisoned = velocity * float("nan")
    return (poisoned, *rest) if rest else poisoned


def interrupt(output):
    raise KeyboardInterrupt


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("irepa ")]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(reference_run, tmp_path, capsys):
    run = tmp_path / "run"
    good = checkpoint_path(run / "checkpoints", 4)
    with at_training_forward(6, poison):
        assert cli(*TINY_TRAIN, "--out", run) == 6
    (line,) = error_lines(capsys)
    assert "non-finite loss at step 6" in line and str(good) in line
    assert checkpoint_steps(run / "checkpoints") == [4] and temp_files(run) == []
    digest = file_digest(good)
    assert checkpoint_damage(good) is None
    # the run continues from the good checkpoint to exactly the uninterrupted result
    assert cli(*TINY_TRAIN, "--out", run, "--resume") == 0
    assert_same_state(checkpoint_path(run / "checkpoints", 12), checkpoint_path(reference_run[0] / "checkpoints", 12))
    assert file_digest(good) == digest  # never rewritten


def test_ctrl_c_leaves_consistent_files_and_says_what_to_resume(reference_run, tmp_path, capsys):
    run = tmp_path / "run"
    with at_training_forward(6, interrupt):
        assert cli(*TINY_TRAIN, "--out", run) == 130
    (line,) = error_lines(capsys)
    assert line == (f"irepa train: interrupted — every file written so far is complete; rerun the same command "
                    f"with --resume to continue from {checkpoint_path(run / 'checkpoints', 4)}")
    assert all(checkpoint_damage(checkpoint_path(run / "checkpoints", s)) is None
               for s in checkpoint_steps(run / "checkpoints"))
    assert temp_files(run) == []
    assert cli(*TINY_TRAIN, "--out", run, "--resume") == 0
    assert_same_state(checkpoint_path(run / "checkpoints", 12), checkpoint_path(reference_run[0] / "checkpoints", 12))


def test_ctrl_c_while_a_checkpoint_is_written_removes_it_and_says_what_to_resume(reference_run, tmp_path, capsys,
                                                                                 monkeypatch):
    """Ctrl-C arrives inside ``torch.save``'s write() (which wraps it in a RuntimeError): exit 130, the partial
    file is removed, the earlier checkpoint is untouched and named in the resume hint."""
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    real_write = io._HashingWriter.write
    seen = {"writes": 0}

    def write(self, data):
        if io.is_temp_file_of(self._fh.name, checkpoint_path(ckpts, 8)):
            seen["writes"] += 1
            if seen["writes"] == 3:  # part of the file is on disk
                seen["before"] = {k: v for k, v in digests(ckpts).items() if not io.is_temp_file(k)}
                raise KeyboardInterrupt  # what Python's SIGINT handler raises in the main thread
        return real_write(self, data)

    monkeypatch.setattr(io._HashingWriter, "write", write)
    code = cli(*TINY_TRAIN, "--out", run)
    monkeypatch.undo()
    assert code == 130, f"exit {code}; writes into the step-8 checkpoint seen: {seen['writes']}"
    assert one_error_line(capsys) == (
        "irepa train: interrupted — every file written so far is complete; rerun the same command with --resume "
        f"to continue from {checkpoint_path(ckpts, 4)}")
    assert temp_files(run) == [] and checkpoint_steps(ckpts) == [4]
    assert digests(ckpts) == seen["before"]  # step 4 and its manifest as they were
    assert cli(*TINY_TRAIN, "--out", run, "--resume") == 0
    assert_same_state(checkpoint_path(ckpts, 12), checkpoint_path(reference_run[0] / "checkpoints", 12))


def test_nan_before_the_first_checkpoint_says_there_is_none(tmp_path, capsys):
    run = tmp_path / "run"
    with at_training_forward(2, poison):
        assert cli(*TINY_TRAIN, "--out", run) == 6
    line = one_error_line(capsys)
    assert "non-finite loss at step 2" in line and "no checkpoint was written yet" in line and "None" not in line
    assert checkpoint_steps(run / "checkpoints") == []
