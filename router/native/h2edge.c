/* The router's HTTP/2 edge on nghttp2: each caller connection is framed here, in C.
   - A stream of the native method (Mesh/Generate) is handed to Python whole, once: its
     headers and request body (event H2E_REQUEST). Python answers it message by message
     (h2e_send) and ends it with trailers (h2e_finish).
   - Every other stream (health, reflection, jobs, sessions, Converse) is relayed frame by
     frame, in C, to the router's own grpc.aio server over one internal connection that
     Python opens when the first such stream arrives (event H2E_CONNECT).
   Python owns the sockets: it feeds what it reads (h2e_recv), writes what is pending
   (h2e_pending) and then takes the events. Nothing here calls into Python.

   A caller is not trusted: what it can make the edge hold is bounded (h2e_limits), and a
   stream past a bound is answered here with a gRPC status, before anything is kept past
   the bound. Built after h2common.c (buffers, events, draining). */
#include "h2edge.h"

/* Offsets into `bytes`, which holds "name\0value\0" per field: Python reads it as is. */
typedef struct { size_t name, namelen, value, valuelen; } h2e_field;
typedef struct { h2_bytes bytes; h2e_field *fields; size_t n, cap; } h2e_block;

/* One direction of a stream: what waits to go out on `sid` of `session`. */
typedef struct {
  nghttp2_session *session;
  int32_t sid;
  h2_bytes out;
  size_t off;
  int ended;
  h2e_block trailers;
} h2e_half;

typedef struct h2e_stream {
  h2e_half down, up;        /* up: relayed streams only */
  h2e_block incoming;       /* the header block being received */
  h2e_block request;        /* native: the request's headers, for Python */
  h2_bytes body;            /* native: the request body */
  size_t header_bytes;      /* what the caller's header fields came to, kept or not */
  uint32_t header_fields;
  int64_t begun_ms;
  int native, started, requested, responded, oversize, watch, refs;
  int refused;              /* the H2E_REFUSED_* answered (or to answer) here */
  struct h2e_stream *prev, *next; /* the connection's open streams, freed with it */
} h2e_stream;

struct h2e_conn {
  nghttp2_session *down, *up;
  h2e_stream *streams;
  size_t nstreams;
  h2_bytes pending;
  h2_events events;
  h2_bytes native_path;
  h2e_limits limits;
  size_t buffered;          /* native request bodies held, over every stream */
  int64_t connected_ms, active_ms, sweep_due_ms;
  int connecting, greeted, broken;
};

#define FAILED NGHTTP2_ERR_CALLBACK_FAILURE /* a callback's answer that fails the connection */
#define GRPC_RESOURCE_EXHAUSTED 8
#define GRPC_DEADLINE_EXCEEDED 4

static const nghttp2_nv RESPONSE[] = {
  {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
  {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE},
};

static int add_field(h2e_block *k, const uint8_t *name, size_t nl, const uint8_t *value, size_t vl) {
  if (k->n == k->cap) {
    size_t cap = k->cap ? 2 * k->cap : 16;
    h2e_field *fields = realloc(k->fields, cap * sizeof *fields);
    if (!fields) return -1;
    k->fields = fields;
    k->cap = cap;
  }
  if (put_field(&k->bytes, name, nl, value, vl)) return -1;
  k->fields[k->n++] = (h2e_field){k->bytes.len - vl - nl - 2, nl, k->bytes.len - vl - 1, vl};
  return 0;
}

/* A flat block from Python. */
static int parse_fields(h2e_block *k, const uint8_t *flat, size_t len) {
  nghttp2_nv f;
  for (const uint8_t *p = flat; next_field(&p, flat + len, &f);)
    if (add_field(k, f.name, f.namelen, f.value, f.valuelen)) return -1;
  return 0;
}

/* nghttp2_nv views of `first` then `k`, valid until the block changes; NULL when memory
   ran out. */
static nghttp2_nv *views(const nghttp2_nv *first, size_t nfirst, const h2e_block *k) {
  nghttp2_nv *nv = malloc((nfirst + k->n + 1) * sizeof *nv);
  if (!nv) return NULL;
  if (nfirst) memcpy(nv, first, nfirst * sizeof *nv);
  for (size_t i = 0; i < k->n; i++) {
    const h2e_field *f = &k->fields[i];
    nv[nfirst + i] = (nghttp2_nv){k->bytes.p + f->name, k->bytes.p + f->value, f->namelen, f->valuelen, 0};
  }
  return nv;
}

static void clear(h2e_block *k) { k->n = 0; k->bytes.len = 0; }
static void drop(h2e_block *k) { free(k->bytes.p); free(k->fields); }

static void drop_body(h2e_conn *c, h2e_stream *s) {
  c->buffered -= s->body.len;
  free_bytes(&s->body);
}

static void release(h2e_conn *c, h2e_stream *s, int all) {
  if (--s->refs && !all) return;
  if (s->prev) s->prev->next = s->next; else c->streams = s->next;
  if (s->next) s->next->prev = s->prev;
  c->nstreams--;
  drop_body(c, s);
  free(s->down.out.p); free(s->up.out.p);
  drop(&s->incoming); drop(&s->request); drop(&s->down.trailers);
  free(s);
}

static h2e_stream *native_stream(h2e_conn *c, int32_t sid) {
  h2e_stream *s = nghttp2_session_get_stream_user_data(c->down, sid);
  return s && s->native && !s->refused && s->down.sid > 0 ? s : NULL;
}

/* Asks Python for a sweep when `due` comes before the one it has planned. */
static int watch(h2e_conn *c, int64_t due) {
  if (due >= c->sweep_due_ms) return 0;
  c->sweep_due_ms = due;
  return emit(&c->events, H2E_WATCH, 0);
}

/* Resets one half of a stream; -1 when even that could not be queued. */
static int reset(h2e_half *h, uint32_t code) {
  if (h->sid <= 0) return 0;
  return nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, h->sid, code) ? -1 : 0;
}

/* Answers a caller's stream here, trailers-only, with a gRPC status: the edge refused it
   (`kind`, H2E_REFUSED_BUFFERED or _BODY, tells Python for its metrics). What the caller still sends
   on it is read and dropped; nghttp2 resets the stream (NO_ERROR) once the answer is out. */
static int refuse(h2e_conn *c, h2e_stream *s, int kind, int code, const char *message) {
  s->refused = kind;
  drop_body(c, s);
  if (s->responded) return reset(&s->down, NGHTTP2_CANCEL) || reset(&s->up, NGHTTP2_CANCEL) ? -1 : 0;
  s->responded = 1;
  s->down.ended = 1;
  char status[4];
  snprintf(status, sizeof status, "%d", code);
  nghttp2_nv nv[] = {
    RESPONSE[0], RESPONSE[1],
    {(uint8_t *)"grpc-status", (uint8_t *)status, 11, strlen(status), NGHTTP2_NV_FLAG_NONE},
    {(uint8_t *)"grpc-message", (uint8_t *)message, 12, strlen(message), NGHTTP2_NV_FLAG_NONE},
  };
  if (nghttp2_submit_response(c->down, s->down.sid, nv, 4, NULL) && reset(&s->down, NGHTTP2_INTERNAL_ERROR))
    return -1;
  return emit(&c->events, kind, s->down.sid);
}

static ssize_t read_out(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length, uint32_t *flags,
                        nghttp2_data_source *source, void *ud) {
  h2e_conn *c = ud;
  h2e_stream *s = nghttp2_session_get_stream_user_data(session, sid);
  if (!s) { *flags |= NGHTTP2_DATA_FLAG_EOF; return 0; }
  h2e_half *h = session == c->down ? &s->down : &s->up;
  size_t n = h->out.len - h->off;
  if (n > length) n = length;
  if (n) memcpy(buf, h->out.p + h->off, n);
  h->off += n;
  if (h->off == h->out.len) h->off = h->out.len = 0;
  /* A relayed sender may send more on this stream only now: a slow reader holds back its
     writer, and no one else (the connection's window reopened as the bytes came). */
  h2e_half *from = session == c->down ? &s->up : &s->down;
  if (n && from->sid > 0) nghttp2_session_consume_stream(from->session, from->sid, n);
  if (s->watch && h->off == h->out.len) {
    s->watch = 0;
    if (emit(&c->events, H2E_DRAINED, sid)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  if (h->off == h->out.len && h->ended) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (h->trailers.n) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      nghttp2_nv *nv = views(NULL, 0, &h->trailers);
      int rv = nv ? nghttp2_submit_trailer(session, sid, nv, h->trailers.n) : -1;
      free(nv);
      if (rv) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* the stream is reset */
    }
    return n;
  }
  return n ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
}

static const nghttp2_data_provider PROVIDER = {{0}, read_out};

static void wake(h2e_half *h) { if (h->sid > 0) nghttp2_session_resume_data(h->session, h->sid); }

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *f, void *ud) {
  h2e_conn *c = ud;
  if (session != c->down || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  h2e_stream *s = calloc(1, sizeof *s);
  if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets the stream */
  s->down.session = c->down; s->down.sid = f->hd.stream_id; s->up.session = c->up; s->refs = 1;
  s->begun_ms = c->active_ms = h2_now_ms();
  s->next = c->streams;
  if (c->streams) c->streams->prev = s;
  c->streams = s;
  c->nstreams++;
  nghttp2_session_set_stream_user_data(session, f->hd.stream_id, s);
  int64_t first = c->limits.header_ms < c->limits.body_ms ? c->limits.header_ms : c->limits.body_ms;
  return watch(c, s->begun_ms + first) ? FAILED : 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud) {
  h2e_conn *c = ud;
  h2e_stream *s = nghttp2_session_get_stream_user_data(session, f->hd.stream_id);
  if (!s) return 0;
  if (session == c->down) {
    /* Counted as HTTP/2 counts them. An HPACK index of a byte can stand for a field of
       kilobytes, so past the limit the rest of the block must cost nothing: the stream is
       reset with ENHANCE_YOUR_CALM (gRPC clients report RESOURCE_EXHAUSTED), and the
       temporal failure makes nghttp2 skip the block's remaining fields (it still decodes
       them for HPACK's table, but checks and hands over none). */
    s->header_bytes += nl + vl + 32;
    if (++s->header_fields > c->limits.max_header_fields || s->header_bytes > c->limits.max_header_bytes) {
      s->refused = H2E_REFUSED_HEADERS;
      clear(&s->incoming);
      if (reset(&s->down, NGHTTP2_ENHANCE_YOUR_CALM) || reset(&s->up, NGHTTP2_CANCEL) ||
          emit(&c->events, H2E_REFUSED_HEADERS, s->down.sid))
        return FAILED;
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
  }
  return add_field(&s->incoming, name, nl, value, vl) ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

static int request_ready(h2e_conn *c, h2e_stream *s) {
  if (s->requested || s->refused) return 0;
  s->requested = 1;
  return emit(&c->events, H2E_REQUEST, s->down.sid);
}

/* The request headers are in: a native stream waits for its body, any other goes up. */
static int start(h2e_conn *c, h2e_stream *s, int end) {
  s->started = 1;
  for (size_t i = 0; i < s->incoming.n; i++) {
    const h2e_field *f = &s->incoming.fields[i];
    if (f->namelen == 5 && !memcmp(s->incoming.bytes.p + f->name, ":path", 5))
      s->native = f->valuelen == c->native_path.len &&
                  !memcmp(s->incoming.bytes.p + f->value, c->native_path.p, f->valuelen);
  }
  if (s->native) {
    h2e_block t = s->request;
    s->request = s->incoming; s->incoming = t;
    return end ? request_ready(c, s) : watch(c, s->begun_ms + c->limits.body_ms);
  }
  nghttp2_nv *nv = views(NULL, 0, &s->incoming);
  int32_t sid = nv ? nghttp2_submit_request(c->up, NULL, nv, s->incoming.n, &PROVIDER, s) : -1;
  free(nv);
  if (sid < 0) return reset(&s->down, NGHTTP2_INTERNAL_ERROR);
  s->up.sid = sid; s->up.ended = end; s->refs++;
  if (!c->connecting) { c->connecting = 1; return emit(&c->events, H2E_CONNECT, 0); }
  return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *f, void *ud) {
  h2e_conn *c = ud;
  if (session == c->down && f->hd.type == NGHTTP2_SETTINGS) c->greeted = 1;
  h2e_stream *s = nghttp2_session_get_stream_user_data(session, f->hd.stream_id);
  if (!s) return 0;
  int end = f->hd.flags & NGHTTP2_FLAG_END_STREAM, rv = 0;
  if (f->hd.type == NGHTTP2_DATA) {
    if (!end || s->refused) return 0;
    if (s->native) return request_ready(c, s) ? FAILED : 0;
    h2e_half *h = session == c->down ? &s->up : &s->down;
    h->ended = 1;
    wake(h);
  } else if (f->hd.type == NGHTTP2_HEADERS) {
    if (session == c->down && !s->started) {
      rv = start(c, s, end);
    } else if (session == c->down) {  /* request trailers: gRPC sends none; their end counts */
      if (s->refused) rv = 0;
      else if (end && s->native) rv = request_ready(c, s);
      else if (end) { s->up.ended = 1; wake(&s->up); }
    } else if (!s->responded) {
      s->responded = 1;
      nghttp2_nv *nv = views(NULL, 0, &s->incoming);
      if (!nv || nghttp2_submit_response(c->down, s->down.sid, nv, s->incoming.n, end ? NULL : &PROVIDER))
        rv = reset(&s->down, NGHTTP2_INTERNAL_ERROR) || reset(&s->up, NGHTTP2_CANCEL);
      free(nv);
    } else {  /* relayed trailers: they go out after the last byte of DATA */
      h2e_block t = s->down.trailers;
      s->down.trailers = s->incoming; s->incoming = t;
      s->down.ended = 1;
      wake(&s->down);
    }
    clear(&s->incoming);
  }
  return rv ? FAILED : 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                         void *ud) {
  h2e_conn *c = ud;
  h2e_stream *s = nghttp2_session_get_stream_user_data(session, sid);
  if (!s || s->refused) {  /* nothing keeps these bytes: their window reopens at once */
    nghttp2_session_consume(session, sid, len);
    return 0;
  }
  if (s->native) {
    /* Read at once: the window reopens as it is buffered, up to the size limit and the
       connection's budget. */
    nghttp2_session_consume(session, sid, len);
    if (s->oversize) return 0;
    if (s->body.len + len > c->limits.max_body) {
      s->oversize = 1;
      drop_body(c, s);
      return request_ready(c, s) ? FAILED : 0;  /* Python answers RESOURCE_EXHAUSTED now */
    }
    if (c->buffered + len > c->limits.max_buffered) {
      char message[160];
      snprintf(message, sizeof message,
               "the connection's unfinished requests exceed the router's limit of %zu bytes", c->limits.max_buffered);
      return refuse(c, s, H2E_REFUSED_BUFFERED, GRPC_RESOURCE_EXHAUSTED, message) ? FAILED : 0;
    }
    if (put(&s->body, data, len)) return reset(&s->down, NGHTTP2_INTERNAL_ERROR) ? FAILED : 0;
    c->buffered += len;
    return 0;
  }
  /* Relayed: the connection's window reopens as bytes arrive, so one stream that is not
     read cannot hold back the others; what waits per stream is bounded by its own window,
     which reopens as its reader takes the bytes (read_out). */
  nghttp2_session_consume_connection(session, len);
  h2e_half *h = session == c->down ? &s->up : &s->down;
  if (put(&h->out, data, len)) return reset(&s->down, NGHTTP2_INTERNAL_ERROR) || reset(&s->up, NGHTTP2_CANCEL) ? FAILED : 0;
  wake(h);
  return 0;
}

/* Never a fatal error to nghttp2 here: libnghttp2 before 1.55 leaks a request's HEADERS
   item when its stream closes unsent (a GOAWAY came first) and this callback fails
   (CVE-2023-35945; the tier's fuzzer found it in h2tier.c). What cannot be done breaks the
   connection instead, which the next call into it reports. */
static int on_stream_close(nghttp2_session *session, int32_t sid, uint32_t error, void *ud) {
  h2e_conn *c = ud;
  h2e_stream *s = nghttp2_session_get_stream_user_data(session, sid);
  if (!s) return 0;
  h2e_half *mine = session == c->down ? &s->down : &s->up, *other = session == c->down ? &s->up : &s->down;
  mine->sid = -1;
  int rv = 0;
  if (s->native) rv = emit(&c->events, H2E_CLOSED, sid);
  else if (error) rv = reset(other, error);
  release(c, s, 0);
  if (!c->nstreams) {
    c->active_ms = h2_now_ms();
    rv = rv || watch(c, c->active_ms + c->limits.idle_ms);
  }
  if (rv) c->broken = 1;
  return 0;
}

h2e_conn *h2e_new(const uint8_t *native_path, size_t pathlen, const h2e_limits *limits) {
  h2e_conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->limits = *limits;
  c->connected_ms = c->active_ms = h2_now_ms();
  c->sweep_due_ms = INT64_MAX;
  nghttp2_session_callbacks *cb = NULL;
  nghttp2_option *option = NULL;
  int rv = put(&c->native_path, native_path, pathlen) || nghttp2_session_callbacks_new(&cb) ||
           nghttp2_option_new(&option);
  if (!rv) {
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_option_set_no_auto_window_update(option, 1);
    rv = nghttp2_session_server_new2(&c->down, cb, c, option) || nghttp2_session_client_new2(&c->up, cb, c, option);
  }
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(cb);
  /* Callers' clients queue streams past the limit; nghttp2 refuses (REFUSED_STREAM, safe
     to retry) those of a client that does not, even before our SETTINGS are acknowledged.
     The header list limit is advisory to the caller: on_header enforces it. Connection
     windows are large on both sides of the relay (bytes are credited as they arrive);
     each stream's stays at HTTP/2's 64 KiB, which bounds what waits for one reader. */
  nghttp2_settings_entry settings[] = {
    {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, limits->max_streams},
    {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, limits->max_header_bytes > UINT32_MAX ? UINT32_MAX : (uint32_t)limits->max_header_bytes},
  };
  rv = rv || nghttp2_submit_settings(c->down, NGHTTP2_FLAG_NONE, settings, 2) ||
       nghttp2_submit_settings(c->up, NGHTTP2_FLAG_NONE, NULL, 0) ||
       nghttp2_session_set_local_window_size(c->down, NGHTTP2_FLAG_NONE, 0, 16 << 20) ||
       nghttp2_session_set_local_window_size(c->up, NGHTTP2_FLAG_NONE, 0, 16 << 20);
  if (rv) {
    nghttp2_session_del(c->down); nghttp2_session_del(c->up);
    free(c->native_path.p); free(c);
    return NULL;
  }
  return c;
}

void h2e_free(h2e_conn *c) {
  /* Deleting a session does not call on_stream_close: free what is still open here,
     and unhook it from the sessions first so that nothing reaches it afterwards. */
  for (h2e_stream *s = c->streams; s; s = s->next) {
    if (s->down.sid > 0) nghttp2_session_set_stream_user_data(c->down, s->down.sid, NULL);
    if (s->up.sid > 0) nghttp2_session_set_stream_user_data(c->up, s->up.sid, NULL);
  }
  while (c->streams) release(c, c->streams, 1);
  nghttp2_session_del(c->down);
  nghttp2_session_del(c->up);
  free(c->pending.p); free(c->events.notes); free(c->native_path.p);
  free(c);
}

/* Feeds bytes read from the caller (from_caller) or the internal server. <0: the
   connection is done; a GOAWAY saying why is queued (h2e_pending writes it). */
ssize_t h2e_recv(h2e_conn *c, int from_caller, const uint8_t *data, size_t len) {
  if (c->broken) return -1;
  ssize_t n = nghttp2_session_mem_recv(from_caller ? c->down : c->up, data, len);
  if (n >= 0 && !c->broken) return n;
  c->broken = 1;
  /* n >= 0: a callback broke it (memory ran out), not the caller's bytes. */
  uint32_t code = !from_caller || n >= 0 || n == NGHTTP2_ERR_CALLBACK_FAILURE || n == NGHTTP2_ERR_NOMEM
                      ? NGHTTP2_INTERNAL_ERROR
                  : n == NGHTTP2_ERR_FLOODED ? NGHTTP2_ENHANCE_YOUR_CALM
                                             : NGHTTP2_PROTOCOL_ERROR;
  nghttp2_session_terminate_session(c->down, code);
  return -1;
}

/* What is ready to go out to one side, in a buffer the next call reuses; NULL if nothing. */
const uint8_t *h2e_pending(h2e_conn *c, int to_caller, size_t *len) {
  return drain(to_caller ? c->down : c->up, &c->pending, len, &c->broken);
}

/* The next event (its kind, 0 when there is none) and its stream. */
int h2e_event(h2e_conn *c, int32_t *sid) { return next_event(&c->events, sid); }

/* A native request: its header block (returned) and body; the body is NULL when it
   exceeded max_body. NULL when the stream is gone. */
const uint8_t *h2e_request(h2e_conn *c, int32_t sid, size_t *headerslen, const uint8_t **body, size_t *bodylen) {
  h2e_stream *s = native_stream(c, sid);
  if (!s) return NULL;
  *headerslen = s->request.bytes.len;
  *body = s->oversize ? NULL : s->body.p ? s->body.p : (const uint8_t *)"";
  *bodylen = s->body.len;
  return s->request.bytes.p ? s->request.bytes.p : (const uint8_t *)"";
}

/* Queues response bytes (gRPC-framed messages); the response headers go first. Returns
   how many bytes of the stream wait to be sent; past `watch_above`, the stream is watched:
   H2E_DRAINED will say when they have all gone (unless they go in the next write at once:
   h2e_watching, asked after it). 0 when the stream is gone, or was reset for want of
   memory (its H2E_CLOSED follows). */
size_t h2e_send(h2e_conn *c, int32_t sid, const uint8_t *data, size_t len, size_t watch_above) {
  h2e_stream *s = native_stream(c, sid);
  if (!s || s->down.ended) return 0;
  if (!s->responded) {
    s->responded = 1;
    if (nghttp2_submit_response(c->down, sid, RESPONSE, 2, &PROVIDER)) {
      if (reset(&s->down, NGHTTP2_INTERNAL_ERROR)) c->broken = 1;
      return 0;
    }
  }
  if (put(&s->down.out, data, len)) {
    if (reset(&s->down, NGHTTP2_INTERNAL_ERROR)) c->broken = 1;
    return 0;
  }
  wake(&s->down);
  size_t waiting = s->down.out.len - s->down.off;
  s->watch = waiting > watch_above;
  return waiting;
}

/* Whether a watched stream's bytes still wait: H2E_DRAINED is yet to come. */
int h2e_watching(h2e_conn *c, int32_t sid) {
  h2e_stream *s = native_stream(c, sid);
  return s && s->watch;
}

/* Ends a native stream with trailers ("name\0value\0..."): after the queued bytes, or as
   a trailers-only response with HTTP `status` when nothing was sent. */
void h2e_finish(h2e_conn *c, int32_t sid, int status, const uint8_t *trailers, size_t len) {
  h2e_stream *s = native_stream(c, sid);
  if (!s || s->down.ended) return;
  s->down.ended = 1;
  if (parse_fields(&s->down.trailers, trailers, len)) {
    if (reset(&s->down, NGHTTP2_INTERNAL_ERROR)) c->broken = 1;
    return;
  }
  if (s->responded) { wake(&s->down); return; }
  s->responded = 1;
  char code[12];
  nghttp2_nv head[] = {RESPONSE[0], RESPONSE[1]};
  if (status != 200) {
    snprintf(code, sizeof code, "%d", status);
    head[0].value = (uint8_t *)code;
    head[0].valuelen = strlen(code);
  }
  nghttp2_nv *nv = views(head, 2, &s->down.trailers);
  if (!nv || nghttp2_submit_response(c->down, sid, nv, 2 + s->down.trailers.n, NULL))
    if (reset(&s->down, NGHTTP2_INTERNAL_ERROR)) c->broken = 1;
  free(nv);
}

/* Refuses new streams (GOAWAY); those already open run to their end. */
void h2e_goaway(h2e_conn *c) {
  if (nghttp2_submit_goaway(c->down, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->down),
                            NGHTTP2_NO_ERROR, NULL, 0))
    c->broken = 1;
}

/* Ends the connection: a GOAWAY with `error_code`, then nothing (h2e_alive turns 0 once
   it is written). */
void h2e_terminate(h2e_conn *c, uint32_t error_code) {
  if (nghttp2_session_terminate_session(c->down, error_code)) c->broken = 1;
}

/* A keepalive PING to the caller; nghttp2 takes its ACK, Python sees it as bytes read. */
void h2e_ping(h2e_conn *c) {
  if (nghttp2_submit_ping(c->down, NGHTTP2_FLAG_NONE, NULL)) c->broken = 1;
}

/* The connection's timeouts (limits' *_ms): answers the native streams whose body is
   late (DEADLINE_EXCEEDED), and says whether the connection itself should go. Sets
   *wait_ms to when to sweep next (-1: not until an H2E_WATCH asks). */
int h2e_sweep(h2e_conn *c, int64_t *wait_ms) {
  const h2e_limits *l = &c->limits;
  int64_t now = h2_now_ms(), next = INT64_MAX;
  *wait_ms = -1;
  if (!c->greeted) {
    if (now - c->connected_ms >= l->preface_ms) { h2e_terminate(c, NGHTTP2_SETTINGS_TIMEOUT); return H2E_DROP; }
    next = c->connected_ms + l->preface_ms;
  }
  for (h2e_stream *s = c->streams; s; s = s->next) {
    if (!s->started && !s->refused) {
      /* HTTP/2 lets no other frame between a block's frames: the connection is stuck. */
      if (now - s->begun_ms >= l->header_ms) { h2e_terminate(c, NGHTTP2_ENHANCE_YOUR_CALM); return H2E_DROP; }
      if (s->begun_ms + l->header_ms < next) next = s->begun_ms + l->header_ms;
    } else if (s->native && !s->requested && !s->refused) {
      if (now - s->begun_ms >= l->body_ms) {
        char message[128];
        snprintf(message, sizeof message, "the request did not arrive whole within the router's %lld ms",
                 (long long)l->body_ms);
        if (refuse(c, s, H2E_REFUSED_BODY, GRPC_DEADLINE_EXCEEDED, message)) { c->broken = 1; return H2E_DROP; }
      } else if (s->begun_ms + l->body_ms < next) {
        next = s->begun_ms + l->body_ms;
      }
    }
  }
  if (!c->nstreams) {
    if (now - c->active_ms >= l->idle_ms) return H2E_IDLE;
    if (c->active_ms + l->idle_ms < next) next = c->active_ms + l->idle_ms;
  }
  c->sweep_due_ms = next;
  if (next != INT64_MAX) *wait_ms = next - now;
  return H2E_KEEP;
}

/* Streams still open, native or relayed. */
size_t h2e_open_streams(h2e_conn *c) { return c->nstreams; }

/* Whether the caller's session still reads or writes: after a connection error nghttp2
   sends its GOAWAY and wants neither, and the socket should close. */
int h2e_alive(h2e_conn *c) {
  return !c->broken && (nghttp2_session_want_read(c->down) || nghttp2_session_want_write(c->down));
}
