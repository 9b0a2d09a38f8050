#!/usr/bin/env bash
# One rank (or NP ranks as EP x PP, sharing the node's GPUs) serving on DEVICE (cpu or cuda)
# answering the same end-to-end tests as the 4-rank cluster (the C++ client's and the Python
# client's). With cuda it exits 77 (CTest: skipped) where the build has no CUDA backend or
# there is no GPU, saying so.
#   serve_single_rank_e2e_test.sh DEVICE SWITCHYARD MODEL E2E_TEST_BINARY PYTHONPATH WORKDIR \
#     [NP EP PP [SERVE_FLAGS...]]
set -uo pipefail
device=$1 bin=$2 model=$3 e2e=$4 pypath=$5 work=$6
np=${7:-1} ep=${8:-1} pp=${9:-1}
shift $(( $# < 9 ? $# : 9 ))
extra=("$@")
here="$(cd "$(dirname "$0")/.." && pwd)"
probe=$("$bin" generate --model "$model" --device "$device" --prompt x --max-tokens 1 2>&1)
if [ $? -ne 0 ]; then
  if grep -q "no usable CUDA device" <<< "$probe"; then
    echo "skipped: $probe"
    exit 77
  fi
  echo "the GPU probe failed: $probe"
  exit 1
fi
"$here/launch/cluster.sh" start "$work" "$np" "$ep" "$pp" "$bin" "$model" --device "$device" \
  --kv-blocks 256 "${extra[@]}" || exit 1
rc=0
SWITCHYARD_E2E_DIR="$work" "$e2e" || rc=1
SWITCHYARD_E2E_DIR="$work" PYTHONPATH="$pypath" /usr/bin/python3 "$here/tests/serve_e2e_test.py" \
  || rc=1
"$here/launch/cluster.sh" stop "$work" || rc=1
exit $rc
