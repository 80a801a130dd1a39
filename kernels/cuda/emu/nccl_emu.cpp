/* The NCCL stand-in (nccl.h): ranks meet in the folder the unique id names. */
#include <chrono>
#include <string>
#include <thread>
#include <vector>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "nccl.h"

struct emu_nccl_comm {
    std::string dir;
    int rank, world;
    long seq;          /* operations this rank has run */
    ncclResult_t err;  /* the first asynchronous error */
    bool aborted;
    int wait_ms;
};

namespace {
double now_ms(void)
{
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string op_path(const emu_nccl_comm *c, long seq, int rank)
{
    return c->dir + "/op" + std::to_string(seq) + ".r" + std::to_string(rank);
}

bool write_all(const std::string &path, const void *p, size_t n)
{
    const std::string tmp = path + ".tmp";
    int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return false;
    const char *c = (const char *)p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w <= 0) { close(fd); return false; }
        c += w;
        n -= (size_t)w;
    }
    close(fd);
    return rename(tmp.c_str(), path.c_str()) == 0; /* whole, or not there */
}

bool read_when_there(const std::string &path, std::vector<char> &out, double deadline)
{
    for (;;) {
        int fd = open(path.c_str(), O_RDONLY);
        if (fd >= 0) {
            struct stat st;
            fstat(fd, &st);
            out.resize((size_t)st.st_size);
            size_t got = 0;
            while (got < out.size()) {
                ssize_t r = read(fd, out.data() + got, out.size() - got);
                if (r <= 0) break;
                got += (size_t)r;
            }
            close(fd);
            return got == out.size();
        }
        if (now_ms() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
}

/* Every rank's bytes of this operation, in rank order: false (and the
 * communicator's error set) when a peer does not come in time. */
bool exchange(emu_nccl_comm *c, const void *mine, size_t n, std::vector<std::vector<char>> &all)
{
    const long k = c->seq++;
    if (!write_all(op_path(c, k, c->rank), mine, n)) {
        c->err = ncclSystemError;
        return false;
    }
    all.assign(c->world, {});
    const double deadline = now_ms() + c->wait_ms;
    for (int r = 0; r < c->world; r++)
        if (!read_when_there(op_path(c, k, r), all[r], deadline)) {
            c->err = ncclRemoteError;
            return false;
        }
    /* every rank has read operation k - 2 before writing k - 1, which this
     * rank has read: its own file of k - 2 can go */
    if (k >= 2) unlink(op_path(c, k - 2, c->rank).c_str());
    return true;
}

float bf16_to_f(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
} // namespace

ncclResult_t ncclGetUniqueId(ncclUniqueId *id)
{
    /* in EMU_NCCL_DIR where set (a test's folder, removed with it) */
    const char *parent = getenv("EMU_NCCL_DIR");
    char tmpl[112];
    snprintf(tmpl, sizeof tmpl, "%s/emu-nccl-XXXXXX", parent && *parent ? parent : "/tmp");
    if (!mkdtemp(tmpl)) return ncclSystemError;
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "%s", tmpl);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t *)
{
    if (nranks < 1 || rank < 0 || rank >= nranks || !id.internal[0]) return ncclInvalidArgument;
    const char *w = getenv("EMU_NCCL_WAIT_MS");
    *comm = new emu_nccl_comm{id.internal, rank, nranks, 0, ncclSuccess, false, w && atoi(w) > 0 ? atoi(w) : 60000};
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *async)
{
    *async = c->err;
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t c)
{
    c->aborted = true;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t c)
{
    /* the last operations' files; the last rank to leave takes the folder */
    for (long k = c->seq - 2; k < c->seq; k++)
        if (k >= 0) unlink(op_path(c, k, c->rank).c_str());
    rmdir(c->dir.c_str());
    delete c;
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t c, cudaStream_t)
{
    if (type != ncclFloat32 && type != ncclBfloat16) return ncclInvalidArgument;
    if (type == ncclBfloat16 && op != ncclSum) return ncclInvalidArgument;
    const size_t es = type == ncclFloat32 ? 4 : 2, bytes = count * es;
    emu_enqueue_op("ncclAllReduce", 2.0 * bytes, [=] {
        if (c->err != ncclSuccess || c->aborted) return;
        std::vector<std::vector<char>> all;
        if (!exchange(c, send, bytes, all)) return;
        for (auto &b : all)
            if (b.size() != bytes) { c->err = ncclInvalidUsage; return; }
        for (size_t i = 0; i < count; i++) {
            if (type == ncclFloat32) {
                float s = 0.0f;
                for (int r = 0; r < c->world; r++) s += ((const float *)all[r].data())[i];
                ((float *)recv)[i] = op == ncclAvg ? s / (float)c->world : s;
            } else { /* each partial sum rounded to bf16, as a ring's hops are */
                float s = bf16_to_f(((const uint16_t *)all[0].data())[i]);
                for (int r = 1; r < c->world; r++)
                    s = bf16_to_f(f_to_bf16(s + bf16_to_f(((const uint16_t *)all[r].data())[i])));
                ((uint16_t *)recv)[i] = f_to_bf16(s);
            }
        }
    });
    return ncclSuccess;
}

ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t type, int root,
                           ncclComm_t c, cudaStream_t)
{
    if (type != ncclUint8 || root < 0 || root >= c->world) return ncclInvalidArgument;
    emu_enqueue_op("ncclBroadcast", 2.0 * count, [=] {
        if (c->err != ncclSuccess || c->aborted) return;
        std::vector<std::vector<char>> all;
        /* only the root's bytes travel; the others say they are there */
        if (!exchange(c, send, c->rank == root ? count : 0, all)) return;
        if (all[root].size() != count) { c->err = ncclInvalidUsage; return; }
        memcpy(recv, all[root].data(), count);
    });
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r)
{
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclSystemError: return "unhandled system error (emulated)";
    case ncclRemoteError: return "remote process exited or there was a network error (emulated: a peer did not come in time)";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclInProgress: return "operation in progress";
    default: return "emulated NCCL error";
    }
}
