/* libFuzzer target: a grid or spec file (YAML) -> rw_grid_parse. Any input
 * must give a grid or an error, never a crash; each expanded job's
 * canonical YAML must parse back to a spec that prints the same. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/grid.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    char err[2048];
    rw_grid g;
    if (rw_grid_parse((const char *)data, size, "fuzz.yaml", "/nonexistent", &g, err,
                      sizeof err) != 0) {
        if (!err[0])
            abort(); /* an error must say why */
        return 0;
    }
    static char a[1 << 16], b[1 << 16];
    for (size_t i = 0; i < g.njobs; i++) {
        if (rw_spec_to_yaml(&g.jobs[i].spec, a, sizeof a) < 0)
            continue;
        rw_spec s;
        if (rw_spec_parse(a, strlen(a), "canonical", "/nonexistent", &s, err, sizeof err) != 0) {
            fprintf(stderr, "canonical YAML of %s does not parse: %s\n%s\n", g.jobs[i].name, err,
                    a);
            abort();
        }
        if (rw_spec_to_yaml(&s, b, sizeof b) < 0 || strcmp(a, b) != 0) {
            fprintf(stderr, "canonical YAML of %s changes on a round trip:\n%s\n---\n%s\n",
                    g.jobs[i].name, a, b);
            abort();
        }
    }
    rw_grid_free(&g);
    return 0;
}
