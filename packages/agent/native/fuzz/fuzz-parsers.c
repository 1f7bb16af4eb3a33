/* Fuzz driver for the agent's parsers (json.c, frame.c), compiled by the tests with ASan and UBSan.
 * `fuzz-parsers <cases> <seed>`: mutates seed requests and random bytes, parses each, walks what
 * parsed the way the request handlers do, and checks that everything the JSON writer emits parses
 * back. Any memory error aborts (non-zero exit); prints "ok <cases> <parsed>" at the end. */
#include "../agent/agent.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t state;
static uint64_t next(void) {
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return state;
}

static const char *seeds[] = {
    "{\"op\":\"hello\",\"versions\":[1],\"window\":1048576}",
    "{\"op\":\"exec\",\"argv\":[\"/bin/sh\",\"-c\",\"echo \\\"hi\\\" \\u00e9\\ud83d\\ude00\"],\"env\":{\"A\":\"b\"},\"cwd\":\"/tmp\",\"user\":\"sbx\",\"pty\":{\"rows\":24,\"cols\":80},\"stdin\":true}",
    "{\"op\":\"write\",\"path\":\"/tmp/x\",\"mode\":420,\"user\":1000}",
    "{\"op\":\"list\",\"path\":\"/\"}",
    "{\"op\":\"signal\",\"pid\":12,\"signal\":15,\"group\":false}",
    "{\"op\":\"entropy\",\"data\":\"AAECAwQFBgcICQoLDA0ODw==\"}",
    "{\"op\":\"clock\",\"epochMs\":1.7e12}",
    "[1,-2.5e-3,true,false,null,\"\",{},[[]]]",
};

static void walk(const struct json_doc *doc) {
  int64_t v;
  const char *keys[] = {"op", "argv", "env", "cwd", "user", "pty", "path", "mode", "pid", "signal", "data", "epochMs"};
  for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
    int n = json_get(doc, 0, keys[k]);
    (void)json_str(doc, n);
    (void)json_int(doc, n, 0, 0x7fffffff, &v);
    if (n >= 0 && (doc->nodes[n].type == J_ARR || doc->nodes[n].type == J_OBJ))
      for (int c = doc->nodes[n].child; c >= 0; c = doc->nodes[c].next) (void)json_str(doc, c);
  }
  int data = json_get(doc, 0, "data");
  const char *s = json_str(doc, data);
  if (s) {
    uint8_t out[4096];
    (void)base64_decode(s, strlen(s), out, sizeof out);
  }
}

int main(int argc, char **argv) {
  long cases = argc > 1 ? atol(argv[1]) : 100000;
  state = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 88172645463325252ull;
  long parsed = 0;
  char buf[4096];
  for (long i = 0; i < cases; i++) {
    size_t len;
    uint64_t how = next() % 4;
    if (how == 0) {
      len = next() % 256;
      for (size_t j = 0; j < len; j++) buf[j] = (char)next();
    } else {
      const char *seed = seeds[next() % (sizeof seeds / sizeof seeds[0])];
      len = strlen(seed);
      memcpy(buf, seed, len);
      int edits = 1 + (int)(next() % 8);
      for (int e = 0; e < edits && len > 0; e++) {
        size_t at = next() % len;
        switch (next() % 4) {
          case 0: buf[at] = (char)next(); break;
          case 1: buf[at] = "{}[]\",:\\u0123456789eE.-+ tfn"[next() % 29]; break;
          case 2: len = at; break;
          case 3:
            if (len + 8 < sizeof buf) { memmove(buf + at + 8, buf + at, len - at); memcpy(buf + at, "\\ud800[{\"", 8); len += 8; }
            break;
        }
      }
    }
    /* Exact-size heap copy so ASan sees any read past the end. */
    char *input = malloc(len ? len : 1);
    memcpy(input, buf, len);
    struct json_doc doc;
    if (json_parse(&doc, input, len) == 0) {
      parsed++;
      walk(&doc);
      json_free(&doc);
    }
    /* The writer turns any bytes into a JSON string that the parser accepts. */
    struct buf w = {0};
    jw_raw(&w, "[");
    jw_str(&w, input, len);
    jw_raw(&w, "]");
    if (json_parse(&doc, (const char *)w.data, w.len) != 0) {
      fprintf(stderr, "writer output does not parse back (case %ld)\n", i);
      return 2;
    }
    json_free(&doc);
    buf_free(&w);
    if (len >= FRAME_HEADER) (void)frame_check_header((const uint8_t *)input);
    free(input);
  }
  printf("ok %ld %ld\n", cases, parsed);
  return 0;
}
