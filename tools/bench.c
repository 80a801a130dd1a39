/* runaway-bench: training-step throughput, ms/step and peak memory.
 *
 * Each configuration runs in its own child process, so the peak resident
 * memory reported is that configuration's alone. The timed step is the whole
 * training step: both views forward and backward through the online network,
 * the teacher forward, loss, Adam and EMA (augmentation excluded; the loader
 * prepares batches on other threads while the step runs). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kernels/backend.h"
#include "proto/spec.h"
#include "worker/model.h"

typedef struct bench_cfg {
    const char *label;
    rw_stem stem;
    int width, size, batch;
    rw_predictor pred;
} bench_cfg;

typedef struct bench_out {
    double ms, pairs, peak_mib, gflop;
    int ok;
} bench_out;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Multiply-adds of the convolutions of one forward pass of one image. */
static double conv_flops(const bench_cfg *c)
{
    double f = 0;
    int H = c->size, w = c->width;
    if (c->stem == RW_STEM_IMAGENET) {
        H = (H + 6 - 7) / 2 + 1;
        f += 2.0 * w * 3 * 49 * H * H;
        H = (H + 2 - 3) / 2 + 1;
    } else {
        f += 2.0 * w * 3 * 9 * H * H;
    }
    int C = w;
    for (int L = 0; L < 4; L++) {
        int K = w << L;
        for (int B = 0; B < 2; B++) {
            int s = (L > 0 && B == 0) ? 2 : 1;
            int P = (H + 2 - 3) / s + 1;
            f += 2.0 * K * C * 9 * P * P + 2.0 * K * K * 9 * P * P;
            if (s != 1 || C != K)
                f += 2.0 * K * C * P * P;
            H = P;
            C = K;
        }
    }
    return f;
}

static bench_out run_one(const bench_cfg *c, int steps, int threads)
{
    bench_out o = {0};
    kb_backend *be = kb_cpu_create(threads);
    char err[256];
    rw_model_cfg mc = {
        .stem = c->stem, .width = c->width, .proj_hidden = 512, .proj_out = 128,
        .predictor = c->pred, .pred_hidden = 512,
        .loss = {.kind = KB_LOSS_UNIFIED, .alpha = 1, .beta = -1},
    };
    if (c->width < 64) {
        mc.proj_hidden = 8 * c->width * 2;
        mc.proj_out = 64;
        mc.pred_hidden = 128;
    }
    rw_model *m = rw_model_create(be, &mc, 0, err, sizeof err);
    if (!m) {
        fprintf(stderr, "%s: %s\n", c->label, err);
        return o;
    }
    size_t n = (size_t)c->batch * 3 * c->size * c->size;
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h[i] = (float)((i * 2654435761u % 1000) / 500.0 - 1.0);
    float *x1 = be->alloc(be, n * sizeof(float)), *x2 = be->alloc(be, n * sizeof(float));
    be->upload(be, x1, h, n * sizeof(float));
    be->upload(be, x2, h, n * sizeof(float));
    rw_step_stats st;
    /* Warm-up: allocations, conv plans, page faults. */
    rw_model_forward_backward(m, x1, x2, c->batch, c->size, &st);
    rw_model_update(m, 3e-4f, 0, 0.996f);
    be->sync(be);
    double t0 = now_s();
    for (int s = 0; s < steps; s++) {
        rw_model_forward_backward(m, x1, x2, c->batch, c->size, &st);
        rw_model_update(m, 3e-4f, 0, 0.996f);
    }
    be->sync(be);
    double dt = (now_s() - t0) / steps;
    o.ms = dt * 1e3;
    o.pairs = c->batch / dt;
    /* Online fwd+bwd (3x forward) for 2 views + teacher fwd for 2 views. */
    o.gflop = conv_flops(c) * c->batch * (2 * 3 + 2) / dt / 1e9;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    o.peak_mib = ru.ru_maxrss / 1024.0;
    o.ok = isfinite(st.loss);
    be->free(be, x1);
    be->free(be, x2);
    free(h);
    rw_model_free(m);
    kb_destroy(be);
    return o;
}

int main(int argc, char **argv)
{
    int steps = 3, threads = 0, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else {
            fprintf(stderr, "usage: runaway-bench [--steps N] [--threads N] [--quick]\n");
            return 2;
        }
    }
    if (steps < 1)
        steps = 1;
    bench_cfg cfgs[] = {
        {"quickstart (w16 cifar)", RW_STEM_CIFAR, 16, 32, 64, RW_PRED_MLP},
        {"resnet18 cifar 32x32", RW_STEM_CIFAR, 64, 32, 32, RW_PRED_MLP},
        {"resnet18 cifar 32x32", RW_STEM_CIFAR, 64, 32, 128, RW_PRED_MLP},
        {"resnet18 imagenet 96x96", RW_STEM_IMAGENET, 64, 96, 32, RW_PRED_MLP},
        {"resnet18 imagenet 96x96", RW_STEM_IMAGENET, 64, 96, 128, RW_PRED_MLP},
    };
    int ncfg = quick ? 2 : (int)(sizeof cfgs / sizeof *cfgs);
    char tdesc[32];
    if (threads)
        snprintf(tdesc, sizeof tdesc, "%d", threads);
    else
        snprintf(tdesc, sizeof tdesc, "all (%ld)", sysconf(_SC_NPROCESSORS_ONLN));
    printf("runaway-bench: CPU backend, %d timed steps after 1 warm-up, threads: %s\n", steps, tdesc);
    printf("%-26s %6s %6s %10s %10s %12s %11s\n", "config", "size", "batch", "ms/step",
           "pairs/s", "conv GFLOP/s", "peak MiB");
    for (int i = 0; i < ncfg; i++) {
        int fd[2];
        if (pipe(fd) != 0)
            return 1;
        pid_t pid = fork();
        if (pid == 0) {
            close(fd[0]);
            bench_out o = run_one(&cfgs[i], steps, threads);
            ssize_t w = write(fd[1], &o, sizeof o);
            _exit(w == (ssize_t)sizeof o ? 0 : 1);
        }
        close(fd[1]);
        bench_out o = {0};
        ssize_t r = read(fd[0], &o, sizeof o);
        close(fd[0]);
        int status;
        waitpid(pid, &status, 0);
        if (r != (ssize_t)sizeof o || !o.ok) {
            printf("%-26s %6d %6d %10s\n", cfgs[i].label, cfgs[i].size, cfgs[i].batch, "failed");
            continue;
        }
        printf("%-26s %6d %6d %10.1f %10.2f %12.1f %11.0f\n", cfgs[i].label, cfgs[i].size,
               cfgs[i].batch, o.ms, o.pairs, o.gflop, o.peak_mib);
        fflush(stdout);
    }
    return 0;
}
