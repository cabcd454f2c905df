/* covidct._native: the two hot loops of covidct.preprocessing, compiled.
 *
 * unfilter_grey8: undo the PNG row filters of an 8-bit grey image (one byte per pixel).
 * largest_open_component: threshold, square opening, largest 4-connected component.
 *
 * Each reproduces a reference in covidct/preprocessing/ byte for byte (png.py: Pillow's PNG
 * decoder; bodybox.py: _open_square + largest_component_box); tests compare them on every real
 * slice and on random inputs. Both release the GIL for the whole computation (worker threads
 * decode in parallel); no Python object is touched without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ PNG row filters */

static inline int paeth(int a, int b, int c)
{
    /* Branch-free: a when |p - a| is the least, else b when |p - b| <= |p - c|, else c
     * (p = a + b - c); the rows of a CT slice make the branches unpredictable. */
    int pa = abs(b - c), pb = abs(a - c), pc = abs(a + b - 2 * c);
    int take_b = -(pb <= pc), nearest = pb <= pc ? pb : pc;
    int bc = (b & take_b) | (c & ~take_b), take_a = -(pa <= nearest);
    return (a & take_a) | (bc & ~take_a);
}

/* Up to four consecutive Paeth rows at once, each a column behind the row above it: a pixel
 * needs its left neighbour (a chain through the whole row: the serial part) and the row above
 * at its own column and the one before (done an iteration earlier), so the k rows' chains are
 * independent within an iteration and run side by side, which is faster than one row at a
 * time; bytes identical (a test compares every real slice and random filter mixes). */
static inline __attribute__((always_inline)) void paeth_rows(const uint8_t *src, uint8_t *dst,
                                                              Py_ssize_t width, int k)
{
    const uint8_t *in[4];
    uint8_t *out[4];
    const uint8_t *up[4];
    int left[4] = {0}, corner[4] = {0};
    for (int j = 0; j < k; j++) {
        in[j] = src + j * (width + 1) + 1;
        out[j] = dst + j * width;
        up[j] = out[j] - width; /* the group starts below row 0: row above exists */
    }
    for (Py_ssize_t x = 0; x < width + k - 1; x++) {
        for (int j = 0; j < k; j++) {
            Py_ssize_t at = x - j;
            if (at < 0 || at >= width)
                continue;
            int above = up[j][at];
            int v = (uint8_t)(in[j][at] + paeth(left[j], above, corner[j]));
            out[j][at] = (uint8_t)v;
            left[j] = v;
            corner[j] = above;
        }
    }
}

/* Returns -1 when every row's filter byte is known, else the first bad row. */
static Py_ssize_t unfilter(const uint8_t *src, uint8_t *dst, Py_ssize_t width, Py_ssize_t height)
{
    for (Py_ssize_t y = 0; y < height; y++) {
        const uint8_t *in = src + y * (width + 1);
        uint8_t filter = in[0];
        uint8_t *out = dst + y * width;
        const uint8_t *up = y ? out - width : NULL; /* the row above, already unfiltered */
        if (filter == 4 && up) {
            int k = 1;
            while (k < 4 && y + k < height && src[(y + k) * (width + 1)] == 4)
                k++;
            switch (k) {
            case 4:
                paeth_rows(in, out, width, 4);
                break;
            case 3:
                paeth_rows(in, out, width, 3);
                break;
            case 2:
                paeth_rows(in, out, width, 2);
                break;
            default:
                paeth_rows(in, out, width, 1);
            }
            y += k - 1;
            continue;
        }
        in++;
        switch (filter) {
        case 0:
            memcpy(out, in, (size_t)width);
            break;
        case 1:
        case 4: /* no row above: Paeth predicts from the left, as Sub */ {
            uint8_t left = 0;
            for (Py_ssize_t x = 0; x < width; x++)
                out[x] = left = (uint8_t)(in[x] + left);
            break;
        }
        case 2:
            if (up)
                for (Py_ssize_t x = 0; x < width; x++)
                    out[x] = (uint8_t)(in[x] + up[x]);
            else
                memcpy(out, in, (size_t)width);
            break;
        case 3: {
            int left = 0;
            for (Py_ssize_t x = 0; x < width; x++) {
                int above = up ? up[x] : 0;
                out[x] = (uint8_t)(in[x] + ((left + above) >> 1));
                left = out[x];
            }
            break;
        }
        default:
            return y;
        }
    }
    return -1;
}

static PyObject *unfilter_grey8(PyObject *self, PyObject *args)
{
    Py_buffer in, out;
    Py_ssize_t width, height, bad;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*nn", &in, &out, &width, &height))
        return NULL;
    if (width <= 0 || height <= 0 || in.len != height * (width + 1) || out.len != width * height) {
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        return PyErr_Format(PyExc_ValueError,
                            "unfilter_grey8: %zd filtered bytes or a %zd-byte output do not fit "
                            "%zd x %zd pixels",
                            in.len, out.len, width, height);
    }
    Py_BEGIN_ALLOW_THREADS
    bad = unfilter(in.buf, out.buf, width, height);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    if (bad >= 0)
        return PyErr_Format(PyExc_ValueError, "row %zd has an unknown PNG filter type", bad);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ body box */

typedef struct {
    int32_t *row, *x0, *x1, *parent;
    Py_ssize_t n, cap;
} Runs;

static int runs_push(Runs *r, int32_t row, int32_t x0, int32_t x1)
{
    if (r->n == r->cap) {
        Py_ssize_t cap = r->cap ? 2 * r->cap : 4096;
        int32_t **arrays[] = {&r->row, &r->x0, &r->x1, &r->parent};
        for (int i = 0; i < 4; i++) {
            int32_t *grown = realloc(*arrays[i], (size_t)cap * sizeof(int32_t));
            if (!grown)
                return -1;
            *arrays[i] = grown;
        }
        r->cap = cap;
    }
    r->row[r->n] = row;
    r->x0[r->n] = x0;
    r->x1[r->n] = x1;
    r->parent[r->n] = (int32_t)r->n;
    r->n++;
    return 0;
}

static int32_t find(int32_t *parent, int32_t i)
{
    while (parent[i] != i) {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    return i;
}

/* Erode (erode = 1) or dilate (erode = 0) `m` (h x w, 0/1) by a (2r+1)^2 square, outside
 * the image counted as background; `tmp` is scratch of the same size. Separable: rows, then
 * columns, as _open_square; every inner loop is a plain vectorisable pass over a row. */
static void morph(uint8_t *m, uint8_t *tmp, Py_ssize_t h, Py_ssize_t w, int r, int erode)
{
    for (Py_ssize_t y = 0; y < h; y++) {
        const uint8_t *restrict in = m + y * w;
        uint8_t *restrict out = tmp + y * w;
        memcpy(out, in, (size_t)w);
        for (Py_ssize_t k = 1; k <= r; k++) {
            Py_ssize_t edge = k < w ? k : w;
            if (erode) {
                for (Py_ssize_t x = 0; x + k < w; x++)
                    out[x] &= in[x + k];
                for (Py_ssize_t x = k; x < w; x++)
                    out[x] &= in[x - k];
                memset(out, 0, (size_t)edge);
                memset(out + w - edge, 0, (size_t)edge);
            } else {
                for (Py_ssize_t x = 0; x + k < w; x++)
                    out[x] |= in[x + k];
                for (Py_ssize_t x = k; x < w; x++)
                    out[x] |= in[x - k];
            }
        }
    }
    for (Py_ssize_t y = 0; y < h; y++) {
        uint8_t *restrict out = m + y * w;
        memcpy(out, tmp + y * w, (size_t)w);
        for (Py_ssize_t k = -r; k <= r; k++) {
            Py_ssize_t yy = y + k;
            if (k == 0)
                continue;
            if (yy < 0 || yy >= h) {
                if (erode)
                    memset(out, 0, (size_t)w);
                continue;
            }
            const uint8_t *restrict near = tmp + yy * w;
            if (erode)
                for (Py_ssize_t x = 0; x < w; x++)
                    out[x] &= near[x];
            else
                for (Py_ssize_t x = 0; x < w; x++)
                    out[x] |= near[x];
        }
    }
}

/* The first index from `x` whose byte is not `value` (0 or 1), or `end`; eight at a time. */
static inline Py_ssize_t skip(const uint8_t *row, Py_ssize_t x, Py_ssize_t end, uint8_t value)
{
    const uint64_t all = value ? 0x0101010101010101ULL : 0;
    uint64_t word;
    while (x + 8 <= end && (memcpy(&word, row + x, 8), word == all))
        x += 8;
    while (x < end && row[x] == value)
        x++;
    return x;
}

/* 0: box found, 1: nothing left, -1: out of memory. box = xmin, ymin, xmax, ymax (exclusive). */
static int open_component(const uint8_t *grey, Py_ssize_t h, Py_ssize_t w, int level, int r,
                          int32_t box[4])
{
    /* The rectangle holding every bright pixel: outside it the opening changes nothing. */
    Py_ssize_t top = -1, bottom = 0, left = w, right = 0;
    for (Py_ssize_t y = 0; y < h; y++) {
        const uint8_t *row = grey + y * w;
        uint8_t peak = 0;
        for (Py_ssize_t x = 0; x < w; x++)
            peak = row[x] > peak ? row[x] : peak;
        if (peak <= level)
            continue;
        Py_ssize_t first = 0, last = w - 1;
        while (row[first] <= level)
            first++;
        while (row[last] <= level)
            last--;
        if (top < 0)
            top = y;
        bottom = y + 1;
        if (first < left)
            left = first;
        if (last + 1 > right)
            right = last + 1;
    }
    if (top < 0)
        return 1;
    Py_ssize_t ch = bottom - top, cw = right - left;
    uint8_t *m = malloc((size_t)(ch * cw)), *tmp = malloc((size_t)(ch * cw));
    Runs runs = {0};
    int status = -1;
    if (!m || !tmp)
        goto done;
    for (Py_ssize_t y = 0; y < ch; y++)
        for (Py_ssize_t x = 0; x < cw; x++)
            m[y * cw + x] = grey[(y + top) * w + x + left] > level;
    if (r > 0) {
        morph(m, tmp, ch, cw, r, 1);
        morph(m, tmp, ch, cw, r, 0);
    }
    /* Runs in raster order; each joins the runs of the row above that share a column. Roots
     * are the smallest run index: a component's first run in raster order. */
    Py_ssize_t above_start = 0, above_end = 0;
    for (Py_ssize_t y = 0; y < ch; y++) {
        const uint8_t *row = m + y * cw;
        Py_ssize_t here_start = runs.n, a = above_start;
        for (Py_ssize_t x = 0; x < cw;) {
            x = skip(row, x, cw, 0);
            if (x == cw)
                break;
            Py_ssize_t x0 = x;
            x = skip(row, x, cw, 1);
            if (runs_push(&runs, (int32_t)y, (int32_t)x0, (int32_t)x) < 0)
                goto done;
            int32_t me = (int32_t)(runs.n - 1);
            while (a < above_end && runs.x1[a] <= x0)
                a++; /* ends before this run starts: no later run of this row reaches it */
            for (Py_ssize_t b = a; b < above_end && runs.x0[b] < x; b++) {
                int32_t ra = find(runs.parent, (int32_t)b), rb = find(runs.parent, me);
                if (ra < rb)
                    runs.parent[rb] = ra;
                else if (rb < ra)
                    runs.parent[ra] = rb;
            }
        }
        above_start = here_start;
        above_end = runs.n;
    }
    if (runs.n == 0) {
        status = 1;
        goto done;
    }
    /* Sizes and boxes per root; the first root reaching the largest size wins a tie. */
    int64_t *size = calloc((size_t)runs.n, sizeof(int64_t));
    int32_t *bx = malloc((size_t)runs.n * 4 * sizeof(int32_t));
    if (!size || !bx) {
        free(size);
        free(bx);
        goto done;
    }
    for (Py_ssize_t i = 0; i < runs.n; i++) {
        int32_t root = find(runs.parent, (int32_t)i);
        int32_t *b = bx + 4 * (Py_ssize_t)root;
        if (size[root] == 0) {
            b[0] = runs.x0[i];
            b[1] = runs.row[i];
            b[2] = runs.x1[i];
            b[3] = runs.row[i] + 1;
        } else {
            if (runs.x0[i] < b[0])
                b[0] = runs.x0[i];
            if (runs.x1[i] > b[2])
                b[2] = runs.x1[i];
            if (runs.row[i] + 1 > b[3])
                b[3] = runs.row[i] + 1;
        }
        size[root] += runs.x1[i] - runs.x0[i];
    }
    Py_ssize_t best = 0;
    for (Py_ssize_t i = 1; i < runs.n; i++)
        if (size[i] > size[best])
            best = i;
    box[0] = bx[4 * best] + (int32_t)left;
    box[1] = bx[4 * best + 1] + (int32_t)top;
    box[2] = bx[4 * best + 2] + (int32_t)left;
    box[3] = bx[4 * best + 3] + (int32_t)top;
    free(size);
    free(bx);
    status = 0;
done:
    free(m);
    free(tmp);
    free(runs.row);
    free(runs.x0);
    free(runs.x1);
    free(runs.parent);
    return status;
}

static PyObject *largest_open_component(PyObject *self, PyObject *args)
{
    Py_buffer grey;
    Py_ssize_t width, height;
    int level, radius, status;
    int32_t box[4] = {0};
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nnii", &grey, &width, &height, &level, &radius))
        return NULL;
    if (width <= 0 || height <= 0 || grey.len != width * height || width > INT32_MAX / 2 ||
        height > INT32_MAX / 2 || radius < 0 || radius > 16) {
        PyBuffer_Release(&grey);
        return PyErr_Format(PyExc_ValueError,
                            "largest_open_component: %zd bytes are not %zd x %zd pixels, or "
                            "radius %d is outside 0..16",
                            grey.len, width, height, radius);
    }
    Py_BEGIN_ALLOW_THREADS
    status = open_component(grey.buf, height, width, level, radius, box);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&grey);
    if (status < 0)
        return PyErr_NoMemory();
    if (status > 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(iiii)", box[0], box[1], box[2], box[3]);
}

static PyMethodDef methods[] = {
    {"unfilter_grey8", unfilter_grey8, METH_VARARGS,
     "unfilter_grey8(filtered, out, width, height): undo the PNG filters of an 8-bit grey image "
     "(rows of a filter byte and `width` pixels) into the writable buffer `out`; ValueError "
     "naming the first row with an unknown filter type."},
    {"largest_open_component", largest_open_component, METH_VARARGS,
     "largest_open_component(grey, width, height, level, radius): the box (xmin, ymin, xmax, "
     "ymax; exclusive max) of the largest 4-connected component of (grey > level) opened by a "
     "(2 radius + 1)^2 square, a tie going to the raster-first; None when nothing is left."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "covidct._native",
    "Compiled kernels of covidct.preprocessing (see covidct/_native.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
