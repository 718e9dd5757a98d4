/*
 * ringbuf._fastput: the common case of RingWriter.put, in C.
 *
 * Cold (a put every few ms, caches evicted in between) a put costs what
 * the interpreter runs, and the Python put's thread lock alone is a large
 * part of it.  put() stores one record when nothing is unusual: no thread
 * inside the Python put (its lock free), a lane held, the ring not
 * retired or replaced, no clock check due, the lane not full, the record
 * exactly one slot of bytes.  Otherwise it returns None and the caller
 * takes the Python put, which checks, counts and raises; so both paths
 * keep one protocol (ringbuf/writer.py describes it).
 *
 * It is installed as RingWriter.put, a method descriptor of the class
 * (the pattern of the stdlib's C accelerators), and hands every other
 * case to RingWriter._put_python.
 *
 * Why no lock is needed: this function runs from start to end holding
 * the GIL and runs no Python code, so no other thread of this process can
 * interleave with it; and every Python path that moves the head does so
 * holding the thread lock, which is checked free first.  A free-threaded
 * build re-enables the GIL to load this module (it declares no
 * Py_mod_gil slot).  Other processes never write this lane.
 *
 * Memory order: x86-64 only (ringbuf refuses others).  The slot is copied
 * before the head is published with a release store, and the tail is
 * loaded (acquire) before the slot is overwritten.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* Compared with ringbuf/_layout.py and writer.py at import. */
#define RETIRED_WORD 9
#define CLOCK_EVERY 8

enum {
    A_LOCKED, A_LANE, A_HEAD, A_BYTES, A_CAPACITY, A_RECORD_BYTES,
    A_TAIL_WORD, A_HEAD_WORD, A_SLOTS_OFFSET, N_ATTRS
};
static const char *const attr_names[N_ATTRS] = {
    "_locked", "_lane", "_head", "_bytes", "_capacity",
    "_record_bytes", "_tail_word", "_head_word", "_slots_offset",
};
static PyObject *attr_keys[N_ATTRS];
static PyObject *key_replaced, *key_closed, *key_put_python;

/* A non-negative int attribute, or -1. */
static long long
index_of(PyObject *value)
{
    if (!PyLong_CheckExact(value))
        return -1;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || v < 0) {
        PyErr_Clear();
        return -1;
    }
    return v;
}

/* Whether the flag attribute is present and anything but False (then
 * the Python put decides). */
static int
flagged(PyObject *attributes, PyObject *key)
{
    PyObject *value = PyDict_GetItemWithError(attributes, key);
    if (value == NULL) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return 1;
        }
        return 0; /* the class default, False */
    }
    return value != Py_False;
}

/* Store the record; 1 stored, 0 not the common case. */
static int
store(PyObject *const *v, PyObject *record, long long head)
{
    long long capacity = index_of(v[A_CAPACITY]);
    long long size = index_of(v[A_RECORD_BYTES]);
    long long tail_word = index_of(v[A_TAIL_WORD]);
    long long head_word = index_of(v[A_HEAD_WORD]);
    long long slots_offset = index_of(v[A_SLOTS_OFFSET]);
    if (capacity <= 0 || size <= 0 || tail_word < 0 || head_word < 0 ||
        slots_offset < 0 || !PyBytes_CheckExact(record) ||
        PyBytes_GET_SIZE(record) != size)
        return 0;
    /* One view of the whole segment (writer._bytes; _words views the same
     * page-aligned mapping as u64): a released one (the ring was closed)
     * refuses, and Python raises. */
    Py_buffer segment;
    if (PyObject_GetBuffer(v[A_BYTES], &segment, PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        return 0;
    }
    int stored = 0;
    uint64_t *word = segment.buf;
    long long n_words = segment.len / 8;
    long long start = slots_offset + (head % capacity) * size;
    if (RETIRED_WORD >= n_words || tail_word >= n_words ||
        head_word >= n_words || start + size > segment.len)
        goto release;
    if (__atomic_load_n(&word[RETIRED_WORD], __ATOMIC_ACQUIRE))
        goto release; /* retired: Python sees it and says stale */
    uint64_t tail = __atomic_load_n(&word[tail_word], __ATOMIC_ACQUIRE);
    if ((uint64_t)head - tail >= (uint64_t)capacity)
        goto release; /* full: Python counts the drop */
    memcpy((char *)segment.buf + start, PyBytes_AS_STRING(record), size);
    __atomic_store_n(&word[head_word], (uint64_t)head + 1, __ATOMIC_RELEASE);
    stored = 1;
release:
    PyBuffer_Release(&segment);
    return stored;
}

/* The common case; 1 stored, 0 take the Python put, -1 error.
 * `_locked` is the bound `_thread_lock.locked`, kept beside the lock
 * (a method lookup per put costs more, cold). */
static int
put_common(PyObject *attributes, PyObject *record)
{
    /* The lock first: once it is known free, no Python code runs until
     * the end, so the borrowed values below stay valid. */
    PyObject *is_locked =
        PyDict_GetItemWithError(attributes, attr_keys[A_LOCKED]);
    Py_XINCREF(is_locked); /* ours while it runs, whatever it is */
    PyObject *locked = is_locked ? PyObject_CallNoArgs(is_locked) : NULL;
    Py_XDECREF(is_locked);
    if (locked != Py_False) { /* a thread is inside the Python put */
        if (locked == NULL)
            PyErr_Clear();
        Py_XDECREF(locked);
        return 0;
    }
    Py_DECREF(locked);
    PyObject *v[N_ATTRS];
    for (int i = 0; i < N_ATTRS; i++) {
        v[i] = PyDict_GetItemWithError(attributes, attr_keys[i]);
        if (v[i] == NULL) { /* e.g. no lane yet: the class default */
            PyErr_Clear();
            return 0;
        }
    }
    if (flagged(attributes, key_replaced) || flagged(attributes, key_closed))
        return 0;
    long long head = index_of(v[A_HEAD]);
    if (v[A_LANE] == Py_None || head < 0 || head % CLOCK_EVERY == 0)
        return 0; /* the clock check is due: Python times it */
    /* Made before the slot is published, so that nothing after it can
     * fail (a MemoryError then would leave _head behind the lane's). */
    PyObject *next = PyLong_FromUnsignedLongLong((uint64_t)head + 1);
    if (next == NULL)
        return -1; /* MemoryError, nothing stored */
    int stored = store(v, record, head);
    /* Replacing an existing key's value allocates nothing. */
    if (stored && PyDict_SetItem(attributes, attr_keys[A_HEAD], next) < 0)
        stored = -1;
    Py_DECREF(next);
    return stored;
}

PyDoc_STRVAR(put_doc,
"put($self, /, record)\n--\n\n"
"RingWriter.put, compiled: stores the common case here and hands\n"
"anything else to the Python put (RingWriter._put_python), which\n"
"documents the arguments, the result and the errors.");

static PyObject *
put(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
    PyObject *kwnames)
{
    /* put(record=...): the Python put's signature, and its errors. */
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        PyObject *python = PyObject_GetAttr(self, key_put_python);
        if (python == NULL)
            return NULL;
        PyObject *result = PyObject_Vectorcall(python, args, nargs, kwnames);
        Py_DECREF(python);
        return result;
    }
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "put(record): one argument");
        return NULL;
    }
    PyObject *attributes = PyObject_GenericGetDict(self, NULL);
    if (attributes == NULL) /* a subclass without a dict: Python's turn */
        PyErr_Clear();
    int stored = attributes != NULL && PyDict_CheckExact(attributes)
                     ? put_common(attributes, args[0])
                     : 0;
    Py_XDECREF(attributes);
    if (stored < 0)
        return NULL;
    if (stored)
        Py_RETURN_TRUE;
    return PyObject_CallMethodOneArg(self, key_put_python, args[0]);
}

static PyMethodDef put_def = {
    "put", (PyCFunction)(void (*)(void))put, METH_FASTCALL | METH_KEYWORDS,
    put_doc,
};

PyDoc_STRVAR(method_for_doc,
"method_for($module, cls, /)\n--\n\n"
"The compiled put, a method of cls.\n\n"
"A method descriptor, as a C type's own methods are: the interpreter\n"
"binds and calls it without creating a bound method (an instancemethod\n"
"wrapper costs a generic attribute lookup per call, cold).");

static PyObject *
method_for(PyObject *module, PyObject *cls)
{
    (void)module;
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "method_for(cls): a class");
        return NULL;
    }
    return PyDescr_NewMethod((PyTypeObject *)cls, &put_def);
}

static PyMethodDef methods[] = {
    {"method_for", method_for, METH_O, method_for_doc},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
    for (int i = 0; i < N_ATTRS; i++) {
        attr_keys[i] = PyUnicode_InternFromString(attr_names[i]);
        if (attr_keys[i] == NULL)
            return -1;
    }
    key_replaced = PyUnicode_InternFromString("_replaced");
    key_closed = PyUnicode_InternFromString("_closed");
    key_put_python = PyUnicode_InternFromString("_put_python");
    if (!key_replaced || !key_closed || !key_put_python)
        return -1;
    if (PyModule_AddIntConstant(module, "RETIRED_WORD", RETIRED_WORD) ||
        PyModule_AddIntConstant(module, "CLOCK_EVERY", CLOCK_EVERY))
        return -1;
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ringbuf._fastput",
    .m_doc = "The common case of RingWriter.put, in C.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__fastput(void)
{
    return PyModuleDef_Init(&moduledef);
}
