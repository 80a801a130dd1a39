/* The emulated launch: blocks in turn, each CUDA thread a coroutine (kernels/cuda/emu/run.sh). */
#include <ucontext.h>
#include <vector>
#include "cuda_runtime.h"
uint3e threadIdx, blockIdx;
dim3 blockDim, gridDim;
namespace {
struct th { ucontext_t ctx; bool done; bool at_barrier; bool at_grid; };
std::vector<th> ths;
std::vector<char *> stacks;
ucontext_t sched;
int cur;
std::function<void()> *body;
const size_t STACK = 256 * 1024;
double shfl_buf[1024];
void entry(void) { (*body)(); ths[cur].done = true; swapcontext(&ths[cur].ctx, &sched); }
}
void emu_sync(void) { ths[cur].at_barrier = true; swapcontext(&ths[cur].ctx, &sched); }
static bool coop_running;
static unsigned char *dsmem_cur;
void emu_grid_sync(void)
{
    if (!coop_running) { fprintf(stderr, "emu: grid barrier outside a cooperative launch\n"); abort(); }
    ths[cur].at_grid = true;
    swapcontext(&ths[cur].ctx, &sched);
}
unsigned char *emu_dyn_smem(void) { return dsmem_cur; }
static void emu_warp_yield(void) { swapcontext(&ths[cur].ctx, &sched); }
double emu_shfl_d(double v, int o)
{
    unsigned t = threadIdx.x;
    shfl_buf[t] = v;
    emu_warp_yield();
    unsigned lane = t & 31, src = (t & ~31u) | (lane ^ (unsigned)o);
    double r = shfl_buf[src];
    emu_warp_yield();
    return r;
}
static void emu_run(dim3 g, dim3 b, std::function<void()> f)
{
    gridDim = g;
    blockDim = b;
    body = &f;
    unsigned nt = b.x * b.y * b.z;
    if (nt > 1024 || nt == 0 || g.x == 0 || g.y == 0) { fprintf(stderr, "emu: bad launch %u %u\n", g.x, nt); abort(); }
    while (stacks.size() < nt) stacks.push_back((char *)malloc(STACK));
    ths.resize(nt);
    for (unsigned by = 0; by < g.y; by++)
        for (unsigned bx = 0; bx < g.x; bx++) {
            for (unsigned t = 0; t < nt; t++) {
                getcontext(&ths[t].ctx);
                ths[t].ctx.uc_stack.ss_sp = stacks[t];
                ths[t].ctx.uc_stack.ss_size = STACK;
                ths[t].ctx.uc_link = NULL;
                ths[t].done = false;
                makecontext(&ths[t].ctx, entry, 0);
            }
            for (unsigned t = 0; t < nt; t++)
                ths[t].at_barrier = false;
            for (;;) {
                int ran = 0, live = 0, waiting = 0;
                for (unsigned t = 0; t < nt; t++) {
                    if (ths[t].done || ths[t].at_barrier) continue;
                    cur = (int)t;
                    threadIdx = {t, 0, 0};
                    blockIdx = {bx, by, 0};
                    swapcontext(&sched, &ths[t].ctx);
                    ran++;
                }
                for (unsigned t = 0; t < nt; t++) {
                    if (ths[t].done) continue;
                    live++;
                    if (ths[t].at_barrier) waiting++;
                }
                if (live == 0) break;
                if (waiting == live) { /* everyone at the barrier: release */
                    for (unsigned t = 0; t < nt; t++) ths[t].at_barrier = false;
                    if (live != (int)nt) { fprintf(stderr, "emu: __syncthreads after some threads exited\n"); abort(); }
                    continue;
                }
                if (ran == 0) { fprintf(stderr, "emu: deadlock\n"); abort(); }
            }
        }
}

/* A cooperative grid: every thread of every block a coroutine at once.
 * Phase by phase, each block in turn runs (its __syncthreads as in
 * emu_run) until all its live threads wait at the grid barrier or are
 * done; when every block is there, the barrier opens. */
static void emu_run_coop(dim3 g, dim3 b, size_t smem, std::function<void()> f)
{
    gridDim = g;
    blockDim = b;
    body = &f;
    const unsigned nt = b.x * b.y * b.z, nb = g.x * g.y, total = nt * nb;
    if (nt > 1024 || nt == 0 || nb == 0) { fprintf(stderr, "emu: bad cooperative launch %u %u\n", nb, nt); abort(); }
    while (stacks.size() < total) stacks.push_back((char *)malloc(STACK));
    ths.resize(total);
    std::vector<std::vector<unsigned char>> dsm(nb, std::vector<unsigned char>(smem ? smem : 1));
    for (unsigned t = 0; t < total; t++) {
        getcontext(&ths[t].ctx);
        ths[t].ctx.uc_stack.ss_sp = stacks[t];
        ths[t].ctx.uc_stack.ss_size = STACK;
        ths[t].ctx.uc_link = NULL;
        ths[t].done = ths[t].at_barrier = ths[t].at_grid = false;
        makecontext(&ths[t].ctx, entry, 0);
    }
    coop_running = true;
    for (;;) {
        int live_all = 0;
        for (unsigned blk = 0; blk < nb; blk++) {
            const unsigned base = blk * nt;
            dsmem_cur = dsm[blk].data();
            for (;;) {
                int ran = 0, live = 0, waiting = 0;
                for (unsigned t = 0; t < nt; t++) {
                    th &h = ths[base + t];
                    if (h.done || h.at_barrier || h.at_grid) continue;
                    cur = (int)(base + t);
                    threadIdx = {t, 0, 0};
                    blockIdx = {blk % g.x, blk / g.x, 0};
                    swapcontext(&sched, &h.ctx);
                    ran++;
                }
                int at_grid = 0;
                for (unsigned t = 0; t < nt; t++) {
                    th &h = ths[base + t];
                    if (h.done) continue;
                    live++;
                    if (h.at_barrier) waiting++;
                    if (h.at_grid) at_grid++;
                }
                if (live == 0 || at_grid == live) break;
                if (at_grid) { fprintf(stderr, "emu: threads of one block at different barriers\n"); abort(); }
                if (waiting == live) {
                    for (unsigned t = 0; t < nt; t++) ths[base + t].at_barrier = false;
                    if (live != (int)nt) { fprintf(stderr, "emu: __syncthreads after some threads exited\n"); abort(); }
                    continue;
                }
                if (ran == 0) { fprintf(stderr, "emu: deadlock\n"); abort(); }
            }
            for (unsigned t = 0; t < nt; t++) live_all += !ths[base + t].done;
        }
        if (live_all == 0) break;
        if (live_all != (int)total) { fprintf(stderr, "emu: grid barrier after some threads exited\n"); abort(); }
        for (unsigned t = 0; t < total; t++) ths[t].at_grid = false;
    }
    coop_running = false;
    dsmem_cur = NULL;
}

/* ---- stream ops, their counts (emu_cost.h) and stream capture ---- */
#include <map>
#include <string>
#include "emu_cost.h"
namespace {
/* name NULL: not counted (an event record) */
struct emu_op { const char *name; double bytes; std::function<void()> f; };
}
struct emu_graph { std::vector<emu_op> ops; };
namespace {
int cap_state; /* cudaStreamCaptureStatus */
emu_graph *cap_graph;
std::map<const char *, size_t> pinned;
int dry;
double next_bytes = -1; /* declared for the next launch; < 0: none */
struct cost { long calls, undeclared; double bytes; };
std::map<std::string, cost> costs; /* by name: one entry whatever the literal's address */
/* An op reaching the stream's head: counted, then run (not in dry mode). */
void run_op(const emu_op &op)
{
    if (op.name) {
        cost &c = costs[op.name];
        static const int trace = getenv("EMU_TRACE") != nullptr;
        if (trace)
            fprintf(stderr, "op %-36s %12.0f\n", op.name, op.bytes);
        c.calls++;
        if (op.bytes < 0)
            c.undeclared++;
        else
            c.bytes += op.bytes;
    }
    if (!dry)
        op.f();
}
}
void emu_launch_bytes(double bytes) { next_bytes = bytes; }
void emu_launch(const char *name, dim3 g, dim3 b, std::function<void()> f)
{
    const double bytes = next_bytes;
    next_bytes = -1; /* one declaration, one launch */
    emu_enqueue_op(name, bytes, [=] { emu_run(g, b, f); });
}
void emu_launch_coop(const char *name, dim3 g, dim3 b, size_t smem, std::function<void()> f)
{
    const double bytes = next_bytes;
    next_bytes = -1;
    emu_enqueue_op(name, bytes, [=] { emu_run_coop(g, b, smem, f); });
}
void emu_enqueue_op(const char *name, double bytes, std::function<void()> f)
{
    emu_op op{name, bytes, std::move(f)};
    if (cap_state == cudaStreamCaptureStatusNone)
        run_op(op);
    else if (cap_state == cudaStreamCaptureStatusActive)
        cap_graph->ops.push_back(std::move(op));
}
void emu_enqueue(std::function<void()> f) { emu_enqueue_op(NULL, 0, std::move(f)); }
extern "C" void emu_dry(int on) { dry = on != 0; }
extern "C" void emu_cost_reset(void) { costs.clear(); }
extern "C" int emu_cost_read(emu_cost *out, int max)
{
    int i = 0;
    for (auto &kv : costs) {
        if (i < max)
            out[i] = {kv.first.c_str(), kv.second.calls, kv.second.bytes, kv.second.undeclared};
        i++;
    }
    return i;
}
int emu_capture_state(void) { return cap_state; }
void emu_capture_invalidate(void)
{
    if (cap_state == cudaStreamCaptureStatusActive)
        cap_state = cudaStreamCaptureStatusInvalidated;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode)
{
    if (cap_state != cudaStreamCaptureStatusNone)
        return cudaErrorStreamCaptureUnsupported;
    cap_state = cudaStreamCaptureStatusActive;
    cap_graph = new emu_graph;
    return 0;
}
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *g)
{
    int st = cap_state;
    cap_state = cudaStreamCaptureStatusNone;
    if (st == cudaStreamCaptureStatusNone) { *g = NULL; return cudaErrorStreamCaptureUnsupported; }
    if (st == cudaStreamCaptureStatusInvalidated) { delete cap_graph; cap_graph = NULL; *g = NULL; return cudaErrorStreamCaptureInvalidated; }
    *g = cap_graph;
    cap_graph = NULL;
    return 0;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus *st) { *st = cap_state; return 0; }
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long)
{
    if (cap_state != cudaStreamCaptureStatusNone) return cudaErrorStreamCaptureUnsupported;
    *e = new emu_graph(*g);
    return 0;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t)
{
    if (cap_state != cudaStreamCaptureStatusNone) return cudaErrorStreamCaptureUnsupported;
    for (auto &op : e->ops)
        run_op(op);
    return 0;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) { delete e; return 0; }
cudaError_t cudaGraphDestroy(cudaGraph_t g) { delete g; return 0; }
cudaError_t cudaMallocHost(void **p, size_t n)
{
    if (cudaError_t e = emu_unsafe_in_capture()) return e;
    *p = malloc(n ? n : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    pinned[(const char *)*p] = n;
    return 0;
}
cudaError_t cudaFreeHost(void *p)
{
    pinned.erase((const char *)p);
    free(p);
    return 0;
}
int emu_is_pinned(const void *p)
{
    const char *c = (const char *)p;
    auto it = pinned.upper_bound(c);
    if (it == pinned.begin()) return 0;
    --it;
    return c >= it->first && c < it->first + (it->second ? it->second : 1);
}
