/* What the nghttp2 parts share (h2edge.c, which the proxy benchmark's reference relay,
   bench/h2_relay.py, also runs, and h2tier.c): a growing byte buffer, header fields in the
   flat form Python reads and writes, the queue of events Python takes after each call,
   and a session's output drained into one buffer. router/native/__init__.py builds it in
   front of each of them. */
#include <nghttp2/nghttp2.h>
#include <stdlib.h>
#include <string.h>

typedef struct { uint8_t *p; size_t len, cap; } h2_bytes;

static inline void put(h2_bytes *b, const uint8_t *data, size_t len) {
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + len) cap *= 2;
    b->p = realloc(b->p, cap);
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, len);
  b->len += len;
}

/* Header fields cross to and from Python flat, "name\0value\0..." (wire.fields and
   wire.flat read and write it; HTTP/2 allows no NUL in either). */
static inline void put_field(h2_bytes *b, const uint8_t *name, size_t nl, const uint8_t *value, size_t vl) {
  put(b, name, nl); put(b, (const uint8_t *)"", 1);
  put(b, value, vl); put(b, (const uint8_t *)"", 1);
}

/* The field at *p of a flat block ending at `end`, as a view into it; *p moves past it.
   0 at the end, or where the block is cut short. */
static inline int next_field(const uint8_t **p, const uint8_t *end, nghttp2_nv *nv) {
  const uint8_t *name = *p, *value = memchr(name, 0, end - name);
  if (!value++) return 0;
  const uint8_t *next = memchr(value, 0, end - value);
  if (!next) return 0;
  *nv = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, value - 1 - name, next - value, NGHTTP2_NV_FLAG_NONE};
  *p = next + 1;
  return 1;
}

typedef struct { int kind; int32_t sid; } h2_note;
typedef struct { h2_note *notes; size_t n, cap, next; } h2_events;

static inline void emit(h2_events *q, int kind, int32_t sid) {
  if (q->n == q->cap) {
    q->cap = q->cap ? 2 * q->cap : 16;
    q->notes = realloc(q->notes, q->cap * sizeof *q->notes);
  }
  q->notes[q->n++] = (h2_note){kind, sid};
}

/* The next event's kind (0 when there is none) and its stream. */
static inline int next_event(h2_events *q, int32_t *sid) {
  if (q->next == q->n) { q->next = q->n = 0; return 0; }
  h2_note *e = &q->notes[q->next++];
  *sid = e->sid;
  return e->kind;
}

/* What `session` has ready to go out, in `pending` (reused by the next call); NULL if nothing. */
static inline const uint8_t *drain(nghttp2_session *session, h2_bytes *pending, size_t *len) {
  const uint8_t *data;
  ssize_t n;
  pending->len = 0;
  while ((n = nghttp2_session_mem_send(session, &data)) > 0) put(pending, data, n);
  *len = pending->len;
  return pending->len ? pending->p : NULL;
}
