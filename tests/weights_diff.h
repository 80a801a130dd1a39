/* Weight files compared tensor by tensor, for the data-parallel suites
 * (dist, dist_gpu): one copy of the measure their bounds are stated in. */
#ifndef RUNAWAY_TESTS_WEIGHTS_DIFF_H
#define RUNAWAY_TESTS_WEIGHTS_DIFF_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "worker/safetensors.h"

/* The largest relative (root-mean-square) difference of a tensor of pa
 * from pb's, its name into worst. */
static double worst_tensor_diff(const char *pa, const char *pb, char *worst, size_t wlen)
{
    char err[256];
    rw_st *a = rw_st_open(pa, err, sizeof err), *b = rw_st_open(pb, err, sizeof err);
    cr_assert(a && b, "%s", err);
    double w = 0;
    for (size_t i = 0; i < rw_st_count(a); i++) {
        const rw_st_tensor *ta = rw_st_at(a, i), *tb = rw_st_find(b, ta->name);
        /* A bias whose shift the next BatchNorm removes has an exact
         * gradient of zero: Adam turns its rounding noise into +-lr steps
         * of random sign (DESIGN.md); it says nothing about the step. */
        if (ta->dtype != RW_ST_F32 || strstr(ta->name, "projector.0.bias"))
            continue;
        const float *x = ta->data, *y = tb->data;
        double num = 0, den = 0;
        for (int64_t k = 0; k < ta->numel; k++) {
            num += ((double)x[k] - y[k]) * ((double)x[k] - y[k]);
            den += (double)y[k] * y[k];
        }
        double r = den > 0 ? sqrt(num / den) : sqrt(num);
        if (r > w) {
            w = r;
            snprintf(worst, wlen, "%s", ta->name);
        }
    }
    rw_st_close(a);
    rw_st_close(b);
    return w;
}

#endif
