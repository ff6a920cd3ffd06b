"""`make demo`: train, check, refuse a foreign environment, resume; then lock and create the reference
environment from its environment.yml on local channels. Under a minute on a CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "demo-runs"
REFERENCE = ROOT / "examples" / "reference-torch20-cu118.fingerprint.json"
ENVKIT = [sys.executable, "-m", "envkit"]
TRAIN = [sys.executable, str(ROOT / "examples" / "train.py"), "--ckpt-dir", str(RUNS)]


def step(title: str, command: list[str], expect: int) -> None:
    shown = " ".join("envkit" if c == "envkit" and i == 2 else Path(c).name if i < 2 else c for i, c in enumerate(command))
    print(f"\n=== {title}\n$ {shown}", flush=True)
    code = subprocess.run(command, check=False, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "default"}).returncode
    if code != expect:
        sys.exit(f"demo: expected exit {expect} from that step, got {code}")
    print(f"(exit {code}, as expected)")


def main() -> None:
    shutil.rmtree(RUNS, ignore_errors=True)
    last = str(RUNS / "last.pth")
    step("1. train 3 epochs; every checkpoint is stamped with this environment", [*TRAIN, "--epochs", "3"], 0)
    step("2. may this environment resume it? (reads the stamp only: no torch import)", [*ENVKIT, "check", last], 0)
    step("3. could the reference environment (torch 2.0.1, CUDA 11.8, cuDNN 8.7) resume it?",
         [*ENVKIT, "check", "--against", str(REFERENCE), last], 1)
    step("4. the guard in train.py stops that resume before anything is unpickled",
         [*TRAIN, "--epochs", "5", "--as-environment", str(REFERENCE)], 3)
    step("5. here, the same command resumes at epoch 3 and finishes", [*TRAIN, "--epochs", "5"], 0)
    step("6. what the checkpoint says about itself", [*ENVKIT, "inspect", last], 0)
    trial_in_torch20(last)
    preemption()
    environments = ROOT / "environments"
    step("10. the environment.yml the blog post has users copy: lint explains what is wrong with it",
         [*ENVKIT, "lint", str(environments / "blog-post.yml")], 1)
    step("11. the reference environment, as envkit ships it", [*ENVKIT, "lint", str(environments / "environment.yml")], 0)
    environment()
    print("\ndemo ok: checkpoints stamped, checked, refused where they must be, resumed where they may, bit for bit;"
          " environment files linted; the reference environment locked (conda and pip) and created with its CUDA 11.8 build.")


TORCH20 = ROOT / ".venv-torch20" / "bin" / "python"


def trial_in_torch20(last: str) -> None:
    """Prove, before an upgrade (or a downgrade), that another environment loads the checkpoint bit for bit."""
    title = "6b. does torch 2.0.1 load this checkpoint with the same values? (envkit trial, in that environment's python)"
    if not TORCH20.exists():
        print(f"\n=== {title}\n(skipped: there is no .venv-torch20 here; `make .venv-torch20/.envkit-ready` creates it"
              " (torch 2.0.1, a 2.3 GB download), and the next `make demo` tries the checkpoint in it)", flush=True)
        return
    step(title, [*ENVKIT, "trial", last, "--python", str(TORCH20)], 0)


RESUMABLE = [sys.executable, str(ROOT / "examples" / "train_resumable.py"), "--epochs", "3", "--every-n-steps", "7"]


def preemption() -> None:
    """A run preempted by SIGTERM mid-epoch, resumed by the same command, equals an uninterrupted one."""
    import signal

    import torch

    reference_dir, run_dir = RUNS / "reference", RUNS / "preempted"
    step("7. an uninterrupted reference run (shuffling sampler, dropout, Adam, LR schedule)",
         [*RESUMABLE, "--dir", str(reference_dir), "--out", str(RUNS / "reference.pt"), "--log-every", "15"], 0)
    command = [*RESUMABLE, "--dir", str(run_dir), "--step-delay", "0.01"]
    print(f"\n=== 8. the same run, sent SIGTERM in the middle of its second epoch\n$ python train_resumable.py --dir {run_dir.name} ...",
          flush=True)
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert run.stdout is not None
    for line in run.stdout:
        if not line.startswith("step ") or int(line.split()[1]) % 15 == 0:
            print(line, end="")
        if line.startswith("step 45 "):
            run.send_signal(signal.SIGTERM)
            print(">>> kill -TERM", run.pid, flush=True)
    code = run.wait()
    if code != 128 + signal.SIGTERM:
        sys.exit(f"demo: expected exit 143 after SIGTERM, got {code}")
    print(f"(exit {code} = 128 + SIGTERM: saved at the step boundary, then stopped)")
    step("9. the same command again: resumes mid-epoch and finishes",
         [*command[:-2], "--out", str(RUNS / "resumed.pt"), "--log-every", "15"], 0)
    a = torch.load(RUNS / "reference.pt", weights_only=True)
    b = torch.load(RUNS / "resumed.pt", weights_only=True)
    same = all(torch.equal(t, b["model"][k]) for k, t in a["model"].items()) and all(
        torch.equal(v, b["optimizer"]["state"][i][k])
        for i, st in a["optimizer"]["state"].items() for k, v in st.items() if torch.is_tensor(v)
    )
    print(f"\nfinal weights and optimizer state of the interrupted+resumed run equal the uninterrupted run's: {same}")
    if not same:
        sys.exit("demo: the resumed run diverged")


def environment() -> None:
    """envkit's first two named uses: `envkit lock`, `envkit create environment.yml`; then the
    fingerprint of what was created and `envkit doctor`, on local copies of the spec's channels."""
    sys.path.insert(0, str(ROOT))
    from examples.local_channel import reference_channels
    from examples.local_index import Wheel, build_index, index_environment

    work = RUNS / "environment"
    work.mkdir(parents=True)
    print("\n=== 12. public channels and PyPI are not reachable from CI: the demo builds local pytorch, nvidia and"
          " conda-forge channels and a local pip index with the reference environment's packages (tiny stand-ins)")
    # linux-64's python is a stand-in that runs this machine's python, so the `pip:` part installs
    channels = reference_channels(work / "channels", ("linux-64",), host_python=sys.executable)
    index = build_index(work / "index", [Wheel("torch-summary", "1.4.5"), Wheel("torch-summary", "1.4.4")])
    mirrors = "\n".join(f'"{name}" = "{path.as_uri()}"' for name, path in channels.items())
    (work / "pyproject.toml").write_text(f"[tool.envkit.mirrors]\n{mirrors}\n")
    shutil.copyfile(ROOT / "environments" / "environment.yml", work / "environment.yml")
    print(f"environment.yml: environments/environment.yml as shipped; pip reads PIP_INDEX_URL={index}")
    print(f"$ cat pyproject.toml\n{(work / 'pyproject.toml').read_text().rstrip()}")
    env = index_environment(index, {**os.environ, "ENVKIT_CACHE_DIR": str(work / "cache"), "ENVKIT_ENVS_DIR": str(work / "envs")})
    prefix = work / "envs" / "pytorch_train_env"

    def envkit(title: str, *args: str) -> str:
        print(f"\n=== {title}\n$ envkit {' '.join(args)}", flush=True)
        done = subprocess.run([*ENVKIT, *args], check=False, cwd=work, env=env, capture_output=True, text=True)
        print((done.stderr + done.stdout).rstrip())
        if done.returncode != 0:
            sys.exit(f"demo: expected exit 0 from that step, got {done.returncode}")
        return done.stdout

    envkit("13. lock it: pytorch-cuda=11.8 in the spec makes the solve assume CUDA 11.8 (no --with-cuda);"
           " pip resolves the `pip:` part, pinned with its sha256", "lock", "-p", "linux-64")
    from envkit.conda.lock import read_lock

    pins = [f"{p.name}=={p.version} sha256:{p.sha256[:12]}..." for p in read_lock(work / "conda-lock.yml").pip]
    print(f"conda-lock.yml pins the pip part (manager: pip): {', '.join(pins) or 'NOTHING'}")
    if not pins:
        sys.exit("demo: the lock does not pin the pip part")
    envkit("14. create it from environment.yml (the lock next to it is fresh, so exactly that is installed)",
           "create", "environment.yml")
    records = sorted(p.name for p in (prefix / "conda-meta").glob("pytorch-2.0.1-*.json"))
    print(f"installed: {', '.join(records)}")
    if records != ["pytorch-2.0.1-py3.11_cuda11.8_cudnn8.7.0_0.json"]:
        sys.exit("demo: the CUDA 11.8 build of pytorch was not the one installed")
    summary = sorted(p.name for p in prefix.glob("lib/python3.11/site-packages/torch_summary-*.dist-info"))
    print(f"pip installed, exactly as locked (--no-deps --require-hashes): {', '.join(summary)}")
    if summary != ["torch_summary-1.4.5.dist-info"]:
        sys.exit("demo: the pip part was not installed as locked")
    envkit("15. the created environment's fingerprint, read from its files", "fingerprint", "--prefix", str(prefix))
    envkit("16. does it still match its lock?", "doctor", "-p", str(prefix))


if __name__ == "__main__":
    main()
