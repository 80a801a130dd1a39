/* safetensors files: exported weights, `init` start points and checkpoints.
 *
 * Format (https://huggingface.co/docs/safetensors): 8-byte little-endian u64
 * header length N, N bytes of JSON
 *   {"__metadata__": {"k": "v", ...},
 *    "name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
 * then the data section: each tensor little-endian, C order, at
 * [begin, end) relative to the start of the data section, no holes.
 *
 * Files written here pad the header with spaces to a multiple of 8 (so the
 * data section, and every tensor, is aligned) and carry a "crc32" metadata
 * entry, the CRC-32 of the data section in hex, checked on open. Files from
 * other writers (Python's safetensors) open too; without "crc32" the check
 * is skipped.
 */
#ifndef RUNAWAY_WORKER_SAFETENSORS_H
#define RUNAWAY_WORKER_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define RW_ST_MAX_DIMS 8
#define RW_ST_HEADER_MAX (100u << 20) /* a header above 100 MiB is corrupt */

typedef enum { RW_ST_F32, RW_ST_I32, RW_ST_I64, RW_ST_U8, RW_ST_F64 } rw_st_dtype;

/* "F32", "I32", "I64", "U8", "F64"; element size in bytes. */
const char *rw_st_dtype_name(rw_st_dtype d);
size_t rw_st_dtype_size(rw_st_dtype d);

/* ---- writing ---- */

typedef struct rw_st_writer rw_st_writer;

rw_st_writer *rw_st_writer_new(void); /* NULL when out of memory */
void rw_st_writer_free(rw_st_writer *w);

/* Adds a tensor. `data` (numel * element size bytes, host order = little
 * endian) is NOT copied: it must stay valid until rw_st_write returns.
 * ndim 0..RW_ST_MAX_DIMS (0: a scalar of one element). Errors (duplicate or
 * empty name, bad shape, out of memory) are sticky: they are also reported
 * by rw_st_write, so a sequence of adds may be checked once at the end.
 * Returns 0 or -1. */
int rw_st_add(rw_st_writer *w, const char *name, rw_st_dtype dtype, const int64_t *shape, int ndim,
              const void *data);
int rw_st_add_f32(rw_st_writer *w, const char *name, const int64_t *shape, int ndim,
                  const float *data);

/* String metadata (copied). "crc32" is reserved. Setting a key twice
 * replaces the value. Sticky errors as above. */
int rw_st_set_meta(rw_st_writer *w, const char *key, const char *value);

/* Writes atomically: a temporary file in the same directory, fsync, rename
 * over `path`, fsync of the directory. On failure `path` is untouched and no
 * temporary file is left. The writer may be written again or freed.
 * Returns 0, or -1 with a message naming the file in err. */
int rw_st_write(rw_st_writer *w, const char *path, char *err, size_t errlen);

/* ---- reading ---- */

typedef struct rw_st rw_st;

typedef struct rw_st_tensor {
    const char *name;
    rw_st_dtype dtype;
    int ndim;
    int64_t shape[RW_ST_MAX_DIMS];
    int64_t numel;
    const void *data; /* inside the file's buffer; may be unaligned for other writers' files */
    size_t nbytes;
} rw_st_tensor;

/* Reads the whole file and validates it (sizes, JSON, dtypes, shapes,
 * offsets in bounds with neither overlap nor hole, duplicate names,
 * metadata, crc32). NULL with a message naming the file in err. */
rw_st *rw_st_open(const char *path, char *err, size_t errlen);
void rw_st_close(rw_st *st);

/* Tensors in data-offset order. */
size_t rw_st_count(const rw_st *st);
const rw_st_tensor *rw_st_at(const rw_st *st, size_t i);
const rw_st_tensor *rw_st_find(const rw_st *st, const char *name); /* NULL: none */

/* Copies tensor `name` into dst after checking its dtype and shape match
 * exactly; -1 with a message naming the file and the tensor otherwise. */
int rw_st_get(const rw_st *st, const char *name, rw_st_dtype dtype, const int64_t *shape, int ndim,
              void *dst, char *err, size_t errlen);
int rw_st_get_f32(const rw_st *st, const char *name, const int64_t *shape, int ndim, float *dst,
                  char *err, size_t errlen);

/* Metadata value or NULL; the i-th entry (0 .. rw_st_meta_count-1). */
const char *rw_st_meta(const rw_st *st, const char *key);
size_t rw_st_meta_count(const rw_st *st);
int rw_st_meta_at(const rw_st *st, size_t i, const char **key, const char **value);

#endif
