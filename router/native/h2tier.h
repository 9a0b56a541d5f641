/* The router's side of one HTTP/2 connection to a tier replica (h2tier.c): what Python
   calls. cffi reads this file as it is, without its preprocessor lines
   (router/native/build.py), so it is the one place these declarations and numbers are
   written. */
#ifndef TIERMESH_H2TIER_H
#define TIERMESH_H2TIER_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Events Python takes after each call (h2t_event). */
enum h2t_event_kind {
  H2T_DATA = 1,   /* response bytes gathered for a stream: take them */
  H2T_CLOSED = 2  /* a stream closed (its trailers, or a reset) */
};

typedef struct h2t_conn h2t_conn;
typedef struct h2t_stream h2t_stream;

h2t_conn *h2t_new(void);
void h2t_free(h2t_conn *c);
ssize_t h2t_recv(h2t_conn *c, const uint8_t *data, size_t len);
const uint8_t *h2t_pending(h2t_conn *c, size_t *len);
int h2t_event(h2t_conn *c, int32_t *sid);
h2t_stream *h2t_request(h2t_conn *c, const uint8_t *fields, size_t fieldslen, const uint8_t *body, size_t bodylen);
int32_t h2t_sid(h2t_stream *s);
const uint8_t *h2t_take(h2t_stream *s, size_t *len);
void h2t_taken(h2t_conn *c, h2t_stream *s);
const uint8_t *h2t_headers(h2t_stream *s, size_t *len);
int64_t h2t_error(h2t_stream *s);
void h2t_cancel(h2t_conn *c, h2t_stream *s);
void h2t_release(h2t_stream *s);
int h2t_usable(h2t_conn *c);
int h2t_alive(h2t_conn *c);
void h2t_ping(h2t_conn *c);

#endif
