// A mixed-CPU fleet, step by step. The fleet is this host plus, by default, a simulated older host
// (this host without AVX-512, GFNI and VAES); pass real `cpu-template-helper fingerprint dump` files
// instead with `--fingerprints a.json b.json ...`. With FIRECRACKER_BIN the resulting template is
// applied to a real VM (PUT /cpu-config) to show Firecracker accepts it.
//
//   node --conditions=@sbx/source examples/mixed-fleet/src/main.ts [--json] [--fingerprints f1 f2 ...]
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  checkCompatibility,
  type Fingerprint,
  hostFingerprint,
  normalizeFleet,
  parseCustomCpuTemplate,
  readFingerprintFile,
  recommendTemplate,
} from "@sbx/cpu-template";
import { configureAndStart, launchFirecracker } from "@sbx/fc-client";
import { buildTestGuest } from "@sbx/fc-client/testing";
import { configFromEnv } from "@sbx/orchestrator";

const json = process.argv.includes("--json");
const log = (line: string) => {
  if (!json) console.log(line);
};

/** This host with some newer features taken away: what an older generation in the fleet looks like. */
function olderThan(host: Fingerprint): Fingerprint {
  const cpuid = new Map([...host.cpuid].map(([key, regs]) => [key, [...regs] as typeof regs]));
  const leaf7 = cpuid.get("7.0");
  if (leaf7) {
    leaf7[1] &= ~((1 << 16) | (1 << 17) | (1 << 30) | (1 << 31)); // ebx: avx512f, avx512dq, avx512bw, avx512vl
    leaf7[2] &= ~((1 << 8) | (1 << 9) | (1 << 10)); // ecx: gfni, vaes, vpclmulqdq
  }
  return { ...host, cpu: { ...host.cpu, model: (host.cpu.model ?? 1) - 1 }, cpuid };
}

const fileArgs = process.argv.includes("--fingerprints")
  ? process.argv.slice(process.argv.indexOf("--fingerprints") + 1).filter((a) => !a.startsWith("--"))
  : [];
const [firstFile, ...moreFiles] = fileArgs;
// Never empty: without files the fleet is this host and a simulated older one.
const fleet: [Fingerprint, ...Fingerprint[]] =
  firstFile === undefined
    ? [hostFingerprint(), olderThan(hostFingerprint())]
    : [readFingerprintFile(firstFile), ...moreFiles.map((path) => readFingerprintFile(path))];
const [newest] = fleet;
const oldest = fleet.at(-1) ?? newest; // a fleet of one: its newest host is also its oldest
log(`fleet            ${fleet.length} hosts${fileArgs.length ? "" : " (this host + a simulated older one)"}`);

// 1. Without a template the guest sees everything the build host has.
const bare = checkCompatibility({ source: newest, target: oldest });
log(
  `no template      snapshot from host 1 resumed on host ${fleet.length}: ${bare.compatible ? "safe" : `SIGILL risk, missing ${bare.missing.map((m) => m.name).join(", ")}`}`,
);

// 2. The recommendation: a static template when one covers the fleet, else the normalized custom one.
const recommendation = recommendTemplate(fleet);
const template = normalizeFleet(fleet);
parseCustomCpuTemplate(template); // exactly what Firecracker would accept
log(
  `recommendation   ${recommendation.kind === "static" ? `static ${recommendation.template.name}` : "custom (normalized)"}: ${recommendation.why}`,
);

// 3. With the template, every move inside the fleet is safe.
const withTemplate = checkCompatibility({ source: newest, target: oldest, template });
log(
  `with template    ${withTemplate.compatible ? "safe on every host" : `still unsafe: ${withTemplate.reasons.join("; ")}`}`,
);

const dir = await mkdtemp(join(tmpdir(), "sbx-mixed-fleet-"));
let firecracker: Record<string, unknown> = { skipped: "FIRECRACKER_BIN is not set" };
try {
  const path = join(dir, "fleet-template.json");
  await writeFile(path, `${JSON.stringify(template, null, 2)}\n`);
  // 4. The orchestrator reads it from the environment, like the Go orchestrator did.
  const config = configFromEnv({ FC_CUSTOM_CPU_TEMPLATE_PATH: path });
  log(
    `config           FC_CUSTOM_CPU_TEMPLATE_PATH=${path} → cpuTemplate ${JSON.stringify(config.cpuTemplate)}`,
  );

  // 5. Firecracker takes it before InstanceStart.
  if (process.env.FIRECRACKER_BIN && process.arch === "x64") {
    const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
    await using fc = await launchFirecracker({ binary: process.env.FIRECRACKER_BIN, id: "mixed-fleet" });
    await configureAndStart(fc.client, {
      "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
      "cpu-config": template as never,
      "boot-source": { kernel_image_path: guest, boot_args: "console=ttyS0" },
    });
    const line = await fc.waitForConsole(/^SBX-GUEST iter=\d+ /, { timeoutMs: 30_000 });
    firecracker = { accepted: true, guestLine: line.line.text };
    log(`firecracker      PUT /cpu-config accepted; the guest runs: ${line.line.text}`);
  } else {
    log("firecracker      skipped: FIRECRACKER_BIN is not set");
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}

if (json) {
  console.log(
    JSON.stringify({
      hosts: fleet.length,
      withoutTemplate: { compatible: bare.compatible, missing: bare.missing.map((m) => m.name) },
      recommendation: recommendation.kind,
      withTemplate: { compatible: withTemplate.compatible },
      firecracker,
    }),
  );
}
