/*
 * The optional native batch helper of @sbx/uffd. One ffi call serves faults until something needs the
 * JS loop's judgement, so the pure-ffi loop's ffi call per fault (and its read per batch) becomes one
 * per burst. It answers missing-page faults with UFFDIO_COPY and, with dirty tracking, write-protect
 * faults with UFFDIO_WRITEPROTECT, and applies REMOVE events (balloon) to the removed-page map itself.
 * Each batch's REMOVEs are applied before any of its faults is served, so a fault that the kernel queued
 * right behind a REMOVE never gets the memory file's old contents. A batch holding anything else (another
 * event, a fault in a removed page or outside every region, an ioctl error) is returned to JS whole,
 * with a status per message; the JS loop decides those. It also returns after max_faults messages (so
 * JS checks for a wake-up and a hung-up peer) and after spin_ns without events.
 *
 * regions: nregions x { base, size, page size, memory-file offset, first bit in removed }  (uint64)
 * layers:  a page at memory-file offset o comes from layer_addrs[layer_of_page[o / 4096]] + o, the
 *          mapping of the newest layer that has it; layer_of_page is NULL when there is one layer (0).
 *          SBX_LAYER_ABSENT there: the page's layer lives in a build store and its chunk is not local
 *          yet; such a fault goes to JS (which fetches the chunk and serves it later) and the prefetch
 *          skips the page, so nothing is ever read from a chunk that has not arrived
 * removed: one bit per 4 KiB page of the regions (bit b: byte b / 8, bit b % 8), removed_bits long:
 *          set for pages a REMOVE covered, here or by JS; its size depends on the regions only, so no
 *          number of REMOVE events can grow it, and a lookup is one bit
 * status:  per message of the returned batch: 0 copied, 1 already present (EEXIST), 2 for JS,
 *          3 write-protection cleared, 4 REMOVE applied, or -errno
 * stats:   { faults copied, faults already present, bytes copied, trace length, write-protect faults,
 *          REMOVE events applied },
 *          added to (JS zeroes them); the memory-file offset of each page copied is appended to trace[]
 *          (up to trace_cap)
 * dirty:   NULL, or dirty_pages bytes, one per 4 KiB page of the memory file: dirty tracking. A
 *          read fault's page arrives write-protected; a write fault's page, or a write to a protected
 *          one, is marked 1 here (the shared bytes dirtyPages() reads) before the write can proceed.
 * Returns the number of messages of a batch JS must look at, 0 when it returned for time or budget,
 * or -errno when read() failed.
 */
#define _GNU_SOURCE /* SEEK_DATA, SEEK_HOLE */
#include <errno.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* Bumped whenever a signature below changes: the JS side refuses a helper of another version. */
int sbx_uffd_abi_version(void) { return 7; }

/* layer_of_page's marker for a page whose chunk is not local yet (see layers.ts, LAYER_ABSENT). */
#define SBX_LAYER_ABSENT 255

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Bounded by the map's own length, whatever the regions say. */
static void mark_dirty(uint8_t *dirty, long dirty_pages, uint64_t offset, uint64_t length) {
  for (uint64_t page = offset / 4096; page < (offset + length) / 4096 && page < (uint64_t)dirty_pages; page++)
    dirty[page] = 1;
}

#define REGION_FIELDS 5

static int page_removed(const uint8_t *removed, long removed_bits, const uint64_t *r, uint64_t page) {
  uint64_t bit = r[4] + (page - r[0]) / 4096;
  return bit < (uint64_t)removed_bits && (removed[bit / 8] >> (bit % 8)) & 1;
}

/* Marks the whole 4 KiB pages of [start, end) inside each region; bounded by the map's own length. */
static void mark_removed(uint8_t *removed, long removed_bits, const uint64_t *regions, long nregions, uint64_t start,
                         uint64_t end) {
  for (long j = 0; j < nregions; j++) {
    const uint64_t *r = regions + REGION_FIELDS * j;
    uint64_t from = start > r[0] ? start : r[0];
    uint64_t to = end < r[0] + r[1] ? end : r[0] + r[1];
    if (from >= to) continue;
    uint64_t first = r[4] + (from - r[0] + 4095) / 4096, last = r[4] + (to - r[0]) / 4096;
    if (last > (uint64_t)removed_bits) last = (uint64_t)removed_bits;
    uint64_t bit = first;
    for (; bit < last && bit % 8; bit++) removed[bit / 8] |= (uint8_t)(1u << (bit % 8));
    if (bit + 8 <= last) {
      memset(removed + bit / 8, 0xff, (last - bit) / 8);
      bit += (last - bit) / 8 * 8;
    }
    for (; bit < last; bit++) removed[bit / 8] |= (uint8_t)(1u << (bit % 8));
  }
}

long sbx_uffd_serve_batch(int uffd, struct uffd_msg *msgs, long max_msgs, const uint64_t *regions, long nregions,
                          const uint64_t *layer_addrs, const uint8_t *layer_of_page, uint8_t *removed, long removed_bits,
                          int64_t *status, long spin_ns, int64_t *stats, long max_faults, int64_t *trace, long trace_cap,
                          uint8_t *dirty, long dirty_pages) {
  long served = 0;
  int64_t deadline = 0;
  while (served < max_faults) {
    ssize_t n = read(uffd, msgs, (size_t)max_msgs * sizeof *msgs);
    if (n <= 0) {
      if (n < 0 && errno != EAGAIN && errno != EINTR) return -errno;
      if (spin_ns <= 0) return 0;
      int64_t now = now_ns();
      if (!deadline) deadline = now + spin_ns;
      else if (now > deadline) return 0;
      continue;
    }
    deadline = 0;
    long count = n / (ssize_t)sizeof *msgs;
    int for_js = 0;
    /* REMOVEs first: the batch's faults are served after every REMOVE in it, wherever they stand. */
    for (long i = 0; i < count; i++) {
      status[i] = 2;
      if (msgs[i].event == UFFD_EVENT_REMOVE) {
        mark_removed(removed, removed_bits, regions, nregions, msgs[i].arg.remove.start, msgs[i].arg.remove.end);
        status[i] = 4;
        stats[5]++;
        served++; /* a stream of REMOVEs must not keep the loop from JS's checks either */
      } else if (msgs[i].event != UFFD_EVENT_PAGEFAULT) for_js = 1;
    }
    for (long i = 0; i < count; i++) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      uint64_t address = msgs[i].arg.pagefault.address;
      const uint64_t *r = 0;
      for (long j = 0; j < nregions; j++)
        if (address >= regions[REGION_FIELDS * j] && address < regions[REGION_FIELDS * j] + regions[REGION_FIELDS * j + 1]) {
          r = regions + REGION_FIELDS * j;
          break;
        }
      if (!r) { for_js = 1; continue; }
      uint64_t page = address & ~(r[2] - 1);
      uint64_t offset = r[3] + (page - r[0]);
      uint64_t flags = msgs[i].arg.pagefault.flags;
      if (flags & UFFD_PAGEFAULT_FLAG_WP) {
        if (!dirty) { for_js = 1; continue; }
        mark_dirty(dirty, dirty_pages, offset, r[2]);
        /* mode 0: clear the protection and wake the writer. ENOENT: the range went away meanwhile. */
        struct uffdio_writeprotect wp = { .range = { .start = page, .len = r[2] }, .mode = 0 };
        if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) == 0 || errno == ENOENT) { status[i] = 3; stats[4]++; }
        else { status[i] = -errno; for_js = 1; }
        served++;
        continue;
      }
      if (page_removed(removed, removed_bits, r, page)) { for_js = 1; continue; }
      if (layer_of_page && layer_of_page[offset / 4096] == SBX_LAYER_ABSENT) { for_js = 1; continue; }
      uint64_t source = layer_addrs[layer_of_page ? layer_of_page[offset / 4096] : 0] + offset;
      uint64_t mode = 0;
      if (dirty) {
        /* A write fault's page is dirty already: installed writable, it costs no second fault. */
        if (flags & UFFD_PAGEFAULT_FLAG_WRITE) mark_dirty(dirty, dirty_pages, offset, r[2]);
        else mode = UFFDIO_COPY_MODE_WP;
      }
      struct uffdio_copy copy = { .dst = page, .src = source, .len = r[2], .mode = mode, .copy = 0 };
      if (ioctl(uffd, UFFDIO_COPY, &copy) == 0) {
        status[i] = 0;
        stats[0]++;
        stats[2] += (int64_t)r[2];
        if (stats[3] < trace_cap) trace[stats[3]++] = (int64_t)offset;
      }
      else if (errno == EEXIST) { status[i] = 1; stats[1]++; }
      else { status[i] = -errno; for_js = 1; }
      served++;
    }
    if (for_js) return count;
  }
  return 0;
}

/*
 * Copies up to max_pages pages of a working set into the guest, one UFFDIO_COPY per run of pages that
 * are contiguous in one region, in one layer and not removed, so a recorded working set of thousands of
 * pages costs a handful of ffi calls. It never waits for events: the fault loop calls it between its
 * reads of the userfaultfd, so a real fault waits for at most one call.
 *
 * ranges:  nranges x { memory-file offset, length } (uint64), any alignment, in any order; pages outside
 *          every region are skipped (a stale or foreign list costs time, never correctness)
 * cursor:  { range index, byte offset inside it } (int64), where the next call continues
 * removed: the fault loop's removed-page map: a removed page is skipped, so a REMOVE the loop already
 *          read is never undone with file data (a REMOVE it has not read yet makes UFFDIO_COPY fail
 *          with EAGAIN, see below)
 * stats:   { pages copied, pages already present (EEXIST), pages skipped } added to
 * mode:    0 or UFFDIO_COPY_MODE_WP (dirty tracking: a prefetched page has not been written)
 * Returns 0 when the list is done, 1 when the budget ran out, -EAGAIN when the guest's memory map is
 * changing (a REMOVE is pending: read the events, then call again), or another -errno (-ESRCH: the
 * peer's mm is gone).
 */
long sbx_uffd_prefetch(int uffd, const uint64_t *regions, long nregions, const uint64_t *layer_addrs,
                       const uint8_t *layer_of_page, const uint8_t *removed, long removed_bits,
                       const uint64_t *ranges, long nranges, int64_t *cursor, long max_pages, int64_t *stats,
                       long mode) {
  if (nranges <= 0) return 0; /* also the main thread's do-nothing call that resolves the symbol */
  long budget = max_pages;
  while (cursor[0] < nranges) {
    const uint64_t *range = ranges + 2 * cursor[0];
    uint64_t at = range[0] + (uint64_t)cursor[1], end = range[0] + range[1];
    if (end < range[0]) end = UINT64_MAX; /* a hostile length must not wrap */
    if (at >= end) { cursor[0]++; cursor[1] = 0; continue; }
    if (budget <= 0) return 1;
    const uint64_t *r = 0;
    for (long j = 0; j < nregions; j++) {
      const uint64_t *candidate = regions + REGION_FIELDS * j;
      if (at >= candidate[3] && at - candidate[3] < candidate[1]) { r = candidate; break; }
    }
    if (!r) {
      /* Outside every region: skip one 4 KiB page (a region can start inside the range further on). */
      uint64_t next = (at | 4095) + 1;
      cursor[1] = (int64_t)((next < end ? next : end) - range[0]);
      stats[2]++;
      budget--;
      continue;
    }
    uint64_t psize = r[2];
    uint64_t page = r[0] + ((at - r[3]) & ~(psize - 1));
    uint64_t offset = r[3] + (page - r[0]);
    uint64_t region_end = r[0] + r[1];
    uint8_t layer = layer_of_page ? layer_of_page[offset / 4096] : 0;
    /* The run: pages from `page` on, inside the range, region and layer, none removed. */
    uint64_t len = 0;
    while (page + len < region_end && offset + len < end && (long)((len / psize) + 1) <= budget &&
           !page_removed(removed, removed_bits, r, page + len) &&
           (!layer_of_page || layer_of_page[(offset + len) / 4096] == layer))
      len += psize;
    if (layer == SBX_LAYER_ABSENT && len > 0) {
      /* The run's chunk is not here yet: skipped whole (the fault loop copies it in when it arrives). */
      cursor[1] = (int64_t)(offset + len - range[0]);
      stats[2] += (int64_t)(len / psize);
      budget--;
      continue;
    }
    if (len == 0) {
      /* The first page was removed: never reintroduced as file data. */
      cursor[1] = (int64_t)(offset + psize - range[0]);
      stats[2]++;
      budget--;
      continue;
    }
    struct uffdio_copy copy = {
      .dst = page, .src = layer_addrs[layer] + offset, .len = len, .mode = (uint64_t)mode, .copy = 0};
    long advanced = 0, err = 0;
    if (ioctl(uffd, UFFDIO_COPY, &copy) == 0) advanced = (long)len;
    else if (copy.copy > 0) advanced = (long)copy.copy; /* a partial copy: the next page stopped it */
    else err = copy.copy < 0 ? (long)-copy.copy : errno;
    if (advanced > 0) {
      stats[0] += advanced / (long)psize;
      budget -= advanced / (long)psize;
      cursor[1] = (int64_t)(offset + (uint64_t)advanced - range[0]);
      continue;
    }
    if (err == EEXIST) {
      /* Present already (a fault or an earlier range got there first): skip that one page. */
      stats[1]++;
      budget--;
      cursor[1] = (int64_t)(offset + psize - range[0]);
      continue;
    }
    return -err;
  }
  return 0;
}

/*
 * Writes `count` ranges { offset, length } (uint64 pairs) from memory mapped at `base` into `fd` at the
 * same offsets, looping on short writes. One ffi call for many scattered pages: calling pwrite once per
 * 4 KiB page from JS costs more than the copy. Returns bytes written, or -errno.
 */
long long sbx_pwrite_ranges(int fd, const uint8_t *base, const uint64_t *ranges, long count) {
  long long total = 0;
  for (long i = 0; i < count; i++) {
    uint64_t offset = ranges[2 * i], length = ranges[2 * i + 1];
    while (length > 0) {
      ssize_t n = pwrite(fd, base + offset, length, (off_t)offset);
      if (n < 0) {
        if (errno == EINTR) continue;
        return -errno;
      }
      if (n == 0) return -EIO;
      offset += (uint64_t)n;
      length -= (uint64_t)n;
      total += n;
    }
  }
  return total;
}

/*
 * Lists the data extents of fd from `start` up to `size` as { offset, length } pairs (what SEEK_DATA
 * and SEEK_HOLE report, unaligned), at most `cap` of them. A diff layer Firecracker wrote can hold tens
 * of thousands; two ffi calls per extent from JS took ~0.5 s for 43k of them, before the first page.
 * Returns how many it wrote (call again from the end of the last one when that is `cap`), or -errno.
 */
long sbx_data_extents(int fd, int64_t start, int64_t size, int64_t *out, long cap) {
  long count = 0;
  off_t position = (off_t)start;
  while (position < size && count < cap) {
    off_t data = lseek(fd, position, SEEK_DATA);
    if (data < 0) return errno == ENXIO ? count : -errno;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return -errno;
    out[2 * count] = data;
    out[2 * count + 1] = hole - data;
    count++;
    position = hole;
  }
  return count;
}
