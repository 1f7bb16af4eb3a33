// A child process for orphaned-networks.test.ts: creates one sandbox network (namespace, veth, host
// rules in the given table), prints its names, and waits to be SIGKILLed, as a crashed owner would be.
import { AddressPool } from "./address-pool.ts";
import { CONFIG_DEFAULTS } from "./config.ts";
import { SandboxNetwork } from "./sandbox-network.ts";

const [name, hostVethName, table, addressIndex] = process.argv.slice(2) as [string, string, string, string];
const pool = new AddressPool(CONFIG_DEFAULTS.hostAddressPool);
const network = await SandboxNetwork.create({
  name,
  hostVethName,
  addresses: pool.addressesFor(Number(addressIndex)),
  tapName: CONFIG_DEFAULTS.tapName,
  tapAddress: CONFIG_DEFAULTS.tapAddress,
  guestAddress: CONFIG_DEFAULTS.guestAddress,
  hostAddressPool: pool.cidr,
  firewallTable: table,
  resolvers: ["192.0.2.53"],
});
process.stdout.write(`${JSON.stringify({ name: network.name, hostVethName: network.hostVethName })}\n`);
setInterval(() => {}, 1000);
