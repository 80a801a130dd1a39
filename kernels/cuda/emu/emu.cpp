/* The emulated launch: blocks in turn, each CUDA thread a coroutine (kernels/cuda/emu/run.sh). */
#include <ucontext.h>
#include <vector>
#include "cuda_runtime.h"
uint3e threadIdx, blockIdx;
dim3 blockDim, gridDim;
namespace {
struct th { ucontext_t ctx; bool done; bool at_barrier; };
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
