/* libFuzzer target: a weights or checkpoint file -> rw_st_open, then every
 * tensor read back. Never a crash; a refused file has a reason. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/safetensors.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static char path[64];
    if (!path[0])
        snprintf(path, sizeof path, "/dev/shm/rw-fuzz-st-%d", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    fwrite(data, 1, size, f);
    fclose(f);
    char err[1024] = "";
    rw_st *st = rw_st_open(path, err, sizeof err);
    if (!st) {
        if (!err[0])
            abort();
        return 0;
    }
    for (size_t i = 0; i < rw_st_count(st); i++) {
        const rw_st_tensor *t = rw_st_at(st, i);
        void *dst = malloc(t->nbytes ? t->nbytes : 1);
        if (rw_st_get(st, t->name, t->dtype, t->shape, t->ndim, dst, err, sizeof err) != 0)
            abort(); /* what open accepted must read back */
        free(dst);
        if (rw_st_find(st, t->name) == NULL)
            abort();
    }
    for (size_t i = 0; i < rw_st_meta_count(st); i++) {
        const char *k, *v;
        rw_st_meta_at(st, i, &k, &v);
    }
    rw_st_close(st);
    return 0;
}
