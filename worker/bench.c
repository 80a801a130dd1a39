/* runaway-bench: training-step throughput, ms/step and peak memory.
 *
 * Each configuration runs in its own child process, so the peak resident
 * memory reported is that configuration's alone. The timed step is the whole
 * training step: both views forward and backward through the online network,
 * the teacher forward, loss, Adam and EMA. On the CPU the views are fixed
 * inputs (the loader renders them on other threads while the step runs);
 *
 * --backend cuda runs the step as training does (worker/step.c): views
 * rendered on the GPU inside the step, the step replayed from CUDA graphs
 * after two warm-up steps and the capture (--host-data: views from the CPU
 * loader, uploaded; --no-graphs: launched op by op; the "views step" column
 * says which ran), and reports the GPU memory the configuration holds (the
 * backend's device_info: free memory before the model minus free memory
 * after the steps; nothing is freed during steps, so that is the high-water
 * mark of our allocations, workspaces included) and the achieved fraction
 * of the GPU's dense tensor-core peak for the math mode (TF32, or BF16
 * under --precision bf16; none for fp32), counting convolution FLOPs only
 * (the bulk of the step; a lower bound on the work done). The GPU's name,
 * which picks the peak, is device_info's too.
 *
 * --precision tf32|fp32|bf16 sets the backend's math mode (set_precision)
 * before the model is built; the table shows the mode in effect (the CPU
 * backend computes fp32 whatever is asked). */
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
#include "kernels/profile.h"
#include "proto/spec.h"
#include "worker/bench_data.h"
#include "worker/bench_dist.h"
#include "worker/model.h"
#include "worker/step.h"

typedef struct bench_cfg {
    const char *label;
    rw_arch arch;
    rw_stem stem;
    int width, size, batch;
    rw_predictor pred;
} bench_cfg;

typedef struct bench_out {
    double ms, pairs, peak_mib, gflop;
    double gpu_mib, peak_tflops; /* CUDA only; peak 0: GPU not in the table */
    char gpu[96];
    kb_precision prec; /* the mode in effect */
    char mode[16];     /* CUDA: views (gpu/host) and launch (graph/eager) */
    int ok;
} bench_out;

/* Dense (non-sparse) TF32 tensor-core peaks from NVIDIA's data sheets,
 * TFLOP/s at boost clock. Matched on the CUDA device name, most specific
 * first; 0 when unknown. */
static double tf32_peak(const char *name)
{
    static const struct {
        const char *pat;
        double tflops;
    } table[] = {
        {"GH200", 494.7},     /* Grace Hopper: H100 SXM's tensor cores */
        {"H200", 494.7},      /* SXM; the H200 NVL is slower, but rare */
        {"H100 PCIe", 378.0}, /* 756 with sparsity */
        {"H100 NVL", 417.5},  /* 835 with sparsity */
        {"H100", 494.7},      /* SXM5 ("H100 80GB HBM3"): 989 with sparsity */
        {"H800", 494.7},
        {"A100", 156.0},
        {"A800", 156.0},
        {"L40S", 91.6},
        {"A10", 31.2},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strstr(name, table[i].pat))
            return table[i].tflops;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* FLOPs (two per multiply-add) of the convolutions of one forward pass of
 * one image: torchvision's layouts (arch.c's), blocks per stage [2,2,2,2]
 * or [3,4,6,3]; a bottleneck's stride on its 3x3. */
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
    static const int deep[4] = {3, 4, 6, 3}, shallow[4] = {2, 2, 2, 2};
    const int *depth = c->arch == RW_ARCH_RESNET18 ? shallow : deep;
    const int bottleneck = c->arch == RW_ARCH_RESNET50;
    int C = w;
    for (int L = 0; L < 4; L++) {
        int K = w << L, out = bottleneck ? 4 * K : K;
        for (int B = 0; B < depth[L]; B++) {
            int s = (L > 0 && B == 0) ? 2 : 1;
            int P = (H + 2 - 3) / s + 1;
            if (bottleneck) /* 1x1 at the input's size, 3x3 with the stride, 1x1 */
                f += 2.0 * K * C * H * H + 2.0 * K * K * 9 * P * P + 2.0 * out * K * P * P;
            else
                f += 2.0 * K * C * 9 * P * P + 2.0 * K * K * 9 * P * P;
            if (s != 1 || C != out)
                f += 2.0 * out * C * P * P;
            H = P;
            C = out;
        }
    }
    return f;
}

/* How the CUDA step runs: views rendered on the GPU (or by the CPU loader)
 * and the step replayed from CUDA graphs (or launched op by op). */
typedef struct step_mode {
    int host_data, no_graphs;
} step_mode;

/* The CUDA step as training runs it (worker/step.c): the views are part of
 * the timed step. 2 warm-up steps, the capture, then `steps` timed. */
static int time_stepper(rw_model *m, kb_backend *be, const bench_cfg *c, int steps,
                        step_mode mode, size_t gpu_free0, bench_out *o, rw_step_stats *st,
                        kb_backend *prof)
{
    rw_dataset ds;
    if (rw_dataset_noise(4 * c->batch, 1, &ds) != 0) {
        fprintf(stderr, "%s: out of memory\n", c->label);
        return -1;
    }
    rw_stepper_cfg sc = {
        .m = m, .ds = &ds, .batch = c->batch, .shard_world = 1, .size = c->size,
        .augment = RW_AUG_BYOL, .mean = {0.5f, 0.5f, 0.5f}, .std = {0.25f, 0.25f, 0.25f},
        .seed = 1, .loader_threads = (int)sysconf(_SC_NPROCESSORS_ONLN),
        .host_data = mode.host_data, .no_graphs = mode.no_graphs,
    };
    char err[256];
    rw_stepper *sp = rw_stepper_create(&sc, err, sizeof err);
    if (!sp) {
        fprintf(stderr, "%s: %s\n", c->label, err);
        rw_dataset_free(&ds);
        return -1;
    }
    int epoch = 0, rc = 0;
    double t0 = 0;
    rw_stepper_seek(sp, 0, 0);
    for (int s = 0; s < 3 + steps && rc == 0;) {
        if (s == 3) {
            be->sync(be);
            t0 = now_s();
            if (prof)
                kb_profile_enable(prof, 1);
        }
        int r = rw_stepper_step(sp, 1, 3e-4f, 0, 0.996f);
        if (r == 1) {
            rw_stepper_seek(sp, ++epoch, 0);
            continue;
        }
        if (r != 0) {
            fprintf(stderr, "%s: %s\n", c->label, rw_model_error(m));
            rc = -1;
            break;
        }
        if (prof)
            kb_profile_step_end(prof);
        s++;
    }
    be->sync(be);
    double dt = (now_s() - t0) / steps;
    rw_step_stats kept[16]; /* the steps' stats waited on the device: the last is shown */
    for (long n; (n = rw_stepper_read(sp, kept, 16)) > 0;)
        *st = kept[n - 1];
    rw_stepper_counts k;
    rw_stepper_counts_get(sp, &k);
    /* Nothing is freed during steps: what is held now is the high-water
     * mark of our allocations (model, views, the set, workspaces). */
    char name[96];
    size_t gpu_free1 = 0, gpu_total = 0;
    be->device_info(be, name, sizeof name, &gpu_free1, &gpu_total);
    o->gpu_mib = gpu_free0 > gpu_free1 ? (gpu_free0 - gpu_free1) / 1048576.0 : 0;
    snprintf(o->mode, sizeof o->mode, "%s %s",
             strstr(rw_stepper_describe(sp), "on the device") ? "gpu" : "host",
             k.replayed > 0 ? "graph" : "eager");
    rw_stepper_free(sp);
    rw_dataset_free(&ds);
    o->ms = dt * 1e3;
    o->pairs = c->batch / dt;
    return rc;
}

/* One configuration: `steps` timed steps. With `profile`, the backend is
 * wrapped in the op profiler (kernels/profile.h), the step runs op by op and
 * the per-op table is printed after the steps. */
static bench_out run_one(const bench_cfg *c, int steps, int threads, int cuda, kb_precision prec,
                         step_mode mode, int profile)
{
    bench_out o = {0};
    char err[256];
    kb_backend *be = cuda ? kb_cuda_create(0, err, sizeof err) : kb_cpu_create(threads);
    if (!be) {
        fprintf(stderr, "%s: %s backend: %s\n", c->label, cuda ? "CUDA" : "CPU",
                cuda ? err : "cannot start");
        return o;
    }
    kb_backend *prof = NULL;
    if (profile) {
        if (!(prof = kb_profile_create(be, err, sizeof err))) {
            fprintf(stderr, "%s: profile: %s\n", c->label, err);
            kb_destroy(be);
            return o;
        }
        be = prof;
    }
    o.prec = be->set_precision(be, prec);
    size_t gpu_free0 = 0, gpu_total = 0;
    if (cuda) {
        be->device_info(be, o.gpu, sizeof o.gpu, &gpu_free0, &gpu_total);
        /* Dense BF16 is twice dense TF32 on every GPU of the table;
         * plain fp32 runs on the CUDA cores: no tensor-core peak. */
        o.peak_tflops = o.prec == KB_PREC_FP32 ? 0
                        : o.prec == KB_PREC_BF16 ? 2 * tf32_peak(o.gpu)
                                                 : tf32_peak(o.gpu);
    }
    rw_model_cfg mc = {
        .arch = c->arch, .stem = c->stem, .width = c->width, .proj_hidden = 512, .proj_out = 128,
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
    rw_step_stats st = {0};
    if (cuda) {
        if (time_stepper(m, be, c, steps, mode, gpu_free0, &o, &st, prof) != 0) {
            rw_model_free(m);
            kb_destroy(be);
            return o;
        }
    } else {
        /* The CPU's views come from loader threads that would compete with
         * the step for the cores: fixed inputs, views excluded. */
        size_t n = (size_t)c->batch * 3 * c->size * c->size;
        float *h = malloc(n * sizeof(float));
        if (!h) {
            fprintf(stderr, "%s: out of memory for the inputs\n", c->label);
            rw_model_free(m);
            kb_destroy(be);
            return o;
        }
        for (size_t i = 0; i < n; i++)
            h[i] = (float)((i * 2654435761u % 1000) / 500.0 - 1.0);
        /* both views, one batch of 2N */
        size_t half = be->fmap_bytes(be, c->batch, 3, c->size, c->size);
        char *x = be->alloc(be, 2 * half);
        be->fmap_upload(be, x, h, c->batch, 3, c->size, c->size);
        be->fmap_upload(be, x + half, h, c->batch, 3, c->size, c->size);
        /* Warm-up: allocations, conv plans, page faults. */
        rw_model_forward_backward(m, x, c->batch, c->size, &st);
        rw_model_update(m, 3e-4f, 0, 0.996f);
        if (prof)
            kb_profile_enable(prof, 1);
        double t0 = now_s();
        for (int s = 0; s < steps; s++) {
            rw_model_forward_backward(m, x, c->batch, c->size, &st);
            rw_model_update(m, 3e-4f, 0, 0.996f);
            if (prof)
                kb_profile_step_end(prof);
        }
        double dt = (now_s() - t0) / steps;
        o.ms = dt * 1e3;
        o.pairs = c->batch / dt;
        be->free(be, x);
        free(h);
    }
    double dt = o.ms / 1e3;
    /* Online fwd+bwd (3x forward) for 2 views + teacher fwd for 2 views. */
    o.gflop = conv_flops(c) * c->batch * (2 * 3 + 2) / dt / 1e9;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    o.peak_mib = ru.ru_maxrss / 1024.0;
    o.ok = isfinite(st.loss);
    if (prof) {
        printf("  %s, %d steps op by op%s (%.2f ms/step with the stamps):\n",
               kb_precision_name(o.prec), steps,
               cuda ? (o.mode[0] == 'g' ? ", views on the device" : ", views from the host") : "",
               o.ms);
        kb_profile_print(prof, stdout);
        fflush(stdout);
    }
    rw_model_free(m);
    kb_destroy(be);
    return o;
}

int main(int argc, char **argv)
{
    int steps = 3, threads = 0, quick = 0, cuda = 0, profile = 0, only = 0, data = 0;
    int devices = 0, grad_bf16 = 0;
    int decode_size = 96;
    const char *decode = NULL;
    kb_precision prec = KB_PREC_TF32;
    step_mode mode = {0, 0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-graphs") == 0)
            mode.no_graphs = 1;
        else if (strcmp(argv[i], "--host-data") == 0)
            mode.host_data = 1;
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--profile") == 0)
            profile = 1;
        else if (strcmp(argv[i], "--data") == 0)
            data = 1;
        else if (strcmp(argv[i], "--devices") == 0 && i + 1 < argc && atoi(argv[i + 1]) >= 2)
            devices = atoi(argv[++i]);
        else if (strcmp(argv[i], "--grad-dtype") == 0 && i + 1 < argc &&
                 (strcmp(argv[i + 1], "fp32") == 0 || strcmp(argv[i + 1], "bf16") == 0))
            grad_bf16 = strcmp(argv[++i], "bf16") == 0;
        else if (strcmp(argv[i], "--decode") == 0 && i + 1 < argc)
            decode = argv[++i];
        else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc && atoi(argv[i + 1]) >= 8)
            decode_size = atoi(argv[++i]);
        else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc && atoi(argv[i + 1]) > 0)
            only = atoi(argv[++i]);
        else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc &&
                 (strcmp(argv[i + 1], "cpu") == 0 || strcmp(argv[i + 1], "cuda") == 0))
            cuda = strcmp(argv[++i], "cuda") == 0;
        else if (strcmp(argv[i], "--precision") == 0 && i + 1 < argc &&
                 (strcmp(argv[i + 1], "tf32") == 0 || strcmp(argv[i + 1], "fp32") == 0 ||
                  strcmp(argv[i + 1], "bf16") == 0)) {
            i++;
            prec = strcmp(argv[i], "fp32") == 0   ? KB_PREC_FP32
                   : strcmp(argv[i], "bf16") == 0 ? KB_PREC_BF16
                                                  : KB_PREC_TF32;
        } else {
            fprintf(stderr, "usage: runaway-bench [--backend cpu|cuda] [--precision tf32|fp32|bf16] "
                            "[--steps N] [--threads N] [--quick] [--no-graphs] [--host-data] "
                            "[--profile] [--config N] [--data] [--decode DIR [--size S]] "
                            "[--devices N [--grad-dtype fp32|bf16]]\n"
                            "  --profile   after the table, each configuration again op by op, "
                            "with the time, calls and rate of each kind of op\n"
                            "  --config N  only the Nth configuration (1-based; see the table)\n"
                            "  --data      the CPU loader's views/s instead, from a set in memory "
                            "and from an image folder's cache (--steps: batches, x10)\n"
                            "  --decode DIR  the rate at which DIR/train's images decode to "
                            "SxS (default 96)\n"
                            "  --devices N  N data-parallel ranks (processes; CPU: Gloo, --steps x10; "
                            "--backend cuda: one GPU each, NCCL): compute, communication and "
                            "exposed communication per step, weak-scaling efficiency\n");
            return 2;
        }
    }
    if (steps < 1)
        steps = 1;
    if (decode)
        return bench_decode(decode, decode_size, threads);
    if (data)
        return bench_data_table(threads, 10 * steps);
    if (devices) /* CPU ranks' steps are short: ten times as many */
        return bench_devices(devices, cuda ? steps : 10 * steps, threads, only, cuda, grad_bf16);
    bench_cfg cfgs[] = {
        {"quickstart (w16 cifar)", RW_ARCH_RESNET18, RW_STEM_CIFAR, 16, 32, 64, RW_PRED_MLP},
        {"resnet18 cifar 32x32", RW_ARCH_RESNET18, RW_STEM_CIFAR, 64, 32, 32, RW_PRED_MLP},
        {"resnet18 cifar 32x32", RW_ARCH_RESNET18, RW_STEM_CIFAR, 64, 32, 128, RW_PRED_MLP},
        {"resnet18 imagenet 96x96", RW_ARCH_RESNET18, RW_STEM_IMAGENET, 64, 96, 32, RW_PRED_MLP},
        {"resnet18 imagenet 96x96", RW_ARCH_RESNET18, RW_STEM_IMAGENET, 64, 96, 128, RW_PRED_MLP},
        {"resnet50 imagenet 96x96", RW_ARCH_RESNET50, RW_STEM_IMAGENET, 64, 96, 32, RW_PRED_MLP},
        /* GPU only: batches that fill a large GPU, the literature's ResNet-50 */
        {"resnet18 cifar 32x32", RW_ARCH_RESNET18, RW_STEM_CIFAR, 64, 32, 512, RW_PRED_MLP},
        {"resnet18 imagenet 96x96", RW_ARCH_RESNET18, RW_STEM_IMAGENET, 64, 96, 256, RW_PRED_MLP},
        {"resnet34 imagenet 96x96", RW_ARCH_RESNET34, RW_STEM_IMAGENET, 64, 96, 128, RW_PRED_MLP},
        {"resnet50 imagenet 96x96", RW_ARCH_RESNET50, RW_STEM_IMAGENET, 64, 96, 128, RW_PRED_MLP},
        {"resnet50 imagenet 224x224", RW_ARCH_RESNET50, RW_STEM_IMAGENET, 64, 224, 64,
         RW_PRED_MLP},
    };
    const int nall = (int)(sizeof cfgs / sizeof *cfgs);
    int ncfg = quick ? 2 : cuda ? nall : 6, first = 0;
    if (only) {
        if (only > nall) {
            fprintf(stderr, "runaway-bench: --config %d: there are %d configurations\n", only,
                    nall);
            return 2;
        }
        first = only - 1;
        ncfg = only;
    }
    if (cuda) {
        printf("runaway-bench: CUDA backend, %s asked, %d timed steps after 2 warm-ups and the "
               "capture; views rendered in the step\n",
               kb_precision_name(prec), steps);
        printf("%-26s %6s %6s %5s %-10s %10s %10s %13s %9s %9s\n", "config", "size", "batch",
               "prec", "views step", "ms/step", "pairs/s", "conv TFLOP/s", "of peak", "GPU MiB");
    } else {
        char tdesc[32];
        if (threads)
            snprintf(tdesc, sizeof tdesc, "%d", threads);
        else
            snprintf(tdesc, sizeof tdesc, "all (%ld)", sysconf(_SC_NPROCESSORS_ONLN));
        printf("runaway-bench: CPU backend, %s asked, %d timed steps after 1 warm-up, threads: %s\n",
               kb_precision_name(prec), steps, tdesc);
        printf("%-26s %6s %6s %5s %10s %10s %12s %11s\n", "config", "size", "batch", "prec",
               "ms/step", "pairs/s", "conv GFLOP/s", "peak MiB");
    }
    char gpu[96] = "";
    double peak = 0;
    kb_precision in_effect = prec;
    int failed = 0;
    for (int i = first; i < ncfg; i++) {
        int fd[2];
        if (pipe(fd) != 0)
            return 1;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            close(fd[0]);
            bench_out o = run_one(&cfgs[i], steps, threads, cuda, prec, mode, 0);
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
            printf("%-26s %6d %6d %5s %10s\n", cfgs[i].label, cfgs[i].size, cfgs[i].batch, "",
                   "failed");
            failed++;
            continue;
        }
        in_effect = o.prec;
        if (cuda) {
            snprintf(gpu, sizeof gpu, "%s", o.gpu);
            peak = o.peak_tflops;
            char frac[16] = "n/a";
            if (peak > 0)
                snprintf(frac, sizeof frac, "%.1f%%", 100.0 * o.gflop / 1e3 / peak);
            printf("%-26s %6d %6d %5s %-10s %10.2f %10.1f %13.1f %9s %9.0f\n", cfgs[i].label,
                   cfgs[i].size, cfgs[i].batch, kb_precision_name(o.prec), o.mode, o.ms, o.pairs,
                   o.gflop / 1e3, frac, o.gpu_mib);
        } else {
            printf("%-26s %6d %6d %5s %10.1f %10.2f %12.1f %11.0f\n", cfgs[i].label,
                   cfgs[i].size, cfgs[i].batch, kb_precision_name(o.prec), o.ms, o.pairs, o.gflop,
                   o.peak_mib);
        }
        fflush(stdout);
    }
    if (cuda) {
        if (peak > 0)
            printf("GPU: %s; peak = dense %s tensor-core rate %.1f TFLOP/s (data sheet); "
                   "conv FLOPs only\n", gpu, in_effect == KB_PREC_BF16 ? "BF16" : "TF32", peak);
        else if (in_effect == KB_PREC_FP32)
            printf("GPU: %s; fp32 runs on the CUDA cores: no tensor-core peak\n",
                   gpu[0] ? gpu : "?");
        else
            printf("GPU: %s; not in the peak table: no fraction of peak\n", gpu[0] ? gpu : "?");
    }
    /* The profile: each configuration again through the op profiler, in its
     * own process, op by op (stamps cannot sit inside a CUDA graph). */
    for (int i = first; profile && i < ncfg; i++) {
        printf("\nprofile: %s, %dx%d, batch %d, %s backend\n", cfgs[i].label, cfgs[i].size,
               cfgs[i].size, cfgs[i].batch, cuda ? "CUDA" : "CPU");
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            step_mode m = mode;
            m.no_graphs = 1;
            bench_out o = run_one(&cfgs[i], steps, threads, cuda, prec, m, 1);
            _exit(o.ok ? 0 : 1);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            printf("  failed\n");
            failed++;
        }
    }
    return failed ? 1 : 0;
}
