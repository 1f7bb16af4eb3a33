/* The benchmark's baselines. Listens on TCP, and for each line "<argv separated by spaces>\n" on a
 * connection runs it, waits, then writes one byte with the exit status.
 * - raw-exec <port>: the command's stdout is the socket itself (no framing, no copy through the
 *   server): the least a remote exec can do.
 * - raw-exec <port> --pipe: the command's stdout is a 1 MiB pipe that this process splices into the
 *   socket, no framing and no protocol: the least any server pays that keeps a pipe between the
 *   command and the connection (as the agent must, so a command outlives its client and a restore). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int through_pipe;

/* Runs argv with stdout on `fd`, directly or through a pipe spliced into it; the exit status byte. */
static unsigned char run(int fd, char **argv) {
  int out[2] = {-1, fd};
  if (through_pipe) {
    if (pipe2(out, O_CLOEXEC)) return 255;
    fcntl(out[0], F_SETPIPE_SZ, 1 << 20);
  }
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    execvp(argv[0], argv);
    _exit(127);
  }
  if (through_pipe) {
    close(out[1]);
    while (splice(out[0], NULL, fd, NULL, 1 << 20, SPLICE_F_MOVE) > 0) {}
    close(out[0]);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? (unsigned char)WEXITSTATUS(status) : 255;
}

static void serve(int fd) {
  char line[4096];
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fd, line + len, sizeof line - 1 - len);
    if (n <= 0) return;
    len += (size_t)n;
    char *newline;
    while ((newline = memchr(line, '\n', len)) != NULL) {
      *newline = 0;
      char *argv[64];
      int argc = 0;
      for (char *tok = strtok(line, " "); tok && argc < 63; tok = strtok(NULL, " ")) argv[argc++] = tok;
      argv[argc] = NULL;
      unsigned char code = run(fd, argv);
      if (write(fd, &code, 1) != 1) return;
      size_t used = (size_t)(newline - line) + 1;
      memmove(line, newline + 1, len - used);
      len -= used;
    }
  }
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 5001;
  through_pipe = argc > 2 && strcmp(argv[2], "--pipe") == 0;
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 8)) { perror("raw-exec"); return 1; }
  for (;;) {
    int fd = accept(s, NULL, NULL);
    if (fd < 0) continue;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    serve(fd);
    close(fd);
  }
}
