/* The spec's validation: every field of a struct re-checked against the
 * field table (the struct may have been built by code or by grid overrides),
 * the derived fields resolved, then the rules across fields and the files
 * the spec points at. The parser (proto/spec.c) ends with it. */
#include "proto/spec.h"
#include "proto/spec_table.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int check_struct_fields(const rw_spec *s, const char *origin, char *err, size_t errlen) {
    char rng[96];
    for (size_t i = 0; i < rw_field_count; i++) {
        const field *f = &rw_field_table[i];
        const char *src = (const char *)s + f->off;
        rw_field_range_text(f, rng, sizeof rng);
        switch (f->type) {
        case F_INT: {
            int x;
            memcpy(&x, src, sizeof x);
            if (!rw_field_in_range(f, x)) {
                rw_spec_err(err, errlen, "%s: %s: must be an integer %s, got %d", origin, f->path, rng, x);
                return -1;
            }
            break;
        }
        case F_LONG: {
            long x;
            memcpy(&x, src, sizeof x);
            if (!rw_field_in_range(f, (double)x)) {
                rw_spec_err(err, errlen, "%s: %s: must be an integer %s, got %ld", origin, f->path, rng, x);
                return -1;
            }
            break;
        }
        case F_U64: {
            uint64_t x;
            memcpy(&x, src, sizeof x);
            if (x > (uint64_t)RW_TWO53) {
                rw_spec_err(err, errlen, "%s: %s: must be an integer %s, got %llu", origin, f->path, rng,
                        (unsigned long long)x);
                return -1;
            }
            break;
        }
        case F_FLOAT: {
            float x;
            memcpy(&x, src, sizeof x);
            if (!isfinite(x) || !rw_field_in_range(f, x)) {
                rw_spec_err(err, errlen, "%s: %s: must be a number %s, got %g", origin, f->path, rng, x);
                return -1;
            }
            break;
        }
        case F_VEC3: {
            float x[3];
            memcpy(x, src, sizeof x);
            for (int k = 0; k < 3; k++) {
                if (!isfinite(x[k]) || !rw_field_in_range(f, x[k])) {
                    rw_spec_err(err, errlen, "%s: %s[%d]: must be a number %s, got %g", origin, f->path, k,
                            rng, x[k]);
                    return -1;
                }
            }
            break;
        }
        case F_BOOL: {
            int x;
            memcpy(&x, src, sizeof x);
            if (x != 0 && x != 1) {
                rw_spec_err(err, errlen, "%s: %s: must be true or false, got %d", origin, f->path, x);
                return -1;
            }
            break;
        }
        case F_ENUM: {
            int x, n = 0;
            memcpy(&x, src, sizeof x);
            while (f->enums[n]) n++;
            if (x < 0 || x >= n) {
                char list[160];
                rw_field_enum_list(f->enums, list, sizeof list);
                rw_spec_err(err, errlen, "%s: %s: must be one of: %s, got %d", origin, f->path, list, x);
                return -1;
            }
            break;
        }
        case F_NAME:
            if (!memchr(src, '\0', RW_NAME_MAX) || !rw_spec_name_ok(src)) {
                rw_spec_err(err, errlen, "%s: %s: must be 1..%d characters from [A-Za-z0-9_.-]", origin,
                        f->path, RW_NAME_MAX - 1);
                return -1;
            }
            break;
        case F_PATH:
            if (!memchr(src, '\0', RW_PATH_MAX)) {
                rw_spec_err(err, errlen, "%s: %s: path is not terminated", origin, f->path);
                return -1;
            }
            break;
        }
    }
    return 0;
}

void rw_spec_resolve(rw_spec *s) {
    /* per channel over the training images: CIFAR-10's as DESIGN gives
     * them, CIFAR-100's and STL-10's (train + unlabeled) as commonly published */
    static const float stats[][2][3] = {
        [RW_DATA_SYNTHETIC] = {{0.4914f, 0.4822f, 0.4465f}, {0.2470f, 0.2435f, 0.2616f}},
        [RW_DATA_CIFAR10] = {{0.4914f, 0.4822f, 0.4465f}, {0.2470f, 0.2435f, 0.2616f}},
        [RW_DATA_CIFAR100] = {{0.5071f, 0.4865f, 0.4409f}, {0.2673f, 0.2564f, 0.2762f}},
        [RW_DATA_STL10] = {{0.4467f, 0.4398f, 0.4066f}, {0.2603f, 0.2566f, 0.2713f}},
        /* a folder of photographs: ImageNet's, as torchvision's examples use */
        [RW_DATA_IMAGEFOLDER] = {{0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}},
    };
    if ((unsigned)s->data.kind < sizeof stats / sizeof stats[0]) {
        if (!(s->data.given & RW_GIVEN_MEAN))
            memcpy(s->data.mean, stats[s->data.kind][0], sizeof s->data.mean);
        if (!(s->data.given & RW_GIVEN_STD))
            memcpy(s->data.std, stats[s->data.kind][1], sizeof s->data.std);
    }
    if (!(s->data.given & RW_GIVEN_CACHE_SIZE))
        s->data.cache_size = s->data.image_size;
    /* the marks only live between applying fields and this call, so a
     * parsed spec equals one built in code */
    s->data.given = 0;
    /* only the unified loss is weighed: other kinds keep the defaults, which
     * the canonical YAML leaves out (grid.c refuses weights given to them) */
    if (s->loss.kind != RW_LOSS_UNIFIED)
        s->loss.alpha = s->loss.beta = 1.0f;
}

/* The predictor studies' fields where they mean something: a frozen or
 * slower predictor needs one trained by gradient, and a frozen one has no
 * learning rate to scale. */
static int predictor_rules(const rw_spec *s, const char *origin, char *err, size_t errlen) {
    const rw_predictor p = s->model.predictor;
    const int by_gradient = p != RW_PRED_NONE && p != RW_PRED_DIRECTPRED;
    if (s->model.pred_frozen && !by_gradient) {
        rw_spec_err(err, errlen, "%s: model.predictor_frozen: a fixed random predictor needs one "
                "trained by gradient (mlp, mlp_bn, linear, linear_identity); model.predictor "
                "is %s (%s)", origin, rw_predictor_name(p),
                p == RW_PRED_NONE ? "nothing to freeze" : "set from its input's correlation");
        return -1;
    }
    if (s->optim.predictor_lr_mult != 1.0f && !by_gradient) {
        rw_spec_err(err, errlen, "%s: optim.predictor_lr_mult: model.predictor %s has no learning "
                "rate (%s); leave it at 1", origin, rw_predictor_name(p),
                p == RW_PRED_NONE ? "no predictor" : "set from its input's correlation, not by "
                "gradient");
        return -1;
    }
    if (s->optim.predictor_lr_mult != 1.0f && s->model.pred_frozen) {
        rw_spec_err(err, errlen, "%s: optim.predictor_lr_mult: a frozen predictor takes no step; "
                "leave it at 1 (or unfreeze it: multiplier 0 moves its Adam moments only)",
                origin);
        return -1;
    }
    return 0;
}

int rw_spec_validate(const rw_spec *s, const char *origin, char *err, size_t errlen) {
    if (!origin) origin = "spec";
    if (check_struct_fields(s, origin, err, errlen)) return -1;

    if (s->loss.kind == RW_LOSS_UNIFIED && s->loss.alpha == 0.0f && s->loss.beta == 0.0f) {
        rw_spec_err(err, errlen,
                "%s: loss.alpha, loss.beta: must not both be 0 for loss.kind unified "
                "(BYOL' beta > 0, RAFT beta < 0)",
                origin);
        return -1;
    }
    if (s->monitor.collapse.action != RW_ALARM_OFF && s->eval.rank_every == 0 &&
        (s->monitor.collapse.rank_below > 0 || s->monitor.collapse.rank_share_below > 0)) {
        rw_spec_err(err, errlen, "%s: monitor.collapse.%s: judges the effective rank, which "
                "eval.rank.every 0 does not measure: set eval.rank.every, or the threshold to 0",
                origin, s->monitor.collapse.rank_below > 0 ? "rank_below" : "rank_share_below");
        return -1;
    }
    if (s->init[0]) {
        struct stat st;
        int fd = open(s->init, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            rw_spec_err(err, errlen, "%s: init: cannot read '%s': %s", origin, s->init, strerror(errno));
            return -1;
        }
        int isreg = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
        close(fd);
        if (!isreg) {
            rw_spec_err(err, errlen, "%s: init: '%s' is not a regular file (expected a .safetensors file)",
                    origin, s->init);
            return -1;
        }
    }
    if (s->model.arch == RW_ARCH_RESNET50 && s->model.width > RW_WIDTH_MAX_BOTTLENECK) {
        rw_spec_err(err, errlen, "%s: model.width: resnet50's bottleneck blocks take a width in "
                "1..%d (its blocks' outputs are 4x wider: 64 is torchvision's 2048 features); "
                "got %d", origin, RW_WIDTH_MAX_BOTTLENECK, s->model.width);
        return -1;
    }
    if (s->model.predictor_negated && s->model.predictor == RW_PRED_NONE) {
        rw_spec_err(err, errlen, "%s: model.predictor_negated: predictor none has no output layer "
                "to negate (no W, so no start -W0)", origin);
        return -1;
    }
    if (s->model.predictor_negated && s->model.predictor == RW_PRED_DIRECTPRED) {
        rw_spec_err(err, errlen, "%s: model.predictor_negated: directpred sets W from its input's "
                "correlation (positive semi-definite), so a start from -W0 does not last",
                origin);
        return -1;
    }
    if (s->init[0] && (s->model.predictor_negated || s->model.init_nudge_ulps)) {
        rw_spec_err(err, errlen, "%s: model.%s changes the seed's initialization, and init reads "
                "the weights from a file instead: set one or the other", origin,
                s->model.predictor_negated ? "predictor_negated" : "init_nudge_ulps");
        return -1;
    }
    if (s->loss.kind == RW_LOSS_SUPERVISED && s->model.predictor != RW_PRED_NONE) {
        rw_spec_err(err, errlen, "%s: model.predictor: loss.kind supervised trains a classifier on "
                "the projections and no predictor: set model.predictor: none (it is %s)",
                origin, rw_predictor_name(s->model.predictor));
        return -1;
    }
    if (predictor_rules(s, origin, err, errlen)) return -1;
    if (s->loss.kind == RW_LOSS_SUPERVISED && s->loss.tangential) {
        rw_spec_err(err, errlen, "%s: loss.tangential: not for loss.kind supervised (no teacher "
                "in its loss)", origin);
        return -1;
    }
    if (s->loss.kind == RW_LOSS_SUPERVISED && s->data.kind == RW_DATA_STL10 && s->data.unlabeled) {
        rw_spec_err(err, errlen, "%s: data.unlabeled: loss.kind supervised trains on labels; STL-10's "
                "unlabeled images have none: set data.unlabeled: false", origin);
        return -1;
    }
    if (s->data.labels == RW_LABELS_COARSE && s->data.kind != RW_DATA_CIFAR100) {
        rw_spec_err(err, errlen, "%s: data.labels: coarse is for data.kind cifar100 (its 20 "
                "superclasses); data.kind is %s", origin, rw_data_kind_name(s->data.kind));
        return -1;
    }
    if (s->data.kind != RW_DATA_SYNTHETIC) {
        static const char *const holds[] = {
            [RW_DATA_CIFAR10] = "data_batch_1.bin ... test_batch.bin",
            [RW_DATA_CIFAR100] = "train.bin and test.bin",
            [RW_DATA_STL10] = "train_X.bin, train_y.bin, test_X.bin, test_y.bin and "
                              "unlabeled_X.bin (stl10_binary)",
            [RW_DATA_IMAGEFOLDER] = "train/ and val/, one folder of .jpg or .png images per "
                                    "class, and optionally unlabeled/",
        };
        const char *kind = rw_data_kind_name(s->data.kind), *files = holds[s->data.kind];
        struct stat st;
        if (!s->data.path[0]) {
            rw_spec_err(err, errlen, "%s: data.path: required for data.kind %s (the folder holding %s)",
                    origin, kind, files);
            return -1;
        }
        if (stat(s->data.path, &st) != 0) {
            rw_spec_err(err, errlen, "%s: data.path: cannot access '%s': %s", origin, s->data.path,
                    strerror(errno));
            return -1;
        }
        if (!S_ISDIR(st.st_mode)) {
            rw_spec_err(err, errlen,
                    "%s: data.path: '%s' is not a directory (%s needs the folder holding %s)",
                    origin, s->data.path, kind, files);
            return -1;
        }
    }
    return 0;
}
