/* The router's HTTP/2 edge on nghttp2: each caller connection is framed here, in C.
   - A stream of the native method (Mesh/Generate) is handed to Python whole, once: its
     headers and request body (event H2E_REQUEST). Python answers it message by message
     (h2e_send) and ends it with trailers (h2e_finish).
   - Every other stream (health, reflection, jobs, sessions, Converse) is relayed frame by
     frame, in C, to the router's own grpc.aio server over one internal connection that
     Python opens when the first such stream arrives (event H2E_CONNECT).
   Python owns the sockets: it feeds what it reads (h2e_recv), writes what is pending
   (h2e_pending) and then takes the events. Nothing here calls into Python. */
/* Built after h2common.c (buffers, events, draining). */
enum { H2E_REQUEST = 1, H2E_CLOSED = 2, H2E_DRAINED = 3, H2E_CONNECT = 4 };

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
  h2_bytes body;           /* native: the request body */
  int native, started, requested, responded, oversize, watch, refs;
  struct h2e_stream *prev, *next; /* the connection's open streams, freed with it */
} h2e_stream;

typedef struct {
  nghttp2_session *down, *up;
  h2e_stream *streams;
  h2_bytes pending;
  h2_events events;
  h2_bytes native_path;
  size_t max_body;
  int connecting;
} h2e_conn;

static const nghttp2_nv RESPONSE[] = {
  {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
  {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE},
};

static void add_field(h2e_block *k, const uint8_t *name, size_t nl, const uint8_t *value, size_t vl) {
  if (k->n == k->cap) {
    k->cap = k->cap ? 2 * k->cap : 16;
    k->fields = realloc(k->fields, k->cap * sizeof *k->fields);
  }
  k->fields[k->n++] = (h2e_field){k->bytes.len, nl, k->bytes.len + nl + 1, vl};
  put_field(&k->bytes, name, nl, value, vl);
}

/* A flat block from Python. */
static void parse_fields(h2e_block *k, const uint8_t *flat, size_t len) {
  nghttp2_nv f;
  for (const uint8_t *p = flat; next_field(&p, flat + len, &f);)
    add_field(k, f.name, f.namelen, f.value, f.valuelen);
}

/* nghttp2_nv views of `first` then `k`; valid until the block changes. */
static nghttp2_nv *views(const nghttp2_nv *first, size_t nfirst, const h2e_block *k) {
  nghttp2_nv *nv = malloc((nfirst + k->n + 1) * sizeof *nv);
  memcpy(nv, first, nfirst * sizeof *nv);
  for (size_t i = 0; i < k->n; i++) {
    const h2e_field *f = &k->fields[i];
    nv[nfirst + i] = (nghttp2_nv){k->bytes.p + f->name, k->bytes.p + f->value, f->namelen, f->valuelen, 0};
  }
  return nv;
}

static void clear(h2e_block *k) { k->n = 0; k->bytes.len = 0; }
static void drop(h2e_block *k) { free(k->bytes.p); free(k->fields); }

static void release(h2e_conn *c, h2e_stream *s, int all) {
  if (--s->refs && !all) return;
  if (s->prev) s->prev->next = s->next; else c->streams = s->next;
  if (s->next) s->next->prev = s->prev;
  free(s->down.out.p); free(s->up.out.p); free(s->body.p);
  drop(&s->incoming); drop(&s->request); drop(&s->down.trailers);
  free(s);
}

static h2e_stream *native_stream(h2e_conn *c, int32_t sid) {
  h2e_stream *s = nghttp2_session_get_stream_user_data(c->down, sid);
  return s && s->native && s->down.sid > 0 ? s : NULL;
}

static ssize_t read_out(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length, uint32_t *flags,
                        nghttp2_data_source *source, void *ud) {
  h2e_conn *c = ud;
  h2e_stream *s = nghttp2_session_get_stream_user_data(session, sid);
  if (!s) { *flags |= NGHTTP2_DATA_FLAG_EOF; return 0; }
  h2e_half *h = session == c->down ? &s->down : &s->up;
  size_t n = h->out.len - h->off;
  if (n > length) n = length;
  memcpy(buf, h->out.p + h->off, n);
  h->off += n;
  if (h->off == h->out.len) h->off = h->out.len = 0;
  /* A relayed sender may send more only now: a slow reader holds back its writer. */
  h2e_half *from = session == c->down ? &s->up : &s->down;
  if (n && from->sid > 0) nghttp2_session_consume(from->session, from->sid, n);
  if (s->watch && h->off == h->out.len) { s->watch = 0; emit(&c->events, H2E_DRAINED, sid); }
  if (h->off == h->out.len && h->ended) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (h->trailers.n) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      nghttp2_nv *nv = views(NULL, 0, &h->trailers);
      nghttp2_submit_trailer(session, sid, nv, h->trailers.n);
      free(nv);
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
  s->down.session = c->down; s->down.sid = f->hd.stream_id; s->up.session = c->up; s->refs = 1;
  s->next = c->streams;
  if (c->streams) c->streams->prev = s;
  c->streams = s;
  nghttp2_session_set_stream_user_data(session, f->hd.stream_id, s);
  return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud) {
  h2e_stream *s = nghttp2_session_get_stream_user_data(session, f->hd.stream_id);
  if (s) add_field(&s->incoming, name, nl, value, vl);
  return 0;
}

static void request_ready(h2e_conn *c, h2e_stream *s) {
  if (s->requested) return;
  s->requested = 1;
  emit(&c->events, H2E_REQUEST, s->down.sid);
}

/* The request headers are in: a native stream waits for its body, any other goes up. */
static void start(h2e_conn *c, h2e_stream *s, int end) {
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
    if (end) request_ready(c, s);
    return;
  }
  nghttp2_nv *nv = views(NULL, 0, &s->incoming);
  int32_t sid = nghttp2_submit_request(c->up, NULL, nv, s->incoming.n, &PROVIDER, s);
  free(nv);
  if (sid < 0) {
    nghttp2_submit_rst_stream(c->down, NGHTTP2_FLAG_NONE, s->down.sid, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  s->up.sid = sid; s->up.ended = end; s->refs++;
  if (!c->connecting) { c->connecting = 1; emit(&c->events, H2E_CONNECT, 0); }
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *f, void *ud) {
  h2e_conn *c = ud;
  h2e_stream *s = nghttp2_session_get_stream_user_data(session, f->hd.stream_id);
  if (!s) return 0;
  int end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
  if (f->hd.type == NGHTTP2_DATA) {
    if (end && s->native) request_ready(c, s);
    else if (end) { h2e_half *h = session == c->down ? &s->up : &s->down; h->ended = 1; wake(h); }
  } else if (f->hd.type == NGHTTP2_HEADERS) {
    if (session == c->down && !s->started) {
      start(c, s, end);
    } else if (session == c->down) {  /* request trailers: gRPC sends none; their end counts */
      if (end && s->native) request_ready(c, s);
      else if (end) { s->up.ended = 1; wake(&s->up); }
    } else if (!s->responded) {
      s->responded = 1;
      nghttp2_nv *nv = views(NULL, 0, &s->incoming);
      nghttp2_submit_response(c->down, s->down.sid, nv, s->incoming.n, end ? NULL : &PROVIDER);
      free(nv);
    } else {  /* relayed trailers: they go out after the last byte of DATA */
      h2e_block t = s->down.trailers;
      s->down.trailers = s->incoming; s->incoming = t;
      s->down.ended = 1;
      wake(&s->down);
    }
    clear(&s->incoming);
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                         void *ud) {
  h2e_conn *c = ud;
  h2e_stream *s = nghttp2_session_get_stream_user_data(session, sid);
  if (!s) return 0;
  if (s->native) {
    /* Read at once: the window reopens as it is buffered, up to the size limit. */
    nghttp2_session_consume(session, sid, len);
    if (s->oversize) return 0;
    if (s->body.len + len > c->max_body) {
      s->oversize = 1;
      free(s->body.p); s->body = (h2_bytes){0};
      request_ready(c, s);  /* Python answers RESOURCE_EXHAUSTED without waiting for the rest */
      return 0;
    }
    put(&s->body, data, len);
    return 0;
  }
  h2e_half *h = session == c->down ? &s->up : &s->down;
  put(&h->out, data, len);
  wake(h);
  return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t sid, uint32_t error, void *ud) {
  h2e_conn *c = ud;
  h2e_stream *s = nghttp2_session_get_stream_user_data(session, sid);
  if (!s) return 0;
  h2e_half *mine = session == c->down ? &s->down : &s->up, *other = session == c->down ? &s->up : &s->down;
  mine->sid = -1;
  if (s->native) emit(&c->events, H2E_CLOSED, sid);
  else if (error && other->sid > 0)
    nghttp2_submit_rst_stream(other->session, NGHTTP2_FLAG_NONE, other->sid, error);
  release(c, s, 0);
  return 0;
}

h2e_conn *h2e_new(const uint8_t *native_path, size_t pathlen, size_t max_body, uint32_t max_streams) {
  h2e_conn *c = calloc(1, sizeof *c);
  put(&c->native_path, native_path, pathlen);
  c->max_body = max_body;
  nghttp2_session_callbacks *cb;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  nghttp2_option *option;
  nghttp2_option_new(&option);
  nghttp2_option_set_no_auto_window_update(option, 1);
  int rv = nghttp2_session_server_new2(&c->down, cb, c, option) ||
           nghttp2_session_client_new2(&c->up, cb, c, option);
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(cb);
  if (rv) { free(c->native_path.p); free(c); return NULL; }
  /* Callers' clients queue streams past the limit; nghttp2 refuses (REFUSED_STREAM, safe
     to retry) those of a client that does not, even before our SETTINGS are acknowledged. */
  nghttp2_settings_entry limit = {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams};
  nghttp2_submit_settings(c->down, NGHTTP2_FLAG_NONE, &limit, 1);
  nghttp2_submit_settings(c->up, NGHTTP2_FLAG_NONE, NULL, 0);
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

/* Feeds bytes read from the caller (from_caller) or the internal server; <0: a protocol error. */
ssize_t h2e_recv(h2e_conn *c, int from_caller, const uint8_t *data, size_t len) {
  return nghttp2_session_mem_recv(from_caller ? c->down : c->up, data, len);
}

/* What is ready to go out to one side, in a buffer the next call reuses; NULL if nothing. */
const uint8_t *h2e_pending(h2e_conn *c, int to_caller, size_t *len) {
  return drain(to_caller ? c->down : c->up, &c->pending, len);
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
   h2e_watching, asked after it). */
size_t h2e_send(h2e_conn *c, int32_t sid, const uint8_t *data, size_t len, size_t watch_above) {
  h2e_stream *s = native_stream(c, sid);
  if (!s || s->down.ended) return 0;
  if (!s->responded) {
    s->responded = 1;
    nghttp2_submit_response(c->down, sid, RESPONSE, 2, &PROVIDER);
  }
  put(&s->down.out, data, len);
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
   a trailers-only response when nothing was sent. */
void h2e_finish(h2e_conn *c, int32_t sid, const uint8_t *trailers, size_t len) {
  h2e_stream *s = native_stream(c, sid);
  if (!s || s->down.ended) return;
  s->down.ended = 1;
  parse_fields(&s->down.trailers, trailers, len);
  if (s->responded) { wake(&s->down); return; }
  s->responded = 1;
  nghttp2_nv *nv = views(RESPONSE, 2, &s->down.trailers);
  nghttp2_submit_response(c->down, sid, nv, 2 + s->down.trailers.n, NULL);
  free(nv);
}

/* Refuses new streams (GOAWAY); those already open run to their end. */
void h2e_goaway(h2e_conn *c) {
  nghttp2_submit_goaway(c->down, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->down),
                        NGHTTP2_NO_ERROR, NULL, 0);
}

/* A keepalive PING to the caller; nghttp2 takes its ACK, Python sees it as bytes read. */
void h2e_ping(h2e_conn *c) { nghttp2_submit_ping(c->down, NGHTTP2_FLAG_NONE, NULL); }

/* Streams still open, native or relayed. */
size_t h2e_open_streams(h2e_conn *c) {
  size_t n = 0;
  for (h2e_stream *s = c->streams; s; s = s->next) n++;
  return n;
}

/* Whether the caller's session still reads or writes: after a connection error nghttp2
   sends its GOAWAY and wants neither, and the socket should close. */
int h2e_alive(h2e_conn *c) { return nghttp2_session_want_read(c->down) || nghttp2_session_want_write(c->down); }
