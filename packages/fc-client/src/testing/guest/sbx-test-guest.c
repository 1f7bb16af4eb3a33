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
 * A provisioning boot (the kernel command line has `sbx.provision=1`, as sbx's template build passes
 * it) instead prints what sbx's provisioning runner prints, `SBX_PROVISION_EXIT status=<n>` (n from
 * `sbx.test-provision-status=<n>`, default 0), and resets the machine through the i8042 controller,
 * which makes Firecracker exit: the clean shutdown the build waits for.
 */

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
  put_str("SBX-GUEST-READY\n");
  for (;;) {
    step();
    u64 now = rdtsc();
    u64 last = state.last_report_tsc;
    if (state.iteration == 1u || now < last || now - last >= SBX_REPORT_CYCLES) {
      state.last_report_tsc = now;
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
