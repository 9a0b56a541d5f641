/* What the nghttp2 parts share (h2edge.c and h2tier.c): a growing byte buffer, header
   fields in the flat form Python reads and writes, the queue of events Python takes after
   each call, and a session's output drained into one buffer. router/native/__init__.py
   builds it in front of each of them.

   Every allocation is checked: one that fails fails the stream or the connection it was
   for (never the process), and says so to its caller by its return value. */
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef H2_FUZZ_ALLOC
/* The fuzzers' build (fuzz/): allocations fail when the fuzzer's input says so, to drive
   every path that handles a failed one. */
void *h2_fuzz_malloc(size_t size);
void *h2_fuzz_calloc(size_t n, size_t size);
void *h2_fuzz_realloc(void *p, size_t size);
#define malloc h2_fuzz_malloc
#define calloc h2_fuzz_calloc
#define realloc h2_fuzz_realloc
#endif

typedef struct { uint8_t *p; size_t len, cap; } h2_bytes;

/* Appends `len` bytes; 0, or -1 when memory ran out (then `b` is as it was). */
static inline int put(h2_bytes *b, const uint8_t *data, size_t len) {
  if (len > b->cap - b->len) {
    if (len > SIZE_MAX / 2 - b->len) return -1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + len) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
  }
  if (len) memcpy(b->p + b->len, data, len);
  b->len += len;
  return 0;
}

static inline void free_bytes(h2_bytes *b) { free(b->p); *b = (h2_bytes){0}; }

/* Header fields cross to and from Python flat, "name\0value\0..." (wire.fields and
   wire.flat read and write it; HTTP/2 allows no NUL in either). 0, or -1 (nothing added). */
static inline int put_field(h2_bytes *b, const uint8_t *name, size_t nl, const uint8_t *value, size_t vl) {
  size_t was = b->len;
  if (put(b, name, nl) || put(b, (const uint8_t *)"", 1) || put(b, value, vl) || put(b, (const uint8_t *)"", 1)) {
    b->len = was;
    return -1;
  }
  return 0;
}

/* The field at *p of a flat block ending at `end`, as a view into it; *p moves past it.
   0 at the end, or where the block is cut short. */
static inline int next_field(const uint8_t **p, const uint8_t *end, nghttp2_nv *nv) {
  const uint8_t *name = *p, *value = name < end ? memchr(name, 0, end - name) : NULL;
  if (!value) return 0;
  value++;
  const uint8_t *next = memchr(value, 0, end - value);
  if (!next) return 0;
  *nv = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, value - 1 - name, next - value, NGHTTP2_NV_FLAG_NONE};
  *p = next + 1;
  return 1;
}

typedef struct { int kind; int32_t sid; } h2_note;
typedef struct { h2_note *notes; size_t n, cap, next; } h2_events;

/* Queues an event for Python; 0, or -1 when memory ran out. A lost event would leave a
   stream waiting forever, so its owner fails the whole connection then. */
static inline int emit(h2_events *q, int kind, int32_t sid) {
  if (q->n == q->cap) {
    size_t cap = q->cap ? 2 * q->cap : 16;
    h2_note *notes = realloc(q->notes, cap * sizeof *notes);
    if (!notes) return -1;
    q->notes = notes;
    q->cap = cap;
  }
  q->notes[q->n++] = (h2_note){kind, sid};
  return 0;
}

/* The next event's kind (0 when there is none) and its stream. */
static inline int next_event(h2_events *q, int32_t *sid) {
  if (q->next == q->n) { q->next = q->n = 0; return 0; }
  h2_note *e = &q->notes[q->next++];
  *sid = e->sid;
  return e->kind;
}

/* What `session` has ready to go out, in `pending` (reused by the next call); NULL if
   nothing. *failed is set when nghttp2 or memory failed: the connection is done. */
static inline const uint8_t *drain(nghttp2_session *session, h2_bytes *pending, size_t *len, int *failed) {
  const uint8_t *data;
  ssize_t n;
  pending->len = 0;
  while ((n = nghttp2_session_mem_send(session, &data)) > 0) {
    if (put(pending, data, n)) { *failed = 1; break; }
  }
  if (n < 0) *failed = 1;
  *len = pending->len;
  return pending->len ? pending->p : NULL;
}

/* Milliseconds on the monotonic clock (Python's loop.time() is on the same clock). */
static inline int64_t h2_now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}
