// Adds up the vitest JSON reports of every workspace package that has a test script and prints
// `tests: N passed, N failed, N skipped`. A package whose report is missing counts as one failure,
// because a runner that crashed before reporting must not look green.
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
let passed = 0;
let failed = 0;
let skipped = 0;
for (const group of ["packages", "examples"]) {
  const groupDir = join(root, group);
  if (!existsSync(groupDir)) continue;
  for (const dir of readdirSync(groupDir)) {
    const manifestPath = join(groupDir, dir, "package.json");
    if (!existsSync(manifestPath)) continue;
    const manifest = JSON.parse(readFileSync(manifestPath, "utf8"));
    if (!manifest.scripts?.test) continue;
    const reportPath = join(root, ".reports", `${group}-${dir}.json`);
    if (!existsSync(reportPath)) {
      console.error(`${group}/${dir}: no vitest report (the test run crashed or timed out)`);
      failed += 1;
      continue;
    }
    const report = JSON.parse(readFileSync(reportPath, "utf8"));
    passed += report.numPassedTests;
    failed += report.numFailedTests;
    skipped += report.numPendingTests + report.numTodoTests;
    for (const file of report.testResults) {
      const failedInFile = file.assertionResults.filter((a) => a.status === "failed").length;
      // A file that failed to load reports no tests at all; count it so the total cannot hide it.
      if (file.status === "failed" && failedInFile === 0) {
        console.error(`${file.name}: ${file.message || "failed to run"}`);
        failed += 1;
      }
    }
  }
}
const line = `tests: ${passed} passed, ${failed} failed, ${skipped} skipped`;
writeFileSync(join(root, ".reports", "summary.txt"), `${line}\n`);
console.log(line);
process.exit(failed > 0 ? 1 : 0);
