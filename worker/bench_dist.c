/* runaway-bench --devices N: what data parallelism costs.
 *
 * N processes train the same model on their own batch of `b` pairs each
 * (weak scaling: the global batch is N b), as data-parallel workers do:
 * on CPU ranks Gloo over loopback behind a queue (kb_comm_queued), the
 * gradient's buckets all-reduced beside the backward pass (worker/dist.c);
 * on GPU ranks (--backend cuda, rank k on GPU k) the step as training runs
 * it (worker/step.c: one CUDA graph a step) with NCCL's all-reduces inside
 * it. The global batch's statistics are read every 64 steps. Each
 * configuration runs four ways, each in fresh processes:
 *   1 rank alone                   -> the step without data parallelism
 *   N ranks, nothing sent          -> compute: the step on a machine as busy
 *   N ranks, buckets overlapped    -> the step; CPU: comm = the queue's busy time
 *   N ranks, one all-reduce after  -> the step without overlap
 * exposed comm = step - compute (what the ranks wait for), and the weak-
 * scaling efficiency = 1-rank step / N-rank step. The ranks meet through a
 * store of files in a temporary folder. */
#include "worker/bench_dist.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kernels/backend.h"
#include "kernels/collective.h"
#include "worker/data.h"
#include "worker/dist.h"
#include "worker/model.h"
#include "worker/step.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ------------------------------------------------- a store of files */

static void key_path(const char *dir, const char *key, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/", dir);
    for (const char *k = key; *k && n + 1 < (int)cap; k++)
        out[n++] = *k == '/' ? '_' : *k;
    out[n] = 0;
}

/* Written beside, then renamed: a reader sees a whole value or none. */
static int fs_set(void *ud, const char *key, const void *value, size_t len)
{
    char path[512], tmp[520];
    key_path(ud, key, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return -1;
    int ok = fwrite(value, 1, len, f) == len;
    ok &= fclose(f) == 0;
    return ok && rename(tmp, path) == 0 ? 0 : -1;
}

static int fs_get(void *ud, const char *key, void *buf, size_t cap, size_t *len, int timeout_ms)
{
    char path[512];
    key_path(ud, key, path, sizeof path);
    double deadline = now_s() + timeout_ms / 1e3;
    for (;;) {
        FILE *f = fopen(path, "rb");
        if (f) {
            struct stat st;
            int ok = fstat(fileno(f), &st) == 0;
            size_t n = ok ? (size_t)st.st_size : 0;
            ok = ok && fread(buf, 1, n < cap ? n : cap, f) == (n < cap ? n : cap);
            fclose(f);
            *len = n;
            return ok ? 0 : -1;
        }
        if (now_s() > deadline)
            return -1;
        usleep(2000);
    }
}

/* ------------------------------------------------------------ a rank */

typedef enum { RUN_NONE, RUN_OVERLAP, RUN_AFTER } run_kind;

typedef struct rank_out {
    double ms, busy_ms, wait_ms; /* per step; wait: blocked on the gradient's all-reduce */
    size_t nparams;
    int ok;
    char err[200];
} rank_out;

static rw_model *bench_model(kb_backend *be, const bench_dist_cfg *c, char *err, size_t errlen)
{
    rw_model_cfg mc = {
        .arch = c->arch, .stem = c->stem, .width = c->width, .proj_hidden = c->proj_hidden,
        .proj_out = c->proj_out, .predictor = RW_PRED_MLP, .pred_hidden = c->pred_hidden,
        .loss = {.kind = KB_LOSS_UNIFIED, .alpha = 1, .beta = -1},
    };
    return rw_model_create(be, &mc, 0, err, errlen);
}

/* A GPU rank: the step as training runs it, one graph a step, the
 * gradient's NCCL all-reduces inside it (RUN_OVERLAP: during the backward
 * pass; RUN_AFTER: after it), or nothing sent (RUN_NONE: the rank alone on
 * its GPU, beside the others). Its own batches of noise, rendered on the
 * GPU. */
static rank_out run_rank_gpu(const bench_dist_cfg *c, int rank, int world, run_kind kind,
                             const char *store_dir, int steps)
{
    rank_out o = {0};
    char err[256] = "";
    rw_dataset ds;
    int have_ds = 0;
    rw_stepper *sp = NULL;
    rw_dist *d = NULL;
    rw_model *m = NULL;
    kb_comm *comm = NULL;
    kb_backend *be = kb_cuda_create(rank, err, sizeof err);
    if (be && kind != RUN_NONE) {
        kb_store st = {.ud = (void *)store_dir, .set = fs_set, .get = fs_get};
        comm = kb_nccl_create(&st, rank, world, rank, 60000, err, sizeof err);
    }
    if (be && (kind == RUN_NONE || comm))
        m = bench_model(be, c, err, sizeof err);
    rw_dist_cfg dc = {.overlap = kind == RUN_OVERLAP, .bucket_mb = c->bucket_mb,
                      .grad_bf16 = c->grad_bf16};
    if (m && comm && rw_model_set_comm(m, comm, 0, err, sizeof err) == 0)
        d = rw_dist_create(comm, be, m, c->batch, c->proj_out, &dc, err, sizeof err);
    if (m && (!comm || d) && rw_dataset_noise(4 * c->batch, 1 + rank, &ds) == 0) {
        have_ds = 1;
        rw_stepper_cfg sc = {
            .m = m, .ds = &ds, .batch = c->batch, .shard_world = 1, .size = c->size,
            .augment = RW_AUG_BYOL, .mean = {0.5f, 0.5f, 0.5f}, .std = {0.25f, 0.25f, 0.25f},
            .seed = 1 + rank, .loader_threads = 1,
        };
        sp = rw_stepper_create(&sc, err, sizeof err);
    }
    if (!sp) {
        snprintf(o.err, sizeof o.err, "rank %d: %s", rank, err[0] ? err : "cannot start");
        goto out;
    }
    o.nparams = rw_model_nparams(m);
    rw_step_stats st[64];
    int stop = 0, ckpt = 0, rc = 0, epoch = 0;
    double t0 = 0;
    rw_stepper_seek(sp, 0, 0);
    for (int s = -3; s < steps && rc == 0;) {
        if (s == 0) { /* warm-ups and the capture done; all start together */
            rc = comm ? comm->barrier(comm, err, sizeof err) : 0;
            be->sync(be);
            t0 = now_s();
        }
        int r;
        if (d) {
            rw_dist_step_begin(d, 0, 0);
            r = rw_stepper_step_between(sp, 1, 3e-4f, 0, 0.996f, rw_dist_queue_grads, d);
            if (r == 0 && rw_dist_grads(d, &stop, &ckpt, err, sizeof err) != 0)
                rc = -1;
            if (r == 0 && rc == 0) {
                rw_dist_keep(d);
                if (rw_dist_full(d) && rw_dist_read(d, st, 64, err, sizeof err) < 0)
                    rc = -1;
            }
        } else {
            r = rw_stepper_step(sp, 1, 3e-4f, 0, 0.996f);
            if (r == 0 && rw_stepper_unread(sp) >= 64)
                rw_stepper_read(sp, st, 64);
        }
        if (r == 1) {
            rw_stepper_seek(sp, ++epoch, 0);
            continue;
        }
        if (r != 0) {
            snprintf(err, sizeof err, "%s", rw_model_error(m));
            rc = -1;
        }
        s++;
    }
    be->sync(be);
    double t1 = now_s();
    long n = d ? rw_dist_read(d, st, 64, err, sizeof err) : rw_stepper_read(sp, st, 64);
    if (rc == 0 && n >= 0) {
        o.ms = (t1 - t0) * 1e3 / steps;
        o.busy_ms = o.wait_ms = NAN; /* NCCL's time inside the graph: not timed */
        o.ok = n == 0 || isfinite(st[n - 1].loss);
    } else {
        snprintf(o.err, sizeof o.err, "rank %d: %s", rank, err);
    }
out:
    rw_stepper_free(sp);
    if (have_ds)
        rw_dataset_free(&ds);
    rw_dist_free(d);
    rw_model_free(m);
    kb_comm_destroy(comm);
    if (be)
        kb_destroy(be);
    return o;
}

static rank_out run_rank(const bench_dist_cfg *c, int rank, int world, run_kind kind,
                         const char *store_dir, int steps, int threads)
{
    rank_out o = {0};
    char err[256] = "";
    kb_backend *be = kb_cpu_create(threads);
    kb_comm *comm = NULL;
    if (kind == RUN_NONE) {
        comm = kb_comm_silent(rank, world);
    } else {
        kb_store st = {.ud = (void *)store_dir, .set = fs_set, .get = fs_get};
        kb_comm *g = kb_gloo_create(&st, rank, world, "127.0.0.1", 60000, err, sizeof err);
        comm = g ? kb_comm_queued(g, err, sizeof err) : NULL;
        if (g && !comm)
            kb_comm_destroy(g);
    }
    rw_model *m = be && comm ? bench_model(be, c, err, sizeof err) : NULL;
    rw_dist_cfg dc = {.overlap = kind != RUN_AFTER, .bucket_mb = c->bucket_mb,
                      .grad_bf16 = kind != RUN_NONE && c->grad_bf16};
    rw_dist *d = m ? rw_dist_create(comm, be, m, c->batch, c->proj_out, &dc, err, sizeof err)
                   : NULL;
    if (!d) {
        snprintf(o.err, sizeof o.err, "rank %d: %s", rank, err[0] ? err : "cannot start");
        goto out;
    }
    o.nparams = rw_model_nparams(m);
    size_t n = (size_t)c->batch * 3 * c->size * c->size;
    float *h = malloc(n * sizeof(float));
    size_t half = be->fmap_bytes(be, c->batch, 3, c->size, c->size);
    char *x = be->alloc(be, 2 * half);
    for (size_t i = 0; i < n; i++)
        h[i] = (float)(((i + (size_t)rank * 7) * 2654435761u % 1000) / 500.0 - 1.0);
    be->fmap_upload(be, x, h, c->batch, 3, c->size, c->size);
    be->fmap_upload(be, x + half, h, c->batch, 3, c->size, c->size);
    free(h);
    rw_step_stats st[64];
    int stop = 0, ckpt = 0, rc = 0;
    double t0 = 0, busy0 = 0, wait = 0;
    for (int s = -2; s < steps && rc == 0; s++) {
        if (s == 0) { /* two warm-ups: plans, page faults; then all start together */
            rc = comm->barrier(comm, err, sizeof err);
            t0 = now_s();
            busy0 = kb_comm_busy_s(comm);
        }
        rw_dist_step_begin(d, 0, 0);
        if (rw_model_forward_backward(m, x, c->batch, c->size, NULL) != 0) {
            rc = -1;
            break;
        }
        double tw = now_s();
        if (rw_dist_grads(d, &stop, &ckpt, err, sizeof err) != 0) {
            rc = -1;
            break;
        }
        if (s >= 0)
            wait += now_s() - tw;
        rw_dist_keep(d);
        if (rw_dist_full(d) && rw_dist_read(d, st, 64, err, sizeof err) < 0)
            rc = -1;
        rw_model_update(m, 3e-4f, 0, 0.996f);
    }
    if (rc == 0 && rw_dist_read(d, st, 64, err, sizeof err) < 0)
        rc = -1;
    double t1 = now_s();
    if (rc == 0) {
        o.ms = (t1 - t0) * 1e3 / steps;
        o.busy_ms = (kb_comm_busy_s(comm) - busy0) * 1e3 / steps;
        o.wait_ms = wait * 1e3 / steps;
        o.ok = isfinite(st[0].loss);
    } else {
        snprintf(o.err, sizeof o.err, "rank %d: %s", rank, err);
    }
    be->free(be, x);
out:
    rw_dist_free(d);
    rw_model_free(m);
    kb_comm_destroy(comm);
    if (be)
        kb_destroy(be);
    return o;
}

/* `world` ranks of one kind, each a process; the slowest rank's step (the
 * step of the job). */
static rank_out run_world(const bench_dist_cfg *c, int world, run_kind kind, int steps, int threads,
                          int cuda)
{
    rank_out worst = {.ok = 1};
    char dir[] = "/tmp/rw-bench-dist-XXXXXX";
    if (!mkdtemp(dir)) {
        snprintf(worst.err, sizeof worst.err, "mkdtemp: %s", strerror(errno));
        worst.ok = 0;
        return worst;
    }
    int fd[64][2];
    pid_t pid[64];
    fflush(stdout);
    for (int r = 0; r < world; r++) {
        if (pipe(fd[r]) != 0)
            return worst.ok = 0, worst;
        pid[r] = fork();
        if (pid[r] == 0) {
            close(fd[r][0]);
            rank_out o = cuda ? run_rank_gpu(c, r, world, kind, dir, steps)
                              : run_rank(c, r, world, kind, dir, steps, threads);
            ssize_t w = write(fd[r][1], &o, sizeof o);
            _exit(w == (ssize_t)sizeof o ? 0 : 1);
        }
        close(fd[r][1]);
    }
    for (int r = 0; r < world; r++) {
        rank_out o = {0};
        ssize_t got = read(fd[r][0], &o, sizeof o);
        close(fd[r][0]);
        int status;
        waitpid(pid[r], &status, 0);
        if (got != (ssize_t)sizeof o || !o.ok) {
            if (worst.ok)
                snprintf(worst.err, sizeof worst.err, "%s",
                         got == (ssize_t)sizeof o ? o.err : "a rank died");
            worst.ok = 0;
            continue;
        }
        if (o.ms > worst.ms)
            worst.ms = o.ms;
        if (o.busy_ms > worst.busy_ms)
            worst.busy_ms = o.busy_ms;
        if (o.wait_ms > worst.wait_ms)
            worst.wait_ms = o.wait_ms;
        worst.nparams = o.nparams;
    }
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "runaway-bench: could not remove %s\n", dir);
    return worst;
}

#define ROUNDS 3

static double median3(double a, double b, double c)
{
    return a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);
}

/* Way w's figures over the rounds, each the median of its own (not one
 * round's): failed where any round failed. */
static rank_out median_of(rank_out r[ROUNDS][4], int w)
{
    rank_out o = r[0][w];
    for (int k = 1; k < ROUNDS; k++)
        if (!r[k][w].ok && o.ok)
            o = r[k][w];
    if (!o.ok)
        return o;
    o.ms = median3(r[0][w].ms, r[1][w].ms, r[2][w].ms);
    o.busy_ms = median3(r[0][w].busy_ms, r[1][w].busy_ms, r[2][w].busy_ms);
    o.wait_ms = median3(r[0][w].wait_ms, r[1][w].wait_ms, r[2][w].wait_ms);
    return o;
}

/* The table's rows for cfgs[first..last), `rounds` rounds each. */
static int devices_rows(const bench_dist_cfg *cfgs, int first, int last, int world, int steps,
                        int threads, int cuda, int rounds)
{
    printf("%-24s %9s %6s %6s %9s %9s %8s %8s %8s %8s %8s %10s %7s %8s\n", "config", "params",
           "bucket", "batch", "1 rank ms", "compute", "step ms", "comm ms", "wait ms", "exposed",
           "exp %", "no-overlap", "exp %", "weak eff");
    int failed = 0;
    for (int i = first; i < last; i++) {
        const bench_dist_cfg *c = &cfgs[i];
        /* the four ways in turn, `rounds` times, each figure the median of
         * its rounds: this machine's load drifts more between two runs
         * than the communication costs */
        rank_out r[ROUNDS][4];
        for (int k = 0; k < ROUNDS; k++) {
            const int kk = k < rounds ? k : 0; /* fewer rounds: the first again */
            if (kk != k) {
                memcpy(r[k], r[0], sizeof r[k]);
                continue;
            }
            r[k][0] = run_world(c, 1, RUN_NONE, steps, threads, cuda);
            r[k][1] = run_world(c, world, RUN_NONE, steps, threads, cuda);
            r[k][2] = run_world(c, world, RUN_OVERLAP, steps, threads, cuda);
            r[k][3] = run_world(c, world, RUN_AFTER, steps, threads, cuda);
        }
        rank_out one = median_of(r, 0), none = median_of(r, 1), ov = median_of(r, 2),
                 after = median_of(r, 3);
        if (!one.ok || !none.ok || !ov.ok || !after.ok) {
            const rank_out *bad = !one.ok ? &one : !none.ok ? &none : !ov.ok ? &ov : &after;
            printf("%-24s failed: %s\n", c->label, bad->err);
            failed++;
            continue;
        }
        double exposed = ov.ms - none.ms, exposed_after = after.ms - none.ms;
        char comm[16] = "-", wait[16] = "-";
        if (!cuda) {
            snprintf(comm, sizeof comm, "%.1f", ov.busy_ms);
            snprintf(wait, sizeof wait, "%.1f", ov.wait_ms);
        }
        printf("%-24s %9zu %4gMB %6d %9.1f %9.1f %8.1f %8s %8s %8.1f %7.1f%% %10.1f %6.1f%% "
               "%7.1f%%\n", c->label, ov.nparams, c->bucket_mb, c->batch, one.ms, none.ms, ov.ms,
               comm, wait, exposed, 100.0 * exposed / ov.ms, after.ms,
               100.0 * exposed_after / after.ms, 100.0 * one.ms / ov.ms);
        fflush(stdout);
    }
    return failed;
}

int bench_devices_rows(const bench_dist_cfg *cfgs, int n, int world, int steps, int cuda)
{
    return devices_rows(cfgs, 0, n, world, steps, 1, cuda, 1) ? 1 : 0;
}

int bench_devices(int world, int steps, int threads, int only, int cuda, int grad_bf16)
{
    if (world < 2 || world > 64) {
        fprintf(stderr, "runaway-bench: --devices takes 2 to 64 ranks\n");
        return 2;
    }
    if (threads <= 0)
        threads = 1;
    bench_dist_cfg cpu_cfgs[] = {
        /* the quickstart's model: at N = 2, the quickstart's batch of 128;
         * its 3 MB of gradient is one bucket of 25 MB, or six of 0.5 */
        {"quickstart (w16 cifar)", RW_ARCH_RESNET18, RW_STEM_CIFAR, 16, 16, 64, 256, 64, 256, 25,
         0},
        {"quickstart (w16 cifar)", RW_ARCH_RESNET18, RW_STEM_CIFAR, 16, 16, 64, 256, 64, 256, 0.5,
         0},
        /* torchvision's ResNet-18 width: 45 MB of gradient, two buckets */
        {"resnet18 cifar 32x32", RW_ARCH_RESNET18, RW_STEM_CIFAR, 64, 32, 32, 512, 128, 512, 25, 0},
    };
    bench_dist_cfg gpu_cfgs[] = {
        /* the paper's setup at 128 images a GPU: 45 MB of gradient */
        {"resnet18 imagenet 96x96", RW_ARCH_RESNET18, RW_STEM_IMAGENET, 64, 96, 128, 512, 128, 512,
         25, 0},
        {"resnet18 imagenet 96x96", RW_ARCH_RESNET18, RW_STEM_IMAGENET, 64, 96, 128, 512, 128, 512,
         5, 0},
        {"quickstart (w16 cifar)", RW_ARCH_RESNET18, RW_STEM_CIFAR, 16, 16, 64, 256, 64, 256, 25,
         0},
    };
    bench_dist_cfg *cfgs = cuda ? gpu_cfgs : cpu_cfgs;
    const int nall = 3, ndefault = 2;
    for (int i = 0; i < nall; i++)
        cfgs[i].grad_bf16 = grad_bf16;
    if (only > nall) {
        fprintf(stderr, "runaway-bench: --config %d: there are %d configurations\n", only, nall);
        return 2;
    }
    if (cuda)
        printf("runaway-bench --devices %d: GPU ranks as processes (rank k on GPU k), NCCL inside "
               "each step's CUDA graph, %d timed steps after 2 warm-ups and the capture, medians "
               "of %d rounds; batch is each rank's (weak scaling)%s\n", world, steps, ROUNDS,
               grad_bf16 ? "; bf16 gradients on the wire" : "");
    else
        printf("runaway-bench --devices %d: CPU ranks as processes, Gloo over loopback, %d "
               "thread(s) each, %d timed steps after 2 warm-ups, medians of %d rounds; batch is "
               "each rank's (weak scaling)%s\n", world, threads, steps, ROUNDS,
               grad_bf16 ? "; bf16 gradients on the wire" : "");
    int failed = devices_rows(cfgs, only ? only - 1 : 0, only ? only : ndefault, world, steps,
                              threads, cuda, ROUNDS);
    if (cuda)
        printf("compute: the N ranks' step with nothing sent, each alone on its GPU; exposed = "
               "step - compute; comm and wait are inside the graph, not timed; weak eff = 1 rank "
               "/ N ranks\n");
    else
        printf("compute: the N ranks' step with nothing sent (as busy a machine); exposed = step - "
               "compute; comm: the communication thread's busy time; wait: the step blocked on the "
               "gradient's last bucket; weak eff = 1 rank / N ranks. --config 3: a ResNet-18 (slow "
               "on CPUs)\n");
    return failed ? 1 : 0;
}
