/*
 * sbx tiny test guest: a freestanding x86_64 "kernel" for Firecracker.
 *
 * Firecracker loads an ELF vmlinux's PT_LOAD segments at their physical addresses and enters the
 * ELF entry point in 64-bit long mode with the first 1 GiB identity-mapped, interrupts off, and
 * RSI pointing at the zero page. This guest needs nothing else: it has one PT_LOAD segment at
 * 1 MiB (see sbx-test-guest.ld), sets its own stack, writes a ready marker to the serial port
 * (16550 UART at I/O port 0x3f8), then loops forever over guest memory [16 MiB, 64 MiB):
 * every iteration rewrites one 32-bit word of every page and folds it into a running checksum.
 * After an iteration, when at least SBX_REPORT_CYCLES TSC cycles passed since the last report
 * (and after the first iteration), it prints
 *
 *     SBX-GUEST iter=<decimal> sum=<8 hex digits>
 *
 * All state (the counters and the pages) lives in guest memory, so after a snapshot restore the
 * sequence continues exactly where it stopped; the checksum of iteration N is a pure function of
 * N (see expectedGuestChecksums in ../tiny-guest.ts), so a wrong or partly lost memory image shows up as a
 * wrong checksum. No libc, no SSE (Firecracker does not enable it), no interrupts.
 *
 * With `sbx.cpuid=<leaf>.<subleaf>,...` on the command line (hex, at most SBX_CPUID_MAX pairs), the
 * guest first executes CPUID for each pair and prints what it sees, before the ready marker:
 *
 *     SBX-GUEST cpuid <leaf 8 hex>.<subleaf 8 hex> eax=<8 hex> ebx=<8 hex> ecx=<8 hex> edx=<8 hex>
 *
 * so a test can check that a CPU template reached the guest bit for bit.
 *
 * With `sbx.region-shift-mib=<decimal>` the region moves up by that many MiB (the guest needs 64 MiB
 * plus the shift of memory): the same walk and the same checksums over other pages, so a working set
 * recorded from one guest can be tried on a guest whose working set is elsewhere.
 *
 * With `sbx.balloon-scratch-mib=<decimal>` the guest drives Firecracker's virtio-mmio balloon (found
 * through the `virtio_mmio.device=<size>@<addr>:<irq>` entries Firecracker puts on the command line) with
 * free page reporting, and keeps a scratch region of that many MiB right above the walked region (the
 * guest needs 64 MiB plus the shift plus the scratch of memory). It prints, before the ready marker,
 *
 *     SBX-GUEST balloon ready features=<16 hex> reporting-queue=<n> scratch=<start hex>+<bytes>
 *
 * or `SBX-GUEST balloon error=<what>` and goes on without it. Then, once per report cycle, before the
 * progress line, it reads the balloon's target (config num_pages, PATCH /balloon amount_mib): while it is
 * 0 it writes every scratch page and prints `SBX-GUEST balloon touched bytes=<n> round=<r>`; once it is
 * above 0 it reports the whole scratch free through the reporting queue, polls the used ring until the
 * device gave every buffer back (Firecracker discards the ranges: MADV_DONTNEED), prints
 * `SBX-GUEST balloon reported bytes=<n>` once, and leaves the scratch alone until the target is 0 again.
 * The state lives in guest memory and the target is re-read every cycle, so a snapshot restore picks up
 * where it was (Firecracker restores the queues). The walk and its checksums do not change.
 *
 * A provisioning boot (the kernel command line has `sbx.provision=1`, as sbx's template build passes
 * it) instead prints what sbx's provisioning runner prints, `SBX_PROVISION_EXIT status=<n>` (n from
 * `sbx.test-provision-status=<n>`, default 0), and resets the machine through the i8042 controller,
 * which makes Firecracker exit: the clean shutdown the build waits for.
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define SERIAL_PORT 0x3f8
#define REGION_START (16ul << 20)
#define REGION_END (64ul << 20)
#define PAGE_SIZE 4096ul
#ifndef SBX_REPORT_CYCLES
#define SBX_REPORT_CYCLES (1ul << 27)
#endif

/* Initialized, so it lives in the file image (p_filesz == p_memsz) and in guest memory. */
struct guest_state {
  u32 magic;
  u32 iteration;
  u32 checksum;
  u32 reserved;
  u64 last_report_tsc;
  u64 region_start;
};
static volatile struct guest_state state = {0x53425847u, 0, 0x811c9dc5u, 0, 0, REGION_START};

static unsigned char stack[16384] __attribute__((used, aligned(16)));

static inline void outb(unsigned short port, unsigned char value) {
  __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static void put_char(char c) { outb(SERIAL_PORT, (unsigned char)c); }

static void put_str(const char *s) {
  while (*s) put_char(*s++);
}

static void put_dec(u32 value) {
  char buf[11];
  int i = 0;
  do {
    buf[i++] = (char)('0' + value % 10u);
    value /= 10u;
  } while (value != 0u);
  while (i > 0) put_char(buf[--i]);
}

static void put_hex(u32 value) {
  static const char digits[] = "0123456789abcdef";
  for (int shift = 28; shift >= 0; shift -= 4) put_char(digits[(value >> shift) & 0xfu]);
}

static inline u64 rdtsc(void) {
  u32 lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((u64)hi << 32) | lo;
}

/*
 * One iteration: every page's first word w becomes w * 1664525 + (1013904223 ^ page ^ iteration),
 * and for each page in order the checksum c becomes x ^ (x >> 15) with x = (c ^ w) * 0x9e3779b1.
 */
static void step(void) {
  u32 iteration = state.iteration + 1u;
  u32 checksum = state.checksum;
  u32 page = 0;
  u64 start = state.region_start;
  for (u64 addr = start; addr < start + (REGION_END - REGION_START); addr += PAGE_SIZE, page++) {
    volatile u32 *word = (volatile u32 *)addr;
    u32 next = *word * 1664525u + (1013904223u ^ page ^ iteration);
    *word = next;
    checksum = (checksum ^ next) * 0x9e3779b1u;
    checksum ^= checksum >> 15;
  }
  state.checksum = checksum;
  state.iteration = iteration;
}

/* Finds `name` as a whole word of the command line; returns what follows it, or 0. */
static const char *cmdline_find(const char *cmdline, const char *name) {
  for (const char *p = cmdline; *p; p++) {
    if (p != cmdline && p[-1] != ' ') continue;
    const char *a = p;
    const char *b = name;
    while (*b && *a == *b) a++, b++;
    if (!*b && (*a == ' ' || *a == '\0' || b[-1] == '=')) return a;
  }
  return 0;
}

#define SBX_CPUID_MAX 64

static inline void cpuid(u32 leaf, u32 subleaf, u32 regs[4]) {
  __asm__ volatile("cpuid" : "=a"(regs[0]), "=b"(regs[1]), "=c"(regs[2]), "=d"(regs[3]) : "a"(leaf), "c"(subleaf));
}

/* Parses up to 8 hex digits at *p (advancing it); returns -1 when there is none. */
static long parse_hex(const char **p) {
  u32 value = 0;
  int digits = 0;
  for (;; (*p)++, digits++) {
    char c = **p;
    u32 d;
    if (c >= '0' && c <= '9') d = (u32)(c - '0');
    else if (c >= 'a' && c <= 'f') d = (u32)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') d = (u32)(c - 'A' + 10);
    else break;
    if (digits == 8) return -1;
    value = value << 4 | d;
  }
  return digits ? (long)value : -1;
}

/* Prints the CPUID leaves `sbx.cpuid=` names; stops at the first malformed pair. */
static void print_cpuid(const char *list) {
  for (int n = 0; n < SBX_CPUID_MAX; n++) {
    long leaf = parse_hex(&list);
    if (leaf < 0 || *list++ != '.') return;
    long subleaf = parse_hex(&list);
    if (subleaf < 0) return;
    u32 regs[4];
    cpuid((u32)leaf, (u32)subleaf, regs);
    put_str("SBX-GUEST cpuid ");
    put_hex((u32)leaf);
    put_char('.');
    put_hex((u32)subleaf);
    put_str(" eax=");
    put_hex(regs[0]);
    put_str(" ebx=");
    put_hex(regs[1]);
    put_str(" ecx=");
    put_hex(regs[2]);
    put_str(" edx=");
    put_hex(regs[3]);
    put_char('\n');
    if (*list != ',') return;
    list++;
  }
}

static void provision_and_reset(const char *cmdline) {
  u32 status = 0;
  const char *value = cmdline_find(cmdline, "sbx.test-provision-status=");
  while (value && *value >= '0' && *value <= '9') status = status * 10u + (u32)(*value++ - '0');
  put_str("SBX-GUEST provisioning\n");
  put_str("SBX_PROVISION_EXIT status=");
  put_dec(status);
  put_char('\n');
  outb(0x64, 0xfe); /* i8042 reset: Firecracker stops the VM and exits */
  for (;;) __asm__ volatile("hlt");
}

/* ---- virtio-mmio balloon with free page reporting (only with sbx.balloon-scratch-mib=) ---- */

/* virtio-mmio version 2 registers (virtio 1.2, 4.2.2). */
#define VIRTIO_MMIO_MAGIC 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC 0x080
#define VIRTIO_MMIO_QUEUE_AVAIL 0x090
#define VIRTIO_MMIO_QUEUE_USED 0x0a0
#define VIRTIO_MMIO_CONFIG 0x100
#define VIRTIO_MMIO_MAGIC_VALUE 0x74726976u
#define VIRTIO_ID_BALLOON 5u

#define VIRTIO_STATUS_ACKNOWLEDGE 1u
#define VIRTIO_STATUS_DRIVER 2u
#define VIRTIO_STATUS_DRIVER_OK 4u
#define VIRTIO_STATUS_FEATURES_OK 8u
#define VIRTIO_STATUS_NEEDS_RESET 64u
#define VIRTIO_STATUS_FAILED 128u

#define VIRTIO_F_VERSION_1 32
#define VIRTIO_BALLOON_F_STATS_VQ 1
#define VIRTIO_BALLOON_F_FREE_PAGE_HINT 3
#define VIRTIO_BALLOON_F_REPORTING 5

#define VIRTQ_DESC_F_NEXT 1u
#define VIRTQ_DESC_F_WRITE 2u
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1u

/*
 * Guest-physical [8 MiB, 8 MiB + 6 pages): a page directory for the device's MMIO window and one page per
 * virtqueue (at most 5: inflate, deflate, stats, hinting, reporting). Below the walked region for any shift, above the 1 MiB image, outside what Firecracker
 * writes at boot (zero page, command line, page tables and ACPI tables all sit below 1 MiB).
 */
#define BALLOON_PAGES ((u64)8 << 20)
#define BALLOON_PAGE_DIRECTORY BALLOON_PAGES
#define BALLOON_QUEUE_PAGE(q) (BALLOON_PAGES + ((u64)(q) + 1u) * PAGE_SIZE)
/* Per queue page: descriptors at 0, available ring at 0x400, used ring at 0x800 (each fits for 16). */
#define BALLOON_QUEUE_SIZE 16u
#define BALLOON_AVAIL_OFFSET 0x400u
#define BALLOON_USED_OFFSET 0x800u
/* Linux reports free pages in blocks of at least a pageblock; 4 MiB is its largest buddy block. */
#define BALLOON_REPORT_CHUNK ((u64)4 << 20)
/*
 * Polls of the used ring before giving up: seconds, long enough for a loaded host to get to the queue.
 * Counted, not timed by the TSC, which a snapshot restore may move.
 */
#define BALLOON_WAIT_POLLS (1ul << 30)
/* Firecracker identity-maps the first 1 GiB; the scratch must be inside it. */
#define IDENTITY_MAPPED_END ((u64)1 << 30)

struct virtq_desc {
  u64 addr;
  u32 len;
  u16 flags;
  u16 next;
};

enum { BALLOON_OFF = 0, BALLOON_TOUCHING = 1, BALLOON_REPORTED = 2 };

struct balloon_state {
  u64 mmio;
  u64 scratch_start;
  u64 scratch_bytes;
  u32 mode;
  u32 reporting_queue;
  u32 round;
  u16 avail_idx;
};
static volatile struct balloon_state balloon = {0, 0, 0, BALLOON_OFF, 0, 0, 0};

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

static inline u32 mmio_read(u64 offset) { return *(volatile u32 *)(balloon.mmio + offset); }

static inline void mmio_write(u64 offset, u32 value) { *(volatile u32 *)(balloon.mmio + offset) = value; }

static void put_hex64(u64 value) {
  put_hex((u32)(value >> 32));
  put_hex((u32)value);
}

/* Prints why the balloon is off and turns it off; returns 0 for `return balloon_fail(...)`. */
static int balloon_fail(const char *what) {
  put_str("SBX-GUEST balloon error=");
  put_str(what);
  put_char('\n');
  balloon.mode = BALLOON_OFF;
  return 0;
}

/* Parses a decimal number at *p (advancing it); -1 when there is none or it has over 13 digits. */
static long parse_dec(const char **p) {
  long value = 0;
  int digits = 0;
  while (**p >= '0' && **p <= '9') {
    value = value * 10 + (**p - '0');
    (*p)++;
    if (++digits > 13) return -1;
  }
  return digits ? value : -1;
}

/* `<size>[KMG]@<0x hex or decimal address>:<irq>`, the form Firecracker writes; returns the address or 0. */
static u64 parse_virtio_mmio_device(const char *p) {
  long size = parse_dec(&p);
  if (size <= 0) return 0;
  if (*p == 'K' || *p == 'k' || *p == 'M' || *p == 'm' || *p == 'G' || *p == 'g') p++;
  if (*p++ != '@') return 0;
  u64 addr = 0;
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
    p += 2;
    int digits = 0;
    for (;; p++, digits++) {
      char c = *p;
      u64 d;
      if (c >= '0' && c <= '9') d = (u64)(c - '0');
      else if (c >= 'a' && c <= 'f') d = (u64)(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') d = (u64)(c - 'A' + 10);
      else break;
      if (digits == 16) return 0;
      addr = addr << 4 | d;
    }
    if (digits == 0) return 0;
  } else {
    long value = parse_dec(&p);
    if (value < 0) return 0;
    addr = (u64)value;
  }
  if (*p != ':') return 0;
  return addr;
}

/* One 2 MiB uncached mapping per page of the 1 GiB slot holding `addr`, unless it is mapped already. */
static int map_mmio(u64 addr) {
  if (addr < IDENTITY_MAPPED_END) return 1;
  if (addr >= ((u64)512 << 30) || (addr & (PAGE_SIZE - 1)) != 0) return 0;
  u64 cr3;
  __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
  volatile u64 *pml4 = (volatile u64 *)(cr3 & 0x000ffffffffff000ul);
  if ((pml4[0] & 1u) == 0) return 0;
  volatile u64 *pdpt = (volatile u64 *)(pml4[0] & 0x000ffffffffff000ul);
  u64 slot = addr >> 30;
  if (pdpt[slot] & 1u) return 1;
  volatile u64 *directory = (volatile u64 *)BALLOON_PAGE_DIRECTORY;
  /* present, writable, write-through, cache-disable, 2 MiB page */
  for (u64 i = 0; i < 512; i++) directory[i] = (slot << 30) + (i << 21) + 0x9bu;
  barrier();
  /* A not-present entry is never cached, so no TLB flush is needed for the new slot. */
  pdpt[slot] = BALLOON_PAGE_DIRECTORY | 0x3u;
  barrier();
  return 1;
}

/* Whether [start, end) is RAM in the zero page's e820 table. */
static int e820_covers(const unsigned char *zero_page, u64 start, u64 end) {
  u32 entries = *(const volatile u8 *)(zero_page + 0x1e8);
  if (entries > 128u) entries = 128u;
  for (u32 i = 0; i < entries; i++) {
    const volatile unsigned char *entry = zero_page + 0x2d0 + i * 20u;
    u64 base = *(const volatile u64 *)entry;
    u64 size = *(const volatile u64 *)(entry + 8);
    u32 type = *(const volatile u32 *)(entry + 16);
    if (type == 1u && base <= start && end <= base + size) return 1;
  }
  return 0;
}

static void balloon_setup_queue(u32 queue, u32 size) {
  u64 page = BALLOON_QUEUE_PAGE(queue);
  for (u64 i = 0; i < PAGE_SIZE; i += 8) *(volatile u64 *)(page + i) = 0;
  *(volatile u16 *)(page + BALLOON_AVAIL_OFFSET) = VIRTQ_AVAIL_F_NO_INTERRUPT;
  mmio_write(VIRTIO_MMIO_QUEUE_SEL, queue);
  mmio_write(VIRTIO_MMIO_QUEUE_NUM, size);
  mmio_write(VIRTIO_MMIO_QUEUE_DESC, (u32)page);
  mmio_write(VIRTIO_MMIO_QUEUE_DESC + 4, (u32)(page >> 32));
  mmio_write(VIRTIO_MMIO_QUEUE_AVAIL, (u32)(page + BALLOON_AVAIL_OFFSET));
  mmio_write(VIRTIO_MMIO_QUEUE_AVAIL + 4, (u32)((page + BALLOON_AVAIL_OFFSET) >> 32));
  mmio_write(VIRTIO_MMIO_QUEUE_USED, (u32)(page + BALLOON_USED_OFFSET));
  mmio_write(VIRTIO_MMIO_QUEUE_USED + 4, (u32)((page + BALLOON_USED_OFFSET) >> 32));
  mmio_write(VIRTIO_MMIO_QUEUE_READY, 1u);
}

/* Finds the balloon among the command line's virtio-mmio devices and brings it to DRIVER_OK. */
static int balloon_init(const char *cmdline, const unsigned char *zero_page, const char *scratch_mib) {
  long mib = parse_dec(&scratch_mib);
  if (mib <= 0) return balloon_fail("scratch-size");
  balloon.scratch_start = state.region_start + (REGION_END - REGION_START);
  balloon.scratch_bytes = (u64)mib << 20;
  u64 scratch_end = balloon.scratch_start + balloon.scratch_bytes;
  if (scratch_end > IDENTITY_MAPPED_END || !e820_covers(zero_page, balloon.scratch_start, scratch_end))
    return balloon_fail("scratch-outside-memory");

  int found = 0;
  for (const char *p = cmdline; !found && (p = cmdline_find(p, "virtio_mmio.device=")) != 0;) {
    u64 addr = parse_virtio_mmio_device(p);
    if (addr == 0 || !map_mmio(addr)) continue;
    balloon.mmio = addr;
    found = mmio_read(VIRTIO_MMIO_MAGIC) == VIRTIO_MMIO_MAGIC_VALUE && mmio_read(VIRTIO_MMIO_VERSION) == 2u &&
            mmio_read(VIRTIO_MMIO_DEVICE_ID) == VIRTIO_ID_BALLOON;
  }
  if (!found) return balloon_fail("no-device");

  mmio_write(VIRTIO_MMIO_STATUS, 0);
  mmio_write(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
  mmio_write(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
  mmio_write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
  u64 offered = mmio_read(VIRTIO_MMIO_DEVICE_FEATURES);
  mmio_write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
  offered |= (u64)mmio_read(VIRTIO_MMIO_DEVICE_FEATURES) << 32;
  u64 wanted = (1ul << VIRTIO_F_VERSION_1) | (1ul << VIRTIO_BALLOON_F_REPORTING);
  if ((offered & wanted) != wanted) return balloon_fail("no-free-page-reporting");
  mmio_write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
  mmio_write(VIRTIO_MMIO_DRIVER_FEATURES, (u32)wanted);
  mmio_write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
  mmio_write(VIRTIO_MMIO_DRIVER_FEATURES, (u32)(wanted >> 32));
  u32 status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
  mmio_write(VIRTIO_MMIO_STATUS, status);
  if ((mmio_read(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK) == 0) return balloon_fail("features-refused");

  /*
   * Firecracker numbers the queues by what it offers, negotiated or not (inflate, deflate, then stats,
   * hinting and reporting when offered), and activates the device only when every one of them is ready.
   */
  u32 reporting = 2u + (u32)((offered >> VIRTIO_BALLOON_F_STATS_VQ) & 1u) +
                  (u32)((offered >> VIRTIO_BALLOON_F_FREE_PAGE_HINT) & 1u);
  for (u32 queue = 0; queue <= reporting; queue++) {
    mmio_write(VIRTIO_MMIO_QUEUE_SEL, queue);
    if (mmio_read(VIRTIO_MMIO_QUEUE_NUM_MAX) < BALLOON_QUEUE_SIZE) return balloon_fail("queue-too-small");
    balloon_setup_queue(queue, BALLOON_QUEUE_SIZE);
  }
  mmio_write(VIRTIO_MMIO_STATUS, status | VIRTIO_STATUS_DRIVER_OK);
  status = mmio_read(VIRTIO_MMIO_STATUS);
  if ((status & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)) != 0 || (status & VIRTIO_STATUS_DRIVER_OK) == 0)
    return balloon_fail("activation-failed");

  balloon.reporting_queue = reporting;
  balloon.avail_idx = 0;
  balloon.mode = BALLOON_TOUCHING;
  put_str("SBX-GUEST balloon ready features=");
  put_hex64(wanted);
  put_str(" reporting-queue=");
  put_dec(reporting);
  put_str(" scratch=");
  put_hex64(balloon.scratch_start);
  put_char('+');
  put_dec((u32)balloon.scratch_bytes);
  put_char('\n');
  return 1;
}

/* Hands [start, start + bytes) to the device as one descriptor chain and polls until it is used. */
static int balloon_report_chain(u64 start, u64 bytes) {
  u64 queue_page = BALLOON_QUEUE_PAGE(balloon.reporting_queue);
  volatile struct virtq_desc *desc = (volatile struct virtq_desc *)queue_page;
  volatile u16 *avail = (volatile u16 *)(queue_page + BALLOON_AVAIL_OFFSET);
  volatile u16 *used_idx = (volatile u16 *)(queue_page + BALLOON_USED_OFFSET + 2);
  u16 count = 0;
  for (u64 at = start; at < start + bytes && count < BALLOON_QUEUE_SIZE; at += BALLOON_REPORT_CHUNK, count++) {
    u64 left = start + bytes - at;
    desc[count].addr = at;
    desc[count].len = (u32)(left < BALLOON_REPORT_CHUNK ? left : BALLOON_REPORT_CHUNK);
    desc[count].flags = VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT;
    desc[count].next = (u16)(count + 1u);
  }
  desc[count - 1u].flags = VIRTQ_DESC_F_WRITE;
  u16 idx = balloon.avail_idx;
  avail[2u + idx % BALLOON_QUEUE_SIZE] = 0;
  barrier();
  idx++;
  avail[1] = idx;
  balloon.avail_idx = idx;
  barrier();
  mmio_write(VIRTIO_MMIO_QUEUE_NOTIFY, balloon.reporting_queue);
  for (u64 polls = 0; *used_idx != idx; polls++) {
    if (polls == BALLOON_WAIT_POLLS) return 0;
    __asm__ volatile("pause");
  }
  barrier();
  mmio_write(VIRTIO_MMIO_INTERRUPT_ACK, mmio_read(VIRTIO_MMIO_INTERRUPT_STATUS));
  return 1;
}

/* Once per report cycle: touch the scratch while the target is 0, report it free once it is not. */
static void balloon_cycle(void) {
  u32 target = mmio_read(VIRTIO_MMIO_CONFIG);
  if (target == 0u) {
    balloon.mode = BALLOON_TOUCHING;
    u32 round = balloon.round + 1u;
    balloon.round = round;
    for (u64 addr = balloon.scratch_start; addr < balloon.scratch_start + balloon.scratch_bytes; addr += PAGE_SIZE)
      *(volatile u32 *)addr = round;
    put_str("SBX-GUEST balloon touched bytes=");
    put_dec((u32)balloon.scratch_bytes);
    put_str(" round=");
    put_dec(round);
    put_char('\n');
    return;
  }
  if (balloon.mode == BALLOON_REPORTED) return;
  u64 chain = BALLOON_REPORT_CHUNK * BALLOON_QUEUE_SIZE;
  for (u64 at = balloon.scratch_start; at < balloon.scratch_start + balloon.scratch_bytes; at += chain) {
    u64 left = balloon.scratch_start + balloon.scratch_bytes - at;
    if (!balloon_report_chain(at, left < chain ? left : chain)) {
      balloon_fail("report-timeout");
      return;
    }
  }
  balloon.mode = BALLOON_REPORTED;
  put_str("SBX-GUEST balloon reported bytes=");
  put_dec((u32)balloon.scratch_bytes);
  put_char('\n');
}

void sbx_guest_main(const unsigned char *zero_page) {
  /* boot_params.hdr.cmd_line_ptr (offset 0x228), below 4 GiB: identity-mapped like all low memory. */
  const char *cmdline = zero_page ? (const char *)(u64)(*(const volatile u32 *)(zero_page + 0x228)) : 0;
  if (cmdline && cmdline_find(cmdline, "sbx.provision=1")) provision_and_reset(cmdline);
  const char *shift = cmdline ? cmdline_find(cmdline, "sbx.region-shift-mib=") : 0;
  if (shift) {
    u64 mib = 0;
    while (*shift >= '0' && *shift <= '9') mib = mib * 10u + (u64)(*shift++ - '0');
    state.region_start = REGION_START + (mib << 20);
  }
  const char *cpuid_list = cmdline ? cmdline_find(cmdline, "sbx.cpuid=") : 0;
  if (cpuid_list) print_cpuid(cpuid_list);
  const char *scratch_mib = cmdline ? cmdline_find(cmdline, "sbx.balloon-scratch-mib=") : 0;
  if (scratch_mib) (void)balloon_init(cmdline, zero_page, scratch_mib);
  put_str("SBX-GUEST-READY\n");
  for (;;) {
    step();
    u64 now = rdtsc();
    u64 last = state.last_report_tsc;
    if (state.iteration == 1u || now < last || now - last >= SBX_REPORT_CYCLES) {
      state.last_report_tsc = now;
      if (balloon.mode != BALLOON_OFF) balloon_cycle();
      put_str("SBX-GUEST iter=");
      put_dec(state.iteration);
      put_str(" sum=");
      put_hex(state.checksum);
      put_char('\n');
    }
  }
}

__asm__(
    ".section .text.entry,\"ax\",@progbits\n"
    ".globl _start\n"
    "_start:\n"
    "  cli\n"
    "  lea stack+16384(%rip), %rsp\n"
    "  xor %ebp, %ebp\n"
    "  mov %rsi, %rdi\n" /* the zero page, sbx_guest_main's argument */
    "  call sbx_guest_main\n"
    "1: hlt\n"
    "  jmp 1b\n"
    ".previous\n");
