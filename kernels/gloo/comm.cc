/* Gloo behind the C collective interface (kernels/collective.h).
 *
 * Rendezvous: a gloo::rendezvous::Store whose set/get go to the caller's
 * kb_store (the daemon relays it), then a TCP device on the caller's
 * hostname (ephemeral port) and a full mesh of pairs.
 *
 * Timeouts: the context timeout covers the rendezvous waits, pair
 * connection and every operation, so a dead or silent peer turns into a
 * gloo exception. Every C++ exception stops here and becomes -1 plus a
 * message; the first one marks the communicator broken, because after a
 * failed operation the ring's pairs are in an unknown state. */
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

extern "C" {
#include "kernels/bf16.h"
#include "kernels/collective.h"
}

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

/* Gloo's keys are bare ranks ("0", "1", ...); the prefix keeps them apart
 * from whatever else the caller keeps in the same store (the NCCL id). */
const char *const kKeyPrefix = "gloo/";

class CStore : public gloo::rendezvous::Store {
  public:
    CStore(const kb_store *s, int world, milliseconds timeout)
        : s_(*s), timeout_(timeout),
          // One address per peer; room to spare for the caller's framing.
          cap_(65536 + (size_t)world * gloo::transport::Address::kMaxByteSize)
    {
    }

    void set(const std::string &key, const std::vector<char> &data) override
    {
        std::string k = kKeyPrefix + key;
        if (s_.set(s_.ud, k.c_str(), data.data(), data.size()) != 0)
            throw gloo::IoException("store: set '" + k + "' failed");
    }

    std::vector<char> get(const std::string &key) override { return fetch(key, timeout_); }

    void wait(const std::vector<std::string> &keys) override { wait(keys, timeout_); }

    /* The C store's get already blocks until the key exists, so waiting is
     * a get per key with whatever is left of the timeout. */
    void wait(const std::vector<std::string> &keys, const milliseconds &timeout) override
    {
        auto deadline = Clock::now() + timeout;
        for (const auto &key : keys) {
            auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
            fetch(key, left.count() > 0 ? left : milliseconds(0));
        }
    }

  private:
    std::vector<char> fetch(const std::string &key, milliseconds timeout)
    {
        std::string k = kKeyPrefix + key;
        std::vector<char> buf(cap_);
        for (int attempt = 0; attempt < 2; attempt++) {
            size_t len = 0;
            int ms = (int)std::min<long long>(timeout.count(), INT32_MAX);
            if (s_.get(s_.ud, k.c_str(), buf.data(), buf.size(), &len, ms) != 0)
                throw gloo::IoException("store: no value for '" + k + "' within " +
                                        std::to_string(timeout.count()) + " ms");
            if (len <= buf.size()) {
                buf.resize(len);
                return buf;
            }
            buf.resize(len); // value larger than guessed: fetch it again whole
        }
        throw gloo::IoException("store: value of '" + k + "' keeps growing");
    }

    kb_store s_;
    milliseconds timeout_;
    size_t cap_;
};

struct GlooComm {
    kb_comm c; // c.impl points back here
    std::shared_ptr<gloo::transport::Device> dev;
    std::shared_ptr<gloo::rendezvous::Context> ctx; // declared after dev: destroyed first
    milliseconds timeout;
    bool broken = false;
    std::string first_error;
};

GlooComm *impl(kb_comm *c) { return static_cast<GlooComm *>(c->impl); }

/* Runs one operation; any exception becomes -1 + message and breaks the
 * communicator, so later calls fail fast instead of talking to a ring in an
 * unknown state. */
template <typename F>
int guarded(kb_comm *c, const char *what, char *err, size_t errlen, F &&op)
{
    GlooComm *g = impl(c);
    if (g->broken) {
        snprintf(err, errlen, "gloo %s: communicator broken by an earlier error: %s", what,
                 g->first_error.c_str());
        return -1;
    }
    std::string msg;
    try {
        op(g);
        return 0;
    } catch (const std::exception &e) {
        msg = e.what();
    } catch (...) {
        msg = "unknown exception";
    }
    g->broken = true;
    g->first_error = msg;
    c->broken = 1;
    snprintf(err, errlen, "gloo %s (rank %d of %d): %s", what, c->rank, c->world, msg.c_str());
    return -1;
}

int gloo_allreduce(kb_comm *c, float *buf, size_t n, kb_reduce_op op, char *err, size_t errlen)
{
    if (op != KB_REDUCE_SUM && op != KB_REDUCE_AVG) {
        snprintf(err, errlen, "gloo allreduce: unknown reduce op %d", (int)op);
        return -1;
    }
    return guarded(c, "allreduce", err, errlen, [&](GlooComm *g) {
        if (n == 0)
            return;
        gloo::AllreduceOptions opts(g->ctx);
        opts.setOutput(buf, n);
        // Ring allreduce: each chunk is reduced once and then copied, so every
        // rank ends with the same bits (needed for replicas to stay in sync).
        void (*sum)(void *, const void *, const void *, size_t) = &gloo::sum<float>;
        opts.setReduceFunction(sum);
        opts.setTimeout(g->timeout);
        gloo::allreduce(opts);
        if (op == KB_REDUCE_AVG) {
            // Divide rather than multiply by 1/world: correctly rounded, and
            // identical on every rank since the sums are.
            float w = (float)c->world;
            for (size_t i = 0; i < n; i++)
                buf[i] /= w;
        }
    });
}

/* Gloo's reduction callback on bf16 elements: each addition in fp32. */
void bf16_sum(void *out, const void *a, const void *b, size_t n)
{
    uint16_t *o = static_cast<uint16_t *>(out);
    const uint16_t *x = static_cast<const uint16_t *>(a), *y = static_cast<const uint16_t *>(b);
    for (size_t i = 0; i < n; i++)
        o[i] = kb_bf16_from_float(kb_float_from_bf16(x[i]) + kb_float_from_bf16(y[i]));
}

int gloo_allreduce_bf16(kb_comm *c, uint16_t *buf, size_t n, char *err, size_t errlen)
{
    return guarded(c, "allreduce (bf16)", err, errlen, [&](GlooComm *g) {
        if (n == 0)
            return;
        gloo::AllreduceOptions opts(g->ctx);
        opts.setOutput(buf, n);
        void (*sum)(void *, const void *, const void *, size_t) = &bf16_sum;
        opts.setReduceFunction(sum);
        opts.setTimeout(g->timeout);
        gloo::allreduce(opts);
    });
}

int gloo_broadcast(kb_comm *c, void *buf, size_t bytes, int root, char *err, size_t errlen)
{
    if (root < 0 || root >= c->world) {
        snprintf(err, errlen, "gloo broadcast: root %d outside world of %d", root, c->world);
        return -1;
    }
    return guarded(c, "broadcast", err, errlen, [&](GlooComm *g) {
        if (bytes == 0)
            return;
        gloo::BroadcastOptions opts(g->ctx);
        opts.setOutput((uint8_t *)buf, bytes); // in place, also on the root
        opts.setRoot(root);
        opts.setTimeout(g->timeout);
        gloo::broadcast(opts);
    });
}

int gloo_barrier(kb_comm *c, char *err, size_t errlen)
{
    return guarded(c, "barrier", err, errlen, [&](GlooComm *g) {
        gloo::BarrierOptions opts(g->ctx);
        opts.setTimeout(g->timeout);
        gloo::barrier(opts);
    });
}

void gloo_destroy(kb_comm *c)
{
    // The context (pairs, sockets) goes before the device and its loop thread;
    // a peer still waiting on us sees the closed connection and fails.
    delete impl(c);
}

} // namespace

extern "C" kb_comm *kb_gloo_create(const kb_store *store, int rank, int world,
                                   const char *hostname, int timeout_ms, char *err,
                                   size_t errlen)
{
    if (!store || !store->set || !store->get || !hostname || world < 1 || rank < 0 ||
        rank >= world || timeout_ms <= 0) {
        snprintf(err, errlen, "gloo: bad arguments (rank %d, world %d, timeout %d ms%s)", rank,
                 world, timeout_ms, !store || !store->set || !store->get ? ", no store" : "");
        return NULL;
    }
    // A peer that dies leaves a socket whose next write raises SIGPIPE, which
    // would kill this process instead of failing the operation. Only the
    // default disposition is replaced; a handler someone installed stays.
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL &&
        !(old.sa_flags & SA_SIGINFO))
        signal(SIGPIPE, SIG_IGN);

    GlooComm *g = nullptr;
    try {
        g = new GlooComm();
        g->timeout = milliseconds(timeout_ms);
        gloo::transport::tcp::attr attr;
        attr.hostname = hostname;
        g->dev = gloo::transport::tcp::CreateDevice(attr);
        g->ctx = std::make_shared<gloo::rendezvous::Context>(rank, world);
        g->ctx->setTimeout(g->timeout); // before connecting: pairs copy it
        CStore s(store, world, g->timeout);
        g->ctx->connectFullMesh(s, g->dev);
    } catch (const std::exception &e) {
        snprintf(err, errlen, "gloo rendezvous (rank %d of %d on %s): %s", rank, world, hostname,
                 e.what());
        delete g;
        return NULL;
    } catch (...) {
        snprintf(err, errlen, "gloo rendezvous (rank %d of %d on %s): unknown exception", rank,
                 world, hostname);
        delete g;
        return NULL;
    }
    g->c.rank = rank;
    g->c.world = world;
    g->c.broken = 0;
    g->c.name = "gloo";
    g->c.impl = g;
    g->c.allreduce = gloo_allreduce;
    g->c.broadcast = gloo_broadcast;
    g->c.barrier = gloo_barrier;
    g->c.allreduce_bf16 = gloo_allreduce_bf16;
    g->c.destroy = gloo_destroy;
    return &g->c;
}
