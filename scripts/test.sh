#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need, lints, runs pytest.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v /usr/bin/storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
if ((${#need_apt[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[fast,test]'

python3 -m ruff check src tests bench
python3 -m ruff format --check src tests bench
python3 -m mypy src

set +e
python3 -m pytest -m "not slow" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit 5): a suite that runs nothing is a broken suite" >&2
  exit 1
fi
exit "$rc"
