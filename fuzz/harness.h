/* What the fuzzers (edge.c, tier.c) share: the input read as a script of operations, and
   allocations that fail when the script says so (h2common.c's H2_FUZZ_ALLOC), so that the
   paths that handle a failed allocation run too. Built with clang's libFuzzer,
   AddressSanitizer and UBSan by fuzz/run.py (`make fuzz`). */
#ifndef TIERMESH_FUZZ_HARNESS_H
#define TIERMESH_FUZZ_HARNESS_H
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Allocations left before the one that fails (-1: none fails); `sticky`: every one after
   it fails too (memory gone for good), else only that one (a passing shortage). */
static long fuzz_allocs_left = -1;
static int fuzz_alloc_sticky;

static int fuzz_alloc_fails(void) {
  if (fuzz_allocs_left < 0) return 0;
  if (fuzz_allocs_left > 0) { fuzz_allocs_left--; return 0; }
  if (!fuzz_alloc_sticky) fuzz_allocs_left = -1;
  return 1;
}

void *h2_fuzz_malloc(size_t size) { return fuzz_alloc_fails() ? NULL : malloc(size); }
void *h2_fuzz_calloc(size_t n, size_t size) { return fuzz_alloc_fails() ? NULL : calloc(n, size); }
void *h2_fuzz_realloc(void *p, size_t size) { return fuzz_alloc_fails() ? NULL : realloc(p, size); }

/* The input, read front to back; reads past its end give zeros. */
typedef struct { const uint8_t *p; size_t left; } fuzz_input;

static uint8_t fuzz_byte(fuzz_input *in) {
  if (!in->left) return 0;
  in->left--;
  return *in->p++;
}

static uint16_t fuzz_u16(fuzz_input *in) { return (uint16_t)(fuzz_byte(in) << 8 | fuzz_byte(in)); }

/* The next `want` bytes (fewer at the end of the input). */
static const uint8_t *fuzz_bytes(fuzz_input *in, size_t want, size_t *got) {
  const uint8_t *p = in->p;
  *got = want < in->left ? want : in->left;
  in->p += *got;
  in->left -= *got;
  return p;
}

/* The script's head: which allocation fails, if any. */
static void fuzz_allocs(fuzz_input *in) {
  uint16_t n = fuzz_u16(in);
  fuzz_alloc_sticky = n & 0x8000;
  fuzz_allocs_left = n & 0x7fff ? (long)(n & 0x7fff) - 1 : -1;
}

/* Reads every byte of a buffer the code under test handed out (ASan checks each). */
static volatile uint8_t fuzz_sink;
static void fuzz_touch(const uint8_t *p, size_t len) {
  uint8_t x = 0;
  for (size_t i = 0; i < len; i++) x ^= p[i];
  fuzz_sink = x;
}

#endif
