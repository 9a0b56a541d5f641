/* The router's side of one HTTP/2 connection to a tier replica, on nghttp2: Python
   submits a request whole (h2t_request); the response's header fields and bytes gather
   per stream, and Python takes them when told (events). The tier's window reopens as
   Python takes the bytes (h2t_taken). Python owns the socket, as with the edge (h2edge.c). */
/* Built after h2common.c (buffers, events, draining). A memory shortage fails the
   stream it was for (reset, INTERNAL_ERROR) or, where no stream can take it, the whole
   connection (h2t_alive turns 0). */
#include "h2tier.h"

typedef struct h2t_stream {
  int32_t sid;
  h2_bytes request, headers, data; /* headers: "name\0value\0..." of every block received */
  size_t sent;
  uint32_t error;                    /* RST_STREAM's code, 0 when it ended cleanly */
  int closed, refs;
  struct h2t_stream *prev, *next; /* the connection's open streams */
} h2t_stream;

struct h2t_conn {
  nghttp2_session *session;
  h2t_stream *open;
  h2_bytes pending;
  h2_events events;
  int broken;
};

static void release(h2t_stream *s) {
  if (--s->refs) return;
  free(s->request.p); free(s->headers.p); free(s->data.p);
  free(s);
}

static ssize_t read_request(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *source, void *ud) {
  h2t_stream *s = source->ptr;
  size_t n = s->request.len - s->sent;
  if (n > length) n = length;
  if (n) memcpy(buf, s->request.p + s->sent, n);
  s->sent += n;
  if (s->sent == s->request.len) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return n;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud) {
  h2t_stream *s = nghttp2_session_get_stream_user_data(session, f->hd.stream_id);
  if (!s) return 0;
  return put_field(&s->headers, name, nl, value, vl) ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                         void *ud) {
  h2t_stream *s = nghttp2_session_get_stream_user_data(session, sid);
  if (!s) { nghttp2_session_consume(session, sid, len); return 0; }
  /* One event until Python takes what gathered. */
  if (!s->data.len && emit(&((h2t_conn *)ud)->events, H2T_DATA, sid)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  if (put(&s->data, data, len)) {
    nghttp2_session_consume(session, sid, len);
    return nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, sid, NGHTTP2_INTERNAL_ERROR) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
  }
  return 0;
}

static void closed(h2t_conn *c, h2t_stream *s, uint32_t error) {
  s->closed = 1; s->error = error;
  if (s->prev) s->prev->next = s->next; else c->open = s->next;
  if (s->next) s->next->prev = s->prev;
  release(s);
}

/* Never a fatal error to nghttp2 here: libnghttp2 before 1.55 leaks a request's HEADERS
   item when its stream closes unsent (a GOAWAY came first) and this callback fails
   (CVE-2023-35945). A close that cannot be told to Python breaks the connection instead,
   as every other memory shortage without a stream to fail does. */
static int on_stream_close(nghttp2_session *session, int32_t sid, uint32_t error, void *ud) {
  h2t_conn *c = ud;
  h2t_stream *s = nghttp2_session_get_stream_user_data(session, sid);
  if (!s) return 0;
  if (emit(&c->events, H2T_CLOSED, sid)) c->broken = 1;
  closed(c, s, error);
  return 0;
}

h2t_conn *h2t_new(void) {
  h2t_conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  nghttp2_session_callbacks *cb = NULL;
  nghttp2_option *option = NULL;
  int rv = nghttp2_session_callbacks_new(&cb) || nghttp2_option_new(&option);
  if (!rv) {
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_option_set_no_auto_window_update(option, 1);
    rv = nghttp2_session_client_new2(&c->session, cb, c, option);
  }
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(cb);
  if (rv || nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, NULL, 0)) {
    nghttp2_session_del(c->session);
    free(c);
    return NULL;
  }
  return c;
}

/* Frees the connection. Its open streams end with INTERNAL_ERROR; each stays until
   Python releases it. */
void h2t_free(h2t_conn *c) {
  while (c->open) {
    nghttp2_session_set_stream_user_data(c->session, c->open->sid, NULL);
    closed(c, c->open, NGHTTP2_INTERNAL_ERROR);
  }
  nghttp2_session_del(c->session); /* it calls no on_stream_close */
  free(c->pending.p); free(c->events.notes);
  free(c);
}

/* <0: the connection is done (a protocol error, or memory ran out). */
ssize_t h2t_recv(h2t_conn *c, const uint8_t *data, size_t len) {
  ssize_t n = c->broken ? -1 : nghttp2_session_mem_recv(c->session, data, len);
  if (n < 0) c->broken = 1;
  return n;
}

const uint8_t *h2t_pending(h2t_conn *c, size_t *len) { return drain(c->session, &c->pending, len, &c->broken); }

int h2t_event(h2t_conn *c, int32_t *sid) { return next_event(&c->events, sid); }

/* Starts a stream: header fields ("name\0value\0...") and the whole request body. NULL
   when the connection takes no more streams (GOAWAY received, or ids run out), or memory
   ran out. */
h2t_stream *h2t_request(h2t_conn *c, const uint8_t *fields, size_t fieldslen, const uint8_t *body, size_t bodylen) {
  size_t nuls = 0, k = 0;
  for (size_t i = 0; i < fieldslen; i++) nuls += !fields[i];
  nghttp2_nv *nv = malloc((nuls / 2 + 1) * sizeof *nv);
  h2t_stream *s = calloc(1, sizeof *s);
  if (!nv || !s || put(&s->request, body, bodylen)) {
    free(nv);
    if (s) free(s->request.p);
    free(s);
    return NULL;
  }
  for (const uint8_t *p = fields; next_field(&p, fields + fieldslen, &nv[k]);) k++;
  nghttp2_data_provider provider = {{.ptr = s}, read_request};
  s->sid = nghttp2_submit_request(c->session, NULL, nv, k, &provider, s);
  free(nv);
  if (s->sid < 0) { free(s->request.p); free(s); return NULL; }
  s->refs = 2; /* nghttp2's until the stream closes, Python's until it releases it */
  s->next = c->open;
  if (c->open) c->open->prev = s;
  c->open = s;
  return s;
}

int32_t h2t_sid(h2t_stream *s) { return s->sid; }

/* The response bytes gathered since the last take (valid until h2t_taken). */
const uint8_t *h2t_take(h2t_stream *s, size_t *len) { *len = s->data.len; return s->data.p; }

/* Python copied the bytes: clear them, and let the tier send as many more. `c` is NULL
   once the connection is gone. */
void h2t_taken(h2t_conn *c, h2t_stream *s) {
  if (c && s->data.len) nghttp2_session_consume(c->session, s->sid, s->data.len);
  s->data.len = 0;
}

const uint8_t *h2t_headers(h2t_stream *s, size_t *len) { *len = s->headers.len; return s->headers.p; }

/* -1 while open; else the RST_STREAM code (0: ended cleanly). */
int64_t h2t_error(h2t_stream *s) { return s->closed ? (int64_t)s->error : -1; }

void h2t_cancel(h2t_conn *c, h2t_stream *s) {
  if (!s->closed && nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, s->sid, NGHTTP2_CANCEL)) c->broken = 1;
}

void h2t_release(h2t_stream *s) { release(s); }

/* A keepalive PING; nghttp2 answers the tier's ACK itself, Python sees it as bytes read. */
void h2t_ping(h2t_conn *c) {
  if (nghttp2_submit_ping(c->session, NGHTTP2_FLAG_NONE, NULL)) c->broken = 1;
}

/* Whether new streams may start on the connection (no GOAWAY received, ids left). */
int h2t_usable(h2t_conn *c) { return !c->broken && nghttp2_session_check_request_allowed(c->session); }

/* Whether the session still reads or writes (see h2e_alive). */
int h2t_alive(h2t_conn *c) {
  return !c->broken && (nghttp2_session_want_read(c->session) || nghttp2_session_want_write(c->session));
}
