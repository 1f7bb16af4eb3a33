export { type HybridVsockProxy, startHybridVsockProxy } from "./hybrid-vsock-proxy.ts";
export {
  createVethNamespace,
  type NamespacedAgent,
  type NamespacedAgentOptions,
  namespacedAgentUnavailable,
  removeNamespacedRun,
  settle,
  spawnInNamespacedChroot,
  startNamespacedAgent,
} from "./namespaced-agent.ts";
