#!/usr/bin/env bash
# The proto as a product: `buf lint` (proto/buf.yaml, exceptions written there with their reason)
# and `buf breaking` against the main branch (the last commit of main when run on main itself, so
# a change that breaks published clients cannot land). Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_buf
"$BUF" lint proto
log "buf lint: clean"
if [ "$(git rev-parse --abbrev-ref HEAD)" = main ]; then
  # On main: compare with the previous commit (what main was before this change).
  AGAINST=".git#ref=HEAD~1,subdir=proto"
  git rev-parse -q --verify HEAD~1 >/dev/null || AGAINST=""
elif git rev-parse -q --verify main >/dev/null; then
  AGAINST=".git#branch=main,subdir=proto"
else
  AGAINST=".git#ref=origin/main,subdir=proto"
fi
if [ -z "$AGAINST" ]; then
  log "buf breaking: no earlier commit to compare with"
else
  "$BUF" breaking proto --against "$AGAINST"
  log "buf breaking: no breaking change against ${AGAINST%%,*}"
fi
