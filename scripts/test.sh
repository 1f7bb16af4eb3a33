#!/usr/bin/env bash
# Runs every test of every package and prints `tests: N passed, N failed, N skipped`.
source "$(dirname "$0")/lib/bootstrap.sh"
sbx_bootstrap
cd "$SBX_ROOT"
rm -rf .reports && mkdir -p .reports
if [ -z "${FIRECRACKER_BIN:-}" ]; then
  say "FIRECRACKER_BIN is not set: tests that need a real Firecracker will skip (see DEVELOPERS.md)"
fi
# Firecracker's specs, CPU templates and fingerprints (pinned by sha256): a no-op when already in place.
node scripts/fetch-test-data.ts || say "tests that read Firecracker's files will skip; see the lines above"
status=0
# The outer timeout turns a hung child process into a failure instead of a stalled run.
timeout --kill-after=30 "${SBX_TEST_TIMEOUT_SECONDS:-2400}" pnpm exec turbo run test --continue --concurrency=2 || status=$?
node scripts/test-summary.mjs || status=$?
exit "$status"
