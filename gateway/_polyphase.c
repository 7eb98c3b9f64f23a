/* The polyphase resampler's kernel for S16LE in and out (gateway/polyphase.py).

   One call computes outputs start .. start + n - 1 of a window of the stream's input:

       y[j] = sum over k < taps of x[(j*down)/up + k] * g[(j*down) % up][k]

   x: the window's int16 samples, g: the ratio's coefficients, up rows of taps (each phase's
   filter, reversed), integers as float64 (multiples of 2**-24 of the real ones). Every product
   and partial sum is an integer below 2**53, so float64 adds them exactly, in any order: the
   outputs are the ones numpy's matrix product gives, bit for bit. Each is then taken as
   numpy does: times 2**-24, rounded to float32, to the nearest integer (ties to even), clipped
   to int16.

   The outputs of one phase p are j = j0 + m*up, and their windows start down inputs apart:
   with the input split into its down interleaved sequences, BLOCK of them are BLOCK / 4
   vectors of consecutive samples times one coefficient a tap, with no sum across a vector.
   The arithmetic is written with GCC's vector types once and built twice on x86-64: for the
   baseline and for AVX2 with FMA, chosen at import (kernel()); GATEWAY_POLYPHASE_PORTABLE
   defined at build time leaves only the baseline. The AVX2 build has an integer path besides
   for streams that only upsample (run_int_avx2: the same sums, exact in int32 parts, a phase a
   pass), and for up == 2, 3 and 6 on a CPU with AVX-512 VL and VNNI kernels that take every
   phase in one pass (run_intn; chosen at import too: integer_kernel());
   GATEWAY_POLYPHASE_NO_AVX512 defined at build time leaves them out.

   run_s16 computes one chunk's outputs from a window the caller made; Stream keeps a stream's
   state (the inputs held, those counted, the next output) so that a chunk is one call. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_FACTOR 6
#define MAX_TAPS 4096
#define BLOCK 32
/* Inputs converted on the stack up to this many (a 20 ms chunk is a few hundred). */
#define STACK_SAMPLES 2048

typedef double v4 __attribute__((vector_size(32)));

static inline int16_t to_s16(double sum)
{
    float f = rintf((float)(sum * (1.0 / 16777216.0)));
    if (f > 32767.0f)
        f = 32767.0f;
    if (f < -32768.0f)
        f = -32768.0f;
    return (int16_t)f;
}

static inline __attribute__((always_inline)) void
run_phases(const double *x, Py_ssize_t nx, const double *g, int up, int down, int taps,
           Py_ssize_t start, Py_ssize_t n, int16_t *out)
{
    /* x holds the down interleaved sequences one after another: sequence r (inputs
       r, r + down, ...) from x + offset[r]. */
    Py_ssize_t offset[MAX_FACTOR];
    for (int r = 0; r < down; r++)
        offset[r] = r == 0 ? 0 : offset[r - 1] + (nx - (r - 1) + down - 1) / down;
    for (Py_ssize_t j0 = start; j0 < start + up && j0 < start + n; j0++) {
        Py_ssize_t s0 = (j0 * down) / up; /* the first input of output j0's window */
        const double *gp = g + ((j0 * down) % up) * (Py_ssize_t)taps;
        Py_ssize_t count = (start + n - j0 + up - 1) / up; /* outputs j0 + m*up */
        int16_t *o = out + (j0 - start);
        Py_ssize_t m = 0;
        for (; m + BLOCK <= count; m += BLOCK) {
            v4 a0 = {0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
            Py_ssize_t r = s0 % down, q = s0 / down + m;
            for (int k = 0; k < taps; k++) {
                const double *xk = x + offset[r] + q;
                double c = gp[k];
                v4 ck = {c, c, c, c};
                v4 x0, x1, x2, x3, x4, x5, x6, x7;
                memcpy(&x0, xk, 32);
                memcpy(&x1, xk + 4, 32);
                memcpy(&x2, xk + 8, 32);
                memcpy(&x3, xk + 12, 32);
                memcpy(&x4, xk + 16, 32);
                memcpy(&x5, xk + 20, 32);
                memcpy(&x6, xk + 24, 32);
                memcpy(&x7, xk + 28, 32);
                a0 += x0 * ck;
                a1 += x1 * ck;
                a2 += x2 * ck;
                a3 += x3 * ck;
                a4 += x4 * ck;
                a5 += x5 * ck;
                a6 += x6 * ck;
                a7 += x7 * ck;
                if (++r == down) {
                    r = 0;
                    q++;
                }
            }
            double s[BLOCK];
            memcpy(s, &a0, 32);
            memcpy(s + 4, &a1, 32);
            memcpy(s + 8, &a2, 32);
            memcpy(s + 12, &a3, 32);
            memcpy(s + 16, &a4, 32);
            memcpy(s + 20, &a5, 32);
            memcpy(s + 24, &a6, 32);
            memcpy(s + 28, &a7, 32);
            for (int i = 0; i < BLOCK; i++)
                o[(m + i) * up] = to_s16(s[i]);
        }
        for (; m < count; m++) {
            double sum = 0;
            Py_ssize_t r = s0 % down, q = s0 / down + m;
            for (int k = 0; k < taps; k++) {
                sum += x[offset[r] + q] * gp[k];
                if (++r == down) {
                    r = 0;
                    q++;
                }
            }
            o[m * up] = to_s16(sum);
        }
    }
}

static void run_portable(const double *x, Py_ssize_t nx, const double *g, int up, int down,
                         int taps, Py_ssize_t start, Py_ssize_t n, int16_t *out)
{
    run_phases(x, nx, g, up, down, taps, start, n, out);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(GATEWAY_POLYPHASE_PORTABLE)
#define HAVE_AVX2_BUILD 1
__attribute__((target("avx2,fma"))) static void
run_avx2(const double *x, Py_ssize_t nx, const double *g, int up, int down, int taps,
         Py_ssize_t start, Py_ssize_t n, int16_t *out)
{
    run_phases(x, nx, g, up, down, taps, start, n, out);
}
#endif

#ifdef HAVE_AVX2_BUILD
#include <immintrin.h>

/* The integer path, for a stream that only upsamples (down == 1) in the AVX2 build: the same
   exact sums in 32-bit integers, with vpmaddwd's 16 products a step where an FMA makes 4.

   Each coefficient c (an integer, |c| < 2**24) is taken in two parts, c = a * 2**10 + e with
   e in [-512, 511] (and |a| <= 2**14 + 1): each fits an int16, and a part's sum of products
   stays within an int32 (checked when a Stream is made: inputs up to 2**15 times a phase's
   sum of |part| below 2**31; for e that holds at any input up to 127 taps a phase, and the
   upsampling ratios' filters have 98 or 99). An output is then a * 2**10 + e summed apart and
   joined (in float64, where every term is exact): the float64 path's sum.

   With down == 1, the outputs m = 0, 1, ... of one phase read the inputs from base + m on, so
   8 consecutive outputs and 2 consecutive taps k, k + 1 are one vpmaddwd of the input pairs
   (x[i], x[i + 1]) for i = base + m + k (8 of them, one load from the pairs' array) by the
   two coefficients' parts (broadcast). 32 outputs a block: 8 sums, 4 inputs and 2
   coefficients in registers, within the 16 AVX2 has. */

#define INT_PARTS 2
#define INT_SHIFT 1024

/* The pairs (x[i], x[i + 1]) as int32 lanes (x[i] low), for i < count; x past nx is 0. */
__attribute__((target("avx2"))) static inline void
pairs_of(const int16_t *x, Py_ssize_t nx, int32_t *pairs, Py_ssize_t count)
{
    Py_ssize_t i = 0;
    for (; i + 9 <= nx && i + 8 <= count; i += 8) { /* reads x[i] .. x[i + 8] */
        __m128i now = _mm_loadu_si128((const __m128i *)(x + i));
        __m128i next = _mm_loadu_si128((const __m128i *)(x + i + 1));
        _mm_storeu_si128((__m128i *)(pairs + i), _mm_unpacklo_epi16(now, next));
        _mm_storeu_si128((__m128i *)(pairs + i + 4), _mm_unpackhi_epi16(now, next));
    }
    for (; i + 1 < nx && i < count; i++)
        pairs[i] = (int32_t)((uint32_t)(uint16_t)x[i] | (uint32_t)(uint16_t)x[i + 1] << 16);
    for (; i < count; i++)
        pairs[i] = i < nx ? (int32_t)(uint16_t)x[i] : 0;
}

/* 4 outputs' two partial sums joined: the float64 path's exact sum (every term and partial
   sum an integer below 2**53, so float64 holds them exactly), scaled, rounded to float32 as
   to_s16()'s (float) cast rounds it (both by the MXCSR's mode, to nearest). */
__attribute__((target("avx2"))) static inline __m128
joined4(__m128i a, __m128i e)
{
    __m256d sum = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(a), _mm256_set1_pd(INT_SHIFT)),
                                _mm256_cvtepi32_pd(e));
    return _mm256_cvtpd_ps(_mm256_mul_pd(sum, _mm256_set1_pd(1.0 / 16777216.0)));
}

/* 8 outputs' sums joined and taken as to_s16() takes them: float32 rounded to the nearest
   integer, ties to even (as rintf, by the MXCSR's mode), then clipped to int16 by the packing's
   saturation. The float32 values are below 2**17 in magnitude, within an int32. */
__attribute__((target("avx2"))) static inline __m128i
joined8(__m256i a, __m256i e)
{
    __m128 lo = joined4(_mm256_castsi256_si128(a), _mm256_castsi256_si128(e));
    __m128 hi = joined4(_mm256_extracti128_si256(a, 1), _mm256_extracti128_si256(e, 1));
    return _mm_packs_epi32(_mm_cvtps_epi32(lo), _mm_cvtps_epi32(hi));
}

#define MADD(acc, x, w) acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, w))

__attribute__((target("avx2"))) static void
run_int_avx2(const int32_t *pairs, const int32_t *parts, int up, int half, Py_ssize_t start,
             Py_ssize_t n, int16_t *out)
{
    for (Py_ssize_t j0 = start; j0 < start + up && j0 < start + n; j0++) {
        Py_ssize_t base = j0 / up;
        const int32_t *w = parts + (j0 % up) * (Py_ssize_t)half * INT_PARTS;
        Py_ssize_t count = (start + n - j0 + up - 1) / up; /* outputs j0 + m*up */
        int16_t *o = out + (j0 - start);
        Py_ssize_t m = 0;
        for (; m + 32 <= count; m += 32) {
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            __m256i e0 = a0, e1 = a0, e2 = a0, e3 = a0;
            const int32_t *p = pairs + base + m;
            for (int k = 0; k < half; k++, p += 2) {
                __m256i wa = _mm256_set1_epi32(w[k * INT_PARTS]);
                __m256i we = _mm256_set1_epi32(w[k * INT_PARTS + 1]);
                __m256i x0 = _mm256_loadu_si256((const __m256i *)p);
                __m256i x1 = _mm256_loadu_si256((const __m256i *)(p + 8));
                __m256i x2 = _mm256_loadu_si256((const __m256i *)(p + 16));
                __m256i x3 = _mm256_loadu_si256((const __m256i *)(p + 24));
                MADD(a0, x0, wa);
                MADD(a1, x1, wa);
                MADD(a2, x2, wa);
                MADD(a3, x3, wa);
                MADD(e0, x0, we);
                MADD(e1, x1, we);
                MADD(e2, x2, we);
                MADD(e3, x3, we);
            }
            int16_t y[32];
            _mm_storeu_si128((__m128i *)y, joined8(a0, e0));
            _mm_storeu_si128((__m128i *)(y + 8), joined8(a1, e1));
            _mm_storeu_si128((__m128i *)(y + 16), joined8(a2, e2));
            _mm_storeu_si128((__m128i *)(y + 24), joined8(a3, e3));
            for (int i = 0; i < 32; i++)
                o[(m + i) * up] = y[i];
        }
        for (; m < count; m += 8) { /* 8 at a time; lanes past count read padding */
            __m256i a = _mm256_setzero_si256(), e = a;
            const int32_t *p = pairs + base + m;
            for (int k = 0; k < half; k++, p += 2) {
                __m256i x = _mm256_loadu_si256((const __m256i *)p);
                MADD(a, x, _mm256_set1_epi32(w[k * INT_PARTS]));
                MADD(e, x, _mm256_set1_epi32(w[k * INT_PARTS + 1]));
            }
            int16_t y[8];
            _mm_storeu_si128((__m128i *)y, joined8(a, e));
            for (int i = 0; i < 8 && m + i < count; i++)
                o[(m + i) * up] = y[i];
        }
    }
}
#undef MADD

#ifndef GATEWAY_POLYPHASE_NO_AVX512
#define HAVE_VNNI_BUILD 1
/* Whether the integer path takes a ratio's phases at once (set at import: AVX-512 VL, VNNI). */
static int at_once = 0;

#define DOT(acc, x, w) acc = _mm256_dpwssd_epi32(acc, x, w)

/* The integer path for up == 2, 3 and 6 (24 -> 48 kHz, 8 -> 16, 16 -> 48, 8 -> 24, 8 -> 48) on
   a CPU with AVX-512 VL and VNNI (on 256-bit vectors): the outputs up*b .. up*b + up - 1 all
   read the inputs from b on, so every phase's sums of a block of nv vectors (8 outputs each a
   phase) take each input vector loaded once (run_int_avx2 loads it once a phase); vpdpwssd
   adds vpmaddwd's products to the sum in one instruction, with the same int32 arithmetic
   (wrapping, never saturating: the same sums), and AVX-512's 32 vector registers hold the
   up * 2 * nv sums (16 for 2 x 4, 12 for 3 x 2 and 6 x 1). The phases' outputs leave
   interleaved: for up == 2 by vector stores, else by one store an output, in order. The same
   bytes as run_int_avx2, which takes the outputs before the first whole group of up and those
   short of a block. */
__attribute__((target("avx2,avx512vl,avx512vnni"), always_inline)) static inline void
run_intn(const int32_t *pairs, const int32_t *parts, int up, int nv, int half,
         Py_ssize_t start, Py_ssize_t n, int16_t *out)
{
    Py_ssize_t j = start, end = start + n;
    if (j % up) {
        Py_ssize_t lead = up - j % up < n ? up - j % up : n;
        run_int_avx2(pairs, parts, up, half, j, lead, out);
        j += lead;
    }
    for (; j + (Py_ssize_t)up * nv * 8 <= end; j += (Py_ssize_t)up * nv * 8) {
        __m256i sums[MAX_FACTOR][INT_PARTS][4];
        for (int q = 0; q < up; q++)
            for (int i = 0; i < INT_PARTS; i++)
                for (int v = 0; v < nv; v++)
                    sums[q][i][v] = _mm256_setzero_si256();
        const int32_t *p = pairs + j / up;
        for (int k = 0; k < half; k++, p += 2) {
            __m256i x[4];
            for (int v = 0; v < nv; v++)
                x[v] = _mm256_loadu_si256((const __m256i *)(p + 8 * v));
            for (int q = 0; q < up; q++) {
                const int32_t *w = parts + ((Py_ssize_t)q * half + k) * INT_PARTS;
                for (int i = 0; i < INT_PARTS; i++) {
                    __m256i c = _mm256_set1_epi32(w[i]);
                    for (int v = 0; v < nv; v++)
                        DOT(sums[q][i][v], x[v], c);
                }
            }
        }
        int16_t *o = out + (j - start);
        for (int v = 0; v < nv && up == 2; v++) {
            __m128i y = joined8(sums[0][0][v], sums[0][1][v]);
            __m128i z = joined8(sums[1][0][v], sums[1][1][v]);
            _mm_storeu_si128((__m128i *)(o + 16 * v), _mm_unpacklo_epi16(y, z));
            _mm_storeu_si128((__m128i *)(o + 16 * v + 8), _mm_unpackhi_epi16(y, z));
        }
        for (int v = 0; v < nv && up != 2; v++) {
            int16_t y[MAX_FACTOR][8];
            for (int q = 0; q < up; q++)
                _mm_storeu_si128((__m128i *)y[q], joined8(sums[q][0][v], sums[q][1][v]));
            for (int i = 0; i < 8; i++)
                for (int q = 0; q < up; q++)
                    o[(8 * v + i) * up + q] = y[q][i];
        }
    }
    if (j < end)
        run_int_avx2(pairs, parts, up, half, j, end - j, out + (j - start));
}

__attribute__((target("avx2,avx512vl,avx512vnni"))) static void
run_int2_vnni(const int32_t *pairs, const int32_t *parts, int half, Py_ssize_t start,
              Py_ssize_t n, int16_t *out)
{
    run_intn(pairs, parts, 2, 4, half, start, n, out);
}

__attribute__((target("avx2,avx512vl,avx512vnni"))) static void
run_int3_vnni(const int32_t *pairs, const int32_t *parts, int half, Py_ssize_t start,
              Py_ssize_t n, int16_t *out)
{
    run_intn(pairs, parts, 3, 2, half, start, n, out);
}

__attribute__((target("avx2,avx512vl,avx512vnni"))) static void
run_int6_vnni(const int32_t *pairs, const int32_t *parts, int half, Py_ssize_t start,
              Py_ssize_t n, int16_t *out)
{
    run_intn(pairs, parts, 6, 1, half, start, n, out);
}
#undef DOT
#endif
#endif

typedef void (*kernel_fn)(const double *, Py_ssize_t, const double *, int, int, int,
                          Py_ssize_t, Py_ssize_t, int16_t *);

static kernel_fn chosen = run_portable;
static const char *chosen_name = "portable";

/* Outputs start .. start + n - 1 of the nx int16 samples at raw (checked by the caller: the
   window is long enough, the coefficients are up * taps doubles). -1 with MemoryError set. */
static int
compute(const void *raw, Py_ssize_t nx, const void *g, Py_ssize_t glen, int up, int down,
        int taps, Py_ssize_t start, Py_ssize_t n, int16_t *out)
{
    double stack[STACK_SAMPLES];
    double *x = nx <= STACK_SAMPLES ? stack : PyMem_Malloc((size_t)nx * sizeof(double));
    if (x == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    /* The int16 samples as float64, split into the down interleaved sequences. */
    const unsigned char *bytes = raw;
    Py_ssize_t w = 0;
    for (int r = 0; r < down; r++)
        for (Py_ssize_t i = r; i < nx; i += down) {
            int16_t v;
            memcpy(&v, bytes + 2 * i, 2); /* little-endian hosts only: see PyInit__polyphase */
            x[w++] = v;
        }
    /* The coefficients as they are when aligned (a bytes object's are), else a copy. */
    double *copy = NULL;
    const double *coefficients = g;
    if ((uintptr_t)g % _Alignof(double)) {
        copy = PyMem_Malloc((size_t)glen);
        if (copy == NULL) {
            if (x != stack)
                PyMem_Free(x);
            PyErr_NoMemory();
            return -1;
        }
        memcpy(copy, g, (size_t)glen);
        coefficients = copy;
    }
    chosen(x, nx, coefficients, up, down, taps, start, n, out);
    PyMem_Free(copy);
    if (x != stack)
        PyMem_Free(x);
    return 0;
}

static PyObject *
run_s16(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "run_s16(samples, coefficients, up, down, taps, start, n)");
        return NULL;
    }
    long up = PyLong_AsLong(args[2]), down = PyLong_AsLong(args[3]);
    long taps = PyLong_AsLong(args[4]);
    Py_ssize_t start = PyLong_AsSsize_t(args[5]), n = PyLong_AsSsize_t(args[6]);
    if (PyErr_Occurred())
        return NULL;
    if (up < 1 || up > MAX_FACTOR || down < 1 || down > MAX_FACTOR || taps < 1 ||
        taps > MAX_TAPS || start < 0 || n < 0 || start > PY_SSIZE_T_MAX / 16 ||
        n > PY_SSIZE_T_MAX / 16) {
        PyErr_SetString(PyExc_ValueError, "run_s16: a ratio, length or position out of range");
        return NULL;
    }
    Py_buffer xb, gb;
    if (PyObject_GetBuffer(args[0], &xb, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &gb, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t nx = xb.len / 2;
    if (xb.len % 2 || gb.len != (Py_ssize_t)(up * taps) * (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "run_s16: samples or coefficients of the wrong size");
        goto done;
    }
    if (n > 0 && ((start + n - 1) * down) / up + taps > nx) {
        PyErr_SetString(PyExc_ValueError, "run_s16: the samples end before the last window");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, n * 2);
    if (result == NULL || n == 0)
        goto done;
    if (compute(xb.buf, nx, gb.buf, gb.len, (int)up, (int)down, (int)taps, start, n,
                (int16_t *)PyBytes_AS_STRING(result)) < 0)
        Py_CLEAR(result);
done:
    PyBuffer_Release(&xb);
    PyBuffer_Release(&gb);
    return result;
}

/* ---------------------------------------------------------------- a stream's state

   Stream: one S16LE stream through the filter, the bookkeeping of PolyphaseResampler's
   process_s16 and flush_s16 (gateway/polyphase.py) done here, so that a chunk is one call:
   the inputs held (from the first input of the row holding the next output on), the inputs
   counted, the next output to compute. The same outputs as that Python code and run_s16, byte
   for byte; state() hands the held inputs back to it (a stream that turns to float input). */

typedef struct {
    PyObject_HEAD
    PyObject *coefficients; /* bytes: up rows of taps doubles */
    int up, down, taps;
    Py_ssize_t row_out, row_in, width, delay;
    long long n_in;  /* inputs so far */
    long long first; /* the filter's next output (its first `delay` are dropped) */
    int16_t *held;   /* the inputs held, then a chunk's window while it is computed */
    Py_ssize_t count, capacity;
    int32_t *parts; /* the integer path's coefficients (NULL: the float64 path) */
    int half;       /* pairs of taps in the integer path */
} Stream;

/* A window of this many samples or fewer keeps its buffer after the chunk. */
#define KEEP_CAPACITY 8192

static void
Stream_dealloc(Stream *self)
{
    Py_XDECREF(self->coefficients);
    PyMem_Free(self->held);
    PyMem_Free(self->parts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The integer path's coefficients for a stream that upsamples, in the AVX2 build, when every
   coefficient is an integer below 2**24 in magnitude and every partial sum fits an int32;
   otherwise NULL (with no error set: the float64 path runs). -1 with MemoryError set. */
static int
integer_parts(Stream *self)
{
    self->parts = NULL;
#ifdef HAVE_AVX2_BUILD
    if (self->down != 1 || chosen != run_avx2)
        return 0;
    const double *g = (const double *)PyBytes_AS_STRING(self->coefficients);
    int taps = self->taps, half = (taps + 1) / 2;
    int32_t *parts = PyMem_Calloc((size_t)self->up * (size_t)half * INT_PARTS, sizeof(int32_t));
    if (parts == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int p = 0; p < self->up; p++) {
        int64_t sums[INT_PARTS] = {0, 0};
        for (int k = 0; k < 2 * half; k++) {
            double c = k < taps ? g[(Py_ssize_t)p * taps + k] : 0.0;
            if (!(fabs(c) < 16777216.0) || c != rint(c)) {
                PyMem_Free(parts);
                return 0;
            }
            int32_t v = (int32_t)c;
            int32_t e = ((v + INT_SHIFT / 2) & (INT_SHIFT - 1)) - INT_SHIFT / 2;
            int32_t a = (v - e) / INT_SHIFT; /* |a| <= 2**14 + 1: an int16 */
            int32_t part[INT_PARTS] = {a, e};
            for (int i = 0; i < INT_PARTS; i++) {
                int32_t *word = parts + ((Py_ssize_t)p * half + k / 2) * INT_PARTS + i;
                uint32_t bits = (uint16_t)(int16_t)part[i];
                *word = (int32_t)((uint32_t)*word | (k % 2 ? bits << 16 : bits));
                sums[i] += part[i] < 0 ? -part[i] : part[i];
            }
        }
        for (int i = 0; i < INT_PARTS; i++)
            if (sums[i] * 32768 > INT32_MAX) {
                PyMem_Free(parts);
                return 0;
            }
    }
    self->parts = parts;
    self->half = half;
#endif
    return 0;
}

static int
Stream_init(Stream *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"coefficients", "up", "down", "taps", "row_out", "row_in",
                            "delay", "lead", NULL};
    PyObject *coefficients;
    int up, down, taps;
    Py_ssize_t row_out, row_in, delay, lead;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Siiinnnn:Stream", names, &coefficients, &up,
                                     &down, &taps, &row_out, &row_in, &delay, &lead))
        return -1;
    if (up < 1 || up > MAX_FACTOR || down < 1 || down > MAX_FACTOR || taps < 1 ||
        taps > MAX_TAPS || row_out < 1 || row_out > MAX_TAPS || row_in < 1 ||
        row_in > MAX_TAPS || delay < 0 || delay > 16 * MAX_TAPS || lead < 0 ||
        lead > row_in + taps) {
        PyErr_SetString(PyExc_ValueError, "Stream: a ratio, length or position out of range");
        return -1;
    }
    if (PyBytes_GET_SIZE(coefficients) != (Py_ssize_t)up * taps * (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "Stream: coefficients of the wrong size");
        return -1;
    }
    if (self->held != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Stream: already initialised");
        return -1;
    }
    self->held = PyMem_Calloc((size_t)(lead > 0 ? lead : 1), sizeof(int16_t));
    if (self->held == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(coefficients);
    self->coefficients = coefficients;
    self->up = up;
    self->down = down;
    self->taps = taps;
    self->row_out = row_out;
    self->row_in = row_in;
    self->width = row_in + taps - 1;
    self->delay = delay;
    self->n_in = 0;
    self->first = delay;
    self->count = lead;
    self->capacity = lead > 0 ? lead : 1;
    return integer_parts(self);
}

/* The held inputs and `data`, as one window of at least `size` samples (zeros after). */
static int
grow(Stream *self, Py_ssize_t size)
{
    if (size <= self->capacity)
        return 0;
    int16_t *held = PyMem_Realloc(self->held, (size_t)size * sizeof(int16_t));
    if (held == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->held = held;
    self->capacity = size;
    return 0;
}

#ifdef HAVE_AVX2_BUILD
#pragma GCC diagnostic push
/* The pairs' stack buffer is written whole by pairs_of() before it is read. */
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
/* The integer path on the window of `size` samples held: outputs start .. start + n - 1. */
static int
compute_int(Stream *self, Py_ssize_t size, Py_ssize_t start, Py_ssize_t n, int16_t *out)
{
    /* Pairs read: up to the last output's window, 8 outputs (a vector) rounded up. */
    Py_ssize_t count = size + 2 * (Py_ssize_t)self->half + 16;
    int32_t stack[STACK_SAMPLES];
    int32_t *pairs = count <= STACK_SAMPLES ? stack : PyMem_Malloc((size_t)count * 4);
    if (pairs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    pairs_of(self->held, size, pairs, count);
#ifdef HAVE_VNNI_BUILD
    if (at_once && self->up == 2)
        run_int2_vnni(pairs, self->parts, self->half, start, n, out);
    else if (at_once && self->up == 3)
        run_int3_vnni(pairs, self->parts, self->half, start, n, out);
    else if (at_once && self->up == 6)
        run_int6_vnni(pairs, self->parts, self->half, start, n, out);
    else
#endif
        run_int_avx2(pairs, self->parts, self->up, self->half, start, n, out);
    if (pairs != stack)
        PyMem_Free(pairs);
    return 0;
}
#pragma GCC diagnostic pop
#endif

/* Appends n samples at data to the inputs; returns the outputs before `end` not yet
   returned, as S16LE bytes (empty if none). */
static PyObject *
run_to(Stream *self, const void *data, Py_ssize_t n, long long end)
{
    long long first = self->first;
    Py_ssize_t arrived = self->count + n;
    if (end <= first) {
        if (grow(self, arrived) < 0)
            return NULL;
        if (n)
            memcpy(self->held + self->count, data, (size_t)n * 2);
        self->count = arrived;
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    /* The rows holding outputs first .. end - 1; row q reads the inputs from
       q * row_in - (taps - 1) on, and the window starts at the first row's first input. */
    long long q0 = first / self->row_out;
    long long rows = (end + self->row_out - 1) / self->row_out - q0;
    long long need = (rows - 1) * self->row_in + self->width;
    if (need > PY_SSIZE_T_MAX / 16) {
        PyErr_SetString(PyExc_OverflowError, "Stream: a window too long");
        return NULL;
    }
    Py_ssize_t size = arrived > need ? arrived : (Py_ssize_t)need;
    Py_ssize_t start = (Py_ssize_t)(first - q0 * self->row_out);
    Py_ssize_t outputs = (Py_ssize_t)(end - first);
    if (grow(self, size) < 0)
        return NULL;
    if (n)
        memcpy(self->held + self->count, data, (size_t)n * 2);
    if (size > arrived) /* inputs past the stream's end: zeros (see _window) */
        memset(self->held + arrived, 0, (size_t)(size - arrived) * 2);
    self->count = arrived;
    if (((start + outputs - 1) * self->down) / self->up + self->taps > size) {
        PyErr_SetString(PyExc_RuntimeError, "Stream: the window ends before its last output");
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, outputs * 2);
    if (result == NULL)
        return NULL;
    int failed;
#ifdef HAVE_AVX2_BUILD
    if (self->parts != NULL)
        failed = compute_int(self, size, start, outputs, (int16_t *)PyBytes_AS_STRING(result));
    else
#endif
        failed = compute(self->held, size, PyBytes_AS_STRING(self->coefficients),
                         PyBytes_GET_SIZE(self->coefficients), self->up, self->down,
                         self->taps, start, outputs, (int16_t *)PyBytes_AS_STRING(result));
    if (failed < 0) {
        Py_DECREF(result);
        return NULL;
    }
    self->first = end;
    /* Keep the inputs from the next output's row on (those that have arrived). */
    long long keep = (end / self->row_out - q0) * self->row_in;
    if (keep < arrived) {
        memmove(self->held, self->held + keep, (size_t)(arrived - keep) * 2);
        self->count = arrived - (Py_ssize_t)keep;
    } else {
        self->count = 0;
    }
    if (self->capacity > KEEP_CAPACITY && self->count <= KEEP_CAPACITY) {
        int16_t *held = PyMem_Realloc(self->held, KEEP_CAPACITY * sizeof(int16_t));
        if (held != NULL) {
            self->held = held;
            self->capacity = KEEP_CAPACITY;
        }
    }
    return result;
}

static PyObject *
Stream_process(Stream *self, PyObject *arg)
{
    if (self->held == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Stream: not initialised");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    if (b.len % 2) {
        PyErr_SetString(PyExc_ValueError, "S16LE data must hold whole samples");
    } else if (b.len / 2 > PY_SSIZE_T_MAX / 16 - self->count) {
        PyErr_SetString(PyExc_OverflowError, "Stream: a chunk too long");
    } else {
        Py_ssize_t n = b.len / 2;
        long long n_in = self->n_in + n;
        long long end = (n_in * self->up + self->down - 1) / self->down;
        self->n_in = n_in;
        result = run_to(self, b.buf, n, end);
    }
    PyBuffer_Release(&b);
    return result;
}

static PyObject *
Stream_flush(Stream *self, PyObject *Py_UNUSED(unused))
{
    if (self->held == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Stream: not initialised");
        return NULL;
    }
    long long end = (self->n_in * self->up + self->down - 1) / self->down + self->delay;
    return run_to(self, NULL, 0, end);
}

static PyObject *
Stream_state(Stream *self, PyObject *Py_UNUSED(unused))
{
    if (self->held == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Stream: not initialised");
        return NULL;
    }
    return Py_BuildValue("(y#LL)", (const char *)self->held, self->count * 2, self->n_in,
                         self->first);
}

static PyObject *
Stream_integer(Stream *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->parts != NULL);
}

static PyGetSetDef Stream_getset[] = {
    {"integer", (getter)Stream_integer, NULL,
     "Whether the stream runs the integer path (upsampling, in the AVX2 build).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Stream_methods[] = {
    {"process", (PyCFunction)Stream_process, METH_O,
     "process(data) -> bytes: S16LE samples in, the S16LE outputs they complete."},
    {"flush", (PyCFunction)Stream_flush, METH_NOARGS,
     "flush() -> bytes: the last outputs, as if zeros followed the input."},
    {"state", (PyCFunction)Stream_state, METH_NOARGS,
     "state() -> (held S16LE bytes, inputs so far, next output)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject StreamType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway._polyphase.Stream",
    .tp_doc = PyDoc_STR("Stream(coefficients, up, down, taps, row_out, row_in, delay, lead): "
                        "one S16LE stream through the filter."),
    .tp_basicsize = sizeof(Stream),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Stream_init,
    .tp_dealloc = (destructor)Stream_dealloc,
    .tp_methods = Stream_methods,
    .tp_getset = Stream_getset,
};

static PyObject *
kernel(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    return PyUnicode_FromString(chosen_name);
}

static PyObject *
integer_kernel(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
#ifdef HAVE_AVX2_BUILD
    if (chosen == run_avx2) {
#ifdef HAVE_VNNI_BUILD
        if (at_once)
            return PyUnicode_FromString("avx512vnni");
#endif
        return PyUnicode_FromString("avx2");
    }
#endif
    return PyUnicode_FromString("none");
}

static PyMethodDef methods[] = {
    {"run_s16", (PyCFunction)(void (*)(void))run_s16, METH_FASTCALL,
     "run_s16(samples, coefficients, up, down, taps, start, n) -> bytes: S16LE outputs "
     "start .. start + n - 1 of the window (see gateway/polyphase.py)."},
    {"kernel", kernel, METH_NOARGS, "The build of the kernel in use: 'avx2' or 'portable'."},
    {"integer_kernel", integer_kernel, METH_NOARGS,
     "The integer path's kernel for up == 2, 3 and 6: 'avx512vnni' (every phase a pass), "
     "'avx2' (a phase a pass), or 'none' (no integer path: the portable build, or no AVX2)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway._polyphase", "The polyphase resampler's S16LE kernel.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__polyphase(void)
{
#if PY_BIG_ENDIAN
    PyErr_SetString(PyExc_ImportError, "gateway._polyphase: little-endian hosts only");
    return NULL;
#else
#ifdef HAVE_AVX2_BUILD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        chosen = run_avx2;
        chosen_name = "avx2";
#ifdef HAVE_VNNI_BUILD
        at_once =
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
    }
#endif
    if (PyType_Ready(&StreamType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Stream", (PyObject *)&StreamType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
#endif
}
