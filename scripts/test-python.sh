#!/usr/bin/env bash
# The Python client's tests (clients/python) against a real chatkpi server they start: builds the
# package (which generates its stubs from proto/) into a virtualenv under target/, then pytest.
# Needs the debug binary (`cargo test` builds it) and DATABASE_URL (scripts/test.sh sets it).
# Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
VENV=target/python-venv
if ! [ -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; rm -rf "$VENV"; python3 -m venv "$VENV"; }
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check ./clients/python'[test]'
export CHATKPI_BIN=${CHATKPI_BIN:-$PWD/target/debug/chatkpi}
cd clients/python
exec ../../"$VENV"/bin/python -m pytest -q -p no:cacheprovider tests
