import { basename, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const repoRoot = dirname(fileURLToPath(import.meta.url));

/**
 * One vitest project per package. Tests import sibling packages from source through the
 * `@sbx/source` export condition, so no build is needed; each run writes a JSON report that
 * scripts/test-summary.mjs adds up.
 */
export function packageTestConfig(packageDirUrl: string) {
  const packageDir = fileURLToPath(new URL(".", packageDirUrl));
  const name = `${basename(dirname(packageDir))}-${basename(packageDir)}`;
  return defineConfig({
    resolve: { conditions: ["@sbx/source"] },
    ssr: { resolve: { conditions: ["@sbx/source"], externalConditions: ["@sbx/source"] } },
    test: {
      root: packageDir,
      include: ["src/**/*.test.ts", "test/**/*.test.ts"],
      testTimeout: 60_000,
      hookTimeout: 60_000,
      teardownTimeout: 30_000,
      reporters: ["default", "json"],
      outputFile: { json: resolve(repoRoot, ".reports", `${name}.json`) },
      pool: "forks",
    },
  });
}
