/* A bounded JSON parser for the host's control frames: nodes and decoded strings go into arrays sized
 * from the input, nesting is capped, and anything outside RFC 8259 fails the whole document. */
#include "agent.h"
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct parser {
  struct json_doc *doc;
  const char *p, *end;
  int depth;
  int max_nodes;
};

int buf_reserve(struct buf *b, size_t extra) {
  if (b->len + extra <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + extra) cap *= 2;
  uint8_t *data = realloc(b->data, cap);
  if (!data) return -1;
  b->data = data;
  b->cap = cap;
  return 0;
}

void buf_free(struct buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->off = b->cap = 0;
}

static void skip_ws(struct parser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int new_node(struct parser *ps, enum json_type type) {
  struct json_doc *d = ps->doc;
  if (d->count >= ps->max_nodes) return -1;
  int i = d->count++;
  memset(&d->nodes[i], 0, sizeof d->nodes[i]);
  d->nodes[i].type = type;
  d->nodes[i].next = -1;
  d->nodes[i].child = -1;
  return i;
}

static int hex4(const char *p, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

/* Decodes a string at ps->p (after the quote) into the arena; validates UTF-8 of raw bytes. */
static int parse_string(struct parser *ps, const char **out, size_t *out_len, int *has_nul) {
  struct json_doc *d = ps->doc;
  size_t start = d->strings_len;
  char *w = d->strings + d->strings_len;
  *has_nul = 0;
  while (ps->p < ps->end) {
    unsigned char c = (unsigned char)*ps->p++;
    if (c == '"') {
      *w++ = 0;
      *out = d->strings + start;
      *out_len = (size_t)(w - (d->strings + start)) - 1;
      d->strings_len = (size_t)(w - d->strings);
      return 0;
    }
    if (c < 0x20) return -1;
    if (c == '\\') {
      if (ps->p >= ps->end) return -1;
      char e = *ps->p++;
      switch (e) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '/': *w++ = '/'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u': {
          unsigned cp;
          if (ps->end - ps->p < 4 || hex4(ps->p, &cp)) return -1;
          ps->p += 4;
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            unsigned lo;
            if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || hex4(ps->p + 2, &lo)) return -1;
            if (lo < 0xDC00 || lo > 0xDFFF) return -1;
            ps->p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return -1;
          }
          if (cp == 0) *has_nul = 1;
          /* \uXXXX decodes to at most 4 bytes and takes at least 6 in the input: the arena fits. */
          if (cp < 0x80) *w++ = (char)cp;
          else if (cp < 0x800) { *w++ = (char)(0xC0 | (cp >> 6)); *w++ = (char)(0x80 | (cp & 0x3F)); }
          else if (cp < 0x10000) {
            *w++ = (char)(0xE0 | (cp >> 12)); *w++ = (char)(0x80 | ((cp >> 6) & 0x3F)); *w++ = (char)(0x80 | (cp & 0x3F));
          } else {
            *w++ = (char)(0xF0 | (cp >> 18)); *w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
            *w++ = (char)(0x80 | ((cp >> 6) & 0x3F)); *w++ = (char)(0x80 | (cp & 0x3F));
          }
          break;
        }
        default: return -1;
      }
      continue;
    }
    if (c >= 0x80) {
      int n = (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
      if (n < 0 || c == 0xC0 || c == 0xC1 || c > 0xF4 || ps->end - ps->p < n) return -1;
      *w++ = (char)c;
      for (int i = 0; i < n; i++) {
        unsigned char cc = (unsigned char)*ps->p++;
        if ((cc & 0xC0) != 0x80) return -1;
        *w++ = (char)cc;
      }
      continue;
    }
    *w++ = (char)c;
  }
  return -1;
}

static int parse_value(struct parser *ps);

static int parse_number(struct parser *ps) {
  const char *s = ps->p;
  if (ps->p < ps->end && *ps->p == '-') ps->p++;
  if (ps->p >= ps->end) return -1;
  if (*ps->p == '0') ps->p++;
  else if (*ps->p >= '1' && *ps->p <= '9') while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  else return -1;
  if (ps->p < ps->end && *ps->p == '.') {
    ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return -1;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
    ps->p++;
    if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return -1;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  char tmp[64];
  size_t n = (size_t)(ps->p - s);
  if (n >= sizeof tmp) return -1;
  memcpy(tmp, s, n);
  tmp[n] = 0;
  int i = new_node(ps, J_NUM);
  if (i < 0) return -1;
  ps->doc->nodes[i].num = strtod(tmp, NULL);
  if (!isfinite(ps->doc->nodes[i].num)) return -1;
  return i;
}

static int literal(struct parser *ps, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return -1;
  ps->p += n;
  return 0;
}

static int parse_container(struct parser *ps, int object) {
  if (++ps->depth > JSON_MAX_DEPTH) return -1;
  int self = new_node(ps, object ? J_OBJ : J_ARR);
  if (self < 0) return -1;
  int last = -1;
  skip_ws(ps);
  if (ps->p < ps->end && *ps->p == (object ? '}' : ']')) {
    ps->p++;
    ps->depth--;
    return self;
  }
  for (;;) {
    const char *key = NULL;
    if (object) {
      skip_ws(ps);
      if (ps->p >= ps->end || *ps->p != '"') return -1;
      ps->p++;
      size_t klen;
      int nul;
      if (parse_string(ps, &key, &klen, &nul) || nul) return -1;
      skip_ws(ps);
      if (ps->p >= ps->end || *ps->p != ':') return -1;
      ps->p++;
    }
    int child = parse_value(ps);
    if (child < 0) return -1;
    if (object) {
      /* A duplicate member is ambiguous (which one wins?): refuse it. */
      for (int c = ps->doc->nodes[self].child; c >= 0; c = ps->doc->nodes[c].next)
        if (strcmp(ps->doc->nodes[c].key, key) == 0) return -1;
      ps->doc->nodes[child].key = key;
    }
    if (last < 0) ps->doc->nodes[self].child = child;
    else ps->doc->nodes[last].next = child;
    last = child;
    ps->doc->nodes[self].count++;
    skip_ws(ps);
    if (ps->p >= ps->end) return -1;
    if (*ps->p == ',') { ps->p++; continue; }
    if (*ps->p == (object ? '}' : ']')) { ps->p++; break; }
    return -1;
  }
  ps->depth--;
  return self;
}

static int parse_value(struct parser *ps) {
  skip_ws(ps);
  if (ps->p >= ps->end) return -1;
  char c = *ps->p;
  if (c == '{') { ps->p++; return parse_container(ps, 1); }
  if (c == '[') { ps->p++; return parse_container(ps, 0); }
  if (c == '"') {
    ps->p++;
    int i = new_node(ps, J_STR);
    if (i < 0) return -1;
    const char *s;
    size_t len;
    int nul;
    if (parse_string(ps, &s, &len, &nul)) return -1;
    ps->doc->nodes[i].str = s;
    ps->doc->nodes[i].len = len;
    ps->doc->nodes[i].has_nul = nul;
    return i;
  }
  if (c == 't' || c == 'f') {
    int i = new_node(ps, J_BOOL);
    if (i < 0 || literal(ps, c == 't' ? "true" : "false")) return -1;
    ps->doc->nodes[i].boolean = c == 't';
    return i;
  }
  if (c == 'n') {
    int i = new_node(ps, J_NULL);
    if (i < 0 || literal(ps, "null")) return -1;
    return i;
  }
  return parse_number(ps);
}

int json_parse(struct json_doc *doc, const char *text, size_t len) {
  memset(doc, 0, sizeof *doc);
  size_t max_nodes = len / 2 + 2;
  if (max_nodes > JSON_MAX_NODES) max_nodes = JSON_MAX_NODES;
  doc->nodes = calloc(max_nodes + 1, sizeof *doc->nodes);
  doc->strings_cap = len + 1;
  doc->strings = malloc(doc->strings_cap);
  if (!doc->nodes || !doc->strings) { json_free(doc); return -1; }
  struct parser ps = {doc, text, text + len, 0, (int)max_nodes};
  int root = parse_value(&ps);
  skip_ws(&ps);
  if (root != 0 || ps.p != ps.end) { json_free(doc); return -1; }
  return 0;
}

void json_free(struct json_doc *doc) {
  free(doc->nodes);
  free(doc->strings);
  memset(doc, 0, sizeof *doc);
}

int json_get(const struct json_doc *doc, int object, const char *key) {
  if (object < 0 || doc->nodes[object].type != J_OBJ) return -1;
  for (int c = doc->nodes[object].child; c >= 0; c = doc->nodes[c].next)
    if (strcmp(doc->nodes[c].key, key) == 0) return c;
  return -1;
}

int json_int(const struct json_doc *doc, int node, int64_t min, int64_t max, int64_t *out) {
  if (node < 0 || doc->nodes[node].type != J_NUM) return -1;
  double v = doc->nodes[node].num;
  if (v != floor(v) || v < (double)min || v > (double)max) return -1;
  *out = (int64_t)v;
  return 0;
}

const char *json_str(const struct json_doc *doc, int node) {
  if (node < 0 || doc->nodes[node].type != J_STR || doc->nodes[node].has_nul) return NULL;
  return doc->nodes[node].str;
}

void jw_raw(struct buf *b, const char *s) {
  size_t n = strlen(s);
  if (buf_reserve(b, n)) return;
  memcpy(b->data + b->len, s, n);
  b->len += n;
}

void jw_fmt(struct buf *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof tmp) n = sizeof tmp - 1;
  tmp[n] = 0;
  jw_raw(b, tmp);
}

/* Writes a JSON string; bytes that are not valid UTF-8 (file names are bytes) become U+FFFD. */
void jw_str(struct buf *b, const char *s, size_t len) {
  if (buf_reserve(b, len * 6 + 2)) return;
  char *w = (char *)b->data + b->len;
  *w++ = '"';
  const unsigned char *p = (const unsigned char *)s, *end = p + len;
  while (p < end) {
    unsigned char c = *p;
    if (c == '"' || c == '\\') { *w++ = '\\'; *w++ = (char)c; p++; }
    else if (c < 0x20) { w += sprintf(w, "\\u%04x", c); p++; }
    else if (c < 0x80) { *w++ = (char)c; p++; }
    else {
      int n = (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
      int ok = n > 0 && c != 0xC0 && c != 0xC1 && c <= 0xF4 && end - p > n;
      for (int i = 1; ok && i <= n; i++) ok = (p[i] & 0xC0) == 0x80;
      if (ok) { memcpy(w, p, (size_t)n + 1); w += n + 1; p += n + 1; }
      else { memcpy(w, "\xEF\xBF\xBD", 3); w += 3; p++; }
    }
  }
  *w++ = '"';
  b->len = (size_t)(w - (char *)b->data);
}

ssize_t base64_decode(const char *in, size_t len, uint8_t *out, size_t cap) {
  uint32_t acc = 0;
  int bits = 0;
  size_t n = 0, pad = 0;
  for (size_t i = 0; i < len; i++) {
    char c = in[i];
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else if (c == '=') { pad++; continue; }
    else return -1;
    if (pad) return -1;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (n >= cap) return -1;
      out[n++] = (uint8_t)(acc >> bits);
    }
  }
  if (pad > 2) return -1;
  return (ssize_t)n;
}
