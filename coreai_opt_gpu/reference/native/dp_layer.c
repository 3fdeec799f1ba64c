/* One layer of the exact 1-D k-means DP by divide and conquer, for the host path.

   The same computation as `reference.kmeans_1d_exact._next_layer` (numpy), operation for
   operation in float64 (built with -ffp-contract=off, no fast-math), so the result is bit for
   bit the numpy twin's and the Triton kernel's: for every block g and row i in [1, B]
     cur[g, i] = min_j prev[g, j] + cost(g, j, i),  opt[g, i] = the leftmost such j,
   over j in the divide and conquer's range [olo, min(i, ohi)], where
     cost = max(s2 - s1 * s1 / s0, 0) with s0 = 1 for an empty run,
   s0, s1, s2 the differences of the prefix sums of w, w*x, w*x^2 at i and j. */

#include <stdint.h>

static double run_cost(const double *w, const double *wx, const double *wxx, int64_t j,
                       int64_t i) {
    double s0 = w[i] - w[j];
    double s1 = wx[i] - wx[j];
    double s2 = wxx[i] - wxx[j];
    if (s0 <= 0.0) s0 = 1.0;
    double c = s2 - (s1 * s1) / s0;
    return (c >= 0.0 || c != c) ? c : 0.0; /* numpy's maximum(c, 0.0) */
}

static void solve(const double *prev, const double *w, const double *wx, const double *wxx,
                  double *cur, int64_t *opt, int64_t lo, int64_t hi, int64_t olo,
                  int64_t ohi) {
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2;
        int64_t last = mid < ohi ? mid : ohi;
        double best = 0.0;
        int64_t best_j = olo;
        for (int64_t j = olo; j <= last; ++j) {
            double value = prev[j] + run_cost(w, wx, wxx, j, mid);
            if (j == olo || value < best) { /* strict: the leftmost argmin */
                best = value;
                best_j = j;
            }
        }
        cur[mid] = best;
        opt[mid] = best_j;
        solve(prev, w, wx, wxx, cur, opt, lo, mid - 1, olo, best_j); /* left half */
        lo = mid + 1;                                                  /* right half */
        olo = best_j;
    }
}

/* prev, w, wx, wxx: [G, W] float64 rows (W = B + 1); cur [G, W] float64 and opt [G, W]
   int64 are written at rows 1..B (row 0 is left as given: zero). */
void dp_layer(const double *prev, const double *w, const double *wx, const double *wxx,
              int64_t g_count, int64_t width, double *cur, int64_t *opt) {
    for (int64_t g = 0; g < g_count; ++g) {
        int64_t row = g * width;
        solve(prev + row, w + row, wx + row, wxx + row, cur + row, opt + row, 1, width - 1, 0,
              width - 1);
    }
}
