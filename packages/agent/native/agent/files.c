/* File operations. Each runs between fs_as_user and fs_as_agent, so the kernel resolves every path
 * component with the caller's uid and groups: the agent never resolves paths itself and never reaches
 * what the caller could not. */
#include "agent.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *errno_code(int err) {
  switch (err) {
    case ENOENT: return "FILE_NOT_FOUND";
    case EACCES:
    case EPERM: return "PERMISSION_DENIED";
    case EEXIST: return "FILE_EXISTS";
    case ENOTDIR: return "NOT_A_DIRECTORY";
    case EISDIR: return "IS_A_DIRECTORY";
    case ENOTEMPTY: return "DIRECTORY_NOT_EMPTY";
    case ENOSPC:
    case EDQUOT: return "NO_SPACE";
    case ELOOP: return "TOO_MANY_SYMLINKS";
    case ENAMETOOLONG: return "INVALID_REQUEST";
    case EXDEV: return "CROSS_DEVICE";
    case EROFS: return "READ_ONLY_FILESYSTEM";
    default: return "IO_ERROR";
  }
}

const char *request_path(const struct json_doc *doc, int root, const char *key) {
  const char *p = json_str(doc, json_get(doc, root, key));
  if (!p || p[0] != '/' || strlen(p) >= PATH_MAX) return NULL;
  return p;
}

static const char *type_name(mode_t mode) {
  if (S_ISREG(mode)) return "file";
  if (S_ISDIR(mode)) return "dir";
  if (S_ISLNK(mode)) return "symlink";
  return "other";
}

void jw_stat(struct buf *b, const char *name, size_t name_len, const struct stat *st) {
  jw_raw(b, "{");
  if (name) {
    jw_raw(b, "\"name\":");
    jw_str(b, name, name_len);
    jw_raw(b, ",");
  }
  jw_fmt(b, "\"type\":\"%s\",\"size\":%lld,\"mode\":%u,\"uid\":%u,\"gid\":%u,\"mtimeMs\":%lld}",
         type_name(st->st_mode), (long long)st->st_size, (unsigned)(st->st_mode & 07777), (unsigned)st->st_uid,
         (unsigned)st->st_gid, (long long)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000);
}

static void reply_errno(int conn, uint32_t stream, int err, const char *what, const char *path) {
  char msg[PATH_MAX + 128];
  snprintf(msg, sizeof msg, "%s %s: %s", what, path, strerror(err));
  send_error(conn, stream, errno_code(err), err, msg);
}

static void reply_buf(int conn, uint32_t stream, struct buf *b) {
  send_control(conn, stream, (const char *)b->data, b->len);
  buf_free(b);
}

static int start_as(int conn, uint32_t stream, const struct user *u) {
  int rc = fs_as_user(u);
  if (rc) send_error(conn, stream, "PERMISSION_DENIED", -rc, "cannot take the caller's identity");
  return rc;
}

void file_op_stat(int conn, uint32_t stream, const struct json_doc *doc, int root, const struct user *u) {
  const char *path = request_path(doc, root, "path");
  if (!path) { send_error(conn, stream, "INVALID_REQUEST", 0, "stat needs an absolute path"); return; }
  int follow = 1;
  int f = json_get(doc, root, "follow");
  if (f >= 0 && doc->nodes[f].type == J_BOOL) follow = doc->nodes[f].boolean;
  if (start_as(conn, stream, u)) return;
  struct stat st;
  int rc = follow ? stat(path, &st) : lstat(path, &st);
  int err = errno;
  fs_as_agent();
  if (rc) { reply_errno(conn, stream, err, "stat", path); return; }
  struct buf b = {0};
  jw_raw(&b, "{\"type\":\"result\",\"stat\":");
  jw_stat(&b, NULL, 0, &st);
  jw_raw(&b, "}");
  reply_buf(conn, stream, &b);
}

#define LIST_CHUNK (48u << 10)
#define LIST_MAX_ENTRIES 200000

void file_op_list(int conn, uint32_t stream, const struct json_doc *doc, int root, const struct user *u) {
  const char *path = request_path(doc, root, "path");
  if (!path) { send_error(conn, stream, "INVALID_REQUEST", 0, "list needs an absolute path"); return; }
  if (start_as(conn, stream, u)) return;
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int err = errno;
  DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
  if (fd >= 0 && !dir) { err = errno; close(fd); }
  if (!dir) { fs_as_agent(); reply_errno(conn, stream, err, "list", path); return; }
  struct buf b = {0};
  int in_chunk = 0, total = 0;
  struct dirent *e;
  /* Entries go out in chunks so a large directory never needs a frame above the limit. */
  while ((e = readdir(dir)) != NULL && total < LIST_MAX_ENTRIES) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    struct stat st;
    if (fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW)) continue;
    if (!in_chunk) { jw_raw(&b, "{\"type\":\"entries\",\"entries\":["); in_chunk = 1; }
    else jw_raw(&b, ",");
    jw_stat(&b, e->d_name, strlen(e->d_name), &st);
    total++;
    if (b.len > LIST_CHUNK) {
      jw_raw(&b, "]}");
      reply_buf(conn, stream, &b);
      in_chunk = 0;
    }
  }
  closedir(dir);
  fs_as_agent();
  if (in_chunk) { jw_raw(&b, "]}"); reply_buf(conn, stream, &b); }
  jw_fmt(&b, "{\"type\":\"result\",\"count\":%d,\"truncated\":%s}", total, total >= LIST_MAX_ENTRIES ? "true" : "false");
  reply_buf(conn, stream, &b);
}

static int mode_arg(const struct json_doc *doc, int root, mode_t fallback, mode_t *out) {
  int n = json_get(doc, root, "mode");
  int64_t v;
  if (n < 0) { *out = fallback; return 0; }
  if (json_int(doc, n, 0, 07777, &v)) return -1;
  *out = (mode_t)v;
  return 0;
}

void file_op_mkdir(int conn, uint32_t stream, const struct json_doc *doc, int root, const struct user *u) {
  const char *path = request_path(doc, root, "path");
  mode_t mode;
  if (!path || mode_arg(doc, root, 0755, &mode)) {
    send_error(conn, stream, "INVALID_REQUEST", 0, "mkdir needs an absolute path and an optional mode 0..07777");
    return;
  }
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s", path);
  if (start_as(conn, stream, u)) return;
  int created = 0, err = 0;
  /* mkdir -p: each component in turn, an existing directory is fine, anything else fails. */
  for (char *p = tmp + 1;; p++) {
    if (*p == '/' || *p == 0) {
      char saved = *p;
      *p = 0;
      if (tmp[1] != 0) {
        if (mkdir(tmp, mode) == 0) created++;
        else if (errno == EEXIST) {
          struct stat st;
          if (stat(tmp, &st) || !S_ISDIR(st.st_mode)) { err = ENOTDIR; break; }
        } else { err = errno; break; }
      }
      *p = saved;
      if (saved == 0) break;
    }
  }
  fs_as_agent();
  if (err) { reply_errno(conn, stream, err, "mkdir", path); return; }
  struct buf b = {0};
  jw_fmt(&b, "{\"type\":\"result\",\"created\":%d}", created);
  reply_buf(conn, stream, &b);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)ftw;
  return flag == FTW_DP ? rmdir(path) : unlink(path);
}

void file_op_remove(int conn, uint32_t stream, const struct json_doc *doc, int root, const struct user *u) {
  const char *path = request_path(doc, root, "path");
  if (!path || strcmp(path, "/") == 0) {
    send_error(conn, stream, "INVALID_REQUEST", 0, "remove needs an absolute path other than /");
    return;
  }
  int recursive = 0;
  int r = json_get(doc, root, "recursive");
  if (r >= 0 && doc->nodes[r].type == J_BOOL) recursive = doc->nodes[r].boolean;
  if (start_as(conn, stream, u)) return;
  struct stat st;
  int rc = lstat(path, &st), err = errno;
  if (rc == 0) {
    if (!S_ISDIR(st.st_mode)) rc = unlink(path);
    else if (recursive) rc = nftw(path, remove_entry, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    else rc = rmdir(path);
    err = errno;
  }
  fs_as_agent();
  if (rc) { reply_errno(conn, stream, err, "remove", path); return; }
  send_literal(conn, stream, "{\"type\":\"result\"}");
}

void file_op_rename(int conn, uint32_t stream, const struct json_doc *doc, int root, const struct user *u) {
  const char *from = request_path(doc, root, "from");
  const char *to = request_path(doc, root, "to");
  if (!from || !to) { send_error(conn, stream, "INVALID_REQUEST", 0, "rename needs absolute from and to"); return; }
  if (start_as(conn, stream, u)) return;
  int rc = rename(from, to), err = errno;
  fs_as_agent();
  if (rc) { reply_errno(conn, stream, err, "rename", from); return; }
  send_literal(conn, stream, "{\"type\":\"result\"}");
}
