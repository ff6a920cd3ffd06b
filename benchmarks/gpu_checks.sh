#!/bin/sh
# Every GPU-only check in one go, for a machine with a CUDA GPU and torch installed:
#
#     sh benchmarks/gpu_checks.sh [OUTDIR]
#
# 1. the live fingerprint on real hardware (driver, devices, cuDNN that torch loads);
# 2. a checkpoint saved from CUDA tensors: `envkit check` here (ok), against the reference
#    torch 2.0.1 / CUDA 11.8 environment (refuse), `inspect`, and `envkit.load` back;
# 3. benchmarks/gpu_resume.py: CUDA save and resume, bit-identical under deterministic algorithms;
# 4. benchmarks/gpu_nccl.py (when present): consistency check and save/resume over NCCL.
# Runs from the source tree (PYTHONPATH), so nothing needs installing beyond torch, click,
# pyyaml, packaging and xxhash.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUTDIR=${1:-${OUT:-/tmp/envkit-gpu}}
mkdir -p "$OUTDIR"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
cd "$ROOT" || exit 2
status=0

step() { echo; echo "== $*"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"

step "envkit fingerprint (live GPU)"
$PY -m envkit fingerprint || status=1
$PY -m envkit fingerprint --json -o "$OUTDIR/fingerprint-gpu.json" || status=1

step "a checkpoint saved from CUDA tensors"
CKPT="$OUTDIR/cuda_saved.pth"
$PY - "$CKPT" <<'EOF' || status=1
import sys, torch, envkit
model = torch.nn.Linear(8, 8).cuda()
envkit.save({"model": model.state_dict()}, sys.argv[1], meta={"epoch": 1, "step": 10})
state = envkit.load(sys.argv[1])
print("envkit.load ->", state["model"]["weight"].device, "equal:", torch.equal(state["model"]["weight"], model.weight.detach()))
EOF
$PY -m envkit check "$CKPT"; echo "exit $? (expected 0)"
$PY -m envkit check --against examples/reference-torch20-cu118.fingerprint.json "$CKPT"; echo "exit $? (expected 1)"
$PY -m envkit inspect "$CKPT" || status=1

step "benchmarks/gpu_resume.py"
$PY benchmarks/gpu_resume.py || status=1

if [ -f benchmarks/gpu_nccl.py ]; then
    step "benchmarks/gpu_nccl.py"
    $PY benchmarks/gpu_nccl.py || status=1
fi

echo
echo "gpu checks: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
