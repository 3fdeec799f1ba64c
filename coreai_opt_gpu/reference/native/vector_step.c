/* One Lloyd step of vector k-means for the host path: assignment and member sums.

   The same computation as `reference.kmeans_vector.assign_update` (numpy), operation for
   operation (built with -ffp-contract=off, no fast-math), so codes, distances, sums and counts
   are bit for bit the numpy twin's. For problem p (block b = p / (P / G)) and vector i:
     dist[c] = sum over j = 0..D-1, in order, of w[j] * (x[j] - c[j])^2 in float32
   (w = 1 and no multiply when unweighted), code = the first c with the least distance; then,
   in vector order, in float64:
     counts[p, code, j] += w[j] (1 unweighted),  sums[p, code, j] += w[j] * x[j].
   Vectors go in tiles of TILE, copied component-major, so the compiler can run the innermost
   loop over a tile's vectors in SIMD lanes (each lane does the scalar arithmetic above). */

#include <math.h>
#include <stdint.h>
#include <string.h>

/* x86-64 with GCC: an AVX2 clone beside the baseline one, picked at load time by the CPU
   (1.7x on the 2-core VM; the same IEEE operations lane by lane, no FMA: -ffp-contract=off). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#define TILE 256
#define MAX_D 8

/* Codes and distances of a tile's `count` vectors (xt, wt: [d][TILE] component-major).
   Inlined with `weighted` and (for cluster_dim 2 and 4) d constants (`step_problem`), so the
   j loop unrolls and the t loop runs in SIMD lanes (codes held as int32 lanes beside the float32 distances). */
static inline __attribute__((always_inline)) void assign_tile_d(
    const float *restrict xt, const float *restrict wt, const float *restrict cp,
    int64_t count, const int64_t d, const int weighted, int64_t k, float *restrict best,
    uint8_t *restrict code) {
    int32_t label[TILE];
    for (int64_t t = 0; t < count; ++t) {
        best[t] = INFINITY;
        label[t] = 0;
    }
    for (int64_t c = 0; c < k; ++c) {
        const float *cc = cp + c * d;
        const int32_t here = (int32_t)c;
        for (int64_t t = 0; t < count; ++t) {
            float dist = xt[t] - cc[0];
            dist = dist * dist;
            if (weighted) dist = dist * wt[t];
            for (int64_t j = 1; j < d; ++j) {
                float diff = xt[j * TILE + t] - cc[j];
                diff = diff * diff;
                if (weighted) diff = diff * wt[j * TILE + t];
                dist = dist + diff;
            }
            /* strict: the first nearest wins; the label as a lane mask, so the loop
               stays branch free (a conditional store here kept gcc from vectorizing it) */
            const float held = best[t];
            const int32_t closer = -(int32_t)(dist < held);
            best[t] = dist < held ? dist : held;
            label[t] = (here & closer) | (label[t] & ~closer);
        }
    }
    for (int64_t t = 0; t < count; ++t) code[t] = (uint8_t)label[t];
}

/* One problem: its n vectors xb [n, d] (weights wb [n, d]) against centroids cp [k, d];
   writes codes and distances [n], member sums and counts [k, d]. Inlined with `weighted`
   and, for d = 2 and 4, d constant (`vector_step`). */
static inline __attribute__((always_inline)) void step_problem(
    const float *restrict xb, const float *restrict wb, const float *restrict cp, int64_t n,
    const int64_t d, const int weighted, int64_t k, uint8_t *restrict codes,
    float *restrict distances, double *restrict sums, double *restrict counts) {
    float xt[MAX_D * TILE], wt[MAX_D * TILE];
    memset(sums, 0, sizeof(double) * k * d);
    memset(counts, 0, sizeof(double) * k * d);
    for (int64_t start = 0; start < n; start += TILE) {
        const int64_t count = n - start < TILE ? n - start : TILE;
        const float *xs = xb + start * d;
        const float *ws = weighted ? wb + start * d : 0;
        for (int64_t t = 0; t < count; ++t)
            for (int64_t j = 0; j < d; ++j) {
                xt[j * TILE + t] = xs[t * d + j];
                if (weighted) wt[j * TILE + t] = ws[t * d + j];
            }
        uint8_t *code = codes + start;
        assign_tile_d(xt, wt, cp, count, d, weighted, k, distances + start, code);
        for (int64_t t = 0; t < count; ++t) { /* member sums, in vector order */
            double *sc = sums + code[t] * d;
            double *nc = counts + code[t] * d;
            for (int64_t j = 0; j < d; ++j) {
                if (weighted) {
                    const double weight = (double)ws[t * d + j];
                    nc[j] += weight;
                    sc[j] += weight * (double)xs[t * d + j];
                } else {
                    nc[j] += 1.0;
                    sc[j] += (double)xs[t * d + j];
                }
            }
        }
    }
}

#define STEP_CASE(D)                                                                 \
    case D:                                                                          \
        if (wb)                                                                      \
            step_problem(xb, wb, cp, n, D, 1, k, codes_p, distances_p, sums_p, counts_p); \
        else                                                                         \
            step_problem(xb, 0, cp, n, D, 0, k, codes_p, distances_p, sums_p, counts_p);  \
        break;

/* x [G, N, D] float32; w [G, N, D] float32 or NULL; centroids [P, K, D] float32
   (1 <= D <= 8); codes [P, N] uint8, distances [P, N] float32, sums and counts [P, K, D]
   float64 (written; unweighted counts are the same for every component). */
CLONES void vector_step(const float *x, const float *w, const float *centroids, int64_t g_count,
                 int64_t n, int64_t d, int64_t p_count, int64_t k, uint8_t *codes,
                 float *distances, double *sums, double *counts) {
    const int64_t restarts = p_count / g_count;
    for (int64_t p = 0; p < p_count; ++p) {
        const float *xb = x + (p / restarts) * n * d;
        const float *wb = w ? w + (p / restarts) * n * d : 0;
        const float *cp = centroids + p * k * d;
        uint8_t *codes_p = codes + p * n;
        float *distances_p = distances + p * n;
        double *sums_p = sums + p * k * d;
        double *counts_p = counts + p * k * d;
        switch (d) { /* specialized for the common cluster_dims; the rest: d at run time */
            STEP_CASE(2)
            STEP_CASE(4)
        default:
            if (wb)
                step_problem(xb, wb, cp, n, d, 1, k, codes_p, distances_p, sums_p, counts_p);
            else
                step_problem(xb, 0, cp, n, d, 0, k, codes_p, distances_p, sums_p, counts_p);
        }
    }
}
