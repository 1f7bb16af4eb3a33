/** Test helpers for @sbx/rootfs consumers: busybox directory and image fixtures, ext4 image inspection. */
export { type BusyboxFixtureOptions, writeBusyboxFixture } from "./busybox-fixture.ts";
export { type Ext4EntryType, type Ext4Stat, ext4List, ext4ReadFile, ext4Stat } from "./ext4-inspect.ts";
export * from "./fixtures.ts";
export { type TemplateInputsFixtureOptions, writeTemplateInputs } from "./template-inputs-fixture.ts";
