import { z } from "zod";
import type { ChunkCacheOptions } from "./chunk-cache.ts";
import { StoreError } from "./errors.ts";

const SIZE = /^(\d+)\s*([KMGT]i?B?|B)?$/i;
const UNITS: Record<string, number> = { "": 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** "512M", "20GiB", "1073741824" → bytes. */
export function parseByteSize(text: string): number | undefined {
  const match = SIZE.exec(text.trim());
  if (!match) return undefined;
  const suffix = (match[2] ?? "").toUpperCase();
  const unit = suffix === "B" ? "" : suffix.charAt(0);
  const bytes = Number(match[1]) * (UNITS[unit] ?? Number.NaN);
  return Number.isSafeInteger(bytes) && bytes > 0 ? bytes : undefined;
}

const envSchema = z.object({
  SBX_CHUNK_CACHE_DIR: z.string().min(1).optional(),
  SBX_CHUNK_CACHE_SIZE: z.string().min(1).optional(),
});

/**
 * The host's chunk cache settings: SBX_CHUNK_CACHE_DIR (default `defaults.directory`, e.g.
 * `{stateDir}/chunk-cache`) and SBX_CHUNK_CACHE_SIZE (bytes, or 512M / 20G; default 10 GiB).
 */
export function chunkCacheOptionsFromEnv(
  defaults: { directory: string; maxBytes?: number },
  env: Record<string, string | undefined> = process.env,
): ChunkCacheOptions {
  const vars = envSchema.parse({
    SBX_CHUNK_CACHE_DIR: env.SBX_CHUNK_CACHE_DIR || undefined,
    SBX_CHUNK_CACHE_SIZE: env.SBX_CHUNK_CACHE_SIZE || undefined,
  });
  let maxBytes = defaults.maxBytes ?? 10 * 2 ** 30;
  if (vars.SBX_CHUNK_CACHE_SIZE !== undefined) {
    const parsed = parseByteSize(vars.SBX_CHUNK_CACHE_SIZE);
    if (parsed === undefined)
      throw new StoreError(
        "CONFIG_INVALID",
        `SBX_CHUNK_CACHE_SIZE=${JSON.stringify(vars.SBX_CHUNK_CACHE_SIZE)} is not a size (bytes, or e.g. 512M, 20G)`,
        { variable: "SBX_CHUNK_CACHE_SIZE" },
      );
    maxBytes = parsed;
  }
  const directory = vars.SBX_CHUNK_CACHE_DIR ?? defaults.directory;
  if (!directory.startsWith("/"))
    throw new StoreError(
      "CONFIG_INVALID",
      `SBX_CHUNK_CACHE_DIR=${JSON.stringify(directory)} is not an absolute path`,
      {
        variable: "SBX_CHUNK_CACHE_DIR",
      },
    );
  return { directory, maxBytes };
}
