#!/bin/bash
# Start-up figures for `envkit check` and latest() on any Linux machine with torch, as run on the
# lent H200 (benchmarks/results/h200-startup-2026-11-27-run3.log):
#
#     bash benchmarks/startup.sh     # WORK=/tmp/envkit-startup, SIZE=8 (GB), COUNT=10000
#
# 1. benchmarks/run.py --only check with the machine's own python3 (its site-packages included);
# 2. the same checkpoint in a clean venv (python3 -m venv, envkit on a .pth, xxhash copied in),
#    41 runs against python -c pass and the standard-library floor;
# 3. latest() over COUNT small checkpoints in that venv.
set -u
R=$(cd "$(dirname "$0")/.." && pwd); cd "$R" || exit 2
W=${WORK:-/tmp/envkit-startup}; O=${OUT:-$W/out}; B=$W/bench; SIZE=${SIZE:-8}; COUNT=${COUNT:-10000}
rm -rf "$W/v" "$B"; mkdir -p "$O" "$B" "$W/bin"
export PYTHONPATH=$R PYTHONUNBUFFERED=1
exec > >(tee "$O/startup.log") 2>&1
stamp() { echo; echo "== $(date +%T) $*"; }
# a console script like the one pip writes, for the machine's python3 and for the venv
script() { printf '#!%s\nimport re\nimport sys\nfrom envkit.cli import main\nif __name__ == "__main__":\n    sys.exit(main())\n' "$1"; }
script "$(command -v python3)" > "$W/bin/envkit"; chmod +x "$W/bin/envkit"
cat > "$W/bin/times.py" <<'PYEOF'
import shlex, statistics, subprocess, sys, time
n = int(sys.argv[1]); cmds = sys.argv[2:]
ts = {c: [] for c in cmds}
for i in range(n + 1):  # round 0 warms the caches and is dropped
    for c in cmds:
        t = time.perf_counter(); subprocess.run(shlex.split(c), stdout=subprocess.DEVNULL, check=True)
        if i: ts[c].append(time.perf_counter() - t)
for c in cmds:
    v = sorted(ts[c]); print(f"median {statistics.median(v)*1000:7.1f} ms  p25 {v[len(v)//4]*1000:7.1f}  min {v[0]*1000:7.1f}  {c}")
PYEOF
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from common import STDLIB_READER; print(STDLIB_READER)" > "$W/bin/floor.py"  # the floor run.py times
printf 'import sys\nfrom pathlib import Path\nfrom envkit.checkpoint.directory import find_latest\ninfo = find_latest(Path(sys.argv[1]), "many")\nassert info.step == int(sys.argv[2]) and "torch" not in sys.modules\n' > "$W/bin/latest.py"
python3 -m compileall -q -f envkit >/dev/null
stamp "clean venv: envkit on a .pth, xxhash copied in"
python3 -m venv --without-pip "$W/v" || exit 2
VS=$("$W/v/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); echo "$R" > "$VS/envkit-src.pth"
cp -r "$(python3 -c "import xxhash, os; print(os.path.dirname(xxhash.__file__))")" "$VS/"
script "$W/v/bin/python" > "$W/v/bin/envkit"; chmod +x "$W/v/bin/envkit"
stamp "check, $SIZE GB, the machine's own python3 (benchmarks/run.py)"
timeout 300 python3 benchmarks/run.py --only check --size-gb "$SIZE" --checkpoint "$B/bench.pth" --envkit "$W/bin/envkit" --json "$O/check.json"
stamp "check, the same file, clean venv, 41 runs"
env -u PYTHONPATH "$W/v/bin/python" -X importtime "$W/v/bin/envkit" check --json "$B/bench.pth" 2>&1 >/dev/null | sort -t'|' -k2 -n | tail -14
env -u PYTHONPATH python3 "$W/bin/times.py" 41 "$W/v/bin/python -c pass" "$W/v/bin/python $W/bin/floor.py $B/bench.pth" "$W/v/bin/envkit check --json $B/bench.pth"
stamp "latest() over $COUNT, clean venv, 41 runs"
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from manager import make_many; p = Path('$B/many'); p.mkdir(); make_many(p, $COUNT)"
NEWEST=$(printf '%s/many/many_%06d.pth' "$B" "$COUNT")
env -u PYTHONPATH python3 "$W/bin/times.py" 41 "$W/v/bin/python -c pass" "$W/v/bin/python $W/bin/floor.py $NEWEST" "$W/v/bin/python $W/bin/latest.py $B/many $COUNT"
stamp done
