#!/usr/bin/env bash
# The test command of the README: start the local SLURM cluster (installs Debian's
# slurm-wlm, munge and mariadb-server on first use; idempotent), then run every test,
# including the `slurm`, `dvc` and `slow` ones.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f platform/slurm/cluster.sh ]; then
  bash platform/slurm/cluster.sh install
  bash platform/slurm/cluster.sh start
fi
exec python3 -m pytest "$@"
