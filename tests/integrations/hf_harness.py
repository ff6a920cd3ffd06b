"""A tiny transformers.Trainer run, as its own process (tests/integrations/test_transformers.py).

    python hf_harness.py OUT --steps N [--stop-at K] [--resume] [--envkit] [--limit L]

Trains a config-built BERT (no hub download) on a fixed synthetic data set on the CPU, saving
``checkpoint-<step>`` every 2 steps. ``--stop-at K``: after the save at step K (and envkit's stamp,
when ``--envkit`` installs the callback) print ``SAVED K`` and block on stdin until the test kills
the process. ``--resume``: resume from ``envkit.integrations.transformers.guard_resume(OUT)``.
First print ``INIT <sha256 of the initial parameters>``, at the end ``WEIGHTS <sha256 of the final parameters>``; a refused resume prints
``REFUSED <weights digest at the refusal> <the exception's first line>`` and exits 3.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from tests.integrations.runs import weights_digest

VOCAB, SEQ, ROWS = 32, 6, 24


class Rows(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1234)
        self.ids = torch.randint(0, VOCAB, (ROWS, SEQ), generator=g)
        self.labels = torch.randint(0, 2, (ROWS,), generator=g)

    def __len__(self) -> int:
        return ROWS

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": self.labels[i]}


def tiny_model(hidden: int = 8, layers: int = 1, vocab: int = VOCAB) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=max(16, SEQ), num_labels=2)
    return BertForSequenceClassification(config)


class StopAt(TrainerCallback):
    """The test's hook, after envkit's: report the save at step K, then wait to be killed."""

    def __init__(self, step: int, envkit_callback: TrainerCallback | None) -> None:
        self.step = step
        self.envkit_callback = envkit_callback

    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == self.step:
            if self.envkit_callback is not None:
                self.envkit_callback.wait()  # the stamp is hashed in a thread: let it land first
            print(f"SAVED {state.global_step}", flush=True)
            sys.stdin.read()  # the test sends SIGKILL here
        return control


def arguments(out: str, steps: int, limit: int | None) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out, max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-2,
        save_strategy="steps", save_steps=2, save_total_limit=limit, logging_strategy="no", report_to=[],
        use_cpu=True, seed=7, dataloader_num_workers=0, disable_tqdm=True,
    )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--stop-at", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--envkit", action="store_true")
    p.add_argument("--limit", type=int)
    a = p.parse_args()
    model = tiny_model()
    print(f"INIT {weights_digest(model)}", flush=True)
    callbacks: list[TrainerCallback] = []
    if a.envkit:
        from envkit.integrations.transformers import EnvkitTrainerCallback

        callbacks.append(EnvkitTrainerCallback())
    if a.stop_at is not None:
        callbacks.append(StopAt(a.stop_at, callbacks[0] if callbacks else None))
    trainer = Trainer(model=model, args=arguments(a.out, a.steps, a.limit), train_dataset=Rows(), callbacks=callbacks)
    resume = None
    if a.resume:
        import envkit
        from envkit.integrations.transformers import guard_resume

        try:
            resume = guard_resume(a.out)
        except envkit.EnvkitError as exc:
            print(f"REFUSED {weights_digest(model)} {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
            return 3
        print(f"RESUME {resume}", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    print(f"WEIGHTS {weights_digest(model)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
