/* libFuzzer target: bytes from a peer -> frame reader -> message check, as
 * the daemon reads a connection. Never a crash; a rejected message has a
 * code and a reason. */
#include <stdlib.h>
#include <string.h>

#include "proto/frame.h"
#include "proto/msg.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    rw_frame_reader r;
    rw_frame_reader_init(&r, 1 << 16);
    /* in two pieces, as reads split a stream anywhere */
    size_t cut = size ? data[0] % (size + 1) : 0;
    if (rw_frame_reader_feed(&r, data, cut) != 0 || rw_frame_reader_feed(&r, data + cut, size - cut) != 0) {
        rw_frame_reader_free(&r);
        return 0;
    }
    for (;;) {
        json_t *m = NULL;
        char err[512];
        rw_frame_status st = rw_frame_reader_next(&r, &m, err, sizeof err);
        if (!m)
            break;
        for (int from = 0; from < 2; from++) {
            const char *type = NULL, *code = NULL;
            char why[512] = "";
            if (rw_msg_check(m, from ? RW_FROM_WORKER : RW_FROM_CLIENT, &type, &code, why,
                             sizeof why) != 0 && (!code || !why[0]))
                abort();
        }
        json_decref(m);
        (void)st;
    }
    rw_frame_reader_free(&r);
    return 0;
}
