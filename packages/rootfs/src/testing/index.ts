/** Test helpers for @sbx/rootfs consumers: busybox directory fixtures and ext4 image inspection. */
export { type BusyboxFixtureOptions, writeBusyboxFixture } from "./busybox-fixture.ts";
export { type Ext4EntryType, type Ext4Stat, ext4List, ext4ReadFile, ext4Stat } from "./ext4-inspect.ts";
export * from "./fixtures.ts";
