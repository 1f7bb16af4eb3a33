/*
 * The memfd export benchmark's floor: a memfd of argv[2] bytes filled with a pattern (by write(), as
 * another process would have filled it), then the chosen ranges written with pwrite from a fresh
 * mapping into argv[1], one call per range. Prints the seconds from creating the output file to closing
 * it (create, size, map, write, unmap, close): the same work exportRanges does, nothing more.
 * argv[3]: "4k" (every 8th 4 KiB page) or "2m" (every other 2 MiB range).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  size_t size = strtoull(argv[2], 0, 10);
  int scattered = !strcmp(argv[3], "4k");
  int m = memfd_create("floor", MFD_CLOEXEC);
  if (m < 0 || ftruncate(m, size)) return 3;
  static unsigned char chunk[1 << 20];
  for (size_t i = 0; i < sizeof chunk; i += 64) chunk[i] = (unsigned char)(i >> 12);
  for (size_t off = 0; off < size; off += sizeof chunk)
    if (pwrite(m, chunk, sizeof chunk, off) != (ssize_t)sizeof chunk) return 3;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  int out = open(argv[1], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0 || ftruncate(out, size)) return 4;
  unsigned char *mem = mmap(0, size, PROT_READ, MAP_SHARED, m, 0);
  if (mem == MAP_FAILED) return 6;
  size_t step = scattered ? 8 * 4096 : 4 * 1024 * 1024, len = scattered ? 4096 : 2 * 1024 * 1024;
  for (size_t off = 0; off + len <= size; off += step)
    for (size_t done = 0; done < len;) {
      ssize_t n = pwrite(out, mem + off + done, len - done, off + done);
      if (n <= 0) return 5;
      done += n;
    }
  munmap(mem, size);
  close(out);
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
  return 0;
}
