/* The benchmark's baseline: the least a remote exec can do. Listens on TCP, and for each line
 * "<argv separated by spaces>\n" on a connection runs it with stdout connected straight to the socket
 * (no framing, no copy through the server), waits, then writes one byte with the exit status.
 * Usage: raw-exec <port> */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

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
      pid_t pid = fork();
      if (pid == 0) {
        dup2(fd, 1);
        execvp(argv[0], argv);
        _exit(127);
      }
      int status = 0;
      waitpid(pid, &status, 0);
      unsigned char code = WIFEXITED(status) ? (unsigned char)WEXITSTATUS(status) : 255;
      if (write(fd, &code, 1) != 1) return;
      size_t used = (size_t)(newline - line) + 1;
      memmove(line, newline + 1, len - used);
      len -= used;
    }
  }
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 5001;
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
