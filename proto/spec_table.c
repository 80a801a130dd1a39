/* The spec's field table (every field's path, type, offset and range, in
 * the canonical YAML's order), the names of its enums, and the helpers the
 * parser (spec.c), the validation (spec_check.c) and the writer
 * (spec_emit.c) share. The bottom of proto/'s spec files: it calls none of
 * them. */
#include "proto/spec_table.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void rw_spec_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------ */
/* 2. The field table */


static const char *const data_kinds[] = {"synthetic", "cifar10", "cifar100", "stl10",
                                         "imagefolder", NULL};
static const char *const synth_styles[] = {"cluttered", "plain", NULL};
static const char *const label_sets[] = {"fine", "coarse", NULL};
static const char *const augments[] = {"byol", "none", NULL};
static const char *const archs[] = {"resnet18", "resnet34", "resnet50", NULL};
static const char *const stems[] = {"imagenet", "cifar", NULL};
static const char *const predictors[] = {"mlp", "mlp_bn", "linear", "linear_identity", "none",
                                         "directpred", NULL};
static const char *const loss_kinds[] = {"byol", "unified", "supervised", NULL};
static const char *const schedules[] = {"constant", "cosine", NULL};
static const char *const precisions[] = {"tf32", "fp32", "bf16", NULL};
static const char *const grad_dtypes[] = {"fp32", "bf16", NULL};
static const char *const linear_norms[] = {"none", "standardize", "batchnorm", NULL};
static const char *const alarm_actions[] = {"off", "warn", "stop", NULL};

_Static_assert(sizeof(rw_data_kind) == sizeof(int) && sizeof(rw_augment) == sizeof(int) &&
                   sizeof(rw_synth_style) == sizeof(int) &&
                   sizeof(rw_stem) == sizeof(int) && sizeof(rw_arch) == sizeof(int) &&
                   sizeof(rw_predictor) == sizeof(int) &&
                   sizeof(rw_loss_kind) == sizeof(int) && sizeof(rw_tau_schedule) == sizeof(int) &&
                   sizeof(rw_lr_schedule) == sizeof(int) &&
                   sizeof(rw_precision) == sizeof(int) && sizeof(rw_labels) == sizeof(int) &&
                   sizeof(rw_grad_dtype) == sizeof(int) && sizeof(rw_linear_norm) == sizeof(int) &&
                   sizeof(rw_alarm_action) == sizeof(int),
               "enum fields are stored as int");

#define TWO53 RW_TWO53

const field rw_field_table[] = {
    {"name", F_NAME, O(name), 1, RW_NAME_MAX - 1, 0, NULL},
    {"seed", F_U64, O(seed), 0, TWO53, 0, NULL},
    {"init", F_PATH, O(init), 0, 0, 0, NULL},
    {"threads", F_INT, O(threads), 0, 1024, 0, NULL},
    {"data.kind", F_ENUM, O(data.kind), 0, 0, 0, data_kinds},
    {"data.path", F_PATH, O(data.path), 0, 0, 0, NULL},
    {"data.synthetic.train", F_INT, O(data.synthetic_train), 1, 1000000, 0, NULL},
    {"data.synthetic.test", F_INT, O(data.synthetic_test), 1, 1000000, 0, NULL},
    {"data.synthetic.seed", F_U64, O(data.synthetic_seed), 0, TWO53, 0, NULL},
    {"data.synthetic.style", F_ENUM, O(data.synthetic_style), 0, 0, 0, synth_styles},
    {"data.labels", F_ENUM, O(data.labels), 0, 0, 0, label_sets},
    {"data.unlabeled", F_BOOL, O(data.unlabeled), 0, 1, 0, NULL},
    {"data.image_size", F_INT, O(data.image_size), 8, 512, 0, NULL},
    {"data.augment", F_ENUM, O(data.augment), 0, 0, 0, augments},
    {"data.mean", F_VEC3, O(data.mean), 0, 1, 0, NULL},
    {"data.std", F_VEC3, O(data.std), 0, 10, LO_OPEN, NULL},
    {"data.loader_threads", F_INT, O(data.loader_threads), 1, 64, 0, NULL},
    {"data.device_budget_mb", F_INT, O(data.device_budget_mb), 0, 16777216, 0, NULL},
    {"data.cache_size", F_INT, O(data.cache_size), 8, 1024, 0, NULL},
    {"data.skip_bad", F_BOOL, O(data.skip_bad), 0, 1, 0, NULL},
    {"model.arch", F_ENUM, O(model.arch), 0, 0, 0, archs},
    {"model.stem", F_ENUM, O(model.stem), 0, 0, 0, stems},
    {"model.width", F_INT, O(model.width), 1, RW_WIDTH_MAX_BASIC, 0, NULL},
    {"model.projector.hidden", F_INT, O(model.proj_hidden), 1, 65536, 0, NULL},
    {"model.projector.out", F_INT, O(model.proj_out), 1, 65536, 0, NULL},
    {"model.predictor", F_ENUM, O(model.predictor), 0, 0, 0, predictors},
    {"model.predictor_hidden", F_INT, O(model.pred_hidden), 1, 65536, 0, NULL},
    /* the predictor studies after the paper (Tian, Chen and Ganguli 2021) */
    {"model.predictor_frozen", F_BOOL, O(model.pred_frozen), 0, 1, 0, NULL},
    {"model.directpred.every", F_INT, O(model.directpred.every), 1, 1000000, 0, NULL},
    {"model.directpred.momentum", F_FLOAT, O(model.directpred.momentum), 0, 1, HI_OPEN, NULL},
    {"model.directpred.eps", F_FLOAT, O(model.directpred.eps), 0, 100, 0, NULL},
    {"model.predictor_negated", F_BOOL, O(model.predictor_negated), 0, 1, 0, NULL},
    {"model.init_nudge_ulps", F_INT, O(model.init_nudge_ulps), -1000000, 1000000, 0, NULL},
    {"loss.kind", F_ENUM, O(loss.kind), 0, 0, 0, loss_kinds},
    {"loss.alpha", F_FLOAT, O(loss.alpha), -1e6, 1e6, ABS_BOUND, NULL},
    {"loss.beta", F_FLOAT, O(loss.beta), -1e6, 1e6, ABS_BOUND, NULL},
    {"loss.tangential", F_BOOL, O(loss.tangential), 0, 1, 0, NULL},
    {"optim.lr", F_FLOAT, O(optim.lr), 0, 10, LO_OPEN, NULL},
    {"optim.weight_decay", F_FLOAT, O(optim.weight_decay), 0, 1, 0, NULL},
    {"optim.batch_size", F_INT, O(optim.batch_size), 2, 65536, 0, NULL},
    {"optim.epochs", F_INT, O(optim.epochs), 0, 100000, 0, NULL},
    {"optim.max_steps", F_LONG, O(optim.max_steps), 0, TWO53, 0, NULL},
    {"optim.schedule", F_ENUM, O(optim.schedule), 0, 0, 0, schedules},
    {"optim.warmup_epochs", F_INT, O(optim.warmup_epochs), 0, 100000, 0, NULL},
    {"optim.predictor_lr_mult", F_FLOAT, O(optim.predictor_lr_mult), 0, 1000, 0, NULL},
    {"ema.tau", F_FLOAT, O(ema.tau), 0, 1, 0, NULL},
    {"ema.schedule", F_ENUM, O(ema.schedule), 0, 0, 0, schedules},
    {"eval.linear.epochs", F_INT, O(eval.linear_epochs), 0, 100000, 0, NULL},
    {"eval.linear.lr", F_FLOAT, O(eval.linear_lr), 0, 10, LO_OPEN, NULL},
    {"eval.linear.batch_size", F_INT, O(eval.linear_batch_size), 1, 65536, 0, NULL},
    {"eval.linear.normalize", F_ENUM, O(eval.linear_normalize), 0, 0, 0, linear_norms},
    {"eval.linear.every", F_INT, O(eval.linear_every), 0, 100000, 0, NULL},
    {"eval.knn.every", F_INT, O(eval.knn_every), 0, 100000, 0, NULL},
    {"eval.knn.k", F_INT, O(eval.knn_k), 1, 10000, 0, NULL},
    {"eval.knn.temperature", F_FLOAT, O(eval.knn_temperature), 0, 100, LO_OPEN, NULL},
    {"eval.rank.every", F_INT, O(eval.rank_every), 0, 100000, 0, NULL},
    {"eval.rank.samples", F_INT, O(eval.rank_samples), 2, 65536, 0, NULL},
    {"log.every_steps", F_INT, O(log.every_steps), 0, 1000000000, 0, NULL},
    {"checkpoint.every_epochs", F_INT, O(checkpoint.every_epochs), 0, 100000, 0, NULL},
    {"checkpoint.every_minutes", F_FLOAT, O(checkpoint.every_minutes), 0, 1e6, 0, NULL},
    {"checkpoint.snapshot_every", F_INT, O(checkpoint.snapshot_every), 0, 100000, 0, NULL},
    /* the collapse alarm (worker/collapse.h); 0 turns a threshold off */
    {"monitor.collapse.action", F_ENUM, O(monitor.collapse.action), 0, 0, 0, alarm_actions},
    {"monitor.collapse.rank_below", F_FLOAT, O(monitor.collapse.rank_below), 0, 65536, 0, NULL},
    {"monitor.collapse.rank_share_below", F_FLOAT, O(monitor.collapse.rank_share_below), 0, 1, 0,
     NULL},
    {"monitor.collapse.uniform_above", F_FLOAT, O(monitor.collapse.uniform_above), -8, 0, 0, NULL},
    {"monitor.collapse.std_below", F_FLOAT, O(monitor.collapse.std_below), 0, 10, 0, NULL},
    {"monitor.collapse.patience", F_INT, O(monitor.collapse.patience), 1, 100000, 0, NULL},
    /* last, so the allowed-keys lists that name the paper's fields read as before */
    {"devices", F_INT, O(devices), 1, 64, 0, NULL},
    {"sync_bn", F_BOOL, O(sync_bn), 0, 1, 0, NULL},
    {"precision", F_ENUM, O(precision), 0, 0, 0, precisions},
    {"deterministic", F_BOOL, O(deterministic), 0, 1, 0, NULL},
    {"dist.overlap", F_BOOL, O(dist.overlap), 0, 1, 0, NULL},
    {"dist.bucket_mb", F_FLOAT, O(dist.bucket_mb), 0, 4096, LO_OPEN, NULL},
    {"dist.grad_dtype", F_ENUM, O(dist.grad_dtype), 0, 0, 0, grad_dtypes},
};
#define NFIELDS (sizeof rw_field_table / sizeof rw_field_table[0])
const size_t rw_field_count = NFIELDS;

/* "in (0, 10]", "in 1..64", "with |x| <= 1e+06" */
void rw_field_range_text(const field *f, char *out, size_t outlen) {
    if (f->flags & ABS_BOUND)
        snprintf(out, outlen, "with |x| <= %g", f->hi);
    else if (f->type == F_FLOAT || f->type == F_VEC3)
        snprintf(out, outlen, "in %c%g, %g%c", (f->flags & LO_OPEN) ? '(' : '[', f->lo, f->hi,
                 (f->flags & HI_OPEN) ? ')' : ']');
    else if (f->hi == TWO53)
        snprintf(out, outlen, "in %.0f..2^53", f->lo);
    else
        snprintf(out, outlen, "in %.0f..%.0f", f->lo, f->hi);
}

void rw_field_enum_list(const char *const *names, char *out, size_t outlen) {
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; names[i] && o < outlen; i++)
        o += (size_t)snprintf(out + o, outlen - o, "%s%s", i ? ", " : "", names[i]);
}

int rw_field_in_range(const field *f, double v) {
    if (f->flags & ABS_BOUND) return fabs(v) <= f->hi;
    if ((f->flags & LO_OPEN) ? !(v > f->lo) : !(v >= f->lo)) return 0;
    if ((f->flags & HI_OPEN) ? !(v < f->hi) : !(v <= f->hi)) return 0;
    return 1;
}

int rw_spec_name_ok(const char *s) {
    if (!*s) return 0;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

const char *rw_arch_name(rw_arch a) {
    return (unsigned)a < sizeof archs / sizeof archs[0] - 1 ? archs[a] : "?";
}

const char *rw_data_kind_name(rw_data_kind k) {
    return (unsigned)k < sizeof data_kinds / sizeof data_kinds[0] - 1 ? data_kinds[k] : "?";
}

const char *rw_predictor_name(rw_predictor p) {
    return (unsigned)p < sizeof predictors / sizeof predictors[0] - 1 ? predictors[p] : "?";
}

const char *rw_loss_kind_name(rw_loss_kind k) {
    return (unsigned)k < sizeof loss_kinds / sizeof loss_kinds[0] - 1 ? loss_kinds[k] : "?";
}
