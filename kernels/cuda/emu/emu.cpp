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
void emu_launch(dim3 g, dim3 b, std::function<void()> f)
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
