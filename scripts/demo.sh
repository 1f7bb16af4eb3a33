#!/usr/bin/env bash
# The main job: runs examples/quickstart on this machine.
source "$(dirname "$0")/lib/bootstrap.sh"
sbx_bootstrap
cd "$SBX_ROOT"
# The page-fault server's native helper is built, not committed: without it the restore below would run
# on the slower pure-ffi loop. A missing compiler is reported and the demo goes on without it.
node --conditions=@sbx/source packages/uffd/native/build.ts || say "the native helper did not build: the restore runs on pure ffi"
exec node --conditions=@sbx/source examples/quickstart/src/main.ts "$@"
