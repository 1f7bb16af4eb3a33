#!/usr/bin/env bash
# Formatter/linter for the repo, type checks, and publint + attw on every built package.
source "$(dirname "$0")/lib/bootstrap.sh"
sbx_bootstrap
cd "$SBX_ROOT"
pnpm exec biome check .
# Every public export of every published package carries a TSDoc line.
node scripts/check-tsdoc.ts
pnpm exec turbo run typecheck lint
