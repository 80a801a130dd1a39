/* Data-parallel jobs on the CUDA backend with the gradient's all-reduce in
 * the step's graph (NCCL on a communication stream, the buckets leaving
 * during the backward pass): ranks are processes, one GPU each (up to two;
 * SyncBN and a dead rank need two, the rest runs a world of one on one
 * GPU), meeting through a store of files. On the emulator
 * (kernels/cuda/emu/run.sh, suite dist_gpu), whose NCCL stand-in joins
 * processes of one machine, two ranks run the whole path but NCCL itself.
 *
 * Checked: the job in one graph per step, buckets overlapped, equals the
 * eager job with one all-reduce after the backward bit for bit (loss, and
 * every weight); SyncBN's all-reduces are queued too, so a sync_bn job is
 * captured and equals its eager run; bf16 on the wire keeps the first loss
 * and moves the rest by bf16's rounding only; a rank that dies mid-job
 * makes the other fail within the communicator's wait, naming the peer. */
#include <criterion/criterion.h>
#include <errno.h>
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
#include "kernels/cuda/emu/emu_cost.h"
#include "proto/spec.h"
#include "worker/bench_dist.h"
#include "worker/data.h"
#include "worker/safetensors.h"
#include "worker/train.h"
#include "weights_diff.h"

#pragma weak emu_cost_read

#define MAX_STEPS 16
#define MAX_WORLD 2

static char tmp[64];

static void setup(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/rw-distgpu-XXXXXX");
    cr_assert_not_null(mkdtemp(tmp));
    setenv("EMU_NCCL_DIR", tmp, 1); /* the emulated NCCL's meeting folders, gone with tmp */
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    (void)!system(cmd);
}

TestSuite(dist_gpu, .init = setup, .fini = teardown, .timeout = 900);

/* ---- a store of files: a key is a file, written whole (renamed) ---- */

static int fs_set(void *ud, const char *key, const void *v, size_t len)
{
    char path[256], part[272];
    snprintf(path, sizeof path, "%s/%s", (const char *)ud, key);
    for (char *p = path + strlen((const char *)ud) + 1; *p; p++)
        if (*p == '/')
            *p = '_';
    snprintf(part, sizeof part, "%s.part", path);
    FILE *f = fopen(part, "wb");
    if (!f)
        return -1;
    int ok = fwrite(v, 1, len, f) == len;
    ok = fclose(f) == 0 && ok;
    return ok && rename(part, path) == 0 ? 0 : -1;
}

static int fs_get(void *ud, const char *key, void *buf, size_t cap, size_t *len, int timeout_ms)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", (const char *)ud, key);
    for (char *p = path + strlen((const char *)ud) + 1; *p; p++)
        if (*p == '/')
            *p = '_';
    for (int waited = 0;; waited += 10) {
        FILE *f = fopen(path, "rb");
        if (f) {
            *len = fread(buf, 1, cap, f);
            fclose(f);
            return 0;
        }
        if (waited >= timeout_ms)
            return -1;
        usleep(10000);
    }
}

/* ---- ranks as processes ---- */

typedef struct rank_out {
    int rc, nsteps;
    double loss[MAX_STEPS];
    int graphs_off; /* a "CUDA graphs off" notice was logged */
    char notice[256];
    double seconds;
    char err[512];
} rank_out;

typedef struct rank_job {
    rw_spec spec;
    int rank, world, no_graphs, die_after; /* die_after > 0: this rank exits after that step */
    int progressed;
    char out[128], store[128];
    rank_out *o;
} rank_job;

static void on_step(void *ud, const rw_metrics *m)
{
    rank_job *j = ud;
    if (j->o->nsteps < MAX_STEPS)
        j->o->loss[j->o->nsteps++] = m->loss;
}

/* after every step, on every rank */
static void on_progress(void *ud)
{
    rank_job *j = ud;
    if (j->die_after > 0 && ++j->progressed >= j->die_after)
        _exit(3);
}

static void on_log(void *ud, const char *line)
{
    rank_job *j = ud;
    if (strstr(line, "CUDA graphs off")) {
        j->o->graphs_off = 1;
        snprintf(j->o->notice, sizeof j->o->notice, "%s", line);
    }
}

static void rank_main(rank_job *j)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char why[256] = "";
    /* on GPUs rank k takes GPU k; the emulator has one "GPU" per process */
    const int device = emu_cost_read ? 0 : j->rank;
    kb_backend *be = kb_cuda_create(device, why, sizeof why);
    if (!be) {
        snprintf(j->o->err, sizeof j->o->err, "no CUDA backend: %s", why);
        j->o->rc = -1;
        return;
    }
    kb_store st = {.ud = j->store, .set = fs_set, .get = fs_get};
    kb_comm *c = kb_nccl_create(&st, j->rank, j->world, device, 30000, j->o->err,
                                sizeof j->o->err);
    if (!c) {
        j->o->rc = -1;
        kb_destroy(be);
        return;
    }
    rw_train_opts opts = {.out_dir = j->rank == 0 ? j->out : NULL, .comm = c, .check_every = 100,
                          .no_graphs = j->no_graphs, .test_perturb_rank = -1};
    rw_train_hooks h = {.ud = j, .on_step = on_step, .on_log = on_log,
                        .on_progress = on_progress};
    rw_train_result res;
    j->o->rc = rw_train(&j->spec, be, &opts, &h, &res, j->o->err, sizeof j->o->err);
    kb_comm_destroy(c);
    kb_destroy(be);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    j->o->seconds = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
}

/* The ranks to run: one per GPU this machine gives a process, at most
 * MAX_WORLD (a child asks, so that this process never initializes CUDA
 * before its forks); on the emulator, MAX_WORLD. */
static int gpus(void)
{
    if (emu_cost_read)
        return MAX_WORLD;
    pid_t p = fork();
    if (p == 0) {
        char why[256];
        int n = 0;
        kb_backend *be = kb_cuda_create(0, why, sizeof why);
        if (be) {
            n = 1;
            kb_destroy(be);
            kb_backend *b1 = kb_cuda_create(1, why, sizeof why);
            if (b1) {
                n = 2;
                kb_destroy(b1);
            }
        }
        _exit(n);
    }
    int status = 0;
    waitpid(p, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 0;
}

/* world: the ranks, one per GPU (a world of one on one GPU still runs
 * NCCL in the graph); skips with fewer than `least` */
#define NEED_GPUS(least)                                                                          \
    int world = gpus();                                                                           \
    do {                                                                                          \
        if (world < (least))                                                                      \
            cr_skip_test("needs %d GPU(s) (or the emulator: kernels/cuda/emu/run.sh)", least);    \
    } while (0)

static void tiny_spec(rw_spec *s)
{
    rw_spec_defaults(s);
    s->seed = 3;
    s->threads = 1;
    snprintf(s->data.path, sizeof s->data.path, "%s/data", tmp);
    s->data.synthetic_train = 128;
    s->data.synthetic_test = 32;
    s->data.image_size = 16;
    s->data.loader_threads = 1;
    s->model.stem = RW_STEM_CIFAR;
    s->model.width = 4;
    s->model.proj_hidden = 32;
    s->model.proj_out = 16;
    s->model.pred_hidden = 32;
    s->loss.kind = RW_LOSS_UNIFIED;
    s->loss.alpha = 1;
    s->loss.beta = -1;
    s->optim.batch_size = 32;
    s->optim.epochs = 1;
    s->optim.lr = 1e-3f;
    s->eval.linear_epochs = 0;
    s->eval.knn_every = 0;
    s->log.every_steps = 1;
    s->dist.bucket_mb = 0.01; /* several buckets, even for this model */
    char err[256];
    cr_assert_eq(rw_synth_ensure(s->data.path, 128, 32, s->data.synthetic_seed, err, sizeof err),
                 0, "%s", err);
}

/* Runs the job on `world` ranks; rank 0 writes to tmp/name. */
static void run_world(rank_out *o, int world, const rw_spec *s, const char *name, int no_graphs,
                      int die_rank, int die_after)
{
    static int runs;
    char store[128];
    snprintf(store, sizeof store, "%s/store%d", tmp, runs++);
    cr_assert_eq(mkdir(store, 0700), 0);
    rank_out *shared = malloc(world * sizeof *shared);
    pid_t pid[MAX_WORLD];
    int fds[MAX_WORLD][2];
    for (int k = 0; k < world; k++) {
        cr_assert_eq(pipe(fds[k]), 0);
        pid[k] = fork();
        cr_assert_geq(pid[k], 0);
        if (pid[k] == 0) {
            rank_out mine;
            memset(&mine, 0, sizeof mine);
            rank_job j = {.spec = *s, .rank = k, .world = world, .no_graphs = no_graphs,
                          .die_after = k == die_rank ? die_after : 0, .o = &mine};
            snprintf(j.out, sizeof j.out, "%s/%s", tmp, name);
            snprintf(j.store, sizeof j.store, "%s", store);
            rank_main(&j);
            (void)!write(fds[k][1], &mine, sizeof mine);
            _exit(0);
        }
        close(fds[k][1]);
    }
    for (int k = 0; k < world; k++) {
        memset(&shared[k], 0, sizeof shared[k]);
        size_t got = 0;
        while (got < sizeof shared[k]) {
            ssize_t r = read(fds[k][0], (char *)&shared[k] + got, sizeof shared[k] - got);
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        close(fds[k][0]);
        if (got != sizeof shared[k]) {
            shared[k].rc = -2;
            snprintf(shared[k].err, sizeof shared[k].err, "rank %d exited without a report", k);
        }
        waitpid(pid[k], NULL, 0);
    }
    memcpy(o, shared, world * sizeof *o);
    free(shared);
}

/* The same job in one graph per step (the all-reduce inside it, buckets
 * overlapped) and eagerly with one all-reduce after the backward pass:
 * the same sums of the same floats, so the same bits. */
static void graph_equals_eager(int world, int sync_bn)
{
    rw_spec s;
    tiny_spec(&s);
    s.sync_bn = sync_bn;
    rank_out g[MAX_WORLD], e[MAX_WORLD];
    run_world(g, world, &s, "graph", 0, -1, 0);
    s.dist.overlap = 0;
    run_world(e, world, &s, "eager", 1, -1, 0);
    for (int k = 0; k < world; k++) {
        cr_assert_eq(g[k].rc, 0, "graph rank %d: %s", k, g[k].err);
        cr_assert_eq(e[k].rc, 0, "eager rank %d: %s", k, e[k].err);
    }
    printf("dist_gpu, %d rank(s)%s: graph %.1f s, eager %.1f s\n", world,
           sync_bn ? ", sync_bn" : "", g[0].seconds, e[0].seconds);
    cr_expect_eq(g[0].graphs_off, 0, "the data-parallel step was not captured: %s", g[0].notice);
    cr_assert_eq(g[0].nsteps, 4);
    cr_assert_eq(e[0].nsteps, 4);
    for (int k = 0; k < 4; k++)
        cr_expect(g[0].loss[k] == e[0].loss[k], "step %d loss: %.9g in a graph, %.9g eagerly",
                  k + 1, g[0].loss[k], e[0].loss[k]);
    char wg[160], we[160], worst[64] = "";
    snprintf(wg, sizeof wg, "%s/graph/weights.safetensors", tmp);
    snprintf(we, sizeof we, "%s/eager/weights.safetensors", tmp);
    double d = worst_tensor_diff(wg, we, worst, sizeof worst);
    cr_expect_eq(d, 0.0, "weights differ by %.3e in %s", d, worst);
}

Test(dist_gpu, allreduce_in_the_graph_equals_the_eager_step)
{
    NEED_GPUS(1);
    graph_equals_eager(world, 0);
}

Test(dist_gpu, sync_bn_is_captured_and_equals_the_eager_step)
{
    NEED_GPUS(2);
    graph_equals_eager(world, 1);
}

/* dist.grad_dtype bf16 on NCCL's wire: the first step (no update yet)
 * reports the fp32 job's loss; the later ones move by bf16's rounding of
 * the gradient (8 bits: 3.9e-3 relative a value), not more. */
Test(dist_gpu, bf16_gradients_on_the_wire)
{
    NEED_GPUS(1);
    rw_spec s;
    tiny_spec(&s);
    rank_out f[MAX_WORLD], b[MAX_WORLD];
    run_world(f, world, &s, "fp32", 0, -1, 0);
    s.dist.grad_dtype = RW_GRAD_BF16;
    run_world(b, world, &s, "bf16", 0, -1, 0);
    for (int k = 0; k < world; k++) {
        cr_assert_eq(f[k].rc, 0, "fp32 rank %d: %s", k, f[k].err);
        cr_assert_eq(b[k].rc, 0, "bf16 rank %d: %s", k, b[k].err);
    }
    cr_expect(f[0].loss[0] == b[0].loss[0], "first loss %.9g vs %.9g", f[0].loss[0],
              b[0].loss[0]);
    for (int k = 1; k < f[0].nsteps; k++) {
        printf("step %d: loss fp32 %.9g bf16 %.9g\n", k + 1, f[0].loss[k], b[0].loss[k]);
        cr_expect(fabs(f[0].loss[k] - b[0].loss[k]) <= 2e-3 * fabs(f[0].loss[k]),
                  "step %d: loss %.9g with bf16 gradients, %.9g with fp32", k + 1, b[0].loss[k],
                  f[0].loss[k]);
    }
    char w1[160], w2[160], worst[64] = "";
    snprintf(w1, sizeof w1, "%s/fp32/weights.safetensors", tmp);
    snprintf(w2, sizeof w2, "%s/bf16/weights.safetensors", tmp);
    cr_expect_gt(worst_tensor_diff(w2, w1, worst, sizeof worst), 0.0,
                 "bf16 on the wire changed nothing");
}

/* Rank 1 exits after its second step; rank 0's next step waits for it in
 * the graph's all-reduce: the communicator's wait ends it with an error
 * that says so, not a hang. */
Test(dist_gpu, a_dead_rank_fails_the_other_instead_of_hanging)
{
    NEED_GPUS(2);
    setenv("EMU_NCCL_WAIT_MS", "4000", 1);
    rw_spec s;
    tiny_spec(&s);
    s.log.every_steps = 100; /* no statistics read: the step's own collectives meet the death */
    rank_out o[MAX_WORLD];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    run_world(o, world, &s, "dead", 0, 1, 2);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    unsetenv("EMU_NCCL_WAIT_MS");
    cr_expect_neq(o[1].rc, 0, "rank 1 was to die");
    cr_expect_neq(o[0].rc, 0, "rank 0 finished without its peer");
    printf("rank 0: %s\n", o[0].err);
    cr_expect(strstr(o[0].err, "queued allreduce") &&
                  (strstr(o[0].err, "peer") || strstr(o[0].err, "remote") ||
                   strstr(o[0].err, "timeout")),
              "rank 0's error does not say its step's all-reduce lost the peer: %s", o[0].err);
    cr_expect_lt((t1.tv_sec - t0.tv_sec), 300, "rank 0 took %ld s to give up",
                 (long)(t1.tv_sec - t0.tv_sec));
}

/* runaway-bench --devices N --backend cuda: the four ways of a row (one
 * rank alone, N ranks sending nothing, overlapped, one all-reduce after)
 * run and print a row, here for a tiny model. */
Test(dist_gpu, the_bench_prints_a_row_for_gpu_ranks)
{
    NEED_GPUS(2);
    setenv("EMU_GPUS", "2", 1); /* the emulator's GPU 1 for rank 1 */
    const bench_dist_cfg tiny = {"tiny (w4 cifar 16x16)", RW_ARCH_RESNET18, RW_STEM_CIFAR, 4, 16,
                                 8, 32, 16, 32, 0.01, 0};
    fflush(stdout);
    cr_expect_eq(bench_devices_rows(&tiny, 1, world, 2, 1), 0, "a way of the row failed");
    unsetenv("EMU_GPUS");
}
