import { open } from "node:fs/promises";
import { RootfsError } from "./errors.ts";

// From the System V gABI (elf.h): program header types and the dynamic tag for a needed library.
const PT_DYNAMIC = 2;
const PT_INTERP = 3;
const DT_NULL = 0n;
const DT_NEEDED = 1n;
const MAX_PROGRAM_HEADERS = 256;
const MAX_DYNAMIC_BYTES = 1024 * 1024;

/** How an ELF binary is linked: static or not, its interpreter and needed libraries. */
export interface ElfLinkage {
  /** True when the binary has no PT_INTERP and no DT_NEEDED library. */
  static: boolean;
  /** The program interpreter (PT_INTERP), e.g. /lib64/ld-linux-x86-64.so.2. */
  interpreter?: string;
  hasDynamicSegment: boolean;
  /** Number of DT_NEEDED entries (shared libraries the binary asks for). */
  neededLibraries: number;
  /** Static-PIE: a PT_DYNAMIC (for self-relocation) but no interpreter and no needed library. */
  staticPie: boolean;
}

/**
 * Reads a 64-bit ELF's program headers and tells whether it is statically linked. A binary with a
 * PT_INTERP needs the dynamic loader; a PT_DYNAMIC alone is also what static-PIE binaries carry
 * (they relocate themselves), so those count as static unless the dynamic section names a
 * DT_NEEDED library.
 */
export async function readElfLinkage(path: string): Promise<ElfLinkage> {
  const handle = await open(path, "r");
  try {
    const header = Buffer.alloc(64);
    const { bytesRead } = await handle.read(header, 0, 64, 0);
    if (bytesRead < 64 || header.readUInt32BE(0) !== 0x7f454c46 || header[4] !== 2) {
      throw new RootfsError("BUSYBOX_NOT_STATIC", `${path} is not a 64-bit ELF binary`, {
        details: { path },
      });
    }
    const le = header[5] === 1;
    const u16 = (b: Buffer, o: number) => (le ? b.readUInt16LE(o) : b.readUInt16BE(o));
    const u32 = (b: Buffer, o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
    const u64 = (b: Buffer, o: number) => (le ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o));
    const phoff = Number(u64(header, 32));
    const phentsize = u16(header, 54);
    const phnum = u16(header, 56);
    if (phentsize < 56 || phnum > MAX_PROGRAM_HEADERS) {
      throw new RootfsError("BUSYBOX_NOT_STATIC", `${path} has malformed ELF program headers`, {
        details: { path, phentsize, phnum },
      });
    }
    const table = Buffer.alloc(phentsize * phnum);
    await handle.read(table, 0, table.length, phoff);
    let interpreter: string | undefined;
    let dynamic: { offset: number; size: number } | undefined;
    for (let i = 0; i < phnum; i++) {
      const base = i * phentsize;
      const type = u32(table, base);
      const offset = Number(u64(table, base + 8));
      const size = Number(u64(table, base + 32));
      if (type === PT_INTERP) {
        const buffer = Buffer.alloc(Math.min(size, 4096));
        await handle.read(buffer, 0, buffer.length, offset);
        interpreter = buffer.toString("latin1").replace(/\0.*$/s, "");
      } else if (type === PT_DYNAMIC) {
        dynamic = { offset, size: Math.min(size, MAX_DYNAMIC_BYTES) };
      }
    }
    let neededLibraries = 0;
    if (dynamic) {
      const section = Buffer.alloc(dynamic.size);
      await handle.read(section, 0, section.length, dynamic.offset);
      for (let o = 0; o + 16 <= section.length; o += 16) {
        const tag = u64(section, o);
        if (tag === DT_NULL) break;
        if (tag === DT_NEEDED) neededLibraries++;
      }
    }
    const isStatic = interpreter === undefined && neededLibraries === 0;
    return {
      static: isStatic,
      ...(interpreter === undefined ? {} : { interpreter }),
      hasDynamicSegment: dynamic !== undefined,
      neededLibraries,
      staticPie: isStatic && dynamic !== undefined,
    };
  } finally {
    await handle.close();
  }
}
