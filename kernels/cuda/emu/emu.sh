# Sourced by kernels/cuda/emu/run.sh and tools/step-cost: the CUDA backend
# compiled against the emulator, and what a program linking it needs.
#
#   emu_setup BUILD_DIR   sets EMU_CXX (the emulated .cu files' compiler
#                         line) and, from the meson build BUILD_DIR, the
#                         arrays emu_cpu (the kernels' CPU objects, what the
#                         backend suite links), emu_worker (worker and proto
#                         libraries, the collective, profile and Gloo objects
#                         and their libraries) and emu_libs (oneDNN,
#                         OpenBLAS, libm, pthread)
#   emu_objects OUT       rewrites (rewrite.py) and compiles every
#                         kernels/cuda/*.cu, emu.cpp and nccl_emu.cpp into
#                         OUT, on all cores; sets emu_objs. An object newer
#                         than everything it was made from (g++ -MMD's list,
#                         rewrite.py, the flags) is kept: a second build of
#                         an unchanged tree compiles nothing.
emu_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
emu_root=$(cd "$emu_here/../../.." && pwd)

emu_setup() {
    local B=$1
    # KB_CUDA_EMU: the launchers' byte declarations (KB_CUDA_BYTES) reach the emulator
    EMU_CXX="g++ -std=c++17 -O1 -g -fopenmp -DKB_CUDA_EMU -I$emu_here -I$emu_root -I$B"
    local K="$B/kernels/librwkernels.a.p"
    emu_cpu=("$K"/cpu_*.o)
    # OpenBLAS's OpenMP build where installed, as meson links it
    local ob=/usr/lib/x86_64-linux-gnu/openblas-openmp
    [ -e "$ob/libopenblas.so" ] || ob=/usr/lib/x86_64-linux-gnu/openblas-pthread
    emu_libs=(-ldnnl -L"$ob" -Wl,-rpath,"$ob" -lopenblas -lm -lpthread)
    emu_worker=("$B/worker/librwworker.a" "$B/worker/librwdata.a" "$B/worker/librwweights.a"
                "$B/proto/librwproto.a" "$K/collective.c.o" "$K/comm_queue.c.o" "$K/profile.c.o")
    if [ -f "$K/gloo_comm.cc.o" ]; then emu_worker+=("$K/gloo_comm.cc.o" -lgloo); fi
    emu_worker+=(-ljansson -lz -lpng16 -ljpeg -lyaml)
}

# 0 when $1 exists and is newer than every later argument
emu_fresh() {
    local t=$1 f
    shift
    [ -e "$t" ] || return 1
    for f in "$@"; do [ "$f" -nt "$t" ] && return 1; done
    return 0
}

# Compiles $2 (.cpp) into $3 (.o) unless fresh; $1: the rewrite of a .cu or "".
emu_compile_one() {
    local cu=$1 cpp=$2 o=$3 d=${3%.o}.d
    if [ -n "$cu" ] && ! emu_fresh "$cpp" "$cu" "$emu_here/rewrite.py"; then
        python3 "$emu_here/rewrite.py" "$cu" "$cpp"
    fi
    if [ -f "$d" ]; then
        # the dependency list g++ wrote last time: the .cpp and every header
        local deps
        deps=$(sed -e 's/^[^:]*://' -e 's/\\$//' "$d")
        # shellcheck disable=SC2086
        emu_fresh "$o" $deps "$(dirname "$o")/flags" && return 0
    fi
    $EMU_CXX -MMD -MF "$d" -c "$cpp" -o "$o"
}

emu_objects() {
    local out=$1 f n jobs pids=() rc=0 p
    mkdir -p "$out"
    # a change of flags (another build folder, another define) rebuilds all
    if [ "$(cat "$out/flags" 2>/dev/null)" != "$EMU_CXX" ]; then echo "$EMU_CXX" > "$out/flags"; fi
    jobs=$(nproc 2>/dev/null || echo 1)
    emu_objs=()
    for f in "$emu_root"/kernels/cuda/*.cu "$emu_here/emu.cpp" "$emu_here/nccl_emu.cpp"; do
        n=$(basename "$f")
        n=${n%.*}
        emu_objs+=("$out/$n.o")
        while [ "${#pids[@]}" -ge "$jobs" ]; do
            wait "${pids[0]}" || rc=1
            pids=("${pids[@]:1}")
        done
        if [ "$n" = emu ] || [ "$n" = nccl_emu ]; then
            emu_compile_one "" "$f" "$out/$n.o" &
        else
            emu_compile_one "$f" "$out/$n.cpp" "$out/$n.o" &
        fi
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    return $rc
}
