/* sbx guest agent: one thread, one poll loop. Listens on vsock, TCP and/or a Unix socket; every
 * connection speaks the framed protocol in docs/agent.md. Processes belong to the agent, not to a
 * connection, so they outlive the client that started them and can be attached again. */
#include "agent.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct conn {
  int fd; /* -1: free slot */
  int hello;
  int dead; /* protocol error sent: flush, then close */
  uint32_t window;
  struct buf in, out;
  int nstreams;
  /* A data frame whose payload is being spliced from a pipe (a dup of a process's stdout or stderr)
   * straight into the socket; until it is done, new frames queue in `later`. */
  int splice_fd;
  uint32_t splice_left;
  struct buf later;
};

enum stream_type { S_FREE, S_PROC, S_READ, S_WRITE };
struct stream {
  enum stream_type type;
  int conn;
  uint32_t id;
  uint64_t credit; /* bytes the host still accepts on this stream */
  int proc;
  int fd;
  uint64_t bytes;
  char tmp[PATH_MAX], dest[PATH_MAX];
  struct user user;
};

struct proc {
  pid_t pid; /* 0: free slot */
  int out_fd, err_fd, in_fd;
  int pty;
  int exited, status;
  int stream; /* -1: detached */
  struct buf in;
  int in_eof;
  uint64_t seq;
  char summary[200];
};

static struct conn conns[MAX_CONNECTIONS];
static struct stream streams[MAX_STREAMS];
static struct proc procs[MAX_PROCS];
static int listeners[8];
static int nlisteners;
static int sigfd = -1;
static uint64_t proc_seq;
static struct timespec started_at;
static int quiet;
static int splice_unsupported;

void agent_log(const char *fmt, ...) {
  if (quiet) return;
  va_list ap;
  va_start(ap, fmt);
  fputs("sbx-agent: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static size_t pending(const struct conn *c) { return c->out.len - c->out.off; }

/* Everything not yet written to the socket. */
static size_t backlog(const struct conn *c) { return pending(c) + c->splice_left + (c->later.len - c->later.off); }

/* Where a new frame goes: after a splice in progress, never into its middle. */
static struct buf *queue(struct conn *c) { return c->splice_fd >= 0 ? &c->later : &c->out; }

int send_frame_header(struct buf *out, uint32_t len, uint32_t stream, uint8_t kind, uint8_t channel) {
  if (buf_reserve(out, FRAME_HEADER + len)) return -1;
  uint8_t *h = out->data + out->len;
  h[0] = (uint8_t)(len >> 24); h[1] = (uint8_t)(len >> 16); h[2] = (uint8_t)(len >> 8); h[3] = (uint8_t)len;
  h[4] = (uint8_t)(stream >> 24); h[5] = (uint8_t)(stream >> 16); h[6] = (uint8_t)(stream >> 8); h[7] = (uint8_t)stream;
  h[8] = kind; h[9] = channel; h[10] = 0; h[11] = 0;
  out->len += FRAME_HEADER;
  return 0;
}

static void compact(struct buf *b) {
  if (b->off == b->len) { b->off = b->len = 0; return; }
  if (b->off > (1u << 20)) {
    memmove(b->data, b->data + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
  }
}

int send_control(int ci, uint32_t stream, const char *json, size_t len) {
  struct conn *c = &conns[ci];
  if (c->fd < 0 || len > MAX_PAYLOAD) return -1;
  struct buf *q = queue(c);
  compact(q);
  if (send_frame_header(q, (uint32_t)len, stream, KIND_CONTROL, 0)) return -1;
  memcpy(q->data + q->len, json, len);
  q->len += len;
  return 0;
}

int send_error(int ci, uint32_t stream, const char *code, int err, const char *message) {
  struct buf b = {0};
  jw_fmt(&b, "{\"type\":\"error\",\"code\":\"%s\",\"errno\":%d,\"message\":", code, err);
  jw_str(&b, message, strlen(message));
  jw_raw(&b, "}");
  int rc = send_control(ci, stream, (const char *)b.data, b.len);
  buf_free(&b);
  return rc;
}

static void send_window(int ci, uint32_t stream, uint32_t n) {
  struct buf *q = queue(&conns[ci]);
  compact(q);
  if (send_frame_header(q, 4, stream, KIND_WINDOW, 0)) return;
  uint8_t *p = q->data + q->len;
  p[0] = (uint8_t)(n >> 24); p[1] = (uint8_t)(n >> 16); p[2] = (uint8_t)(n >> 8); p[3] = (uint8_t)n;
  q->len += 4;
}

static void protocol_error(int ci, const char *message) {
  agent_log("connection %d: protocol error: %s", ci, message);
  send_error(ci, 0, "PROTOCOL_ERROR", 0, message);
  conns[ci].dead = 1;
}

/* ---- streams ---- */

static int find_stream(int ci, uint32_t id) {
  for (int i = 0; i < MAX_STREAMS; i++)
    if (streams[i].type != S_FREE && streams[i].conn == ci && streams[i].id == id) return i;
  return -1;
}

static int new_stream(int ci, uint32_t id, enum stream_type type) {
  if (conns[ci].nstreams >= MAX_STREAMS_PER_CONN) return -1;
  for (int i = 0; i < MAX_STREAMS; i++) {
    if (streams[i].type == S_FREE) {
      memset(&streams[i], 0, sizeof streams[i]);
      streams[i].type = type;
      streams[i].conn = ci;
      streams[i].id = id;
      streams[i].credit = conns[ci].window;
      streams[i].proc = -1;
      streams[i].fd = -1;
      conns[ci].nstreams++;
      return i;
    }
  }
  return -1;
}

static void free_stream(int si) {
  struct stream *s = &streams[si];
  if (s->type == S_FREE) return;
  if (s->type == S_PROC && s->proc >= 0 && procs[s->proc].stream == si) procs[s->proc].stream = -1;
  if (s->fd >= 0) close(s->fd);
  if (s->type == S_WRITE && s->tmp[0]) {
    if (fs_as_user(&s->user) == 0) { unlink(s->tmp); fs_as_agent(); }
  }
  conns[s->conn].nstreams--;
  s->type = S_FREE;
  s->fd = -1;
}

/* ---- processes ---- */

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void free_proc(int pi) {
  struct proc *p = &procs[pi];
  close_fd(&p->out_fd);
  close_fd(&p->err_fd);
  close_fd(&p->in_fd);
  buf_free(&p->in);
  p->pid = 0;
}

static void jw_exit(struct buf *b, const struct proc *p) {
  if (WIFEXITED(p->status)) jw_fmt(b, "{\"type\":\"exit\",\"pid\":%d,\"exitCode\":%d,\"signal\":null}", p->pid, WEXITSTATUS(p->status));
  else jw_fmt(b, "{\"type\":\"exit\",\"pid\":%d,\"exitCode\":null,\"signal\":%d}", p->pid, WTERMSIG(p->status));
}

/* A process is reported once it has exited and both output streams reached EOF, so no output is lost. */
static void maybe_finish_proc(int pi) {
  struct proc *p = &procs[pi];
  if (!p->pid || !p->exited || p->out_fd >= 0 || p->err_fd >= 0 || p->stream < 0) return;
  struct stream *s = &streams[p->stream];
  struct buf b = {0};
  jw_exit(&b, p);
  send_control(s->conn, s->id, (const char *)b.data, b.len);
  buf_free(&b);
  int si = p->stream;
  p->stream = -1;
  free_stream(si);
  free_proc(pi);
}

static int alloc_proc(void) {
  int oldest = -1;
  for (int i = 0; i < MAX_PROCS; i++) {
    if (!procs[i].pid) return i;
    /* Exited, unattached records are kept for a later attach; the oldest gives way when full. */
    if (procs[i].exited && procs[i].stream < 0 && (oldest < 0 || procs[i].seq < procs[oldest].seq)) oldest = i;
  }
  if (oldest >= 0) free_proc(oldest);
  return oldest;
}

static int find_proc(pid_t pid) {
  for (int i = 0; i < MAX_PROCS; i++)
    if (procs[i].pid && procs[i].pid == pid) return i;
  return -1;
}

struct child_error {
  int stage; /* 1 cwd, 2 identity, 3 exec, 4 pty */
  int err;
};

static void child_fail(int fd, int stage) {
  struct child_error e = {stage, errno};
  ssize_t rc = write(fd, &e, sizeof e);
  (void)rc;
  _exit(127);
}

static void attach_stream(int pi, int si) {
  procs[pi].stream = si;
  streams[si].proc = pi;
  struct buf b = {0};
  jw_fmt(&b, "{\"type\":\"started\",\"pid\":%d,\"pty\":%s}", procs[pi].pid, procs[pi].pty ? "true" : "false");
  send_control(streams[si].conn, streams[si].id, (const char *)b.data, b.len);
  buf_free(&b);
}

static void op_exec(int ci, uint32_t id, const struct json_doc *doc, int root) {
  int argv_node = json_get(doc, root, "argv");
  if (argv_node < 0 || doc->nodes[argv_node].type != J_ARR || doc->nodes[argv_node].count < 1 ||
      doc->nodes[argv_node].count > MAX_ARGS) {
    send_error(ci, id, "INVALID_REQUEST", 0, "exec needs argv: a non-empty array of strings");
    return;
  }
  int env_node = json_get(doc, root, "env");
  if (env_node >= 0 && (doc->nodes[env_node].type != J_OBJ || doc->nodes[env_node].count > MAX_ENV)) {
    send_error(ci, id, "INVALID_REQUEST", 0, "exec env must be an object of strings");
    return;
  }
  const char *cwd = NULL;
  int cwd_node = json_get(doc, root, "cwd");
  if (cwd_node >= 0 && !(cwd = request_path(doc, root, "cwd"))) {
    send_error(ci, id, "INVALID_REQUEST", 0, "exec cwd must be an absolute path");
    return;
  }
  int use_stdin = 1;
  int stdin_node = json_get(doc, root, "stdin");
  if (stdin_node >= 0 && doc->nodes[stdin_node].type == J_BOOL) use_stdin = doc->nodes[stdin_node].boolean;
  struct winsize ws = {24, 80, 0, 0};
  int pty = 0;
  int pty_node = json_get(doc, root, "pty");
  if (pty_node >= 0 && doc->nodes[pty_node].type != J_NULL) {
    int64_t rows, cols;
    if (json_int(doc, json_get(doc, pty_node, "rows"), 1, 4096, &rows) ||
        json_int(doc, json_get(doc, pty_node, "cols"), 1, 4096, &cols)) {
      send_error(ci, id, "INVALID_REQUEST", 0, "exec pty needs rows and cols in 1..4096");
      return;
    }
    ws.ws_row = (unsigned short)rows;
    ws.ws_col = (unsigned short)cols;
    pty = 1;
  }
  struct user u;
  int urc = user_resolve(doc, json_get(doc, root, "user"), &u);
  if (urc) {
    send_error(ci, id, urc == -ENOENT ? "USER_NOT_FOUND" : "INVALID_REQUEST", 0, "exec user is not in the guest's /etc/passwd");
    return;
  }
  int count = doc->nodes[argv_node].count;
  char **argv = calloc((size_t)count + 1, sizeof *argv);
  char **envp = calloc(MAX_ENV + 8, sizeof *envp);
  struct buf envbuf = {0};
  size_t offsets[MAX_ENV + 8];
  int nenv = 0;
  int si = -1, pi = -1;
  int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, status_pipe[2] = {-1, -1};
  int master = -1;
  char slave_name[64] = "";
  if (!argv || !envp) goto oom;
  int i = 0;
  for (int n = doc->nodes[argv_node].child; n >= 0; n = doc->nodes[n].next) {
    if (!(argv[i++] = (char *)json_str(doc, n))) {
      send_error(ci, id, "INVALID_REQUEST", 0, "exec argv must be strings without NUL");
      goto out;
    }
  }
  /* The environment: a login-like base, then the caller's variables on top. */
  const char *base_keys[] = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM"};
  const char *base_vals[] = {"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/.sbx/bin", u.home, u.name, u.name,
                             u.shell[0] ? u.shell : "/bin/sh", pty ? "xterm-256color" : NULL};
  for (int k = 0; k < 6; k++) {
    if (!base_vals[k]) continue;
    if (env_node >= 0 && json_get(doc, env_node, base_keys[k]) >= 0) continue;
    offsets[nenv++] = envbuf.len;
    jw_fmt(&envbuf, "%s=%s", base_keys[k], base_vals[k]);
    buf_reserve(&envbuf, 1);
    envbuf.data[envbuf.len++] = 0;
  }
  if (env_node >= 0) {
    for (int n = doc->nodes[env_node].child; n >= 0; n = doc->nodes[n].next) {
      const char *v = json_str(doc, n), *k = doc->nodes[n].key;
      if (!v || !*k || strchr(k, '=')) {
        send_error(ci, id, "INVALID_REQUEST", 0, "exec env: names must be non-empty without '=', values strings without NUL");
        goto out;
      }
      size_t kl = strlen(k), vl = strlen(v);
      if (buf_reserve(&envbuf, kl + vl + 2)) goto oom;
      offsets[nenv++] = envbuf.len;
      memcpy(envbuf.data + envbuf.len, k, kl);
      envbuf.data[envbuf.len + kl] = '=';
      memcpy(envbuf.data + envbuf.len + kl + 1, v, vl + 1);
      envbuf.len += kl + vl + 2;
    }
  }
  for (int k = 0; k < nenv; k++) envp[k] = (char *)envbuf.data + offsets[k];
  if ((si = new_stream(ci, id, S_PROC)) < 0) {
    send_error(ci, id, "TOO_MANY_STREAMS", 0, "this connection has too many open streams");
    goto out;
  }
  if ((pi = alloc_proc()) < 0) {
    send_error(ci, id, "TOO_MANY_PROCESSES", 0, "the agent already runs its maximum number of processes");
    goto out;
  }
  if (pipe2(status_pipe, O_CLOEXEC)) goto sys;
  if (pty) {
    master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) || unlockpt(master) || ptsname_r(master, slave_name, sizeof slave_name)) goto sys;
    ioctl(master, TIOCSWINSZ, &ws);
  } else {
    if (pipe2(out_pipe, O_CLOEXEC) || pipe2(err_pipe, O_CLOEXEC)) goto sys;
    if (use_stdin && pipe2(in_pipe, O_CLOEXEC)) goto sys;
    /* Bigger pipes mean fewer wake-ups per MiB of output. */
    fcntl(out_pipe[0], F_SETPIPE_SZ, 1 << 20);
  }
  pid_t pid = fork();
  if (pid < 0) goto sys;
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setsid();
    if (pty) {
      int slave = open(slave_name, O_RDWR);
      if (slave < 0 || ioctl(slave, TIOCSCTTY, 0)) child_fail(status_pipe[1], 4);
      dup2(slave, 0); dup2(slave, 1); dup2(slave, 2);
      if (slave > 2) close(slave);
    } else {
      int devnull = -1;
      if (!use_stdin) devnull = open("/dev/null", O_RDONLY);
      dup2(use_stdin ? in_pipe[0] : devnull, 0);
      if (devnull < 0 && !use_stdin) close(0);
      dup2(out_pipe[1], 1);
      dup2(err_pipe[1], 2);
    }
    if (u.uid != geteuid() || u.gid != getegid()) {
      if (setgroups((size_t)u.ngroups, u.groups) || setgid(u.gid) || setuid(u.uid)) child_fail(status_pipe[1], 2);
    }
    const char *dir = cwd ? cwd : (u.home[0] ? u.home : "/");
    if (chdir(dir)) {
      if (cwd) child_fail(status_pipe[1], 1);
      if (chdir("/")) child_fail(status_pipe[1], 1);
    }
    environ = envp;
    execvp(argv[0], argv);
    child_fail(status_pipe[1], 3);
  }
  close_fd(&status_pipe[1]);
  close_fd(&in_pipe[0]);
  close_fd(&out_pipe[1]);
  close_fd(&err_pipe[1]);
  struct child_error ce;
  ssize_t got;
  do got = read(status_pipe[0], &ce, sizeof ce); while (got < 0 && errno == EINTR);
  close_fd(&status_pipe[0]);
  if (got == (ssize_t)sizeof ce) {
    int st;
    waitpid(pid, &st, 0);
    const char *code = ce.stage == 3 && ce.err == ENOENT ? "COMMAND_NOT_FOUND"
                       : ce.stage == 1                    ? errno_code(ce.err)
                       : ce.stage == 2                    ? "PERMISSION_DENIED"
                                                          : "EXEC_FAILED";
    const char *what[] = {"", "cwd", "switching user", "exec", "pty"};
    char msg[PATH_MAX + 128];
    snprintf(msg, sizeof msg, "%s %s: %s", what[ce.stage >= 1 && ce.stage <= 4 ? ce.stage : 3], ce.stage == 1 ? (cwd ? cwd : "") : argv[0], strerror(ce.err));
    send_error(ci, id, code, ce.err, msg);
    goto out;
  }
  struct proc *p = &procs[pi];
  memset(p, 0, sizeof *p);
  p->pid = pid;
  p->pty = pty;
  p->seq = ++proc_seq;
  p->stream = -1;
  if (pty) {
    p->out_fd = master;
    p->in_fd = fcntl(master, F_DUPFD_CLOEXEC, 3);
    p->err_fd = -1;
    master = -1;
  } else {
    p->out_fd = out_pipe[0];
    p->err_fd = err_pipe[0];
    p->in_fd = in_pipe[1];
    out_pipe[0] = err_pipe[0] = in_pipe[1] = -1;
  }
  fcntl(p->out_fd, F_SETFL, O_NONBLOCK);
  if (p->err_fd >= 0) fcntl(p->err_fd, F_SETFL, O_NONBLOCK);
  if (p->in_fd >= 0) fcntl(p->in_fd, F_SETFL, O_NONBLOCK);
  size_t off = 0;
  for (int k = 0; k < count && off + 2 < sizeof p->summary; k++)
    off += (size_t)snprintf(p->summary + off, sizeof p->summary - off, "%s%s", k ? " " : "", argv[k]);
  attach_stream(pi, si);
  si = -1;
  goto out;
sys: {
  char msg[128];
  snprintf(msg, sizeof msg, "starting the process failed: %s", strerror(errno));
  send_error(ci, id, "EXEC_FAILED", errno, msg);
  goto out;
}
oom:
  send_error(ci, id, "AGENT_ERROR", ENOMEM, "out of memory");
out:
  if (si >= 0) free_stream(si);
  close_fd(&master);
  close_fd(&in_pipe[0]); close_fd(&in_pipe[1]);
  close_fd(&out_pipe[0]); close_fd(&out_pipe[1]);
  close_fd(&err_pipe[0]); close_fd(&err_pipe[1]);
  close_fd(&status_pipe[0]); close_fd(&status_pipe[1]);
  free(argv);
  free(envp);
  buf_free(&envbuf);
}

static int proc_arg(int ci, uint32_t id, const struct json_doc *doc, int root) {
  int64_t pid;
  if (json_int(doc, json_get(doc, root, "pid"), 1, INT32_MAX, &pid)) {
    send_error(ci, id, "INVALID_REQUEST", 0, "pid must be a positive integer");
    return -1;
  }
  int pi = find_proc((pid_t)pid);
  if (pi < 0) send_error(ci, id, "PROCESS_NOT_FOUND", ESRCH, "no process with this pid was started by the agent");
  return pi;
}

static void op_attach(int ci, uint32_t id, const struct json_doc *doc, int root) {
  int pi = proc_arg(ci, id, doc, root);
  if (pi < 0) return;
  int si = new_stream(ci, id, S_PROC);
  if (si < 0) { send_error(ci, id, "TOO_MANY_STREAMS", 0, "this connection has too many open streams"); return; }
  struct proc *p = &procs[pi];
  if (p->stream >= 0) {
    /* The newest client wins; the previous one is told why its stream ended. */
    int old = p->stream;
    send_error(streams[old].conn, streams[old].id, "DETACHED", 0, "another client attached to this process");
    free_stream(old);
  }
  buf_free(&p->in);
  attach_stream(pi, si);
  maybe_finish_proc(pi);
}

static void op_signal(int ci, uint32_t id, const struct json_doc *doc, int root) {
  int pi = proc_arg(ci, id, doc, root);
  if (pi < 0) return;
  int64_t sig;
  if (json_int(doc, json_get(doc, root, "signal"), 1, 64, &sig)) {
    send_error(ci, id, "INVALID_REQUEST", 0, "signal must be a number 1..64");
    return;
  }
  int group = 0;
  int g = json_get(doc, root, "group");
  if (g >= 0 && doc->nodes[g].type == J_BOOL) group = doc->nodes[g].boolean;
  if (procs[pi].exited) { send_literal(ci, id, "{\"type\":\"result\",\"delivered\":false}"); return; }
  if (kill(group ? -procs[pi].pid : procs[pi].pid, (int)sig)) {
    send_error(ci, id, "SIGNAL_FAILED", errno, strerror(errno));
    return;
  }
  send_literal(ci, id, "{\"type\":\"result\",\"delivered\":true}");
}

static void op_resize(int ci, uint32_t id, const struct json_doc *doc, int root) {
  int pi = proc_arg(ci, id, doc, root);
  if (pi < 0) return;
  int64_t rows, cols;
  if (json_int(doc, json_get(doc, root, "rows"), 1, 4096, &rows) || json_int(doc, json_get(doc, root, "cols"), 1, 4096, &cols)) {
    send_error(ci, id, "INVALID_REQUEST", 0, "resize needs rows and cols in 1..4096");
    return;
  }
  if (!procs[pi].pty || procs[pi].out_fd < 0) { send_error(ci, id, "NOT_A_TTY", ENOTTY, "the process has no pty"); return; }
  struct winsize ws = {(unsigned short)rows, (unsigned short)cols, 0, 0};
  if (ioctl(procs[pi].out_fd, TIOCSWINSZ, &ws)) { send_error(ci, id, "NOT_A_TTY", errno, strerror(errno)); return; }
  send_literal(ci, id, "{\"type\":\"result\"}");
}

static void op_ps(int ci, uint32_t id) {
  struct buf b = {0};
  jw_raw(&b, "{\"type\":\"result\",\"processes\":[");
  int first = 1;
  for (int i = 0; i < MAX_PROCS; i++) {
    struct proc *p = &procs[i];
    if (!p->pid) continue;
    jw_fmt(&b, "%s{\"pid\":%d,\"pty\":%s,\"attached\":%s,\"exited\":%s,\"command\":", first ? "" : ",", p->pid,
           p->pty ? "true" : "false", p->stream >= 0 ? "true" : "false", p->exited ? "true" : "false");
    jw_str(&b, p->summary, strlen(p->summary));
    jw_raw(&b, "}");
    first = 0;
  }
  jw_raw(&b, "]}");
  send_control(ci, id, (const char *)b.data, b.len);
  buf_free(&b);
}

static void op_read(int ci, uint32_t id, const struct json_doc *doc, int root, const struct user *u) {
  const char *path = request_path(doc, root, "path");
  if (!path) { send_error(ci, id, "INVALID_REQUEST", 0, "read needs an absolute path"); return; }
  if (fs_as_user(u)) { send_error(ci, id, "PERMISSION_DENIED", 0, "cannot take the caller's identity"); return; }
  /* O_NONBLOCK so a FIFO cannot block the agent; only regular files are read. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  int err = errno;
  fs_as_agent();
  char msg[PATH_MAX + 64];
  if (fd < 0) {
    snprintf(msg, sizeof msg, "read %s: %s", path, strerror(err));
    send_error(ci, id, errno_code(err), err, msg);
    return;
  }
  struct stat st;
  if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
    close(fd);
    snprintf(msg, sizeof msg, "read %s: not a regular file", path);
    send_error(ci, id, S_ISDIR(st.st_mode) ? "IS_A_DIRECTORY" : "NOT_A_FILE", EINVAL, msg);
    return;
  }
  int si = new_stream(ci, id, S_READ);
  if (si < 0) { close(fd); send_error(ci, id, "TOO_MANY_STREAMS", 0, "this connection has too many open streams"); return; }
  streams[si].fd = fd;
  struct buf b = {0};
  jw_raw(&b, "{\"type\":\"file\",\"stat\":");
  jw_stat(&b, NULL, 0, &st);
  jw_raw(&b, "}");
  send_control(ci, id, (const char *)b.data, b.len);
  buf_free(&b);
}

static void op_write(int ci, uint32_t id, const struct json_doc *doc, int root, const struct user *u) {
  const char *path = request_path(doc, root, "path");
  int64_t mode = 0644;
  int mode_node = json_get(doc, root, "mode");
  if (!path || path[strlen(path) - 1] == '/' || (mode_node >= 0 && json_int(doc, mode_node, 0, 07777, &mode))) {
    send_error(ci, id, "INVALID_REQUEST", 0, "write needs an absolute file path and an optional mode 0..07777");
    return;
  }
  int si = new_stream(ci, id, S_WRITE);
  if (si < 0) { send_error(ci, id, "TOO_MANY_STREAMS", 0, "this connection has too many open streams"); return; }
  struct stream *s = &streams[si];
  s->user = *u;
  snprintf(s->dest, sizeof s->dest, "%s", path);
  const char *slash = strrchr(path, '/');
  uint64_t r = 0;
  if (getrandom(&r, sizeof r, 0) != sizeof r) r = (uint64_t)time(NULL) ^ (uint64_t)getpid();
  /* The temp file sits beside the destination so the final rename is atomic on its filesystem. */
  int n = snprintf(s->tmp, sizeof s->tmp, "%.*s/.%s.sbx-%016llx", (int)(slash - path), path, slash + 1, (unsigned long long)r);
  if (n <= 0 || (size_t)n >= sizeof s->tmp) {
    s->tmp[0] = 0;
    free_stream(si);
    send_error(ci, id, "INVALID_REQUEST", ENAMETOOLONG, "write path is too long");
    return;
  }
  int err = fs_as_user(u) ? EPERM : 0;
  if (!err) {
    s->fd = open(s->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
    if (s->fd < 0) err = errno;
    else fchmod(s->fd, (mode_t)mode); /* not narrowed by the umask */
    fs_as_agent();
  }
  if (err) {
    s->tmp[0] = 0;
    free_stream(si);
    char msg[PATH_MAX + 64];
    snprintf(msg, sizeof msg, "write %s: %s", path, strerror(err));
    send_error(ci, id, errno_code(err), err, msg);
    return;
  }
  char ready[64];
  int len = snprintf(ready, sizeof ready, "{\"type\":\"ready\",\"window\":%u}", DEFAULT_WINDOW);
  send_control(ci, id, ready, (size_t)len);
}

static void finish_write(int si) {
  struct stream *s = &streams[si];
  int err = 0;
  if (fsync(s->fd)) err = errno;
  if (close(s->fd) && !err) err = errno;
  s->fd = -1;
  if (!err && fs_as_user(&s->user)) err = EPERM;
  else if (!err) {
    if (rename(s->tmp, s->dest)) err = errno;
    else {
      s->tmp[0] = 0;
      /* The rename is durable only once the directory is synced. */
      char dir[PATH_MAX];
      snprintf(dir, sizeof dir, "%s", s->dest);
      char *slash = strrchr(dir, '/');
      if (slash == dir) slash[1] = 0; else *slash = 0;
      int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (dfd >= 0) { fsync(dfd); close(dfd); }
    }
    fs_as_agent();
  }
  if (err) {
    char msg[PATH_MAX + 64];
    snprintf(msg, sizeof msg, "write %s: %s", s->dest, strerror(err));
    send_error(s->conn, s->id, errno_code(err), err, msg);
  } else {
    char res[96];
    int len = snprintf(res, sizeof res, "{\"type\":\"result\",\"bytes\":%llu}", (unsigned long long)s->bytes);
    send_control(s->conn, s->id, res, (size_t)len);
  }
  free_stream(si);
}

static void op_clock(int ci, uint32_t id, const struct json_doc *doc, int root) {
  int64_t ms;
  if (json_int(doc, json_get(doc, root, "epochMs"), 0, INT64_C(1) << 52, &ms)) {
    send_error(ci, id, "INVALID_REQUEST", 0, "clock needs epochMs: a non-negative integer");
    return;
  }
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  if (clock_settime(CLOCK_REALTIME, &ts)) { send_error(ci, id, "CLOCK_FAILED", errno, strerror(errno)); return; }
  send_literal(ci, id, "{\"type\":\"result\"}");
}

static void op_entropy(int ci, uint32_t id, const struct json_doc *doc, int root) {
  const char *data = json_str(doc, json_get(doc, root, "data"));
  struct { int entropy_count; int buf_size; uint8_t buf[4096]; } info;
  ssize_t n = data ? base64_decode(data, strlen(data), info.buf, sizeof info.buf) : -1;
  if (n < 16) {
    send_error(ci, id, "INVALID_REQUEST", 0, "entropy needs data: base64 of 16..4096 random bytes");
    return;
  }
  info.entropy_count = (int)n * 8;
  info.buf_size = (int)n;
  int fd = open("/dev/random", O_WRONLY | O_CLOEXEC);
  if (fd < 0 || ioctl(fd, RNDADDENTROPY, &info)) {
    int err = errno;
    if (fd >= 0) close(fd);
    send_error(ci, id, "ENTROPY_FAILED", err, strerror(err));
    return;
  }
  /* Clones of one snapshot share the CRNG state; force a reseed from the pool just credited. */
  ioctl(fd, RNDRESEEDCRNG);
  close(fd);
  send_literal(ci, id, "{\"type\":\"result\"}");
}

static void op_health(int ci, uint32_t id) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  int np = 0, nc = 0;
  for (int i = 0; i < MAX_PROCS; i++) np += procs[i].pid != 0;
  for (int i = 0; i < MAX_CONNECTIONS; i++) nc += conns[i].fd >= 0;
  struct buf b = {0};
  jw_fmt(&b, "{\"type\":\"result\",\"version\":\"%s\",\"uptimeMs\":%lld,\"processCount\":%d,\"connections\":%d,\"epochMs\":%lld}",
         AGENT_VERSION, (long long)((now.tv_sec - started_at.tv_sec) * 1000 + (now.tv_nsec - started_at.tv_nsec) / 1000000), np, nc,
         (long long)time(NULL) * 1000);
  send_control(ci, id, (const char *)b.data, b.len);
  buf_free(&b);
}

static void op_hello(int ci, const struct json_doc *doc, int root) {
  int versions = json_get(doc, root, "versions");
  int ok = 0;
  if (versions >= 0 && doc->nodes[versions].type == J_ARR) {
    for (int n = doc->nodes[versions].child; n >= 0; n = doc->nodes[n].next) {
      int64_t v;
      if (json_int(doc, n, 0, 1000, &v) == 0 && v == PROTOCOL_VERSION) ok = 1;
    }
  }
  if (!ok) {
    send_error(ci, 0, "UNSUPPORTED_VERSION", 0, "the agent speaks protocol version 1 only");
    conns[ci].dead = 1;
    return;
  }
  int64_t window = DEFAULT_WINDOW;
  int w = json_get(doc, root, "window");
  if (w >= 0 && json_int(doc, w, MIN_WINDOW, MAX_WINDOW, &window)) {
    protocol_error(ci, "hello window must be an integer in 4096..16777216");
    return;
  }
  conns[ci].window = (uint32_t)window;
  conns[ci].hello = 1;
  struct utsname un;
  uname(&un);
  struct buf b = {0};
  jw_fmt(&b, "{\"type\":\"hello\",\"version\":%d,\"agent\":\"%s\",\"machine\":", PROTOCOL_VERSION, AGENT_VERSION);
  jw_str(&b, un.machine, strlen(un.machine));
  jw_fmt(&b, ",\"pid\":%d,\"maxFrame\":%u,\"maxControl\":%u,\"maxStreams\":%d,\"window\":%u}", getpid(), MAX_PAYLOAD,
         MAX_CONTROL, MAX_STREAMS_PER_CONN, DEFAULT_WINDOW);
  send_control(ci, 0, (const char *)b.data, b.len);
  buf_free(&b);
}

static void handle_control(int ci, uint32_t id, const char *payload, size_t len) {
  struct json_doc doc;
  if (json_parse(&doc, payload, len)) {
    if (!conns[ci].hello) { protocol_error(ci, "the first frame must be a hello"); return; }
    send_error(ci, id, "PROTOCOL_ERROR", 0, "control frame is not valid JSON");
    return;
  }
  const char *op = doc.nodes[0].type == J_OBJ ? json_str(&doc, json_get(&doc, 0, "op")) : NULL;
  if (!conns[ci].hello) {
    if (id != 0 || !op || strcmp(op, "hello") != 0) protocol_error(ci, "the first frame must be a hello on stream 0");
    else op_hello(ci, &doc, 0);
    json_free(&doc);
    return;
  }
  if (id == 0) { protocol_error(ci, "stream 0 carries only the hello"); json_free(&doc); return; }
  /* A request opens its stream: reusing an open one would route two streams' frames as one. */
  if (find_stream(ci, id) >= 0) { protocol_error(ci, "a request on a stream that is still open"); json_free(&doc); return; }
  if (!op) { send_error(ci, id, "INVALID_REQUEST", 0, "a request is an object with a string op"); json_free(&doc); return; }
  int needs_user = !strcmp(op, "stat") || !strcmp(op, "list") || !strcmp(op, "mkdir") || !strcmp(op, "remove") ||
                   !strcmp(op, "rename") || !strcmp(op, "read") || !strcmp(op, "write");
  struct user u;
  if (needs_user) {
    int rc = user_resolve(&doc, json_get(&doc, 0, "user"), &u);
    if (rc) {
      send_error(ci, id, rc == -ENOENT ? "USER_NOT_FOUND" : "INVALID_REQUEST", 0, "user is not in the guest's /etc/passwd");
      json_free(&doc);
      return;
    }
  }
  if (!strcmp(op, "exec")) op_exec(ci, id, &doc, 0);
  else if (!strcmp(op, "attach")) op_attach(ci, id, &doc, 0);
  else if (!strcmp(op, "signal")) op_signal(ci, id, &doc, 0);
  else if (!strcmp(op, "resize")) op_resize(ci, id, &doc, 0);
  else if (!strcmp(op, "ps")) op_ps(ci, id);
  else if (!strcmp(op, "read")) op_read(ci, id, &doc, 0, &u);
  else if (!strcmp(op, "write")) op_write(ci, id, &doc, 0, &u);
  else if (!strcmp(op, "stat")) file_op_stat(ci, id, &doc, 0, &u);
  else if (!strcmp(op, "list")) file_op_list(ci, id, &doc, 0, &u);
  else if (!strcmp(op, "mkdir")) file_op_mkdir(ci, id, &doc, 0, &u);
  else if (!strcmp(op, "remove")) file_op_remove(ci, id, &doc, 0, &u);
  else if (!strcmp(op, "rename")) file_op_rename(ci, id, &doc, 0, &u);
  else if (!strcmp(op, "clock")) op_clock(ci, id, &doc, 0);
  else if (!strcmp(op, "entropy")) op_entropy(ci, id, &doc, 0);
  else if (!strcmp(op, "health")) op_health(ci, id);
  else send_error(ci, id, "UNKNOWN_OP", 0, "unknown op");
  json_free(&doc);
}

static void handle_data(int ci, uint32_t id, const uint8_t *payload, size_t len) {
  int si = find_stream(ci, id);
  /* Data for a stream that just ended (the host had not seen the end yet) is dropped. */
  if (si < 0) return;
  struct stream *s = &streams[si];
  if (s->type == S_PROC) {
    struct proc *p = &procs[s->proc];
    if (p->in_eof || p->in_fd < 0) return;
    if (p->in.len - p->in.off + len > DEFAULT_WINDOW) { protocol_error(ci, "stdin data beyond the window"); return; }
    compact(&p->in);
    if (buf_reserve(&p->in, len)) { protocol_error(ci, "out of memory"); return; }
    memcpy(p->in.data + p->in.len, payload, len);
    p->in.len += len;
  } else if (s->type == S_WRITE) {
    size_t done = 0;
    while (done < len) {
      ssize_t n = write(s->fd, payload + done, len - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int err = n < 0 ? errno : ENOSPC;
        char msg[PATH_MAX + 64];
        snprintf(msg, sizeof msg, "write %s: %s", s->dest, strerror(err));
        send_error(ci, id, errno_code(err), err, msg);
        free_stream(si);
        return;
      }
      done += (size_t)n;
    }
    s->bytes += len;
    send_window(ci, id, (uint32_t)len);
  } else {
    protocol_error(ci, "data on a stream that does not take any");
  }
}

static void handle_frame(int ci, const uint8_t *h, const uint8_t *payload) {
  uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
  uint32_t id = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 | (uint32_t)h[6] << 8 | h[7];
  uint8_t kind = h[8];
  if (!conns[ci].hello && kind != KIND_CONTROL) { protocol_error(ci, "the first frame must be a hello"); return; }
  switch (kind) {
    case KIND_CONTROL: handle_control(ci, id, (const char *)payload, len); return;
    case KIND_DATA: handle_data(ci, id, payload, len); return;
    case KIND_EOF: {
      int si = find_stream(ci, id);
      if (si < 0) return;
      if (streams[si].type == S_WRITE) finish_write(si);
      else if (streams[si].type == S_PROC) {
        struct proc *p = &procs[streams[si].proc];
        /* A pty has no half-close: end of input is the terminal's EOF character. */
        if (p->pty && p->in_fd >= 0 && !p->in_eof && buf_reserve(&p->in, 1) == 0) p->in.data[p->in.len++] = 4;
        p->in_eof = 1;
      } else protocol_error(ci, "EOF on a stream that takes no data");
      return;
    }
    case KIND_WINDOW: {
      int si = find_stream(ci, id);
      if (si < 0) return;
      uint32_t n = (uint32_t)payload[0] << 24 | (uint32_t)payload[1] << 16 | (uint32_t)payload[2] << 8 | payload[3];
      streams[si].credit += n;
      if (streams[si].credit > (uint64_t)MAX_WINDOW * 2) protocol_error(ci, "window grown beyond the limit");
      return;
    }
    case KIND_CANCEL: {
      /* Cancelling a process stream detaches it (the process keeps running); a file stream just ends. */
      int si = find_stream(ci, id);
      if (si >= 0) free_stream(si);
      return;
    }
    default: protocol_error(ci, "unknown frame kind"); return;
  }
}

static void close_conn(int ci) {
  for (int i = 0; i < MAX_STREAMS; i++)
    if (streams[i].type != S_FREE && streams[i].conn == ci) free_stream(i);
  close(conns[ci].fd);
  conns[ci].fd = -1;
  if (conns[ci].splice_fd >= 0) close(conns[ci].splice_fd);
  conns[ci].splice_fd = -1;
  conns[ci].splice_left = 0;
  buf_free(&conns[ci].in);
  buf_free(&conns[ci].out);
  buf_free(&conns[ci].later);
}

static void read_conn(int ci) {
  struct conn *c = &conns[ci];
  if (buf_reserve(&c->in, 64 << 10)) { close_conn(ci); return; }
  ssize_t n = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { close_conn(ci); return; }
  if (n < 0) return;
  c->in.len += (size_t)n;
  while (!c->dead && c->fd >= 0) {
    size_t avail = c->in.len - c->in.off;
    if (avail < FRAME_HEADER) break;
    const uint8_t *h = c->in.data + c->in.off;
    const char *bad = frame_check_header(h);
    if (bad) { protocol_error(ci, bad); break; }
    uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    if (avail < FRAME_HEADER + len) {
      if (buf_reserve(&c->in, FRAME_HEADER + len - avail)) { close_conn(ci); return; }
      break;
    }
    c->in.off += FRAME_HEADER + len;
    handle_frame(ci, c->in.data + c->in.off - FRAME_HEADER - len, c->in.data + c->in.off - len);
    if (c->fd < 0) return;
  }
  if (c->fd >= 0) {
    if (c->in.off == c->in.len) c->in.off = c->in.len = 0;
    else if (c->in.off > 0) {
      memmove(c->in.data, c->in.data + c->in.off, c->in.len - c->in.off);
      c->in.len -= c->in.off;
      c->in.off = 0;
    }
  }
}

static void flush_conn(int ci) {
  struct conn *c = &conns[ci];
  for (;;) {
    /* Ahead of a splice, the queued bytes end with that frame's 12-byte header: MSG_MORE keeps it for
     * the payload's first segment instead of a segment (and a host wakeup and read) of its own. */
    int more = c->splice_fd >= 0 ? MSG_MORE : 0;
    while (pending(c) > 0) {
      ssize_t n = send(c->fd, c->out.data + c->out.off, pending(c), more);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return;
      if (n <= 0) { close_conn(ci); return; }
      c->out.off += (size_t)n;
    }
    c->out.off = c->out.len = 0;
    if (c->splice_fd < 0) break;
    while (c->splice_left > 0) {
      ssize_t n = splice_unsupported ? -1 : splice(c->splice_fd, NULL, c->fd, NULL, c->splice_left, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return;
      if (n < 0 && (splice_unsupported || errno == EINVAL)) {
        /* This socket type takes no splice: copy the rest of the payload (it is in the pipe). */
        splice_unsupported = 1;
        if (buf_reserve(&c->out, c->splice_left)) { close_conn(ci); return; }
        n = read(c->splice_fd, c->out.data + c->out.len, c->splice_left);
        if (n <= 0) { close_conn(ci); return; }
        c->out.len += (size_t)n;
        c->splice_left -= (uint32_t)n;
        break;
      }
      if (n <= 0) { close_conn(ci); return; }
      c->splice_left -= (uint32_t)n;
    }
    if (c->splice_left > 0) continue;
    close(c->splice_fd);
    c->splice_fd = -1;
    struct buf done = c->out;
    c->out = c->later;
    c->later = done;
    c->later.len = c->later.off = 0;
  }
  if (c->dead) close_conn(ci);
}

/* Moves a process's pipe output to the socket without copying it through the agent: the frame
 * header is queued, then splice(2) moves exactly the payload's bytes (FIONREAD says they are in the
 * pipe). Small amounts and EOF detection take the read path. 1 when a frame was started. */
static int splice_output(int ci, uint32_t id, int fd, uint8_t channel, uint64_t *credit) {
  struct conn *c = &conns[ci];
  int avail = 0;
  if (splice_unsupported || c->splice_fd >= 0 || ioctl(fd, FIONREAD, &avail) || avail < (int)(64u << 10)) return 0;
  uint64_t n = (uint64_t)avail;
  if (n > *credit) n = *credit;
  if (n > MAX_PAYLOAD) n = MAX_PAYLOAD;
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) return 0;
  compact(&c->out);
  if (send_frame_header(&c->out, (uint32_t)n, id, KIND_DATA, channel)) { close(copy); return 0; }
  c->splice_fd = copy;
  c->splice_left = (uint32_t)n;
  *credit -= n;
  return 1;
}

/* Moves output from a process or file to its stream, bounded by the stream's credit. */
static int pump(int ci, uint32_t id, int fd, uint8_t channel, uint64_t *credit) {
  struct conn *c = &conns[ci];
  size_t want = *credit < READ_CHUNK ? (size_t)*credit : READ_CHUNK;
  compact(&c->out);
  if (want == 0 || buf_reserve(&c->out, FRAME_HEADER + want)) return 1;
  ssize_t n = read(fd, c->out.data + c->out.len + FRAME_HEADER, want);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
  if (n <= 0) return 0; /* EOF, or EIO from a pty whose terminal closed */
  send_frame_header(&c->out, (uint32_t)n, id, KIND_DATA, channel);
  c->out.len += (size_t)n;
  *credit -= (uint64_t)n;
  return 1;
}

static void read_proc(int pi, int which) {
  struct proc *p = &procs[pi];
  struct stream *s = &streams[p->stream];
  int *fd = which == CH_OUT ? &p->out_fd : &p->err_fd;
  /* Another stream on this connection started a splice in this round: its payload comes first. */
  if (conns[s->conn].splice_fd >= 0) return;
  if (!p->pty && splice_output(s->conn, s->id, *fd, (uint8_t)which, &s->credit)) return;
  if (!pump(s->conn, s->id, *fd, (uint8_t)which, &s->credit)) {
    if (p->pty) close_fd(&p->in_fd);
    close_fd(fd);
    maybe_finish_proc(pi);
  }
}

static void write_proc(int pi) {
  struct proc *p = &procs[pi];
  size_t avail = p->in.len - p->in.off;
  if (avail) {
    ssize_t n = write(p->in_fd, p->in.data + p->in.off, avail);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      /* The reader is gone (EPIPE): drop what is buffered, stdin is over. */
      p->in.off = p->in.len;
      p->in_eof = 1;
    } else if (n > 0) {
      p->in.off += (size_t)n;
      if (p->stream >= 0) send_window(streams[p->stream].conn, streams[p->stream].id, (uint32_t)n);
    }
  }
  if (p->in.off == p->in.len && p->in_eof && !p->pty) close_fd(&p->in_fd);
}

static void reap(void) {
  struct signalfd_siginfo si;
  while (read(sigfd, &si, sizeof si) == (ssize_t)sizeof si) {}
  int status;
  pid_t pid;
  /* waitpid(-1) also reaps orphans when the agent runs as PID 1 of a namespace. */
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    int pi = find_proc(pid);
    if (pi < 0) continue;
    procs[pi].exited = 1;
    procs[pi].status = status;
    if (procs[pi].pty) {
      /* The pty stays readable while anything holds the terminal; after the leader exits, drain and end. */
      procs[pi].in.off = procs[pi].in.len;
    }
    maybe_finish_proc(pi);
  }
}

static void accept_conn(int lfd) {
  int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return;
  int ci = -1;
  for (int i = 0; i < MAX_CONNECTIONS; i++)
    if (conns[i].fd < 0) { ci = i; break; }
  if (ci < 0) { agent_log("too many connections, refusing one"); close(fd); return; }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  memset(&conns[ci], 0, sizeof conns[ci]);
  conns[ci].fd = fd;
  conns[ci].splice_fd = -1;
  conns[ci].window = DEFAULT_WINDOW;
}

static int listen_on(int fd, const struct sockaddr *addr, socklen_t len, const char *what) {
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, addr, len) || listen(fd, 64)) {
    agent_log("cannot listen on %s: %s", what, strerror(errno));
    close(fd);
    return -1;
  }
  listeners[nlisteners++] = fd;
  agent_log("listening on %s", what);
  return 0;
}

static void add_listener(const char *kind, const char *arg) {
  if (nlisteners >= (int)(sizeof listeners / sizeof listeners[0])) return;
  char what[PATH_MAX + 16];
  snprintf(what, sizeof what, "%s %s", kind, arg);
  if (!strcmp(kind, "vsock")) {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) { agent_log("no vsock (%s); skipping %s", strerror(errno), what); return; }
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = (unsigned)atoi(arg)};
    listen_on(fd, (struct sockaddr *)&a, sizeof a, what);
  } else if (!strcmp(kind, "tcp")) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    const char *colon = strrchr(arg, ':');
    char host[64] = "";
    if (colon) {
      snprintf(host, sizeof host, "%.*s", (int)(colon - arg), arg);
      if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { agent_log("bad tcp address %s", arg); return; }
    }
    a.sin_port = htons((uint16_t)atoi(colon ? colon + 1 : arg));
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd >= 0) listen_on(fd, (struct sockaddr *)&a, sizeof a, what);
  } else {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(arg) >= sizeof a.sun_path) { agent_log("unix path too long: %s", arg); return; }
    strcpy(a.sun_path, arg);
    unlink(arg);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd >= 0 && listen_on(fd, (struct sockaddr *)&a, sizeof a, what) == 0) chmod(arg, 0600);
  }
}

static int stream_wants_data(int si) {
  struct stream *s = &streams[si];
  const struct conn *c = &conns[s->conn];
  return s->credit > 0 && c->splice_fd < 0 && backlog(c) < OUT_HIGH_WATER && !c->dead;
}

int main(int argc, char **argv) {
  static const struct option options[] = {
      {"vsock", required_argument, 0, 'v'}, {"tcp", required_argument, 0, 't'}, {"unix", required_argument, 0, 'u'},
      {"quiet", no_argument, 0, 'q'},       {"version", no_argument, 0, 'V'},   {"ready-file", required_argument, 0, 'r'},
      {0, 0, 0, 0}};
  const char *ready_file = NULL;
  clock_gettime(CLOCK_MONOTONIC, &started_at);
  for (int i = 0; i < MAX_CONNECTIONS; i++) conns[i].fd = conns[i].splice_fd = -1;
  int opt;
  while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
    if (opt == 'v') add_listener("vsock", optarg);
    else if (opt == 't') add_listener("tcp", optarg);
    else if (opt == 'u') add_listener("unix", optarg);
    else if (opt == 'q') quiet = 1;
    else if (opt == 'r') ready_file = optarg;
    else if (opt == 'V') { printf("sbx-agent %s protocol %d\n", AGENT_VERSION, PROTOCOL_VERSION); return 0; }
    else { fprintf(stderr, "usage: sbx-agent [--vsock PORT] [--tcp [ADDR:]PORT] [--unix PATH] [--ready-file PATH] [--quiet]\n"); return 2; }
  }
  if (nlisteners == 0) { agent_log("no listener could be opened"); return 1; }
  if (ready_file) {
    /* The init waits for this before its ready marker, so a snapshot has the agent listening. */
    int fd = open(ready_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
  }
  signal(SIGPIPE, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
  static struct pollfd fds[MAX_CONNECTIONS + MAX_PROCS * 3 + 16];
  static int tags[MAX_CONNECTIONS + MAX_PROCS * 3 + 16];
  enum { T_LISTEN = 1, T_SIG, T_CONN, T_OUT, T_ERR, T_IN };
  for (;;) {
    int n = 0, ready_files = 0;
    for (int i = 0; i < nlisteners; i++) { fds[n] = (struct pollfd){listeners[i], POLLIN, 0}; tags[n++] = T_LISTEN << 16 | i; }
    fds[n] = (struct pollfd){sigfd, POLLIN, 0};
    tags[n++] = T_SIG << 16;
    for (int i = 0; i < MAX_CONNECTIONS; i++) {
      struct conn *c = &conns[i];
      if (c->fd < 0) continue;
      short ev = 0;
      if (!c->dead && backlog(c) < OUT_HIGH_WATER * 2) ev |= POLLIN;
      if (backlog(c) > 0) ev |= POLLOUT;
      fds[n] = (struct pollfd){c->fd, ev, 0};
      tags[n++] = T_CONN << 16 | i;
    }
    for (int i = 0; i < MAX_PROCS; i++) {
      struct proc *p = &procs[i];
      if (!p->pid) continue;
      if (p->stream >= 0 && stream_wants_data(p->stream)) {
        if (p->out_fd >= 0) { fds[n] = (struct pollfd){p->out_fd, POLLIN, 0}; tags[n++] = T_OUT << 16 | i; }
        if (p->err_fd >= 0) { fds[n] = (struct pollfd){p->err_fd, POLLIN, 0}; tags[n++] = T_ERR << 16 | i; }
      }
      if (p->in_fd >= 0 && (p->in.len > p->in.off || (p->in_eof && !p->pty))) {
        fds[n] = (struct pollfd){p->in_fd, POLLOUT, 0};
        tags[n++] = T_IN << 16 | i;
      }
    }
    for (int i = 0; i < MAX_STREAMS; i++) ready_files += streams[i].type == S_READ && stream_wants_data(i);
    if (poll(fds, (nfds_t)n, ready_files ? 0 : -1) < 0 && errno != EINTR) { agent_log("poll: %s", strerror(errno)); return 1; }
    for (int k = 0; k < n; k++) {
      if (!fds[k].revents) continue;
      int tag = tags[k] >> 16, i = tags[k] & 0xffff;
      switch (tag) {
        case T_LISTEN: accept_conn(listeners[i]); break;
        case T_SIG: reap(); break;
        case T_CONN:
          if (conns[i].fd != fds[k].fd) break;
          if (fds[k].revents & (POLLIN | POLLHUP | POLLERR)) read_conn(i);
          break;
        case T_OUT:
        case T_ERR:
          if (procs[i].pid && procs[i].stream >= 0) {
            int fd = tag == T_OUT ? procs[i].out_fd : procs[i].err_fd;
            if (fd == fds[k].fd) read_proc(i, tag == T_OUT ? CH_OUT : CH_ERR);
          }
          break;
        case T_IN:
          if (procs[i].pid && procs[i].in_fd == fds[k].fd) write_proc(i);
          break;
      }
    }
    for (int i = 0; i < MAX_STREAMS; i++) {
      struct stream *s = &streams[i];
      if (s->type != S_READ || !stream_wants_data(i)) continue;
      uint64_t before = s->credit;
      if (!pump(s->conn, s->id, s->fd, CH_OUT, &s->credit)) {
        char res[96];
        int len = snprintf(res, sizeof res, "{\"type\":\"result\",\"bytes\":%llu}", (unsigned long long)s->bytes);
        send_control(s->conn, s->id, res, (size_t)len);
        free_stream(i);
      } else s->bytes += before - s->credit;
    }
    for (int i = 0; i < MAX_CONNECTIONS; i++)
      if (conns[i].fd >= 0 && (backlog(&conns[i]) > 0 || conns[i].dead)) flush_conn(i);
  }
}
