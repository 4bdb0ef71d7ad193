#!/bin/sh
# GPU check of issue 17 in one command: the CUDA test subset (tests/gpu), the GPU benchmarks
# (benchmarks/bench_gpu.py, then bench_gpu_device_time.py), one JSON report. Sized for < 8
# minutes on one GPU (about 2.5 minutes on an H100).
#
#   sh scripts/gpu-check.sh [OUT_DIR] [--quick]
#
# OUT_DIR (default gpu-check-<date>) must not exist; it receives tests.log, tests.xml,
# bench.json, bench.log, device-time.json, device-time.log, nvidia-smi.txt and report.json.
# PYTHON (default: python3) must have
# dualsparse and its gpu extra (triton) installed; DUALSPARSE_DATA may point at PTB for the
# ptb-egru timing (a synthetic corpus of PTB's size is used otherwise).
set -u
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
QUICK=${2:-}
PY=${PYTHON:-python3}
if [ -e "$OUT" ]; then
    echo "gpu-check: OUT_DIR $OUT exists; refusing to overwrite a result" >&2
    exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: no CUDA device visible to $PY (torch.cuda.is_available() is False)" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
# compiled Triton only: an inherited TRITON_INTERPRET=1 would run the kernels on the CPU
unset TRITON_INTERPRET
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}  # deterministic cuBLAS (resume test)
start=$(date +%s)
timeout 240 "$PY" -m pytest -q -ra tests/gpu -p no:cacheprovider --timeout=200 \
    --junitxml="$OUT/tests.xml" >"$OUT/tests.log" 2>&1
tests_rc=$?
tests_s=$(( $(date +%s) - start ))
tail -n 30 "$OUT/tests.log"
start=$(date +%s)
PYTHONUNBUFFERED=1 timeout 230 "$PY" benchmarks/bench_gpu.py --out "$OUT/bench.json" $QUICK \
    >"$OUT/bench.log" 2>&1
bench_rc=$?
bench_s=$(( $(date +%s) - start ))
tail -n 20 "$OUT/bench.log"
start=$(date +%s)
PYTHONUNBUFFERED=1 timeout 120 "$PY" benchmarks/bench_gpu_device_time.py \
    --out "$OUT/device-time.json" >"$OUT/device-time.log" 2>&1
device_rc=$?
device_s=$(( $(date +%s) - start ))
tail -n 5 "$OUT/device-time.log"
"$PY" - "$OUT" "$tests_rc" "$tests_s" "$bench_rc" "$bench_s" "$device_rc" "$device_s" <<'PYEOF'
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, tests_rc, tests_s, bench_rc, bench_s, device_rc, device_s = Path(sys.argv[1]), *sys.argv[2:]
report = {"tests": {"returncode": int(tests_rc), "seconds": int(tests_s)},
          "bench": {"returncode": int(bench_rc), "seconds": int(bench_s)},
          "device_time": {"returncode": int(device_rc), "seconds": int(device_s)}}
try:
    suite = ET.parse(out / "tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    report["tests"].update({k: int(suite.get(k, 0)) for k in
                            ("tests", "failures", "errors", "skipped")})
    report["tests"]["failed"] = [
        f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None]
except (OSError, ET.ParseError, AttributeError) as exc:
    report["tests"]["parse_error"] = repr(exc)
for key, name in (("bench", "bench.json"), ("device_time", "device-time.json")):
    try:
        report[key].update(json.loads((out / name).read_text()))
    except (OSError, ValueError) as exc:
        report[key]["parse_error"] = repr(exc)
(out / "report.json").write_text(json.dumps(report, indent=2))
print(f"gpu-check: report in {out / 'report.json'}: tests rc {tests_rc}, bench rc {bench_rc}, "
      f"device-time rc {device_rc}")
PYEOF
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$device_rc" -eq 0 ]
