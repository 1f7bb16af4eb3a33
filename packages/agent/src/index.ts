export {
  AGENT_BINARY_NAME,
  AGENT_TOOLCHAINS,
  AGENT_VERSION,
  type AgentBinary,
  agentBinaryDir,
  agentSourceFiles,
  buildAgent,
  ensureAgentBinary,
} from "./agent-binary.ts";
export {
  AgentClient,
  type AgentClientOptions,
  agentClientOptionsSchema,
  type HealthReport,
} from "./client.ts";
export type {
  Command,
  CommandHandle,
  CommandResult,
  Commands,
  ExitStatus,
  ProcessInfo,
  RunOptions,
  StartOptions,
} from "./commands.ts";
export { AgentConnection } from "./connection.ts";
export { AgentError, type AgentErrorCode } from "./errors.ts";
export type {
  DirectoryEntry,
  FileOptions,
  FileReadStream,
  FileStat,
  Files,
  ReadOptions,
  WriteOptions,
} from "./files.ts";
export {
  type AgentMessage,
  Channel,
  encodeFrame,
  FRAME_HEADER_BYTES,
  FrameDecoder,
  FrameKind,
  MAX_CONTROL_PAYLOAD,
  MAX_FRAME_PAYLOAD,
  PROTOCOL_VERSION,
} from "./protocol.ts";
export {
  type AgentTransport,
  firecrackerVsockTransport,
  tcpTransport,
  unixSocketTransport,
} from "./transport.ts";
