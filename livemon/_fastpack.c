/*
 * livemon._fastpack: the common case of RequestContext's record, in C.
 *
 * A cold request (one every few ms, caches evicted in between) costs what
 * the interpreter runs, so the pure-Python packing in livemon/context.py
 * (RequestContext._scalars and _lists) is the request's largest part.
 * pack() does the same work for the common case only: every value None or
 * of the exact type and range _scalars accepts inline, every text already
 * a known label, every list already cached.  For anything else it returns
 * None and the caller runs the Python path, which validates, counts or
 * raises, so both paths produce the same bytes by construction (a
 * Hypothesis test holds them together).  It has no side effect: nothing is
 * counted, nothing stored; it raises only MemoryError.
 *
 * It relies on the GIL (it reads dicts without locks): it declares no
 * Py_mod_gil slot, so a free-threaded build re-enables the GIL to load it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define MAX_LIST 8            /* MAX_DOMAINS == MAX_AGENTS == 8 */
#define LIST_BYTES (MAX_LIST * 8)
#define SCALARS_BYTES 124
#define RECORD_BYTES (SCALARS_BYTES + 3 * LIST_BYTES)
/* struct.Struct format of the scalar part, compared with
 * livemon.record.SCALARS_STRUCT.format at import: a change to the record
 * disables this module until it is changed too. */
#define SCALARS_FORMAT "<1q1q1I1B1q1q1h1q1q1d1b1q1d1b1q1d1b1b1b1q1d1q"

#define QUERY_HASH_SEED 0x9E3779B9u
#define MAX_COMPLEXITY 32767
#define MAX_TOKENS (1LL << 62)
#define REQUEST_EVENT 0

/* The context's attributes read, in the order of the names below. */
enum {
    A_QUERY, A_QUERY_CATEGORY, A_INTENT_CATEGORY, A_STRATEGY, A_OVERRIDE,
    A_ERROR, A_COMPLEXITY, A_CONFIDENCE, A_EXECUTION_MS, A_ACCEPTED,
    A_SUCCESS, A_SCORE, A_TASK_COMPLETED, A_CODE_VALID, A_TESTS_PASSED,
    A_TOKENS, A_CONTEXT_KB, A_DOMAINS, A_SUGGESTED, A_ACTUAL,
    A_TIMESTAMP, A_REQUEST_ID, A_OVERHEAD, A_SINK, N_ATTRS
};
static const char *const attr_names[N_ATTRS] = {
    "_query", "_query_category", "_intent_category", "_strategy",
    "_override", "_error", "_complexity", "_confidence", "_execution_ms",
    "_accepted", "_success", "_score", "_task_completed", "_code_valid",
    "_tests_passed", "_tokens", "_context_kb", "_domains", "_suggested",
    "_actual", "timestamp_ns", "request_id", "_overhead_ns", "_sink",
};
/* Those a context always has (set in __init__); the others default to
 * None (the class attribute) when the instance dict lacks them. */
#define FIRST_REQUIRED A_TIMESTAMP

static PyObject *attr_keys[N_ATTRS];
static PyObject *key_label_ids, *key_label_lists, *key_pid;
static uint32_t crc_table[256];

/* Sentinel result of the helpers below: "not the common case". */
#define UNCOMMON (-2)

static void
crc_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

/* zlib.crc32(data, seed) and zlib.crc32(data), in one pass: the two
 * chains of table loads overlap instead of running one after the other. */
static void
crc32_pair(const unsigned char *data, Py_ssize_t size, uint32_t seed,
           uint32_t *seeded, uint32_t *plain)
{
    uint32_t a = seed ^ 0xFFFFFFFFu, b = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < size; i++) {
        a = crc_table[(a ^ data[i]) & 0xFF] ^ (a >> 8);
        b = crc_table[(b ^ data[i]) & 0xFF] ^ (b >> 8);
    }
    *seeded = a ^ 0xFFFFFFFFu;
    *plain = b ^ 0xFFFFFFFFu;
}

static inline void
put_i64(char *at, int64_t v)
{
    memcpy(at, &v, 8); /* x86-64 only (ringbuf refuses others): little end */
}

static inline void
put_f64(char *at, double v)
{
    memcpy(at, &v, 8);
}

/* A label id: 0 for None, the cached id of a known str, else UNCOMMON. */
static int
label_id(PyObject *ids, PyObject *value, int64_t *out)
{
    if (value == Py_None) {
        *out = 0;
        return 0;
    }
    if (!PyUnicode_CheckExact(value))
        return UNCOMMON;
    PyObject *id = PyDict_GetItemWithError(ids, value);
    if (id == NULL || !PyLong_CheckExact(id)) {
        PyErr_Clear();
        return UNCOMMON;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(id, &overflow);
    if (overflow || v == 0 || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return UNCOMMON;
    }
    *out = v;
    return 0;
}

/* A tri-state flag: -1 for None, 0/1 for exactly False/True. */
static int
flag(PyObject *value)
{
    if (value == Py_None)
        return -1;
    if (value == Py_True)
        return 1;
    if (value == Py_False)
        return 0;
    return UNCOMMON;
}

/* A float in [0, high] (or [0, inf) when open): NaN for None. */
static int
number(PyObject *value, double high, int open, double *out)
{
    if (value == Py_None) {
        *out = NAN;
        return 0;
    }
    if (!PyFloat_CheckExact(value))
        return UNCOMMON;
    double v = PyFloat_AS_DOUBLE(value);
    if (!(v >= 0.0 && (open ? v < high : v <= high)))
        return UNCOMMON;
    *out = v;
    return 0;
}

/* An int in [0, high]: -1 for None. */
static int
count(PyObject *value, long long high, int64_t *out)
{
    if (value == Py_None) {
        *out = -1;
        return 0;
    }
    if (!PyLong_CheckExact(value))
        return UNCOMMON;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || v < 0 || v > high) {
        PyErr_Clear();
        return UNCOMMON;
    }
    *out = v;
    return 0;
}

/* Any int that fits int64 (timestamps, ids, the overhead). */
static int
int64_of(PyObject *value, int64_t *out)
{
    if (!PyLong_CheckExact(value))
        return UNCOMMON;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return UNCOMMON;
    }
    *out = v;
    return 0;
}

/* A list's packed ids: zeros for None, the cached bytes of a known
 * list or tuple of names. */
static int
packed_list(PyObject *lists, PyObject *value, char *at)
{
    if (value == Py_None) {
        memset(at, 0, LIST_BYTES);
        return 0;
    }
    PyObject *key;
    if (PyList_CheckExact(value))
        key = PyList_AsTuple(value);
    else if (PyTuple_CheckExact(value)) {
        key = value;
        Py_INCREF(key);
    }
    else
        return UNCOMMON;
    if (key == NULL) {
        PyErr_Clear();
        return UNCOMMON;
    }
    /* Hashing the tuple hashes its items: an unhashable or hostile item
     * raises here, and the Python path deals with it. */
    PyObject *cached = PyDict_GetItemWithError(lists, key);
    int found = cached != NULL && PyBytes_CheckExact(cached) &&
                PyBytes_GET_SIZE(cached) == LIST_BYTES;
    if (found)
        memcpy(at, PyBytes_AS_STRING(cached), LIST_BYTES);
    else
        PyErr_Clear();
    /* Only after the copy: `cached` is borrowed, and freeing the key may
     * free an item (its hash may have emptied the list) whose __del__
     * clears the cache. */
    Py_DECREF(key);
    return found ? 0 : UNCOMMON;
}

/* The signed 64-bit query hash of an ASCII str (livemon._checks). */
static int
query_hash(PyObject *query, int64_t *out)
{
    if (!PyUnicode_CheckExact(query) || !PyUnicode_IS_ASCII(query))
        return UNCOMMON;
    const unsigned char *data = PyUnicode_1BYTE_DATA(query);
    Py_ssize_t size = PyUnicode_GET_LENGTH(query);
    uint32_t high, low;
    crc32_pair(data, size, QUERY_HASH_SEED, &high, &low);
    /* (high << 32 | low) - 2**63, as a signed int64. */
    *out = (int64_t)((((uint64_t)high << 32) | low) ^ (1ULL << 63));
    return 0;
}

static int64_t
monotonic_ns(void)
{
    struct timespec ts; /* time.perf_counter_ns's clock on Linux */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Fill `out` (RECORD_BYTES) from the context's values; 0 or UNCOMMON. */
static int
fill(PyObject *const *v, PyObject *ids, PyObject *lists, int64_t pid,
     int64_t start_ns, char *out)
{
    int64_t query, q_category, complexity, intent, strategy, override, error;
    int64_t tokens, timestamp, request_id, overhead;
    double confidence, execution_ms, score, context_kb;
    int accepted, success, task_completed, code_valid, tests_passed;

    if (query_hash(v[A_QUERY], &query) ||
        label_id(ids, v[A_QUERY_CATEGORY], &q_category) ||
        count(v[A_COMPLEXITY], MAX_COMPLEXITY, &complexity) ||
        label_id(ids, v[A_INTENT_CATEGORY], &intent) ||
        label_id(ids, v[A_STRATEGY], &strategy) ||
        number(v[A_CONFIDENCE], 1.0, 0, &confidence) ||
        label_id(ids, v[A_OVERRIDE], &override) ||
        number(v[A_EXECUTION_MS], INFINITY, 1, &execution_ms) ||
        label_id(ids, v[A_ERROR], &error) ||
        number(v[A_SCORE], 1.0, 0, &score) ||
        count(v[A_TOKENS], MAX_TOKENS, &tokens) ||
        number(v[A_CONTEXT_KB], INFINITY, 1, &context_kb) ||
        int64_of(v[A_TIMESTAMP], &timestamp) ||
        int64_of(v[A_REQUEST_ID], &request_id) ||
        int64_of(v[A_OVERHEAD], &overhead))
        return UNCOMMON;
    if ((accepted = flag(v[A_ACCEPTED])) == UNCOMMON ||
        (success = flag(v[A_SUCCESS])) == UNCOMMON ||
        (task_completed = flag(v[A_TASK_COMPLETED])) == UNCOMMON ||
        (code_valid = flag(v[A_CODE_VALID])) == UNCOMMON ||
        (tests_passed = flag(v[A_TESTS_PASSED])) == UNCOMMON)
        return UNCOMMON;
    if (packed_list(lists, v[A_DOMAINS], out + SCALARS_BYTES) ||
        packed_list(lists, v[A_SUGGESTED], out + SCALARS_BYTES + LIST_BYTES) ||
        packed_list(lists, v[A_ACTUAL], out + SCALARS_BYTES + 2 * LIST_BYTES))
        return UNCOMMON;

    /* The layout of SCALARS_FORMAT, no padding. */
    char *at = out;
    uint32_t pid32 = (uint32_t)pid;
    put_i64(at, timestamp), at += 8;
    put_i64(at, request_id), at += 8;
    memcpy(at, &pid32, 4), at += 4;
    *at++ = REQUEST_EVENT;
    put_i64(at, query), at += 8;
    put_i64(at, q_category), at += 8;
    int16_t cx = (int16_t)complexity;
    memcpy(at, &cx, 2), at += 2;
    put_i64(at, intent), at += 8;
    put_i64(at, strategy), at += 8;
    put_f64(at, confidence), at += 8;
    *at++ = (char)accepted;
    put_i64(at, override), at += 8;
    put_f64(at, execution_ms), at += 8;
    *at++ = (char)success;
    put_i64(at, error), at += 8;
    put_f64(at, score), at += 8;
    *at++ = (char)task_completed;
    *at++ = (char)code_valid;
    *at++ = (char)tests_passed;
    put_i64(at, tokens), at += 8;
    put_f64(at, context_kb), at += 8;
    /* Past int64 the Python path's struct refuses it (counted failed). */
    int64_t elapsed, total;
    if (__builtin_sub_overflow(monotonic_ns(), start_ns, &elapsed) ||
        __builtin_add_overflow(overhead, elapsed, &total))
        return UNCOMMON;
    put_i64(at, total), at += 8;
    return at == out + SCALARS_BYTES ? 0 : UNCOMMON;
}

PyDoc_STRVAR(pack_doc,
"pack($module, context, start_ns, /)\n--\n\n"
"The packed record (bytes) of a RequestContext, `start_ns` the\n"
"perf_counter_ns() at which its end() began;\n"
"None when any value is not the common case (take the Python path).");

static PyObject *
pack(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    /* The instance dict, taken here: `ctx.__dict__` in Python is a
     * generic attribute lookup, costly cold. */
    PyObject *attributes =
        nargs == 2 && PyLong_CheckExact(args[1])
            ? PyObject_GenericGetDict(args[0], NULL)
            : NULL;
    if (attributes == NULL || !PyDict_CheckExact(attributes)) {
        Py_XDECREF(attributes);
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError,
                        "pack(context: RequestContext, start_ns: int)");
        return NULL;
    }
    int64_t start_ns, pid;
    if (int64_of(args[1], &start_ns)) {
        Py_DECREF(attributes);
        Py_RETURN_NONE;
    }
    /* Strong references: hashing a list's items may run their Python
     * code, which could change the context's dict under us. */
    PyObject *values[N_ATTRS];
    int taken = 0;
    PyObject *result = Py_None, *ids = NULL, *lists = NULL, *pid_obj = NULL;
    for (; taken < N_ATTRS; taken++) {
        PyObject *value =
            PyDict_GetItemWithError(attributes, attr_keys[taken]);
        if (value == NULL) {
            if (PyErr_Occurred() || taken >= FIRST_REQUIRED)
                goto done;
            value = Py_None; /* not logged: the class default */
        }
        Py_INCREF(value);
        values[taken] = value;
    }
    /* The Sink's slots; a missing one means the Python path. */
    PyObject *sink = values[A_SINK];
    ids = PyObject_GetAttr(sink, key_label_ids);
    lists = ids ? PyObject_GetAttr(sink, key_label_lists) : NULL;
    pid_obj = lists ? PyObject_GetAttr(sink, key_pid) : NULL;
    if (pid_obj == NULL || !PyDict_CheckExact(ids) ||
        !PyDict_CheckExact(lists) || int64_of(pid_obj, &pid) ||
        pid < 0 || pid > UINT32_MAX)
        goto done;
    PyObject *packed = PyBytes_FromStringAndSize(NULL, RECORD_BYTES);
    if (packed == NULL)
        result = NULL; /* MemoryError */
    else if (fill(values, ids, lists, pid, start_ns,
                  PyBytes_AS_STRING(packed)) == 0)
        result = packed;
    else
        Py_DECREF(packed);
done:
    if (result == Py_None) {
        PyErr_Clear();
        Py_INCREF(result);
    }
    while (taken > 0)
        Py_DECREF(values[--taken]);
    Py_DECREF(attributes);
    Py_XDECREF(ids);
    Py_XDECREF(lists);
    Py_XDECREF(pid_obj);
    return result;
}

static PyMethodDef methods[] = {
    {"pack", (PyCFunction)(void (*)(void))pack, METH_FASTCALL, pack_doc},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
    crc_init();
    for (int i = 0; i < N_ATTRS; i++) {
        attr_keys[i] = PyUnicode_InternFromString(attr_names[i]);
        if (attr_keys[i] == NULL)
            return -1;
    }
    key_label_ids = PyUnicode_InternFromString("label_ids");
    key_label_lists = PyUnicode_InternFromString("label_lists");
    key_pid = PyUnicode_InternFromString("pid");
    if (!key_label_ids || !key_label_lists || !key_pid)
        return -1;
    if (PyModule_AddStringConstant(module, "SCALARS_FORMAT", SCALARS_FORMAT) ||
        PyModule_AddIntConstant(module, "RECORD_BYTES", RECORD_BYTES) ||
        PyModule_AddIntConstant(module, "MAX_LIST", MAX_LIST))
        return -1;
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "livemon._fastpack",
    .m_doc = "The common case of RequestContext's record, packed in C.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__fastpack(void)
{
    return PyModuleDef_Init(&moduledef);
}
