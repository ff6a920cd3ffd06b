"""A tiny accelerate.Accelerator run, as its own process (tests/integrations/test_accelerate.py).

    python acc_harness.py OUT [--stop-at K] [--resume | --load-state DIR] [--envkit]

A small MLP (no dropout: see below), AdamW and a step LR schedule, 2 epochs of 6 steps (3 a rank under torchrun with 2) on a fixed
synthetic data set, shuffled by Accelerate's seedable sampler, on the CPU;
``accelerator.save_state()`` every 2 steps with automatic checkpoint naming
(``OUT/checkpoints/checkpoint_<i>``, total_limit 3). ``--envkit``: ``attach(accelerator)``.
``--stop-at K``: after the save at step K print ``SAVED K`` and block until killed.
``--resume``: ``accelerator.load_state(guard_resume(OUT/checkpoints))`` (``--load-state DIR``:
``load_state(DIR)``, where only the load pre-hook guards), then skip the batches of the current
epoch already trained (Accelerate restores the RNG, not the position in the data: the loop knows
it from the folder's number). That resumes bit-exactly here; with dropout it would not: the new
DataLoader iterator draws from the restored global RNG before the first step, which the
uninterrupted run did at the epoch's start (the Trainer reloads the RNG after skipping batches).
Prints ``INIT <sha256>`` of the initial parameters first, ``WEIGHTS <sha256>`` at the end; a
refused resume prints ``REFUSED <weights digest> <error>`` and exits 3.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, set_seed

from tests.distributed.ending import end_process
from tests.integrations.runs import weights_digest

EPOCHS, ROWS, BATCH, SAVE_EVERY = 2, 24, 4, 2


def say(line: str) -> None:
    """One line in one write(2): atomic on a pipe, so two ranks' lines never interleave."""
    os.write(1, (line + "\n").encode())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--stop-at", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--envkit", action="store_true")
    p.add_argument("--load-state", help="accelerator.load_state(this folder) directly: the load pre-hook guards it")
    a = p.parse_args()
    accelerator = Accelerator(
        cpu=True,
        project_config=ProjectConfiguration(project_dir=a.out, automatic_checkpoint_naming=True, total_limit=3),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(7)
    g = torch.Generator().manual_seed(1234)
    x, y = torch.randn(ROWS, 6, generator=g), torch.randn(ROWS, 1, generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    say(f"INIT {weights_digest(model)}")
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if a.envkit:
        from envkit.integrations.accelerate import attach

        attach(accelerator)
    step = 0
    if a.resume or a.load_state:
        import envkit
        from envkit.integrations.accelerate import guard_resume

        try:
            folder = a.load_state or guard_resume(os.path.join(a.out, "checkpoints"))
            accelerator.load_state(folder)
        except envkit.EnvkitError as exc:
            say(f"REFUSED {weights_digest(model)} {type(exc).__name__}: {str(exc).splitlines()[0]}")
            return 3
        iteration = int(os.path.basename(folder).rsplit("_", 1)[1])
        accelerator.project_configuration.iteration = iteration + 1
        step = (iteration + 1) * SAVE_EVERY
        say(f"RESUME {folder} {step}")
    per_epoch = len(loader)  # each rank's share: 6 steps on one process, 3 on each of two
    for epoch in range(step // per_epoch, EPOCHS):
        loader.set_epoch(epoch)
        done = step - epoch * per_epoch
        batches = accelerator.skip_first_batches(loader, done) if done else loader
        for xb, yb in batches:
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % SAVE_EVERY == 0:
                accelerator.save_state()
                if step == a.stop_at:
                    say(f"SAVED {step}")
                    sys.stdin.read()  # the test sends SIGKILL here
    say(f"WEIGHTS {weights_digest(accelerator.unwrap_model(model))}")
    return 0


if __name__ == "__main__":
    faulthandler.enable()  # an abort prints the Python stack it hit, on stderr, which the test shows
    code = main()
    end_process(code, wait_for_peers=code == 0)  # a refusal may be one rank's: no barrier then
