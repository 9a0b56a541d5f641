/* The router's HTTP/2 edge (h2edge.c): what Python calls. cffi reads this file as it is,
   without its preprocessor lines (router/native/build.py), so it is the one place these
   declarations and numbers are written. */
#ifndef TIERMESH_H2EDGE_H
#define TIERMESH_H2EDGE_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Events Python takes after each call (h2e_event). */
enum h2e_event_kind {
  H2E_REQUEST = 1,          /* a native stream's request is whole (or ran past max_body) */
  H2E_CLOSED = 2,           /* a native stream closed (the caller reset it, or left) */
  H2E_DRAINED = 3,          /* a watched native stream's queued bytes have all gone */
  H2E_CONNECT = 4,          /* the first relayed stream came: open the internal connection */
  H2E_WATCH = 5,            /* a deadline came nearer than the next sweep: sweep now */
  H2E_REFUSED_HEADERS = 6,  /* a stream's headers ran past the limits: reset, ENHANCE_YOUR_CALM */
  H2E_REFUSED_BUFFERED = 7, /* a body ran past the connection's budget: answered RESOURCE_EXHAUSTED */
  H2E_REFUSED_BODY = 8      /* a body did not finish within body_ms: answered DEADLINE_EXCEEDED */
};

/* What h2e_sweep found. */
enum h2e_verdict {
  H2E_KEEP = 0,  /* nothing to do, or streams answered (write what is pending) */
  H2E_DROP = 1,  /* drop the connection: no preface in time, or a header block left unfinished */
  H2E_IDLE = 2   /* no stream for idle_ms: say GOAWAY and close */
};

/* What one caller connection may hold of the router (router.limits). */
typedef struct {
  size_t max_body;           /* one framed request message of the native method */
  size_t max_header_bytes;   /* a stream's header fields: name + value + 32 each (RFC 7541) */
  uint32_t max_header_fields;
  size_t max_buffered;       /* request bytes held at once for the connection's native streams */
  uint32_t max_streams;      /* open at once (SETTINGS_MAX_CONCURRENT_STREAMS) */
  int64_t preface_ms;        /* until the caller's preface and SETTINGS */
  int64_t header_ms;         /* from a stream's first HEADERS frame to its last */
  int64_t body_ms;           /* from a native stream's first HEADERS frame to its request's end */
  int64_t idle_ms;           /* without a stream open, before GOAWAY */
} h2e_limits;

typedef struct h2e_conn h2e_conn;

h2e_conn *h2e_new(const uint8_t *native_path, size_t pathlen, const h2e_limits *limits);
void h2e_free(h2e_conn *c);
ssize_t h2e_recv(h2e_conn *c, int from_caller, const uint8_t *data, size_t len);
const uint8_t *h2e_pending(h2e_conn *c, int to_caller, size_t *len);
int h2e_event(h2e_conn *c, int32_t *sid);
const uint8_t *h2e_request(h2e_conn *c, int32_t sid, size_t *headerslen, const uint8_t **body, size_t *bodylen);
size_t h2e_send(h2e_conn *c, int32_t sid, const uint8_t *data, size_t len, size_t watch_above);
int h2e_watching(h2e_conn *c, int32_t sid);
void h2e_finish(h2e_conn *c, int32_t sid, int status, const uint8_t *trailers, size_t len);
void h2e_goaway(h2e_conn *c);
void h2e_terminate(h2e_conn *c, uint32_t error_code);
void h2e_ping(h2e_conn *c);
int h2e_sweep(h2e_conn *c, int64_t *wait_ms);
size_t h2e_open_streams(h2e_conn *c);
int h2e_alive(h2e_conn *c);

#endif
