/* sbx guest agent: shared types and limits. Wire format: docs/agent.md. */
#ifndef SBX_AGENT_H
#define SBX_AGENT_H
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#define AGENT_VERSION "0.1.0"
#define PROTOCOL_VERSION 1

#define FRAME_HEADER 12
#define MAX_PAYLOAD (1u << 20)         /* any frame, either direction */
#define MAX_CONTROL (256u << 10)       /* a JSON control frame from the host */
#define MAX_CONNECTIONS 32
#define MAX_STREAMS_PER_CONN 256
#define MAX_STREAMS (MAX_CONNECTIONS * 8)
#define MAX_PROCS 256
#define MAX_ARGS 4096
#define MAX_ENV 4096
#define DEFAULT_WINDOW (1u << 20)
#define MIN_WINDOW 4096u
#define MAX_WINDOW (16u << 20)
#define OUT_HIGH_WATER (4u << 20)      /* stop producing data while a connection has this much unsent */
#define READ_CHUNK (512u << 10)

enum frame_kind { KIND_CONTROL = 1, KIND_DATA = 2, KIND_EOF = 3, KIND_WINDOW = 4, KIND_CANCEL = 5 };
enum channel { CH_IN = 0, CH_OUT = 1, CH_ERR = 2 };

struct buf {
  uint8_t *data;
  size_t len, off, cap;
};
int buf_reserve(struct buf *b, size_t extra);
void buf_free(struct buf *b);

/* JSON (json.c): a bounded parser into a flat node array and a small writer. */
enum json_type { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };
struct json_node {
  enum json_type type;
  int next;        /* next sibling, -1 at the end */
  int child;       /* first child of an array or object */
  int count;       /* children */
  const char *key; /* member name inside an object (NUL-terminated, no NULs inside) */
  const char *str; /* decoded string (NUL-terminated); len excludes the terminator */
  size_t len;
  int has_nul;     /* the string contained \u0000 */
  double num;
  int boolean;
};
#define JSON_MAX_NODES 20000
#define JSON_MAX_DEPTH 16
struct json_doc {
  struct json_node *nodes;
  int count;
  char *strings; /* arena for decoded strings */
  size_t strings_len, strings_cap;
};
int json_parse(struct json_doc *doc, const char *text, size_t len); /* 0 or -1 */
void json_free(struct json_doc *doc);
int json_get(const struct json_doc *doc, int object, const char *key); /* node index or -1 */
int json_int(const struct json_doc *doc, int node, int64_t min, int64_t max, int64_t *out);
const char *json_str(const struct json_doc *doc, int node); /* NUL-free string or NULL */

void jw_str(struct buf *b, const char *s, size_t len);
void jw_raw(struct buf *b, const char *s);
void jw_fmt(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* base64 (json.c) */
ssize_t base64_decode(const char *in, size_t len, uint8_t *out, size_t cap);

/* The agent state shared by the modules (main.c). */
struct conn;
struct stream;
int send_control(int conn, uint32_t stream, const char *json, size_t len);
/* A JSON string literal, without its terminating NUL. */
#define send_literal(conn, stream, literal) send_control((conn), (stream), (literal), sizeof(literal) - 1)
int send_error(int conn, uint32_t stream, const char *code, int err, const char *message);
/* NULL when a host frame header is acceptable, else why not (frame.c). */
const char *frame_check_header(const uint8_t *header);
int send_frame_header(struct buf *out, uint32_t len, uint32_t stream, uint8_t kind, uint8_t channel);

/* user.c: /etc/passwd and /etc/group without NSS (a static binary cannot load NSS modules). */
struct user {
  uid_t uid;
  gid_t gid;
  gid_t groups[64];
  int ngroups;
  char name[64];
  char home[256];
  char shell[256];
};
int user_resolve(const struct json_doc *doc, int node, struct user *out); /* 0, -ENOENT or -EINVAL */
int fs_as_user(const struct user *u);  /* switch filesystem identity; 0 or -errno */
void fs_as_agent(void);

void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#endif

/* files.c: one-shot file operations, each run with the caller's filesystem identity. They reply on
 * (conn, stream) themselves. */
void file_op_stat(int conn, uint32_t stream, const struct json_doc *doc, int root, const struct user *u);
void file_op_list(int conn, uint32_t stream, const struct json_doc *doc, int root, const struct user *u);
void file_op_mkdir(int conn, uint32_t stream, const struct json_doc *doc, int root, const struct user *u);
void file_op_remove(int conn, uint32_t stream, const struct json_doc *doc, int root, const struct user *u);
void file_op_rename(int conn, uint32_t stream, const struct json_doc *doc, int root, const struct user *u);
const char *errno_code(int err);
const char *request_path(const struct json_doc *doc, int root, const char *key); /* absolute, NUL-free */
void jw_stat(struct buf *b, const char *name, size_t name_len, const struct stat *st);
