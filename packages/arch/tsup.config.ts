import { defineConfig } from "tsup";
import { packageBuildConfig } from "../../tsup.shared.ts";

export default defineConfig(
  packageBuildConfig({ index: "src/index.ts", native: "src/native.ts", testing: "src/testing/index.ts" }),
);
