/* Prints every spec field as "a.b.c<TAB>default", one a line, from the
 * real field table (rw_spec_flatten of the defaults), for tests/docs_check.py
 * to hold docs/specs.md to. loss.kind is set to unified for the listing
 * only: the canonical YAML leaves alpha and beta out for the other kinds. */
#include <stdio.h>
#include <string.h>

#include "proto/spec.h"

int main(void)
{
    static char lines[RW_SPEC_FIELD_MAX][RW_SPEC_FIELD_MAX];
    rw_spec s, byol;
    rw_spec_defaults(&s);
    rw_spec_resolve(&s);
    byol = s;
    s.loss.kind = RW_LOSS_UNIFIED;
    int n = rw_spec_flatten(&s, lines, RW_SPEC_FIELD_MAX);
    if (n <= 0) {
        fprintf(stderr, "spec_fields: the default spec cannot be rendered\n");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        char *colon = strchr(lines[i], ':');
        if (!colon)
            continue;
        *colon = '\0';
        char value[RW_SPEC_FIELD_MAX];
        if (!strcmp(lines[i], "loss.kind")) /* the default, not the listing's */
            snprintf(value, sizeof value, "%s", rw_loss_kind_name(byol.loss.kind));
        else
            rw_spec_value_short(colon + 1, value, sizeof value);
        printf("%s\t%s\n", lines[i], value);
    }
    return 0;
}
