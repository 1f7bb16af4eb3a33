export {
  type FakeFirecrackerApi,
  type FakeFirecrackerApiOptions,
  type RecordedRequest,
  startFakeFirecrackerApi,
} from "./fake-api-server.ts";
export {
  type FakeFirecrackerBehavior,
  fakeFirecrackerCommand,
  fakeFirecrackerScript,
} from "./fake-firecracker-command.ts";
export { expectChecksumContinues, lastIteration, snapshotTestGuest } from "./guest-snapshot.ts";
export { type RealFirecracker, realFirecracker } from "./real-firecracker.ts";
export {
  type BuildTestGuestOptions,
  type BuiltTestGuest,
  buildTestGuest,
  expectedGuestChecksums,
  parseTestGuestBalloon,
  parseTestGuestLine,
  TEST_GUEST_BALLOON_PATTERN,
  TEST_GUEST_CFLAGS,
  TEST_GUEST_MIN_MEM_MIB,
  TEST_GUEST_PROGRESS_PATTERN,
  TEST_GUEST_READY_MARKER,
  TEST_GUEST_REGION,
  type TestGuestBalloonEvent,
  type TestGuestBalloonOptions,
  type TestGuestProgress,
  testGuestBalloonBootArg,
  testGuestBalloonScratch,
  testGuestSourceDir,
} from "./tiny-guest.ts";
export {
  type CpuidLeaf,
  parseTestGuestCpuid,
  TEST_GUEST_CPUID_MAX,
  TEST_GUEST_CPUID_PATTERN,
  type TestGuestCpuid,
  testGuestCpuidBootArg,
} from "./tiny-guest-cpuid.ts";
