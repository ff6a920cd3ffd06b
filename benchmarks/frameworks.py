"""HF Trainer checkpoint folders (issue 12): what stamping costs, what guard_resume costs.

    python benchmarks/frameworks.py                 # both, default sizes
    python benchmarks/frameworks.py --only save --hidden 768 --layers 4 --save-runs 3

Targets (ratios, so that the machine's speed cancels out):
- stamping a ``checkpoint-<step>/`` adds <= 5% to the Trainer's own save of that folder
  (``Trainer._save_checkpoint``: model.safetensors, optimizer.pt, scheduler.pt, rng_state.pth,
  trainer_state.json; a config-built BERT, one AdamW step so the optimizer holds its state): what
  ``EnvkitTrainerCallback.on_save`` blocks training for (it starts the stamp in a thread), against
  the save. Also shown: the thread's time after on_save returns (hashing every file, fsync, then
  ``envkit.json``), and ``stamp_folder`` run synchronously (``background=False``) against the
  save. One process, each run after ``os.sync()``, synchronous and background runs alternating;
- ``guard_resume`` over an output_dir of 100 stamped checkpoint folders <= 2x ``envkit check``
  of one of them (whole processes, interleaved, medians). ``guard_resume`` lists the folders,
  verifies the newest (every file re-hashed) and runs the guard; ``check`` reads one stamp.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fresh_bytecode, print_results

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]

WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}

SAVE_WORKER = r"""
import json, os, shutil, sys, time
sys.path[:0] = [{root!r}]
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerControl, TrainingArguments
from envkit.checkpoint.folder import stamp_folder
from envkit.integrations.transformers import EnvkitTrainerCallback, checkpoint_meta
hidden, layers, runs, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8, intermediate_size=4 * hidden, num_labels=2)
model = BertForSequenceClassification(config)
rows = [{{"input_ids": torch.randint(0, 1000, (16,)), "labels": torch.tensor(i % 2)}} for i in range(4)]
args = TrainingArguments(output_dir=work, max_steps=1, per_device_train_batch_size=4, save_strategy="no",
                         logging_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=rows)
trainer.train()  # one step: the optimizer has its state, as at any checkpoint
callback = EnvkitTrainerCallback()  # background, the default
times = {{"save (sync runs)": [], "stamp_folder": [], "save (background runs)": [], "on_save, background": [], "thread after on_save": []}}
size = 0
for i in range(2 * runs + 2):  # the first two warm up; then sync and background runs alternate
    trainer.state.global_step = 100 + i
    folder = os.path.join(work, f"checkpoint-{{100 + i}}")
    os.sync()
    t0 = time.perf_counter()
    trainer._save_checkpoint(model, trial=None)
    t1 = time.perf_counter()
    if i % 2 == 0:
        stamp_folder(folder, meta=checkpoint_meta(trainer.state), framework="transformers")
        t2 = t3 = time.perf_counter()
    else:
        callback.on_save(trainer.args, trainer.state, TrainerControl())
        t2 = time.perf_counter()
        callback.wait()
        t3 = time.perf_counter()
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
    assert os.path.exists(os.path.join(folder, "envkit.json"))
    shutil.rmtree(folder)
    if i >= 2:
        if i % 2 == 0:
            times["save (sync runs)"].append(t1 - t0)
            times["stamp_folder"].append(t2 - t1)
        else:
            times["save (background runs)"].append(t1 - t0)
            times["on_save, background"].append(t2 - t1)
            times["thread after on_save"].append(t3 - t2)
print(json.dumps({{"times": times, "bytes": size, "params": sum(p.numel() for p in model.parameters())}}))
"""

MAKE_FOLDERS = r"""
import os, shutil, sys
sys.path[:0] = [{root!r}]
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from envkit.checkpoint.folder import stamp_folder
n, out = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                 intermediate_size=64, max_position_embeddings=32, num_labels=2))
rows = [{{"input_ids": torch.randint(0, 64, (8,)), "labels": torch.tensor(i % 2)}} for i in range(4)]
args = TrainingArguments(output_dir=out, max_steps=1, per_device_train_batch_size=4, save_strategy="steps", save_steps=1,
                         logging_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
Trainer(model=model, args=args, train_dataset=rows).train()
one = os.path.join(out, "checkpoint-1")
for step in range(2, n + 1):
    shutil.copytree(one, os.path.join(out, f"checkpoint-{{step}}"))
for step in range(1, n + 1):
    stamp_folder(os.path.join(out, f"checkpoint-{{step}}"), meta={{"step": step}}, framework="transformers")
"""

GUARD_RESUME = "import sys\nfrom envkit.integrations.resume import guard_resume\nguard_resume(sys.argv[1])\n"
GUARD_RESUME_HF = "import sys\nfrom envkit.integrations.transformers import guard_resume\nguard_resume(sys.argv[1])\n"


def _env() -> dict[str, str]:
    return {**os.environ, **WORKER_ENV, "PYTHONPATH": str(ROOT)}


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=ROOT, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"benchmark command failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr.decode()[-2000:]}")
    return elapsed


def medians(candidates: dict[str, list[str]], runs: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Interleaved: run i of every candidate before run i+1 of any; one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for cmd in candidates.values():
        timed(cmd)
    for _ in range(runs):
        for name, cmd in candidates.items():
            times[name].append(timed(cmd))
    return {name: statistics.median(v) for name, v in times.items()}, times


def bench_save(work: Path, hidden: int, layers: int, runs: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    out = subprocess.run([PY, "-c", SAVE_WORKER.format(root=str(ROOT)), str(hidden), str(layers), str(runs), str(work)],
                         check=True, capture_output=True, text=True, env=_env(), cwd=ROOT)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    times = doc["times"]
    mb = doc["bytes"] / 2**20
    m = {f"Trainer._save_checkpoint ({mb:.0f} MiB, {doc['params'] / 1e6:.0f}M params)":
         statistics.median(times["save (sync runs)"] + times["save (background runs)"])}
    m.update({name: statistics.median(v) for name, v in times.items() if not name.startswith("save")})
    m["ratio on_save blocking/save, background (target <= 0.05)"] = statistics.median(
        b / t for b, t in zip(times["on_save, background"], times["save (background runs)"], strict=True))
    m["ratio stamp_folder/save, synchronous"] = statistics.median(
        s / t for s, t in zip(times["stamp_folder"], times["save (sync runs)"], strict=True))
    return m, times


def bench_resume(work: Path, folders: int, runs: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    out = work / "output_dir"
    print(f"writing {folders} stamped checkpoint folders to {out} ...", flush=True)
    subprocess.run([PY, "-c", MAKE_FOLDERS.format(root=str(ROOT)), str(folders), str(out)], check=True, env=_env(), cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    newest = out / f"checkpoint-{folders}"
    m, raw = medians(
        {
            f"guard_resume, output_dir of {folders} folders": [PY, "-c", GUARD_RESUME, str(out)],
            "envkit check, one of those folders": [PY, "-m", "envkit", "check", str(newest)],
            f"guard_resume from the transformers module ({folders})": [PY, "-c", GUARD_RESUME_HF, str(out)],
            "python -c pass": [PY, "-c", "pass"],
        },
        runs,
    )
    m["ratio guard_resume/check (target <= 2)"] = m[f"guard_resume, output_dir of {folders} folders"] / m["envkit check, one of those folders"]
    shutil.rmtree(out)
    return m, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--save-runs", type=int, default=5)
    parser.add_argument("--folders", type=int, default=100)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--only", choices=["save", "resume"])
    parser.add_argument("--workdir", type=Path, help="where to write (default: a temporary folder under the repo)")
    parser.add_argument("--json", type=Path, help="also write the figures (medians, ratios and every run) to this JSON file")
    args = parser.parse_args()
    fresh_bytecode()
    results: dict[str, dict[str, float]] = {}
    raw: dict[str, dict[str, list[float]]] = {}
    base = args.workdir or ROOT / "bench-out"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        if args.only in (None, "save"):
            results["HF checkpoint save"], raw["save"] = bench_save(Path(tmp), args.hidden, args.layers, args.save_runs)
        if args.only in (None, "resume"):
            results["guard_resume"], raw["resume"] = bench_resume(Path(tmp), args.folders, args.runs)
    print_results(f"medians; {args.save_runs} saves, {args.runs} runs of each process; {os.cpu_count()} cores", results, 56)
    if args.json:
        doc = {"cores": os.cpu_count(), "python": sys.version.split()[0], "args": {k: str(v) for k, v in vars(args).items()},
               **results, "runs": raw}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
