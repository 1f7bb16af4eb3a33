/*
 * A stand-in for Firecracker's side of the UFFD handshake, for tests. It does what Firecracker does on
 * PUT /snapshot/load with a Uffd backend: maps guest memory (anonymous, memfd-backed or 2 MiB hugetlb),
 * creates a userfaultfd, registers the memory for missing-page faults with EVENT_REMOVE, connects to
 * the handler's socket and sends the mapping JSON with the userfaultfd (and the memfd) as SCM_RIGHTS.
 * Then it plays the guest: touches pages (sequential, random, written; from N threads), checks every
 * byte against the memory file, and optionally madvise(MADV_DONTNEED)s a range to cause REMOVE events
 * and checks the range comes back as zeros. Prints one JSON line with what it saw.
 *
 * Balloon-like modes: --remove-race N makes each thread touch a page, madvise it away and check it reads
 * back as zeros, N times on pages of its own; the madvise returns once the handler has read the REMOVE,
 * so the touch that follows comes as soon as the handler can see it. (It rarely lands in the very read
 * that held its REMOVE: the kernel hands out pending faults before events, and while any REMOVE is
 * pending UFFDIO_COPY fails with EAGAIN.) --pre-remove N removes N single pages (every other page of the region's last 2N) before the
 * pass, which then touches only the pages below them (--check-removed reads those N pages back too).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char *socket_path, *file_path, *mode = "seq", *backing = "anon", *body_override;
static size_t size, page = 4096, file_offset, remove_off, remove_len;
static int threads = 1, fds_to_send = 1, extra_fd, hold_ms;
static const char *write_pages; /* comma-separated page indexes written with 0xEE at byte 0 after the pass */
static long remove_race, pre_remove, check_removed;
static volatile long race_mismatches, race_checked;
static uint8_t *mem, *file;
static volatile long mismatches, touched;

static void die(const char *what) {
  fprintf(stderr, "peer: %s: %s\n", what, strerror(errno));
  exit(2);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

struct slice { size_t first, count; unsigned seed; int index; };

/* Touch (served from the file), remove, then read again: the page must now be zeros. */
static void *remove_racer(void *arg) {
  struct slice *s = arg;
  size_t pages = size / page;
  for (long i = 0; i < remove_race; i++) {
    size_t p = (size_t)s->index + (size_t)i * (size_t)threads;
    if (p >= pages) break;
    uint8_t *at = mem + p * page;
    if (memcmp(at, file + file_offset + p * page, page) != 0) __sync_fetch_and_add(&mismatches, 1);
    if (madvise(at, page, MADV_DONTNEED)) die("madvise");
    int zero = 1;
    for (size_t b = 0; b < page; b += 64) if (((volatile uint8_t *)at)[b]) { zero = 0; break; }
    if (!zero) __sync_fetch_and_add(&race_mismatches, 1);
    __sync_fetch_and_add(&race_checked, 1);
    __sync_fetch_and_add(&touched, 1);
  }
  return NULL;
}

static void *toucher(void *arg) {
  struct slice *s = arg;
  size_t pages = size / page;
  unsigned x = s->seed | 1;
  for (size_t i = 0; i < s->count; i++) {
    size_t p = s->first + i;
    if (!strcmp(mode, "random")) { x ^= x << 13; x ^= x >> 17; x ^= x << 5; p = x % pages; }
    uint8_t *at = mem + p * page;
    if (!strcmp(mode, "write")) {
      at[1] = file[file_offset + p * page + 1]; /* a write fault, same value: the page must still match */
    } else {
      (void)*(volatile uint8_t *)at;
    }
    if (memcmp(at, file + file_offset + p * page, page) != 0) __sync_fetch_and_add(&mismatches, 1);
    __sync_fetch_and_add(&touched, 1);
  }
  return NULL;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
    if (!strcmp(a, "--socket")) socket_path = v, i++;
    else if (!strcmp(a, "--file")) file_path = v, i++;
    else if (!strcmp(a, "--size")) size = strtoull(v, 0, 0), i++;
    else if (!strcmp(a, "--file-offset")) file_offset = strtoull(v, 0, 0), i++;
    else if (!strcmp(a, "--page")) page = strtoull(v, 0, 0), i++;
    else if (!strcmp(a, "--mode")) mode = v, i++;
    else if (!strcmp(a, "--backing")) backing = v, i++;
    else if (!strcmp(a, "--threads")) threads = atoi(v), i++;
    else if (!strcmp(a, "--fds")) fds_to_send = atoi(v), i++;
    else if (!strcmp(a, "--extra-fd")) extra_fd = 1;
    else if (!strcmp(a, "--body")) body_override = v, i++;
    else if (!strcmp(a, "--hold-ms")) hold_ms = atoi(v), i++;
    else if (!strcmp(a, "--write-pages")) write_pages = v, i++;
    else if (!strcmp(a, "--remove-race")) remove_race = atol(v), i++;
    else if (!strcmp(a, "--pre-remove")) pre_remove = atol(v), i++;
    else if (!strcmp(a, "--check-removed")) check_removed = 1;
    else if (!strcmp(a, "--remove")) { remove_off = strtoull(v, 0, 0); remove_len = strtoull(strchr(v, ':') + 1, 0, 0); i++; }
    else { fprintf(stderr, "peer: unknown argument %s\n", a); return 2; }
  }
  if (!socket_path || !size) { fprintf(stderr, "peer: --socket and --size are required\n"); return 2; }

  int memfd = -1;
  if (!strcmp(backing, "memfd")) {
    memfd = syscall(SYS_memfd_create, "guest_mem", MFD_CLOEXEC);
    if (memfd < 0 || ftruncate(memfd, size)) die("memfd");
    mem = mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  } else if (!strcmp(backing, "hugetlb")) {
    mem = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_NORESERVE, -1, 0);
  } else {
    mem = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  }
  if (mem == MAP_FAILED) die("mmap guest memory");

  int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (uffd < 0) die("userfaultfd");
  struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE };
  if (ioctl(uffd, UFFDIO_API, &api)) die("UFFDIO_API");
  struct uffdio_register reg = { .range = { (uintptr_t)mem, size }, .mode = UFFDIO_REGISTER_MODE_MISSING };
  if (ioctl(uffd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER");

  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  strncpy(addr.sun_path, socket_path, sizeof addr.sun_path - 1);
  if (connect(sock, (struct sockaddr *)&addr, sizeof addr)) die("connect");

  char body[512];
  if (body_override) snprintf(body, sizeof body, "%s", body_override);
  else snprintf(body, sizeof body,
                "[{\"base_host_virt_addr\":%lu,\"size\":%zu,\"offset\":%zu,\"page_size\":%zu,\"page_size_kib\":%zu}]",
                (unsigned long)(uintptr_t)mem, size, file_offset, page, page);
  int fds[3] = { uffd, memfd, -1 };
  int nfds = fds_to_send;
  if (extra_fd) { int p[2]; if (pipe(p)) die("pipe"); fds[nfds++] = p[0]; }
  struct iovec iov = { body, strlen(body) };
  char control[CMSG_SPACE(sizeof fds)] = { 0 };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (nfds > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  if (sendmsg(sock, &msg, 0) < 0) die("sendmsg");

  if (!strcmp(mode, "none")) {
    usleep(hold_ms * 1000);
    printf("{\"ok\":true,\"touched\":0}\n");
    return 0;
  }
  int ffd = open(file_path, O_RDONLY | O_CLOEXEC);
  if (ffd < 0) die("open memory file");
  off_t file_size = lseek(ffd, 0, SEEK_END);
  file = mmap(0, file_size, PROT_READ, MAP_PRIVATE, ffd, 0);
  if (file == MAP_FAILED) die("mmap memory file");

  size_t pages = size / page;
  pthread_t tids[64];
  struct slice slices[64];
  if (threads < 1 || threads > 64) threads = 1;
  if (pre_remove > 0) {
    if ((size_t)pre_remove * 2 > pages) { fprintf(stderr, "peer: --pre-remove needs 2N pages\n"); return 2; }
    for (long i = 0; i < pre_remove; i++)
      if (madvise(mem + (pages - 2 * (size_t)pre_remove + 2 * (size_t)i) * page, page, MADV_DONTNEED)) die("madvise");
    pages -= 2 * (size_t)pre_remove; /* the pass touches only what lies below the removed pages */
  }
  uint64_t start = now_ns();
  for (int t = 0; t < threads; t++) {
    slices[t].first = pages * t / threads;
    slices[t].count = pages * (t + 1) / threads - slices[t].first;
    slices[t].seed = 2463534242u + t;
    slices[t].index = t;
    pthread_create(&tids[t], 0, remove_race > 0 ? remove_racer : toucher, &slices[t]);
  }
  for (int t = 0; t < threads; t++) pthread_join(tids[t], 0);
  uint64_t elapsed = now_ns() - start;
  if (pre_remove > 0 && check_removed) {
    for (long i = 0; i < pre_remove; i++) {
      const uint8_t *at = mem + (pages + 2 * (size_t)i) * page;
      for (size_t b = 0; b < page; b += 512) if (at[b]) { race_mismatches++; break; }
      race_checked++;
    }
  }

  long written = 0;
  if (write_pages) {
    for (const char *at = write_pages; *at;) {
      size_t p = strtoull(at, (char **)&at, 10);
      if (p < pages) { mem[p * page] = 0xEE; written++; }
      if (*at == ',') at++;
      else if (*at) break;
    }
  }
  long zero_mismatches = 0, zero_checked = 0;
  if (remove_len) {
    if (madvise(mem + remove_off, remove_len, MADV_DONTNEED)) die("madvise");
    for (size_t at = remove_off; at < remove_off + remove_len; at += page) {
      for (size_t b = 0; b < page; b += 512) if (mem[at + b]) { zero_mismatches++; break; }
      zero_checked++;
    }
  }
  if (hold_ms) usleep(hold_ms * 1000);
  printf("{\"ok\":true,\"touched\":%ld,\"mismatches\":%ld,\"zeroChecked\":%ld,\"zeroMismatches\":%ld,\"written\":%ld,\"elapsedNs\":%lu}\n",
         touched, mismatches, zero_checked + race_checked, zero_mismatches + race_mismatches, written, (unsigned long)elapsed);
  return 0;
}
