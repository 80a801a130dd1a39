/* The statistics behind `table`'s marks (daemon/stats.c): the regularized
 * incomplete beta function, Student t's two-sided p, Welch's t-test.
 *
 * References, with no scipy at hand: closed forms (I_x(1, 1) = x,
 * I_x(a, 1) = x^a, I_x(1, b) = 1 - (1-x)^b, I_1/2(a, a) = 1/2; for df 1,
 * p = 1 - (2/pi) atan|t|, for df 2, p = 1 - |t| / sqrt(2 + t^2)), the
 * t tables' 5% two-sided critical values, and for fractional df Simpson's
 * rule on the t density (python3, math.lgamma only, 400001 points on
 * s = |t| + w/(1-w)), whose df-2 values agree with the closed form to 1e-15. */
#include <criterion/criterion.h>
#include <math.h>

#include "daemon/stats.h"

Test(stats, incomplete_beta_against_closed_forms)
{
    const double xs[] = {0.0, 1e-6, 0.1, 0.37, 0.5, 0.9, 0.999, 1.0};
    for (size_t k = 0; k < sizeof xs / sizeof *xs; k++) {
        double x = xs[k];
        cr_expect_float_eq(rd_stats_betai(1, 1, x), x, 1e-14, "x %g", x);
        cr_expect_float_eq(rd_stats_betai(3.5, 1, x), pow(x, 3.5), 1e-14, "x %g", x);
        cr_expect_float_eq(rd_stats_betai(1, 2.5, x), 1 - pow(1 - x, 2.5), 1e-14, "x %g", x);
    }
    cr_expect_float_eq(rd_stats_betai(7.25, 7.25, 0.5), 0.5, 1e-14);
    cr_expect_float_eq(rd_stats_betai(400, 400, 0.5), 0.5, 1e-12); /* B(a, b) underflows */
    /* I_x(a, b) = 1 - I_1-x(b, a) */
    cr_expect_float_eq(rd_stats_betai(2.5, 0.5, 0.3) + rd_stats_betai(0.5, 2.5, 0.7), 1, 1e-14);
    cr_expect(isnan(rd_stats_betai(0, 1, 0.5)) && isnan(rd_stats_betai(1, 1, 1.5)) &&
              isnan(rd_stats_betai(1, -1, 0.5)) && isnan(rd_stats_betai(1, 1, NAN)));
}

Test(stats, t_two_sided_p_against_closed_forms_and_tables)
{
    const double ts[] = {0.0, 0.3, 1.0, 2.5, 12.706, 300.0};
    for (size_t k = 0; k < sizeof ts / sizeof *ts; k++) {
        double t = ts[k];
        cr_expect_float_eq(rd_stats_t_two_sided_p(t, 1), 1 - 2 / M_PI * atan(t), 1e-13, "t %g", t);
        cr_expect_float_eq(rd_stats_t_two_sided_p(-t, 2), 1 - t / sqrt(2 + t * t), 1e-13, "t %g",
                           t);
    }
    /* the tables' 5% two-sided critical values: p 0.05 to their 3-4 digits;
     * Simpson: 0.05001177 (df 10), 0.04999252 (df 2), 0.04999635 (df 20) */
    cr_expect_float_eq(rd_stats_t_two_sided_p(2.228, 10), 0.05001177181711122, 1e-10);
    cr_expect_float_eq(rd_stats_t_two_sided_p(4.303, 2), 0.04999252498521456, 1e-10);
    cr_expect_float_eq(rd_stats_t_two_sided_p(-2.086, 20), 0.049996354457437865, 1e-10);
    cr_expect_float_eq(rd_stats_t_two_sided_p(12.706, 1), 0.05, 1e-5);
    /* large df: the normal's 1.959964 */
    cr_expect_float_eq(rd_stats_t_two_sided_p(1.959964, 1e7), 0.05, 1e-6);
    /* fractional df (Simpson) */
    cr_expect_float_eq(rd_stats_t_two_sided_p(0.5, 3.5), 0.6468504393225344, 1e-10);
    cr_expect_float_eq(rd_stats_t_two_sided_p(3.0, 2.188), 0.08559245326082525, 1e-10);
    cr_expect_eq(rd_stats_t_two_sided_p(INFINITY, 3), 0.0);
    cr_expect(isnan(rd_stats_t_two_sided_p(1, 0)) && isnan(rd_stats_t_two_sided_p(NAN, 3)));
}

Test(stats, welch_t_test)
{
    rd_welch w;
    /* the table: raft 15.33 ± 0.69 vs rand-baseline 16.11 ± 3.18, 3
     * seeds each: t -0.41518, df 2.18791 (by hand), p 0.71522 (Simpson):
     * inside the seeds' spread, no mark */
    cr_assert_eq(rd_stats_welch(15.33, 0.69, 3, 16.11, 3.18, 3, &w), 0);
    cr_expect_float_eq(w.t, -0.4151815152529487, 1e-12);
    cr_expect_float_eq(w.df, 2.187906732113184, 1e-12);
    cr_expect_float_eq(w.p, 0.7152202197800256, 1e-9);
    /* equal spreads: df = n1 + n2 - 2 as Student's; t -12.247, p 2.552e-4 */
    cr_assert_eq(rd_stats_welch(-2.0, 0.1, 3, -1.0, 0.1, 3, &w), 0);
    cr_expect_float_eq(w.t, -sqrt(150.0), 1e-12);
    cr_expect_float_eq(w.df, 4.0, 1e-12);
    cr_expect_float_eq(w.p, 0.00025521674944193294, 1e-12);
    /* unequal sizes and spreads: t 1.19523, df 10.71875, p 0.25777 */
    cr_assert_eq(rd_stats_welch(1.0, 1.0, 5, 0.0, 2.0, 8, &w), 0);
    cr_expect_float_eq(w.t, 1.1952286093343936, 1e-12);
    cr_expect_float_eq(w.df, 10.71875, 1e-12);
    cr_expect_float_eq(w.p, 0.2577723544047234, 1e-9);
    /* no spread on one side: df of the other */
    cr_assert_eq(rd_stats_welch(1.0, 0.0, 4, 0.0, 1.0, 6, &w), 0);
    cr_expect_float_eq(w.df, 5.0, 1e-12);
    /* none on either: the difference is exact */
    cr_assert_eq(rd_stats_welch(1.0, 0.0, 2, 0.5, 0.0, 3, &w), 0);
    cr_expect(w.p == 0.0 && isinf(w.t) && w.t > 0);
    cr_assert_eq(rd_stats_welch(1.0, 0.0, 2, 1.0, 0.0, 3, &w), 0);
    cr_expect(w.p == 1.0 && w.t == 0.0);
    /* one seed on a side: nothing to test against */
    cr_expect_eq(rd_stats_welch(1.0, 0.0, 1, 0.0, 1.0, 5, &w), -1);
    cr_expect_eq(rd_stats_welch(1.0, 0.5, 5, 0.0, 0.0, 1, &w), -1);
    cr_expect_eq(rd_stats_welch(NAN, 0.5, 5, 0.0, 0.1, 3, &w), -1);
}
