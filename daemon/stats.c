/* Welch's t-test and the Student t distribution: the incomplete beta
 * function by its continued fraction, evaluated with the modified Lentz
 * method (see stats.h). */
#include "daemon/stats.h"

#include <math.h>

/* The continued fraction of I_x(a, b) (without its prefactor), converging
 * fast for x < (a + 1) / (a + b + 2); the caller swaps sides otherwise. */
static double betai_fraction(double a, double b, double x)
{
    const double tiny = 1e-300, eps = 1e-15;
    double c = 1.0, d = 1.0 - (a + b) * x / (a + 1.0);
    if (fabs(d) < tiny)
        d = tiny;
    d = 1.0 / d;
    double f = d;
    for (int m = 1; m <= 1000; m++) {
        /* the even step d_2m, then the odd step d_2m+1 */
        for (int odd = 0; odd < 2; odd++) {
            double num = odd ? -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
                             : m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m));
            d = 1.0 + num * d;
            if (fabs(d) < tiny)
                d = tiny;
            c = 1.0 + num / c;
            if (fabs(c) < tiny)
                c = tiny;
            d = 1.0 / d;
            double step = c * d;
            f *= step;
            if (odd && fabs(step - 1.0) < eps)
                return f;
        }
    }
    return f; /* not reached for the a, b of a t-test (a few dozen steps) */
}

double rd_stats_betai(double a, double b, double x)
{
    if (!(a > 0) || !(b > 0) || !(x >= 0) || !(x <= 1))
        return NAN;
    if (x == 0 || x == 1)
        return x;
    /* x^a (1-x)^b / B(a, b), in logarithms: B overflows for large a, b */
    double front = exp(lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log1p(-x));
    if (x < (a + 1.0) / (a + b + 2.0))
        return front * betai_fraction(a, b, x) / a;
    return 1.0 - front * betai_fraction(b, a, 1.0 - x) / b;
}

double rd_stats_t_two_sided_p(double t, double df)
{
    if (!(df > 0) || isnan(t))
        return NAN;
    if (isinf(t))
        return 0.0;
    /* P(|T| >= |t|) = I_{df/(df+t^2)}(df/2, 1/2) */
    return rd_stats_betai(df / 2.0, 0.5, df / (df + t * t));
}

int rd_stats_welch(double mean1, double std1, int n1, double mean2, double std2, int n2,
                   rd_welch *out)
{
    if (n1 < 2 || n2 < 2 || !isfinite(mean1) || !isfinite(mean2) || !isfinite(std1) ||
        !isfinite(std2))
        return -1;
    double v1 = std1 * std1 / n1, v2 = std2 * std2 / n2, v = v1 + v2;
    if (v == 0) { /* every seed the same number on both sides */
        out->t = mean1 == mean2 ? 0.0 : copysign(INFINITY, mean1 - mean2);
        out->df = n1 + n2 - 2;
        out->p = mean1 == mean2 ? 1.0 : 0.0;
        return 0;
    }
    out->t = (mean1 - mean2) / sqrt(v);
    out->df = v * v / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1));
    out->p = rd_stats_t_two_sided_p(out->t, out->df);
    return 0;
}
