/* What hostile-bench-load's halves share (hostile-bench.h): the options,
 * the clock, and a few numbers' helpers. */
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "tools/hostile-bench.h"

hb_options hb_opt = {.curves = "j1", .seconds = 60, .settle = 5, .trickle = 5,
                     .probe_timeout = 60, .out_dir = "."};
struct sockaddr_un hb_unix_addr;
double hb_t0;
atomic_int hb_phase;

double hb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void hb_sleep(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

void hb_push(double **a, size_t *n, size_t *cap, double v)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 1024;
        double *b = realloc(*a, c * sizeof *b);
        if (!b)
            return;
        *a = b;
        *cap = c;
    }
    (*a)[(*n)++] = v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double hb_quantile(double *v, size_t n, double q)
{
    if (n == 0)
        return NAN;
    qsort(v, n, sizeof *v, cmp_double);
    size_t k = (size_t)ceil(q * (double)n);
    return v[k ? k - 1 : 0];
}

void hb_printable(char *dst, size_t len, const char *src)
{
    size_t o = 0;
    for (size_t i = 0; src && src[i] && src[i] != '\n' && o + 1 < len; i++)
        dst[o++] = src[i] >= 0x20 && src[i] < 0x7f ? src[i] : ' ';
    dst[o] = '\0';
}
