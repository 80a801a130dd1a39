/* The statistics of `table`'s marks: Welch's t-test of a variant against
 * the random baseline over their seeds, and the Student t distribution it
 * needs (through the regularized incomplete beta function). Pure: tested on
 * its own (tests/test_stats.c). */
#ifndef RUNAWAY_DAEMON_STATS_H
#define RUNAWAY_DAEMON_STATS_H

/* I_x(a, b), the regularized incomplete beta function, for a, b > 0 and x in
 * [0, 1]; NAN outside. */
double rd_stats_betai(double a, double b, double x);

/* P(|T| >= |t|) for T Student-t with df > 0 degrees of freedom (df need not
 * be a whole number: Welch's is not); NAN where df <= 0 or t is NAN. */
double rd_stats_t_two_sided_p(double t, double df);

/* Welch's t-test of two samples given by mean, sample std and size. */
typedef struct rd_welch {
    double t;  /* (mean1 - mean2) / its standard error */
    double df; /* Welch–Satterthwaite degrees of freedom */
    double p;  /* two-sided */
} rd_welch;

/* 0 and *out filled; -1 where a side has fewer than 2 values (no spread to
 * test against) or a number is not finite. Both sides without spread: p 0
 * where the means differ, 1 where they are equal (t is then +-inf or 0). */
int rd_stats_welch(double mean1, double std1, int n1, double mean2, double std2, int n2,
                   rd_welch *out);

#endif
