#!/usr/bin/env bash
# The main job: runs examples/quickstart on this machine.
source "$(dirname "$0")/lib/bootstrap.sh"
sbx_bootstrap
cd "$SBX_ROOT"
exec node --conditions=@sbx/source examples/quickstart/src/main.ts "$@"
