#!/usr/bin/env bash
# The CUDA checks on a GPU machine: run from the repository root, with OUT set to a folder for results.
#
#   OUT=/tmp/out bash .ci/gpu_check.sh
#
# Prints the GPU, Python and torch versions; installs the wheels carried in .gpu_wheels/ (the runtime
# dependencies the machine lacks, e.g. openpyxl, et-xmlfile, tensorboardX; no network needed) into
# /tmp/extra; runs tests/test_cuda.py with its output also in $OUT/gpu_tests.txt; exits with pytest's status.
set -uo pipefail
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
python3 -m pytest -q -rfE -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/gpu_tests.txt"
exit "${PIPESTATUS[0]}"
