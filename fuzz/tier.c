/* Fuzzes the router's HTTP/2 client toward tier replicas (router/native/h2tier.c) the way
   tier.py drives it: requests submitted, bytes from a replica, responses taken, streams
   cancelled and released, in whatever order the input says. */
#define H2_FUZZ_ALLOC
#include "harness.h"
#include "../router/native/h2common.c"
#include "../router/native/h2tier.c"

enum { REQUEST, FEED, CANCEL, RELEASE, PING_OP, OPS };
#define MAX_STREAMS 16

static const uint8_t FIELDS[] =
  ":method\0POST\0:scheme\0http\0:path\0/tiermesh.tier.v1.TierService/Generate\0:authority\0tier\0"
  "te\0trailers\0content-type\0application/grpc\0";

typedef struct { h2t_stream *handle; int32_t sid; int closed; } held;

typedef struct {
  h2t_conn *c;
  held streams[MAX_STREAMS]; /* streams Python has not released */
  size_t n;
} tier_state;

static held *find(tier_state *t, int32_t sid) {
  for (size_t i = 0; i < t->n; i++)
    if (t->streams[i].sid == sid) return &t->streams[i];
  return NULL;
}

static void release_at(tier_state *t, size_t i) {
  h2t_release(t->streams[i].handle);
  t->streams[i] = t->streams[--t->n];
}

/* What tier.py's pump does: take each stream's bytes, see how closed ones ended, write. */
static void pump(tier_state *t) {
  int32_t sid;
  int kind;
  size_t len;
  while ((kind = h2t_event(t->c, &sid))) {
    held *s = find(t, sid);
    if (!s) continue;
    const uint8_t *p = h2t_take(s->handle, &len);
    if (len) fuzz_touch(p, len);
    h2t_taken(t->c, s->handle);
    if (kind == H2T_CLOSED) {
      s->closed = 1;
      p = h2t_headers(s->handle, &len);
      if (len) fuzz_touch(p, len);
      h2t_error(s->handle);
    }
  }
  const uint8_t *out = h2t_pending(t->c, &len);
  if (out) fuzz_touch(out, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_input in = {data, size};
  fuzz_allocs(&in);
  tier_state t = {h2t_new(), {{0}}, 0};
  if (!t.c) return 0;
  pump(&t);
  while (in.left) {
    uint8_t op = fuzz_byte(&in) % OPS;
    size_t len, i = t.n ? fuzz_byte(&in) % t.n : 0;
    const uint8_t *bytes;
    switch (op) {
      case REQUEST:
        bytes = fuzz_bytes(&in, fuzz_u16(&in), &len);
        if (t.n < MAX_STREAMS && h2t_usable(t.c)) {
          h2t_stream *s = h2t_request(t.c, FIELDS, sizeof FIELDS - 1, bytes, len);
          if (s) t.streams[t.n++] = (held){s, h2t_sid(s), 0};
        }
        break;
      case FEED:
        bytes = fuzz_bytes(&in, fuzz_u16(&in), &len);
        if (h2t_recv(t.c, bytes, len) < 0) goto done;
        break;
      case CANCEL:
        if (t.n && !t.streams[i].closed) h2t_cancel(t.c, t.streams[i].handle);
        break;
      case RELEASE:
        if (t.n) release_at(&t, i);
        break;
      case PING_OP: h2t_ping(t.c); break;
    }
    pump(&t);
    if (!h2t_alive(t.c)) break;
  }
done:
  h2t_free(t.c); /* its open streams end; each stays until released */
  while (t.n) release_at(&t, 0);
  fuzz_allocs_left = -1;
  return 0;
}
