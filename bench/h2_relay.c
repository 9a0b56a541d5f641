/* An HTTP/2 stream relay on nghttp2, framing and relaying in C. Python owns the sockets
   (uvloop) and is called once per request (h2r_on_request), where a router's policies
   would run. Each client connection has its own backend connection. */
/* Built after router/native/h2common.c (the byte buffer, draining a session). */
typedef struct { size_t name, namelen, value, valuelen; } h2r_field; /* offsets into h2r_block.bytes */
typedef struct { h2_bytes bytes; h2r_field *fields; size_t n, cap; } h2r_block;

/* One direction of a relayed stream: what waits to go out on `sid` of `session`. */
typedef struct {
  nghttp2_session *session;
  int32_t sid;
  h2_bytes out;
  size_t off;
  int ended;
  h2r_block trailers;
} h2r_half;

typedef struct h2r_pair {
  h2r_half down, up;
  h2r_block incoming;
  int responded, refs;
  struct h2r_pair *prev, *next; /* the relay's open pairs, freed with it */
} h2r_pair;
typedef struct { nghttp2_session *down, *up; h2r_pair *pairs; h2_bytes pending; } h2r_relay;

static int h2r_on_request(const uint8_t *path, size_t pathlen); /* Python's: 0 relays */

static void add_field(h2r_block *k, const uint8_t *name, size_t nl, const uint8_t *value, size_t vl) {
  if (k->n == k->cap) {
    k->cap = k->cap ? 2 * k->cap : 16;
    k->fields = realloc(k->fields, k->cap * sizeof *k->fields);
  }
  h2r_field *f = &k->fields[k->n++];
  f->name = k->bytes.len; f->namelen = nl; put(&k->bytes, name, nl);
  f->value = k->bytes.len; f->valuelen = vl; put(&k->bytes, value, vl);
}

/* nghttp2_nv views of a block; valid until the block changes. */
static nghttp2_nv *views(const h2r_block *k) {
  nghttp2_nv *nv = malloc((k->n ? k->n : 1) * sizeof *nv);
  for (size_t i = 0; i < k->n; i++) {
    const h2r_field *f = &k->fields[i];
    nv[i] = (nghttp2_nv){k->bytes.p + f->name, k->bytes.p + f->value, f->namelen, f->valuelen, 0};
  }
  return nv;
}

static void clear(h2r_block *k) { k->n = 0; k->bytes.len = 0; }
static void drop(h2r_block *k) { free(k->bytes.p); free(k->fields); }

static void release(h2r_relay *r, h2r_pair *p, int all) {
  if (--p->refs && !all) return;
  if (p->prev) p->prev->next = p->next; else r->pairs = p->next;
  if (p->next) p->next->prev = p->prev;
  free(p->down.out.p); free(p->up.out.p);
  drop(&p->incoming); drop(&p->down.trailers);
  free(p);
}

static ssize_t read_out(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length, uint32_t *flags,
                        nghttp2_data_source *source, void *ud) {
  h2r_relay *r = ud;
  h2r_pair *p = nghttp2_session_get_stream_user_data(s, sid);
  if (!p) { *flags |= NGHTTP2_DATA_FLAG_EOF; return 0; }
  h2r_half *h = s == r->down ? &p->down : &p->up;
  size_t n = h->out.len - h->off;
  if (n > length) n = length;
  memcpy(buf, h->out.p + h->off, n);
  h->off += n;
  if (h->off == h->out.len) h->off = h->out.len = 0;
  /* Only now may the sender send more: a slow reader holds back its writer, window by window. */
  h2r_half *from = s == r->down ? &p->up : &p->down;
  if (n && from->sid > 0) nghttp2_session_consume(from->session, from->sid, n);
  if (h->off == h->out.len && h->ended) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (h->trailers.n) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      nghttp2_nv *nv = views(&h->trailers);
      nghttp2_submit_trailer(s, sid, nv, h->trailers.n);
      free(nv);
    }
    return n;
  }
  return n ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
}

static const nghttp2_data_provider PROVIDER = {{0}, read_out};

static void wake(h2r_half *h) { if (h->sid > 0) nghttp2_session_resume_data(h->session, h->sid); }

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
  h2r_relay *r = ud;
  if (s != r->down || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  h2r_pair *p = calloc(1, sizeof *p);
  p->down.session = r->down; p->down.sid = f->hd.stream_id; p->up.session = r->up; p->refs = 1;
  p->next = r->pairs;
  if (r->pairs) r->pairs->prev = p;
  r->pairs = p;
  nghttp2_session_set_stream_user_data(s, f->hd.stream_id, p);
  return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud) {
  h2r_pair *p = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
  if (p) add_field(&p->incoming, name, nl, value, vl);
  return 0;
}

static void on_request(h2r_relay *r, h2r_pair *p, int end) {
  const uint8_t *path = (const uint8_t *)"";
  size_t pathlen = 0;
  for (size_t i = 0; i < p->incoming.n; i++) {
    const h2r_field *f = &p->incoming.fields[i];
    if (f->namelen == 5 && !memcmp(p->incoming.bytes.p + f->name, ":path", 5)) {
      path = p->incoming.bytes.p + f->value; pathlen = f->valuelen;
    }
  }
  if (h2r_on_request(path, pathlen)) {
    nghttp2_submit_rst_stream(r->down, NGHTTP2_FLAG_NONE, p->down.sid, NGHTTP2_REFUSED_STREAM);
    return;
  }
  nghttp2_nv *nv = views(&p->incoming);
  int32_t sid = nghttp2_submit_request(r->up, NULL, nv, p->incoming.n, &PROVIDER, p);
  free(nv);
  if (sid < 0) {
    nghttp2_submit_rst_stream(r->down, NGHTTP2_FLAG_NONE, p->down.sid, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  p->up.sid = sid; p->up.ended = end; p->refs++;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
  h2r_relay *r = ud;
  h2r_pair *p = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
  if (!p) return 0;
  int end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
  if (f->hd.type == NGHTTP2_DATA) {
    if (end) { h2r_half *h = s == r->down ? &p->up : &p->down; h->ended = 1; wake(h); }
  } else if (f->hd.type == NGHTTP2_HEADERS) {
    if (s == r->down && !p->up.sid) {
      on_request(r, p, end);
    } else if (s == r->down) {  /* the request's trailers: gRPC sends none; its end counts */
      if (end) { p->up.ended = 1; wake(&p->up); }
    } else if (!p->responded) {
      p->responded = 1;
      nghttp2_nv *nv = views(&p->incoming);
      nghttp2_submit_response(r->down, p->down.sid, nv, p->incoming.n, end ? NULL : &PROVIDER);
      free(nv);
    } else {  /* trailers: they go out after the last byte of DATA */
      h2r_block t = p->down.trailers;
      p->down.trailers = p->incoming; p->incoming = t;
      p->down.ended = 1;
      wake(&p->down);
    }
    clear(&p->incoming);
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data, size_t len, void *ud) {
  h2r_relay *r = ud;
  h2r_pair *p = nghttp2_session_get_stream_user_data(s, sid);
  if (!p) return 0;
  h2r_half *h = s == r->down ? &p->up : &p->down;
  put(&h->out, data, len);
  wake(h);
  return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t sid, uint32_t error, void *ud) {
  h2r_relay *r = ud;
  h2r_pair *p = nghttp2_session_get_stream_user_data(s, sid);
  if (!p) return 0;
  h2r_half *mine = s == r->down ? &p->down : &p->up, *other = s == r->down ? &p->up : &p->down;
  mine->sid = -1;
  if (error && other->sid > 0) nghttp2_submit_rst_stream(other->session, NGHTTP2_FLAG_NONE, other->sid, error);
  release(r, p, 0);
  return 0;
}

h2r_relay *h2r_new(void) {
  h2r_relay *r = calloc(1, sizeof *r);
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
  int rv = nghttp2_session_server_new2(&r->down, cb, r, option) ||
           nghttp2_session_client_new2(&r->up, cb, r, option);
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(cb);
  if (rv) { free(r); return NULL; }
  nghttp2_submit_settings(r->down, NGHTTP2_FLAG_NONE, NULL, 0);
  nghttp2_submit_settings(r->up, NGHTTP2_FLAG_NONE, NULL, 0);
  return r;
}

void h2r_free(h2r_relay *r) {
  /* Deleting a session does not call on_stream_close: free what is still open here,
     and unhook it from the sessions first so that nothing reaches it afterwards. */
  for (h2r_pair *p = r->pairs; p; p = p->next) {
    if (p->down.sid > 0) nghttp2_session_set_stream_user_data(r->down, p->down.sid, NULL);
    if (p->up.sid > 0) nghttp2_session_set_stream_user_data(r->up, p->up.sid, NULL);
  }
  while (r->pairs) release(r, r->pairs, 1);
  nghttp2_session_del(r->down);
  nghttp2_session_del(r->up);
  free(r->pending.p);
  free(r);
}

/* Feeds bytes read from one side; <0 on a protocol error. */
ssize_t h2r_recv(h2r_relay *r, int from_client, const uint8_t *data, size_t len) {
  return nghttp2_session_mem_recv(from_client ? r->down : r->up, data, len);
}

/* What is ready to go out to one side, in a buffer the next call reuses; NULL if nothing. */
const uint8_t *h2r_pending(h2r_relay *r, int to_client, size_t *len) {
  return drain(to_client ? r->down : r->up, &r->pending, len);
}
