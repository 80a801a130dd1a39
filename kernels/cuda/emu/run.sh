#!/usr/bin/env bash
# The CUDA backend's own code on a machine WITHOUT a GPU: every .cu file of
# kernels/cuda is compiled as plain C++ against small stand-ins for the CUDA
# runtime, cuDNN and cuBLAS (this folder), each CUDA thread a coroutine that
# yields at __syncthreads and at warp shuffles, convolutions and GEMMs by
# naive loops that check the descriptors they are given. The backend,
# backend_model, backend_augment, graph and profile suites then run against it (the suites
# see a "GPU" that computes in exact host arithmetic), and dist_gpu's ranks
# meet through an NCCL stand-in (nccl.h: processes of one machine, through
# files). It checks the kernels'
# indexing, reductions, barriers and the plumbing of descriptors, GEMM
# arguments and collectives; not timing, memory model, TF32 or the real libraries: that is
# tools/device-check's job on a GPU. Stream capture is emulated too: ops
# are recorded instead of run, and what a GPU refuses inside a capture (a
# host wait, an allocation, a copy from pageable memory) fails it.
# Cooperative launches (KB_CUDA_COOP_LAUNCH) run phase by phase between
# grid barriers; the emulated device has EMU_SMS multiprocessors (default 4,
# so that small tensors take the one-read batch norms) and an H100's shared
# memory.
#
#   kernels/cuda/emu/run.sh [BUILD_DIR] [criterion options...]
#   (BUILD_DIR: a meson build of this tree, default build-cuda; the suites'
#   CPU side links its objects.) Slow: the model suite takes ~15 minutes.
#   EMU_SUITES="backend" (a subset of "backend backend_augment graph profile
#   dist_gpu backend_model", the default) builds and runs only those; criterion
#   options such as --filter 'backend/bf16_*' go to every suite run.
#
# tools/step-cost runs the same emulated backend in dry mode (emu_cost.h):
# every stream op is counted by name when it runs, eagerly or in a launched
# graph, and nothing is computed, so one step of the paper's setup costs
# about a second. A kernel's bytes are what its launcher declares just before
# the launch (KB_CUDA_BYTES in kernels/cuda/cuda.h: the extents of the tensors
# it reads plus those it writes, read-modify-write twice; nothing in a GPU
# build); a cuDNN convolution's are x, w and y in their types, the output
# again when beta != 0, and the workspace the stand-in asks for; a GEMM's A,
# B and C (C again when beta != 0); a memset's n, a transfer's n, a device
# copy's 2n. It prints one replayed step's (graphs A and B and the per-step
# uploads and downloads) calls and bytes per kind of op and per kernel, and
# ends with "launches per step: N" (kernels, library calls, memsets and
# memcpys) and "bytes per step: X.XX GB" (1e9 bytes). A launch without a
# declaration is an error that names the kernel. Objects are cached in
# build/step-cost (emu.sh: compiled and linked as here).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
B=$(cd "$root/${1:-build-cuda}" && pwd)
shift || true
# EMU_OUT=DIR keeps the objects and suites there (a second run compiles
# only what changed; a suite can then be run again by hand, under gdb)
if [ -n "${EMU_OUT:-}" ]; then
    out=$EMU_OUT
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi
. "$here/emu.sh"
emu_setup "$B"
emu_objects "$out"
libs=("${emu_libs[@]}" -lcriterion)
suites=(${EMU_SUITES:-backend backend_augment graph profile dist_gpu backend_model})
for t in "${suites[@]}"; do
    case $t in backend|backend_augment|backend_model|graph|profile|dist_gpu) ;; *) echo "EMU_SUITES: no suite $t" >&2; exit 2 ;; esac
done
has() { [[ " ${suites[*]} " == *" $1 "* ]]; }
for t in "${suites[@]}"; do
    gcc -std=gnu11 -O1 -g -I"$root" -I"$B" -c "$root/tests/test_$t.c" -o "$out/test_$t.o"
done
has backend && g++ -fopenmp -o "$out/test_backend" "$out/test_backend.o" "${emu_objs[@]}" "${emu_cpu[@]}" "${libs[@]}"
for t in backend_augment backend_model graph profile dist_gpu; do
    has $t || continue
    extra=()
    # dist_gpu also runs runaway-bench --devices' GPU ranks
    [ "$t" = dist_gpu ] && extra=("$B/worker/runaway-bench.p/bench_dist.c.o")
    g++ -fopenmp -o "$out/test_$t" "$out/test_$t.o" "${extra[@]}" "${emu_objs[@]}" "${emu_cpu[@]}" \
        "${emu_worker[@]}" "${libs[@]}"
done
rc=0
for t in "${suites[@]}"; do
    echo "== $t (emulated GPU)"
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$out/test_$t" --jobs 1 "$@" || rc=1
done
exit $rc
