/* How far apart two runs' weights are, snapshot by snapshot: the
 * experiment of the paper's Theorem 5.1 (BYOL' from (theta0, W0) and RAFT
 * from (theta0, -W0) move theta identically) and its controls. Reads the
 * snapshots/weights-eNNNNN.safetensors that checkpoint.snapshot_every keeps
 * in a run folder; `runaway distance` runs it through `runaway-worker
 * distance`, so that the CLI needs no weights code. */
#ifndef RUNAWAY_WORKER_DISTANCE_H
#define RUNAWAY_WORKER_DISTANCE_H

#include <jansson.h>
#include <stddef.h>

/* The epochs both run folders have snapshots of, and at each the relative
 * L2 distances |x_a - x_b| / |x_a| (in double) of
 *   - the online encoder's parameters (torchvision's tensors: conv1, bn1,
 *     layerN.*; not the running statistics, heads or teacher), and
 *   - the predictor's parameters, where both runs have the same predictor,
 *     run b's output layer times `sign`: -1 when exactly one of the two
 *     started from -W0 (model.predictor_negated in its spec.yaml), so a
 *     mirror pair that moves alike reads 0;
 * and, for scale, how far run a moved from its first snapshot (epoch 0
 * normally): |a - a_start| / |a|, the encoder's and the predictor's.
 * *out: {"sign", "params" (encoder floats), "start_a", "epochs", "encoder",
 * "predictor" (null: not both have one), "moved_a", "moved_a_predictor",
 * "only_a", "only_b" (epochs one side lacks)}. 0, or -1 with the reason in
 * err: a folder that cannot be read, no snapshots, no epoch in common,
 * encoders that differ (other architectures), a file that does not read. */
int rw_distance_dirs(const char *dir_a, const char *dir_b, json_t **out, char *err,
                     size_t errlen);

#endif
