#!/usr/bin/env bash
# Sets up everything on a fresh machine (.venv with torch, lsmia, DVC, MLflow, Optuna), then runs the
# default study with `dvc repro`: data -> prior -> eval model -> targets per alpha -> attacks -> metrics -> report.
# Extra arguments go to `dvc repro` (e.g. `bash quickstart.sh report`). LSMIA_SETUP_ONLY=1 stops after set-up.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch/torchvision first, pinned: these versions are served locally (a plain `torch` would pull another build)
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
# postgres, redis: the drivers for several machines (README 'Several machines'); the tests use both
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,postgres,redis]'

export PATH="$PWD/.venv/bin:$PATH"
if [ "${LSMIA_SETUP_ONLY:-0}" = 1 ]; then
  exit 0
fi
if [ ! -d .git ]; then
  echo "error: run quickstart.sh inside the lsmia git clone (dvc needs the repository)" >&2
  exit 2
fi
time dvc repro "$@"
echo "report: $PWD/out/report/index.html   metrics: dvc metrics show   runs: mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db"
