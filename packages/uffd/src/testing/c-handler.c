/*
 * The benchmark's baseline: a minimal C page-fault handler, as fast as this machine allows. Accepts one
 * connection on argv[1], takes the userfaultfd and the mappings from the peer, mmaps argv[2] (the memory
 * file) and spins on the non-blocking userfaultfd, reading events in batches and answering each fault
 * with UFFDIO_COPY. Exits when the peer hangs up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = { .sun_family = AF_UNIX };
  strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
  unlink(argv[1]);
  if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1)) return 3;
  printf("listening\n");
  fflush(stdout);
  int c = accept4(ls, 0, 0, SOCK_CLOEXEC);
  char body[4096] = { 0 }, control[CMSG_SPACE(sizeof(int) * 4)];
  struct iovec iov = { body, sizeof body - 1 };
  struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control };
  if (recvmsg(c, &m, MSG_CMSG_CLOEXEC) <= 0) return 4;
  int uffd;
  memcpy(&uffd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof uffd);
  unsigned long base = strtoul(strstr(body, "base_host_virt_addr\":") + 21, 0, 10);
  unsigned long size = strtoul(strstr(body, "\"size\":") + 7, 0, 10);
  unsigned long offset = strtoul(strstr(body, "\"offset\":") + 9, 0, 10);
  unsigned long page = strtoul(strstr(body, "\"page_size\":") + 12, 0, 10);
  int f = open(argv[2], O_RDONLY | O_CLOEXEC);
  struct stat st;
  fstat(f, &st);
  uint8_t *file = mmap(0, st.st_size, PROT_READ, MAP_PRIVATE, f, 0);
  (void)size;
  struct uffd_msg msgs[64];
  unsigned long spins = 0;
  for (;;) {
    ssize_t n = read(uffd, msgs, sizeof msgs);
    if (n <= 0) {
      if (++spins % 4096 == 0) {
        char b;
        ssize_t r = recv(c, &b, 1, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN)) break;
      }
      continue;
    }
    for (int i = 0; i < n / (ssize_t)sizeof msgs[0]; i++) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      unsigned long addr = msgs[i].arg.pagefault.address & ~(page - 1);
      struct uffdio_copy cp = { .dst = addr, .src = (unsigned long)(file + offset + (addr - base)), .len = page };
      if (ioctl(uffd, UFFDIO_COPY, &cp) && errno != EEXIST) return 5;
    }
  }
  return 0;
}
