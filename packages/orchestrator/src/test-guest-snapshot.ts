// The test guest's snapshot and the proof that a restored guest goes on with the right checksum live in
// @sbx/fc-client/testing (the integration tests use them too); GUEST_LINE is its progress line.
export {
  expectChecksumContinues,
  lastIteration,
  snapshotTestGuest,
  TEST_GUEST_PROGRESS_PATTERN as GUEST_LINE,
} from "@sbx/fc-client/testing";
