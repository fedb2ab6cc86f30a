#!/usr/bin/env bash
# The CUDA checks on a GPU machine: run from the repository root, with OUT set to a folder for results.
#
#   OUT=/tmp/out bash .ci/gpu_check.sh
#
# Prints the GPU, Python and torch versions; installs the wheels carried in .gpu_wheels/ (the runtime
# dependencies the machine lacks, e.g. openpyxl, et-xmlfile, tensorboardX; no network needed) into
# /tmp/extra; runs tests/test_cuda.py with its output also in $OUT/gpu_tests.txt; then bench/ddp_scaling.py
# on the machine's idle CPU cores (gloo, 1 vs 2 processes, one thread each) and on the GPU (nccl, one process
# per GPU), output in $OUT/ddp_scaling_cpu.txt and $OUT/ddp_scaling_cuda.txt; exits with pytest's status.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"

echo "== device"
nvidia-smi -L || echo "nvidia-smi failed (no NVIDIA driver?)"
echo "== versions"
python3 --version
python3 -c 'import torch; print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuda available",
torch.cuda.is_available(), "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'

shopt -s nullglob
wheels=(.gpu_wheels/*.whl)
if ((${#wheels[@]})); then
    echo "== installing ${#wheels[@]} carried wheel(s) into /tmp/extra"
    python3 -m pip install --quiet --no-index --no-deps --target /tmp/extra "${wheels[@]}" || exit 3
else
    echo "== no wheels in .gpu_wheels/ (carry it, or install openpyxl, et-xmlfile and tensorboardX)"
fi
export PYTHONPATH="/tmp/extra:$PWD"

echo "== tests/test_cuda.py"
timeout "${GPU_TESTS_TIMEOUT:-300}" python3 -m pytest -q -rfEs -p no:cacheprovider --durations=8 tests/test_cuda.py 2>&1 \
    | tee "$OUT/gpu_tests.txt"
status="${PIPESTATUS[0]}"

echo "== bench/ddp_scaling.py, CPU (gloo)"
timeout 150 python3 bench/ddp_scaling.py --procs 1 2 --sensitivity 2>&1 | tee "$OUT/ddp_scaling_cpu.txt"
gpus=$(python3 -c 'import torch; print(torch.cuda.device_count())')
echo "== bench/ddp_scaling.py, CUDA (nccl), 1..$gpus process(es)"
timeout 60 python3 bench/ddp_scaling.py --device cuda --procs $(seq 1 "${gpus:-1}") 2>&1 | tee "$OUT/ddp_scaling_cuda.txt"
exit "$status"
