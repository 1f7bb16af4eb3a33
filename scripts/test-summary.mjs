// Adds up the vitest JSON reports of every workspace package that has a test script and prints
// `tests: N passed, N failed, N skipped`. A package whose report is missing counts as one failure,
// because a runner that crashed before reporting must not look green.
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
let passed = 0;
let failed = 0;
let skipped = 0;
// Failures are listed again in summary.txt, right above the totals: CI logs are often read from the tail.
const failures = [];
// Every skipped test by name (the names carry the reason: a missing Firecracker, kernel, tool...), so a
// skip that a setup step could avoid shows up instead of hiding in a count.
const skips = [];
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
      failures.push(`${group}/${dir}: no vitest report (the test run crashed or timed out)`);
      failed += 1;
      continue;
    }
    const report = JSON.parse(readFileSync(reportPath, "utf8"));
    passed += report.numPassedTests;
    failed += report.numFailedTests;
    skipped += report.numPendingTests + report.numTodoTests;
    for (const file of report.testResults) {
      const failedTests = file.assertionResults.filter((a) => a.status === "failed");
      const relativeName = file.name.startsWith(root) ? file.name.slice(root.length) : file.name;
      for (const test of file.assertionResults)
        if (test.status === "skipped" || test.status === "pending" || test.status === "todo")
          skips.push(`SKIPPED ${relativeName} > ${test.fullName}`);
      for (const test of failedTests) {
        const firstLine = String(test.failureMessages?.[0] ?? "")
          .split("\n")[0]
          .slice(0, 300);
        failures.push(`FAILED ${relativeName} > ${test.fullName}: ${firstLine}`);
      }
      // A file that failed to load reports no tests at all; count it so the total cannot hide it.
      if (file.status === "failed" && failedTests.length === 0) {
        failures.push(`FAILED ${relativeName}: ${String(file.message || "failed to run").slice(0, 300)}`);
        failed += 1;
      }
    }
  }
}
const line = `tests: ${passed} passed, ${failed} failed, ${skipped} skipped`;
const summary = [...skips, ...failures, line].join("\n");
writeFileSync(join(root, ".reports", "summary.txt"), `${summary}\n`);
console.log(summary);
process.exit(failed > 0 ? 1 : 0);
