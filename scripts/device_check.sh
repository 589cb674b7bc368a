#!/usr/bin/env bash
# The GPU check, one command from the repository root:  bash scripts/device_check.sh [extra pytest arguments]
#
# Runs tests/test_devices.py (guidelab on CUDA against the CPU) with a Python whose torch sees CUDA; the repository's
# .venv (CPU torch) is not it. Steps: find that Python (or $PYTHON), print torch/CUDA versions and `nvidia-smi -L`,
# install guidelab into it without touching torch (`pip install --no-deps -e .`, and what the tests need from
# pyproject.toml only where missing, with torch pinned to the installed build), then run the tests. The log, a JUnit
# report and the environment go to $OUT when it is set. The tests run even where the install fails (PYTHONPATH=src).
# Every test runs (a single GPU session should report every failure): DEVICE_CHECK_X=1 stops at the first failure.
# Exit status: pytest's (0: all passed), 3: no Python with CUDA torch found.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 3
OUTDIR="${OUT:-}"
[ -n "$OUTDIR" ] && mkdir -p "$OUTDIR"
say() { echo "device_check: $*"; }

PY=""
for cand in "${PYTHON:-}" python3 python /usr/local/bin/python3 /usr/bin/python3 /opt/conda/bin/python; do
  [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 || continue
  if "$cand" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    PY="$(command -v "$cand")"
    break
  fi
done
if [ -z "$PY" ]; then
  say "no Python with a CUDA torch found (tried \$PYTHON, python3, python, /usr/local/bin/python3, /usr/bin/python3, /opt/conda/bin/python)"
  nvidia-smi -L 2>&1 || true
  exit 3
fi
say "python $PY"
{
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version()); print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))'
  nvidia-smi -L 2>&1 || say "nvidia-smi not found"
  echo "guidelab $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)')"
} | tee ${OUTDIR:+"$OUTDIR/environment.txt"}

# What the tests import, from pyproject.toml's dependencies and the extras they use; torch is never installed here.
MISSING="$("$PY" - <<'EOF'
import importlib.metadata as md, re
text = open("pyproject.toml", encoding="utf-8").read()
def listed(key):  # the quoted items of `key = [...]` (no TOML parser needed: Python 3.10 has none)
    block = re.search(r"^" + re.escape(key) + r" = \[(.*?)\]", text, re.S | re.M)
    return re.findall(r'"([^"]+)"', block.group(1)) if block else []
wanted = listed("dependencies") + listed("diffusers") + listed("fast") + listed("metrics") + ["pytest>=8"]
missing = []
for req in wanted:
    name = re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0]
    if name.lower() == "torch":
        continue
    try:
        md.version(name)
    except md.PackageNotFoundError:
        missing.append(req)
print(" ".join(missing))
EOF
)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
PIP=(-m pip install -q --retries 1 --timeout 15)  # a machine without network fails fast instead of retrying
PIN="$(mktemp)"
"$PY" -c 'import torch; print("torch==" + torch.__version__)' >"$PIN"
if [ -n "$MISSING" ]; then
  say "installing what is missing (torch pinned to $(cat "$PIN")): $MISSING"
  # shellcheck disable=SC2086
  "$PY" "${PIP[@]}" -c "$PIN" $MISSING 2>&1 | tail -5 || say "pip could not install some of it; going on"
fi
if "$PY" "${PIP[@]}" --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
  || "$PY" "${PIP[@]}" --no-deps -e . >/dev/null 2>&1; then
  say "guidelab installed (editable, no dependencies)"
else
  say "pip install -e . failed; the tests import guidelab from src/"
fi
rm -f "$PIN"

ARGS=(-q -p no:cacheprovider --durations=15 tests/test_devices.py)
[ "${DEVICE_CHECK_X:-0}" = "1" ] && ARGS+=(-x)
"$PY" -c 'import pytest_timeout' >/dev/null 2>&1 && ARGS+=(--timeout 300)
[ -n "$OUTDIR" ] && ARGS+=(--junitxml "$OUTDIR/junit.xml")
say "GUIDELAB_TEST_DEVICE=cuda $PY -m pytest ${ARGS[*]} $*"
export GUIDELAB_TEST_DEVICE=cuda PYTHONPATH="src:tests${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$OUTDIR" ]; then
  "$PY" -m pytest "${ARGS[@]}" "$@" 2>&1 | tee "$OUTDIR/device_check.log"
  status=${PIPESTATUS[0]}
else
  "$PY" -m pytest "${ARGS[@]}" "$@"
  status=$?
fi
say "pytest exit status $status"
exit "$status"
