/* The frame header check, apart from the loop so the fuzz driver can call it. */
#include "agent.h"
#include <stdint.h>

/* Checks a header before its payload is read, so a hostile length never allocates anything. */
const char *frame_check_header(const uint8_t *h) {
  uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
  uint32_t id = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 | (uint32_t)h[6] << 8 | h[7];
  uint8_t kind = h[8], channel = h[9];
  if (h[10] || h[11]) return "reserved header bytes must be zero";
  if (id > 0x7fffffffu) return "stream ids are 0..2^31-1";
  if (len > MAX_PAYLOAD) return "frame larger than the maximum";
  switch (kind) {
    case KIND_CONTROL: return channel ? "control frames use channel 0" : len > MAX_CONTROL ? "control frame larger than the maximum" : len == 0 ? "empty control frame" : NULL;
    case KIND_DATA: return channel != CH_IN ? "the host sends data on channel 0 only" : id == 0 ? "data on stream 0" : NULL;
    case KIND_EOF:
    case KIND_CANCEL: return channel || len ? "EOF and cancel frames are empty, on channel 0" : id == 0 ? "stream 0 cannot end" : NULL;
    case KIND_WINDOW: return channel || len != 4 ? "window frames carry 4 bytes on channel 0" : NULL;
    default: return "unknown frame kind";
  }
}

