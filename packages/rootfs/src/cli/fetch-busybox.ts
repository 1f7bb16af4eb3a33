#!/usr/bin/env node
import { parseArgs } from "node:util";
import { normalizeArch } from "@sbx/arch";
import { DEFAULT_BUSYBOX_VERSION } from "../busybox.ts";
import { fetchBusybox } from "../fetch-busybox.ts";

const usage = `usage: sbx-fetch-busybox [--arch amd64|arm64] [--version ${DEFAULT_BUSYBOX_VERSION}] [--dir DIR] [--deb FILE] [--require-version-match] [--no-foreign-arch]
  Installs Debian's busybox-static:<arch> as DIR/<version>/<arch>/busybox with busybox.sha256 and SOURCE.
  Defaults: --arch $TARGET_ARCH (else the host arch), --version $BUSYBOX_VERSION (else ${DEFAULT_BUSYBOX_VERSION}), --dir $HOST_BUSYBOX_DIR.`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      arch: { type: "string" },
      version: { type: "string" },
      dir: { type: "string" },
      deb: { type: "string" },
      "require-version-match": { type: "boolean", default: false },
      "no-foreign-arch": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(usage);
    return 0;
  }
  const dir = values.dir ?? process.env.HOST_BUSYBOX_DIR;
  if (!dir) {
    console.error(`sbx-fetch-busybox: --dir (or HOST_BUSYBOX_DIR) is required\n${usage}`);
    return 2;
  }
  const arch = normalizeArch(values.arch ?? process.env.TARGET_ARCH, { strict: true });
  const result = await fetchBusybox(
    {
      dir,
      arch,
      version: values.version ?? process.env.BUSYBOX_VERSION ?? DEFAULT_BUSYBOX_VERSION,
      ...(values.deb === undefined ? {} : { deb: values.deb }),
      requireVersionMatch: values["require-version-match"],
      enableForeignArch: !values["no-foreign-arch"],
    },
    {
      info: (_fields, message) => console.error(`sbx-fetch-busybox: ${message}`),
      warn: (_fields, message) => console.error(`sbx-fetch-busybox: warning: ${message}`),
    },
  );
  console.log(JSON.stringify(result));
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const code = (error as { code?: unknown }).code;
    console.error(
      `sbx-fetch-busybox: ${typeof code === "string" ? `${code}: ` : ""}${(error as Error).message}`,
    );
    process.exitCode = 1;
  },
);
