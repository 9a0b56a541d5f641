/* Fuzzes the router's HTTP/2 edge (router/native/h2edge.c) the way edge.py drives it:
   bytes from a caller and from the internal server, Python's answers to native streams,
   sweeps, GOAWAY and pings, in whatever order the input says. */
#define H2_FUZZ_ALLOC
#include "harness.h"
#include "../router/native/h2common.c"
#include "../router/native/h2edge.c"

enum { FEED_CALLER, FEED_INTERNAL, SEND, FINISH, SWEEP, GOAWAY, PING, TERMINATE, OPS };
#define MAX_NATIVE 16

static const uint8_t PATH[] = "/tiermesh.v1.Mesh/Generate";

typedef struct {
  h2e_conn *c;
  int32_t native[MAX_NATIVE]; /* native streams Python was handed, answer unfinished */
  size_t nnative;
} edge_state;

static void forget(edge_state *e, int32_t sid) {
  for (size_t i = 0; i < e->nnative; i++)
    if (e->native[i] == sid) { e->native[i] = e->native[--e->nnative]; return; }
}

/* What edge.py does after each call into C: take the events, then write what is pending. */
static void pump(edge_state *e) {
  int32_t sid;
  int kind;
  for (int round = 0; round < 2; round++) {
    while ((kind = h2e_event(e->c, &sid))) {
      if (kind == H2E_REQUEST) {
        size_t hl, bl;
        const uint8_t *body, *h = h2e_request(e->c, sid, &hl, &body, &bl);
        if (!h) continue;
        fuzz_touch(h, hl);
        if (body) fuzz_touch(body, bl);
        if (e->nnative < MAX_NATIVE) e->native[e->nnative++] = sid;
        else h2e_finish(e->c, sid, 200, (const uint8_t *)"grpc-status\0" "0\0", 14);
      } else if (kind == H2E_CLOSED) {
        forget(e, sid);
      }
    }
    for (int side = 0; side < 2; side++) {
      size_t len;
      const uint8_t *out = h2e_pending(e->c, side, &len);
      if (out) fuzz_touch(out, len);
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_input in = {data, size};
  fuzz_allocs(&in);
  h2e_limits limits = {
    .max_body = 1 + (fuzz_byte(&in) << 8), .max_header_bytes = 256 + (fuzz_byte(&in) << 6),
    .max_header_fields = 4 + fuzz_byte(&in), .max_buffered = 1 + (fuzz_byte(&in) << 10),
    .max_streams = 1 + fuzz_byte(&in) % 16, .preface_ms = fuzz_byte(&in), .header_ms = fuzz_byte(&in),
    .body_ms = fuzz_byte(&in), .idle_ms = fuzz_byte(&in),
  };
  edge_state e = {h2e_new(PATH, sizeof PATH - 1, &limits), {0}, 0};
  if (!e.c) return 0;
  pump(&e);
  while (in.left) {
    uint8_t op = fuzz_byte(&in) % OPS;
    size_t len;
    const uint8_t *bytes;
    int32_t sid = e.nnative ? e.native[fuzz_byte(&in) % e.nnative] : 1;
    switch (op) {
      case FEED_CALLER:
      case FEED_INTERNAL:
        bytes = fuzz_bytes(&in, fuzz_u16(&in), &len);
        if (h2e_recv(e.c, op == FEED_CALLER, bytes, len) < 0) { pump(&e); goto done; }
        break;
      case SEND:
        bytes = fuzz_bytes(&in, fuzz_byte(&in), &len);
        h2e_send(e.c, sid, bytes, len, fuzz_byte(&in));
        h2e_watching(e.c, sid);
        break;
      case FINISH:
        bytes = fuzz_bytes(&in, fuzz_byte(&in), &len);  /* trailers, flat: any bytes */
        h2e_finish(e.c, sid, fuzz_byte(&in) ? 200 : 415, bytes, len);
        forget(&e, sid);
        break;
      case SWEEP: {
        int64_t wait;
        if (h2e_sweep(e.c, &wait) != H2E_KEEP) { pump(&e); goto done; }
        break;
      }
      case GOAWAY: h2e_goaway(e.c); break;
      case PING: h2e_ping(e.c); break;
      case TERMINATE: h2e_terminate(e.c, fuzz_byte(&in)); break;
    }
    pump(&e);
    h2e_open_streams(e.c);
    if (!h2e_alive(e.c)) break;
  }
done:
  h2e_free(e.c);
  fuzz_allocs_left = -1;
  return 0;
}
