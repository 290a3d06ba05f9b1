"""The training loop, on accelerate: CPU, one GPU or many (``accelerate launch``), unchanged.

Top to bottom: hold the run folder (an OS lock: a second ``irepa train`` or ``--resume`` on the same
``--out`` is refused while this one lives); find the checkpoint to resume, if any; build the run
(:class:`~irepa.train.run.Run`: codec, objective, backbone with its alignment head, EMAs,
optimiser, REPA-E's step) and restore it; then for every step: ``run.step`` -> log, sample grid,
checkpoint. Randomness of a step comes from a generator seeded by (seed, step, rank), so resuming
is exact without RNG bookkeeping; scalars stay on the device between log steps.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from irepa.config import RunConfig, save_config, to_dict
from irepa.errors import TrainingDiverged
from irepa.utils.images import make_grid, save_png
from irepa.utils.io import hold_folder

from .checkpoint import atomic_torch_save, last_good_checkpoint_note, load_resume_checkpoint, prune_checkpoints
from .divergence import check_finite
from .logger import ScalarLogger, StepLog
from .run import Run, make_accelerator, step_generator

__all__ = ["TrainResult", "TrainingDiverged", "train", "step_generator"]

OWNED_RUN_FIX = "wait for that run to finish (or stop it), then rerun with --resume; or train into another --out"


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)  # total loss per optimizer step of this call
    checkpoint: Path | None = None


def grid_labels(cfg: RunConfig) -> torch.Tensor:
    """The classes of the periodic sample grid: ``grid_classes`` rows spread over the labels."""
    rows = min(cfg.train.grid_classes, cfg.model.num_classes)
    classes = torch.linspace(0, cfg.model.num_classes - 1, rows).round().long()
    return classes.repeat_interleave(cfg.train.grid_per_class)


def train(cfg: RunConfig, resume: bool | str | None = None, stop_after: int | None = None, dataset=None,
          init_from: str | Path | None = None) -> TrainResult:
    """Train per ``cfg``. ``resume``: see :func:`irepa.train.checkpoint.resolve_resume` (True/"latest",
    "auto" for the newest intact checkpoint, or a path).

    ``dataset`` replaces the one ``cfg.data`` describes (see :meth:`Run.build`). ``stop_after`` ends
    this call after that many optimizer steps (a checkpoint is written), which is how a job
    scheduler's time limit or a test's interruption looks to the loop. ``init_from`` (a run folder or
    checkpoint) starts a new run from that run's weights, EMAs and projectors (see :meth:`Run.build`).
    """
    t_cfg = cfg.train
    run_dir = Path(cfg.out)
    ckpt_dir = run_dir / "checkpoints"
    accelerator = make_accelerator(cfg)
    is_main = accelerator.is_main_process

    # ---- one writer per run folder, for the run's whole life (the kernel releases it however we exit)
    owner = hold_folder(run_dir, "a running irepa train", OWNED_RUN_FIX) if is_main else contextlib.nullcontext()
    with owner:
        # ---- build the run, restored from its checkpoint when resuming
        state = load_resume_checkpoint(ckpt_dir, resume)  # "auto" skips a newest file torch.load cannot read
        run = Run.build(cfg, accelerator, dataset, state=state, init_from=init_from)
        del state  # the weights now live in the modules; do not hold a second copy for the whole run
        batches = run.batches()
        if is_main:
            save_config(cfg, run_dir / "config.yaml")
        logger = ScalarLogger(run_dir, t_cfg.report_to, to_dict(cfg), enabled=is_main)
        logger.truncate_after(run.steps_done)

        def save_checkpoint() -> Path:
            path = ckpt_dir / f"step_{run.steps_done:07d}.pt"
            if is_main:
                atomic_torch_save(run.state_dict(), path)
                prune_checkpoints(ckpt_dir, t_cfg.keep_checkpoints)
            accelerator.wait_for_everyone()
            return path

        def save_grid() -> None:
            if is_main:
                labels = grid_labels(cfg)
                images = run.generator().generate(labels, list(range(len(labels))), cfg.sample)
                grid = make_grid(images, nrow=t_cfg.grid_per_class)
                save_png(grid, run_dir / "samples" / f"step_{run.steps_done:07d}.png")

        step_log = StepLog()
        losses: list[float] = []

        def read_log() -> None:
            """Bring the window's scalars to the host; stop if anything diverged; write the log row."""
            nonlocal tic
            steps, rows = step_log.flush()
            if not rows:
                return
            if t_cfg.mixed_precision != "fp16":  # under fp16 the loss scaler skips overflowing steps itself
                check_finite(steps, rows, last_good_checkpoint_note(ckpt_dir))
            losses.extend(r["loss"] for r in rows)
            elapsed = time.perf_counter() - tic
            scalars = {k: float(np.nanmean([r.get(k, np.nan) for r in rows])) for k in rows[-1] if k != "lr"}
            scalars.update(lr=rows[-1]["lr"], steps_per_s=len(rows) / max(elapsed, 1e-9))
            logger.log(steps[-1], scalars)
            bar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
            tic = time.perf_counter()

        # ---- the loop
        end_step = t_cfg.steps if stop_after is None else min(t_cfg.steps, run.steps_done + stop_after)
        last_ckpt = None
        bar = tqdm(total=t_cfg.steps, initial=run.steps_done, desc="train", disable=not is_main, dynamic_ncols=True)
        tic = time.perf_counter()
        while run.steps_done < end_step:
            lr, scalars = run.step(batches)  # batch -> codec -> targets -> objective.loss -> step, EMA
            step = run.steps_done
            step_log.add(step, lr, scalars)
            bar.update(1)

            at_ckpt = step % t_cfg.ckpt_every == 0 or step == end_step
            at_grid = t_cfg.sample_every > 0 and (step % t_cfg.sample_every == 0 or step == t_cfg.steps)
            if step % t_cfg.log_every == 0 or at_ckpt or at_grid:
                read_log()
            if at_grid:
                save_grid()
            if at_ckpt:
                last_ckpt = save_checkpoint()
        bar.close()
        logger.close()
    return TrainResult(run_dir=run_dir, step=run.steps_done, losses=losses, checkpoint=last_ckpt)
