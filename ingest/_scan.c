/* The exposition parser's byte loops in C: the line scan (each series text's 128-bit hash, and its numbers: an exact
 * decimal fast path, else strtod), gathering byte ranges into one column, and series texts → canonical JSON labels. `aifmon.ingest.parser` and
 * `aifmon.ingest.series_keys` are their Python side and document what they compute; this file only does it.
 *
 * Plain C over buffers: the caller allocates every output as a NumPy array and hands it in (buffer protocol), so
 * nothing here knows NumPy and no per-line Python object is made. Every call checks that each buffer holds what it
 * will be asked for, so a wrong size raises ValueError instead of writing past it. The loops run without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE  /* strtod_l */
#include <Python.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NL 10
#define HASH 35
#define SPACE 32
#define CLOSE 125

static const uint64_t M1 = 0x87C37B91114253D5ULL, M2 = 0x4CF5AD432745937FULL, M3 = 0x9E3779B97F4A7C15ULL,
                      M4 = 0xC2B2AE3D27D4EB4FULL;
static const int64_t EXACT_DIGITS = (int64_t)1 << 53;
static double POW10[23];
static locale_t c_numbers;  /* strtod in the C locale, whatever the process's: '.' is the decimal point */

/* A buffer that holds at least `count` items of `size` bytes, else a ValueError naming it. */
static int holds(const Py_buffer *b, Py_ssize_t count, Py_ssize_t size, const char *name) {
    if (count < 0 || b->len < count * size) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, need %zd", name, b->len, count < 0 ? 0 : count * size);
        return 0;
    }
    return 1;
}

static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* MurmurHash3's 64-bit finaliser: every input bit flips each output bit with probability about 1/2. */
static uint64_t fmix(uint64_t h) {
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 33;
    return h;
}

/* Two independent 64-bit hashes of bytes [a, b): murmur-style lanes with different constants, eight bytes at a time. */
static void hash_series(const uint8_t *buf, int64_t a, int64_t b, uint64_t *out) {
    uint64_t h1 = (uint64_t)(b - a) ^ M3, h2 = (uint64_t)(b - a) ^ M4, w;
    int64_t p = a;
    for (; p + 8 <= b; p += 8) {
        memcpy(&w, buf + p, 8);
        h1 = ((h1 ^ rotl(w * M1, 31)) * M2) + M3;
        h2 = ((h2 ^ rotl(w * M2, 33)) * M1) + M4;
    }
    w = 0;
    for (int64_t k = 0; k < b - p; k++)  /* the last 0-7 bytes, little-endian */
        w |= (uint64_t)buf[p + k] << (8 * k);
    h1 = fmix(h1 ^ (w * M1));
    h2 = fmix(h2 ^ (w * M2) ^ h1);
    out[0] = h1;
    out[1] = h2;
}

static int is_digit(uint8_t c) { return c >= 48 && c <= 57; }

/* The decimal number in buf[a:b] when one IEEE operation converts it exactly (at most 2**53 for the digits, a power of
 * ten of at most 22: Clinger's fast path), else NaN for `number` to give to strtod. */
static double decimal(const uint8_t *buf, int64_t a, int64_t b) {
    int64_t i = a, mantissa = 0, exponent = 0, digits = 0;
    int negative = 0;
    if (i < b && (buf[i] == '-' || buf[i] == '+')) {
        negative = buf[i] == '-';
        i++;
    }
    for (; i < b && is_digit(buf[i]); i++, digits++) {
        mantissa = mantissa * 10 + (buf[i] - 48);
        if (mantissa > EXACT_DIGITS) return NAN;
    }
    if (i < b && buf[i] == '.') {
        for (i++; i < b && is_digit(buf[i]); i++, digits++, exponent--) {
            mantissa = mantissa * 10 + (buf[i] - 48);
            if (mantissa > EXACT_DIGITS) return NAN;
        }
    }
    if (digits == 0) return NAN;
    if (i < b && (buf[i] == 'e' || buf[i] == 'E')) {
        int64_t sign = 1, e = 0, e_digits = 0;
        i++;
        if (i < b && (buf[i] == '-' || buf[i] == '+')) {
            sign = buf[i] == '-' ? -1 : 1;
            i++;
        }
        for (; i < b && is_digit(buf[i]) && e < 1000; i++, e_digits++)
            e = e * 10 + (buf[i] - 48);
        if (e_digits == 0) return NAN;
        exponent += sign * e;
    }
    if (i != b || exponent < -22 || exponent > 22) return NAN;
    double x = (double)mantissa;
    x = exponent >= 0 ? x * POW10[exponent] : x / POW10[-exponent];
    return negative ? -x : x;
}

static int lower_is(const uint8_t *buf, int64_t a, int64_t b, const char *word) {
    int64_t n = (int64_t)strlen(word);
    if (b - a != n) return 0;
    for (int64_t k = 0; k < n; k++)
        if ((buf[a + k] | 0x20) != word[k]) return 0;
    return 1;
}

/* The number in buf[a:b] as *out; 0 if it is not one. The fast path first (`decimal`); else it must be a decimal
 * ([+-] digits [. digits] [e [+-] digits], a digit on either side of the point) or [+-] NaN, Inf or Infinity in any
 * case (Go's ParseFloat, which Prometheus uses, without its hexadecimal and underscore forms), and glibc's strtod,
 * which rounds correctly, converts it. */
static int number(const uint8_t *buf, int64_t a, int64_t b, double *out) {
    double x = decimal(buf, a, b);
    if (!isnan(x)) {
        *out = x;
        return 1;
    }
    int64_t i = a, digits = 0;
    int negative = i < b && buf[i] == '-';
    if (i < b && (buf[i] == '-' || buf[i] == '+')) i++;
    if (lower_is(buf, i, b, "nan")) {
        *out = NAN;
        return 1;
    }
    if (lower_is(buf, i, b, "inf") || lower_is(buf, i, b, "infinity")) {
        *out = negative ? -INFINITY : INFINITY;
        return 1;
    }
    for (; i < b && is_digit(buf[i]); i++) digits++;
    if (i < b && buf[i] == '.')
        for (i++; i < b && is_digit(buf[i]); i++) digits++;
    if (digits == 0) return 0;
    if (i < b && (buf[i] == 'e' || buf[i] == 'E')) {
        i++;
        if (i < b && (buf[i] == '-' || buf[i] == '+')) i++;
        if (i == b || !is_digit(buf[i])) return 0;
        while (i < b && is_digit(buf[i])) i++;
    }
    if (i != b) return 0;
    char small[64], *text = b - a < 64 ? small : malloc((size_t)(b - a + 1));
    if (!text) return 0;
    memcpy(text, buf + a, (size_t)(b - a));
    text[b - a] = 0;
    *out = strtod_l(text, NULL, c_numbers);  /* out of range: +-Inf, or a correctly rounded subnormal or zero */
    if (text != small) free(text);
    return 1;
}

/* scan_lines(buf, lo, hi, lines_before, start, series_end, value_end, end, line_no, value, ts, hashes) -> (n, bad)
 * The lines of buf[lo:hi] (see parser._Lines); every output holds one item per line of the piece (its newlines + 1),
 * int64, float64 (value, ts) or 2 x uint64 (hashes). */
static PyObject *scan_lines(PyObject *self, PyObject *args) {
    Py_buffer in, out[8];
    Py_ssize_t lo, hi, lines_before;
    static const char *names[8] = {"start", "series_end", "value_end", "end", "line_no", "value", "ts", "hashes"};
    if (!PyArg_ParseTuple(args, "y*nnnw*w*w*w*w*w*w*w*", &in, &lo, &hi, &lines_before, &out[0], &out[1], &out[2], &out[3],
                          &out[4], &out[5], &out[6], &out[7]))
        return NULL;
    PyObject *result = NULL;
    const uint8_t *buf = in.buf;
    if (lo < 0 || hi < lo || hi > in.len) {
        PyErr_SetString(PyExc_ValueError, "scan_lines: [lo, hi) is not within the buffer");
        goto done;
    }
    Py_ssize_t cap = out[0].len / 8;  /* checked line by line: counting the lines first would read the piece twice */
    for (int k = 1; k < 8; k++)
        if (!holds(&out[k], cap, k == 7 ? 16 : 8, names[k])) goto done;
    int64_t *start = out[0].buf, *series_end = out[1].buf, *value_end = out[2].buf, *end = out[3].buf, *line_no = out[4].buf;
    double *value = out[5].buf, *ts = out[6].buf;
    uint64_t *hashes = out[7].buf;
    int64_t n = 0, bad = -1, pos = lo, line = lines_before;
    Py_BEGIN_ALLOW_THREADS
    while (pos < hi && n < cap) {
        line++;
        int64_t a = pos;
        const uint8_t *found = memchr(buf + a, NL, (size_t)(hi - a));
        int64_t b = found ? found - buf : hi;
        pos = b + 1;
        if (b == a || buf[a] == HASH) continue;
        /* read backwards: value and timestamp are the short fields after the last '}' */
        int64_t last_space = -1, first_space = -1, close = -1;
        for (int64_t p = b - 1; p >= a; p--) {
            uint8_t c = buf[p];
            if (c == CLOSE) {
                close = p;
                break;
            }
            if (c == SPACE) {
                first_space = p;
                if (last_space < 0) last_space = p;
            }
        }
        int64_t s = close >= 0 ? close + 1 : first_space;  /* without labels, the whole line was read: its first space */
        int64_t v = last_space > s ? last_space : b;
        start[n] = a, series_end[n] = s, value_end[n] = v, end[n] = b, line_no[n] = line;
        if (s >= b || s <= a || v <= s + 1 || buf[s] != SPACE) {
            bad = n++;
            break;
        }
        ts[n] = NAN;
        if (!number(buf, s + 1, v, &value[n]) || (v < b && !number(buf, v + 1, b, &ts[n]))) {
            bad = n++;
            break;
        }
        hash_series(buf, a, s, hashes + 2 * n);
        n++;
    }
    Py_END_ALLOW_THREADS
    if (pos < hi && n == cap)
        PyErr_Format(PyExc_ValueError, "scan_lines: more than %zd lines", cap);
    else
        result = Py_BuildValue("LL", (long long)n, (long long)bad);
done:
    PyBuffer_Release(&in);
    for (int k = 0; k < 8; k++) PyBuffer_Release(&out[k]);
    return result;
}

/* count_lines(buf, lo, hi) -> the newlines in buf[lo:hi], found by memchr (bytes.count is several times slower). */
static PyObject *count_lines(PyObject *self, PyObject *args) {
    Py_buffer in;
    Py_ssize_t lo, hi, n = 0;
    if (!PyArg_ParseTuple(args, "y*nn", &in, &lo, &hi)) return NULL;
    if (lo < 0 || hi < lo || hi > in.len) {
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_ValueError, "count_lines: [lo, hi) is not within the buffer");
        return NULL;
    }
    const uint8_t *buf = in.buf;
    Py_BEGIN_ALLOW_THREADS
    for (const uint8_t *p = buf + lo; (p = memchr(p, NL, (size_t)(buf + hi - p))) != NULL; p++) n++;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    return PyLong_FromSsize_t(n);
}

/* gather(buf, starts, ends, out): the byte ranges [starts, ends) of buf, one after the other into `out` (at least their
 * total length). */
static PyObject *gather(PyObject *self, PyObject *args) {
    Py_buffer in, starts, ends, out;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &in, &starts, &ends, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = starts.len / 8, total = 0;
    if (!holds(&ends, n, 8, "ends")) goto done;
    const int64_t *a = starts.buf, *b = ends.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (a[i] < 0 || b[i] < a[i] || b[i] > in.len) {
            PyErr_Format(PyExc_ValueError, "gather: range %zd is not within the buffer", i);
            goto done;
        }
        total += b[i] - a[i];
    }
    if (!holds(&out, total, 1, "out")) goto done;
    uint8_t *to = out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        memcpy(to, (const uint8_t *)in.buf + a[i], (size_t)(b[i] - a[i]));
        to += b[i] - a[i];
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&in);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&ends);
    PyBuffer_Release(&out);
    return result;
}

static int is_space(uint8_t c) { return c == 32 || (c >= 9 && c <= 13); }

/* Whether byte c may be in a metric (colon) or label name, at its first position or later. */
static int name_char(uint8_t c, int first, int colon) {
    int letter = (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 95 || (colon && c == 58);
    return letter || (!first && c >= 48 && c <= 57);
}

static int same_bytes(const uint8_t *a, int64_t a0, int64_t a1, const uint8_t *b, int64_t b0, int64_t b1) {
    return a1 - a0 == b1 - b0 && memcmp(a + a0, b + b0, (size_t)(a1 - a0)) == 0;
}

/* Whether bytes a[a0:a1] sort before b[b0:b1]. */
static int before(const uint8_t *a, int64_t a0, int64_t a1, const uint8_t *b, int64_t b0, int64_t b1) {
    int64_t la = a1 - a0, lb = b1 - b0;
    int c = memcmp(a + a0, b + b0, (size_t)(la < lb ? la : lb));
    return c ? c < 0 : la < lb;
}

static const char HEX[] = "0123456789abcdef";

/* Write code point cp as json.dumps (ensure_ascii) writes it inside a string; returns the new output position. */
static int64_t put_escaped(uint8_t *out, int64_t o, int64_t cp) {
    if (cp == 34 || cp == 92) {  /* " and \ */
        out[o] = 92;
        out[o + 1] = (uint8_t)cp;
        return o + 2;
    }
    if (cp >= 32 && cp <= 126) {
        out[o] = (uint8_t)cp;
        return o + 1;
    }
    uint8_t brief = cp == 8 ? 'b' : cp == 12 ? 'f' : cp == 10 ? 'n' : cp == 13 ? 'r' : cp == 9 ? 't' : 0;
    if (brief) {
        out[o] = 92;
        out[o + 1] = brief;
        return o + 2;
    }
    if (cp >= 0x10000) {  /* a surrogate pair, as Python writes it */
        cp -= 0x10000;
        o = put_escaped(out, o, 0xD800 + (cp >> 10));
        cp = 0xDC00 + (cp & 0x3FF);
    }
    out[o] = 92;
    out[o + 1] = 'u';
    for (int k = 0; k < 4; k++) out[o + 2 + k] = (uint8_t)HEX[(cp >> (12 - 4 * k)) & 15];
    return o + 6;
}

enum { FINE = 0, BAD_NAME = 1, UNTERMINATED = 2, BAD_LABELS = 3, NOT_UTF8 = 4, REPEATED = 5, TOO_SMALL = -1 };

/* One label: its name and value ranges, in the text (source 0: exposition-escaped) or the target's (1: JSON already). */
typedef struct {
    int64_t name0, name1, value0, value1, source;
} Label;

/* The labels of text data[a:e] (after the metric name, from its '{' at `brace`) into `labels`; returns their count, or
 * -problem. */
static int64_t exporter_labels(const uint8_t *data, int64_t brace, int64_t e, Label *labels) {
    int64_t count = 0, end = e;
    while (end > brace + 1 && is_space(data[end - 1])) end--;
    if (data[end - 1] != '}') return -UNTERMINATED;
    end--;
    int64_t p = brace + 1;
    while (p < end) {
        while (p < end && is_space(data[p])) p++;
        int64_t n0 = p;
        while (p < end && name_char(data[p], p == n0, 0)) p++;
        int64_t n1 = p;
        while (p < end && is_space(data[p])) p++;
        if (n1 == n0 || p >= end || data[p] != '=') return -BAD_LABELS;
        p++;
        while (p < end && is_space(data[p])) p++;
        if (p >= end || data[p] != '"') return -BAD_LABELS;
        int64_t v0 = ++p;
        while (p < end && data[p] != '"') p += data[p] == '\\' ? 2 : 1;
        if (p >= end) return -BAD_LABELS;
        int64_t v1 = p++;
        while (p < end && is_space(data[p])) p++;
        if (p < end && data[p] == ',') p++;
        for (int64_t k = 0; k < count; k++)
            if (same_bytes(data, labels[k].name0, labels[k].name1, data, n0, n1)) return -REPEATED;
        labels[count++] = (Label){n0, n1, v0, v1, 0};
    }
    return count;
}

/* An exposition label value (escapes \\, \" and \n) as JSON string content at out[o]; returns the new position, or -1
 * if the bytes are not UTF-8. */
static int64_t put_value(const uint8_t *data, int64_t p, int64_t end, uint8_t *out, int64_t o) {
    while (p < end) {
        int64_t c = data[p];
        if (c == '\\') {  /* an exposition escape: \n is a newline, \x is x */
            p++;
            c = data[p] == 'n' ? 10 : data[p];
        }
        p++;
        if (c < 128) {
            o = put_escaped(out, o, c);
            continue;
        }
        int more = c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2 : c >= 0xF0 && c <= 0xF4 ? 3 : -1;
        if (more < 0 || p + more > end) return -1;
        int64_t cp = c & (more == 1 ? 0x1F : more == 2 ? 0x0F : 0x07);
        for (int k = 0; k < more; k++, p++) {
            if (data[p] < 0x80 || data[p] > 0xBF) return -1;
            cp = (cp << 6) | (data[p] & 0x3F);
        }
        if ((more == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (more == 3 && !(cp >= 0x10000 && cp <= 0x10FFFF)))
            return -1;
        o = put_escaped(out, o, cp);
    }
    return o;
}

typedef struct {
    const uint8_t *data, *t_names, *t_values;
    const int64_t *offsets, *t_name_ends, *t_value_ends;
    int64_t n, n_target, out_len;
    uint8_t *out;
    int64_t *metric_start, *metric_end, *out_offsets;
} Keys;

/* Every text's metric name range and canonical JSON labels (see series_keys); sets *bad to the first text with a
 * problem and returns its code, FINE, or TOO_SMALL when `out` cannot hold them. */
static int keys_of(const Keys *k, int64_t *bad) {
    int64_t longest = 0;
    for (int64_t i = 0; i < k->n; i++)
        if (k->offsets[i + 1] - k->offsets[i] > longest) longest = k->offsets[i + 1] - k->offsets[i];
    int64_t cap = longest / 4 + 1 + k->n_target;  /* a label takes 4 bytes at least: a="" */
    Label *labels = malloc(sizeof(Label) * (size_t)cap);
    int64_t *order = malloc(sizeof(int64_t) * (size_t)cap);
    int problem = FINE;
    if (!labels || !order) {
        free(labels);
        free(order);
        return -2;
    }
    const uint8_t *data = k->data;
    int64_t o = 0;
    for (int64_t i = 0; i < k->n && problem == FINE; i++) {
        *bad = i;
        int64_t a = k->offsets[i], e = k->offsets[i + 1], brace = a;
        while (brace < e && data[brace] != '{') brace++;
        int64_t s0 = a, s1 = brace;
        while (s0 < s1 && is_space(data[s0])) s0++;
        while (s1 > s0 && is_space(data[s1 - 1])) s1--;
        int ok = s1 > s0;
        for (int64_t p = s0; p < s1 && ok; p++) ok = name_char(data[p], p == s0, 1);
        if (!ok) {
            problem = BAD_NAME;
            break;
        }
        k->metric_start[i] = s0, k->metric_end[i] = s1;
        int64_t count = brace < e ? exporter_labels(data, brace, e, labels) : 0;
        if (count < 0) {
            problem = (int)-count;
            break;
        }
        int64_t exporter = count;
        for (int64_t t = 0; t < k->n_target; t++) {  /* a label the exporter sets itself wins over the target's */
            int mine = 0;
            for (int64_t j = 0; j < exporter && !mine; j++)
                mine = same_bytes(data, labels[j].name0, labels[j].name1, k->t_names, k->t_name_ends[t], k->t_name_ends[t + 1]);
            if (!mine)
                labels[count++] = (Label){k->t_name_ends[t], k->t_name_ends[t + 1], k->t_value_ends[t], k->t_value_ends[t + 1], 1};
        }
        for (int64_t j = 0; j < count; j++) {  /* insertion sort by name: a handful of labels */
            order[j] = j;
            for (int64_t m = j; m > 0; m--) {
                Label *x = &labels[order[m - 1]], *y = &labels[order[m]];
                if (!before(y->source ? k->t_names : data, y->name0, y->name1, x->source ? k->t_names : data, x->name0, x->name1))
                    break;
                int64_t swap = order[m - 1];
                order[m - 1] = order[m];
                order[m] = swap;
            }
        }
        int64_t need = 2;
        for (int64_t j = 0; j < count; j++)  /* at most: quotes, ': ', ', ' and 6 bytes per value byte (\u00XX) */
            need += 8 + labels[j].name1 - labels[j].name0 + 6 * (labels[j].value1 - labels[j].value0);
        if (o + need > k->out_len) {
            problem = TOO_SMALL;
            break;
        }
        uint8_t *out = k->out;
        out[o++] = '{';
        for (int64_t j = 0; j < count && problem == FINE; j++) {
            const Label *x = &labels[order[j]];
            if (j) {
                out[o++] = ',';
                out[o++] = ' ';
            }
            out[o++] = '"';
            memcpy(out + o, (x->source ? k->t_names : data) + x->name0, (size_t)(x->name1 - x->name0));
            o += x->name1 - x->name0;
            memcpy(out + o, "\": \"", 4);
            o += 4;
            if (x->source) {
                memcpy(out + o, k->t_values + x->value0, (size_t)(x->value1 - x->value0));
                o += x->value1 - x->value0;
            } else if ((o = put_value(data, x->value0, x->value1, out, o)) < 0) {
                problem = NOT_UTF8;
                break;
            }
            out[o++] = '"';
        }
        if (problem == FINE) {
            out[o++] = '}';
            k->out_offsets[i + 1] = o;
        }
    }
    free(labels);
    free(order);
    return problem;
}

/* series_keys(data, offsets, t_names, t_name_ends, t_values, t_value_ends, out, metric_start, metric_end, out_offsets)
 * -> (bad, problem): see keys_of. offsets: n + 1 int64 into data; out_offsets: n + 1 int64, zeroed. */
static PyObject *series_keys(PyObject *self, PyObject *args) {
    Py_buffer b[10];
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*w*w*w*", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &b[6], &b[7], &b[8], &b[9]))
        return NULL;
    PyObject *result = NULL;
    Keys k = {.data = b[0].buf, .offsets = b[1].buf, .t_names = b[2].buf, .t_name_ends = b[3].buf, .t_values = b[4].buf,
              .t_value_ends = b[5].buf, .out = b[6].buf, .metric_start = b[7].buf, .metric_end = b[8].buf, .out_offsets = b[9].buf,
              .n = b[1].len / 8 - 1, .n_target = b[3].len / 8 - 1, .out_len = b[6].len};
    if (k.n < 0 || k.n_target < 0 || b[5].len != b[3].len || !holds(&b[7], k.n, 8, "metric_start") ||
        !holds(&b[8], k.n, 8, "metric_end") || !holds(&b[9], k.n + 1, 8, "out_offsets"))
        goto done;
    for (int64_t i = 0; i < k.n; i++)
        if (k.offsets[i] < 0 || k.offsets[i + 1] < k.offsets[i] || k.offsets[i + 1] > b[0].len) {
            PyErr_Format(PyExc_ValueError, "series_keys: text %lld is not within the data", (long long)i);
            goto done;
        }
    for (int64_t t = 0; t < k.n_target; t++)
        if (k.t_name_ends[t + 1] > b[2].len || k.t_value_ends[t + 1] > b[4].len) {
            PyErr_SetString(PyExc_ValueError, "series_keys: a target label is not within its data");
            goto done;
        }
    int64_t bad = -1;
    int problem;
    Py_BEGIN_ALLOW_THREADS
    problem = keys_of(&k, &bad);
    Py_END_ALLOW_THREADS
    if (problem == -2) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_BuildValue("Li", (long long)(problem == FINE ? -1 : bad), problem);
done:
    for (int k2 = 0; k2 < 10; k2++) PyBuffer_Release(&b[k2]);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_lines", scan_lines, METH_VARARGS, "The lines of an exposition piece into columns: (n, bad)."},
    {"count_lines", count_lines, METH_VARARGS, "The newlines in a range of a buffer."},
    {"gather", gather, METH_VARARGS, "Byte ranges of a buffer, one after the other into another."},
    {"series_keys", series_keys, METH_VARARGS, "Series texts to metric name ranges and canonical JSON labels: (bad, problem)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_scan", .m_doc = "The exposition parser's byte loops (see _scan.c).", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__scan(void) {
    double p = 1.0;
    for (int k = 0; k < 23; k++, p *= 10.0) POW10[k] = p;  /* exact: 10**22 < 2**53 * 2**22 */
    if (!c_numbers && !(c_numbers = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0))) return PyErr_NoMemory();
    return PyModule_Create(&module);
}
