export {
  buildCHandler,
  buildTestPeer,
  cHandlerSource,
  runTestPeer,
  spawnTestPeer,
  TEST_PEER_CFLAGS,
  type TestPeerOptions,
  type TestPeerResult,
  testPeerArgs,
  testPeerSource,
  writeTestMemoryFile,
} from "./peer.ts";
