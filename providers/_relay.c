/* A relayed stream's chunk step in C (gateway/direct.py, providers/_pool.py).
 *
 * Once a stream's first audio is out, the rest of one upstream body is relayed from the
 * upstream connection's callbacks (gateway.direct.DirectRelay). In Python a chunk went
 * through seven frames between the response parser's body callback and the caller's write
 * buffer: the connection's body callback, the hand-over to the relay, the relay, the
 * converter, the answer's framing, the connection's write and its hold for the end of the
 * event loop's turn. Here it is one call, made by the parser itself:
 *
 * - Body: the response parser's body callback (providers._pool._Connection). It keeps a
 *   response's body pieces for the reader that asks for them, as the Python callback did,
 *   and once a relay is tapped hands each piece to the relay's Tap instead.
 * - Tap: one relayed stream's step, in the common case only: whole samples, nothing carried
 *   by the converter, its kernel the compiled polyphase Stream (or the pass-through), a
 *   chunked answer whose head is out, a plaintext connection. It marks the stall watch,
 *   converts, counts and frames the chunk as the Python step does (the same attributes), and
 *   holds it for the end of the loop's turn. A piece off the common path (an odd byte count,
 *   which leaves a byte carried) goes to the Python step, and so does every piece after it.
 * - Batch: the chunks the taps of one event loop hold, sent at the end of its turn by one
 *   callback (the end of providers._turn.TurnWrites' turn, for relayed chunks): a tap's chunks
 *   held in a turn leave in one write, the taps' writes back to back. As ConnectionIO._send
 *   does, a tap sends what it holds at once when that and the transport's buffer pass the
 *   high-water mark (writing then pauses when it would have). When the connection holds
 *   writes of its own from Python (made in the turn the relay began), a chunk is held after
 *   them, with them (ConnectionIO._send's own hold), so the order of the bytes is kept.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <string.h>

static PyObject *s_disconnected, *s_response_complete, *s_transport, *s_lingering,
    *s_send, *s_since, *s_waiting, *s_is_closing,
    *s_get_write_buffer_size, *s_write, *s_flush;

/* ------------------------------------------------------------------------------- Tap */

typedef struct {
    PyObject_HEAD
    PyObject *process;  /* the kernel's Stream.process, or None: the pass-through */
    PyObject *conn;     /* the caller's connection (gateway.http1.io.ConnectionIO) */
    PyObject *exchange; /* the answer on it (gateway.http1.exchange.Exchange) */
    PyObject *stall;    /* the stream's StallWatch */
    PyObject *clock;    /* the event loop's time() */
    PyObject *held;     /* the connection's writes held for the turn's end (a list) */
    PyObject *slow;     /* the Python step, for a piece off the common path */
    PyObject *fail;     /* told of an error the kernel raised */
    PyObject *batch;    /* the loop's Batch */
    PyObject *call_soon; /* the loop's call_soon */
    PyObject *pending;  /* chunks held in the batch (a list) */
    Py_ssize_t pending_bytes;
    Py_ssize_t high_water;
    long long frames_in, frames_out, bytes_out, pieces;
    char active;  /* cleared when the relay has ended: pieces are dropped */
    char paused;  /* the caller's write buffer is full: no stall mark */
    char on_slow; /* a piece went to the Python step: so do the rest */
    char feeding; /* a piece is being handled: close() lets go of the references after it */
    char closed;
    char queued; /* in the batch's list of taps to send */
} Tap;

typedef struct {
    PyObject_HEAD
    PyObject *taps;     /* taps with chunks held, in the order they began to hold */
    PyObject *flush_cb; /* this batch's flush method, bound (made at the first use) */
    char scheduled;     /* flush is due from the loop */
} Batch;

static PyTypeObject BatchType;

static PyTypeObject TapType;

static int
Tap_traverse(Tap *self, visitproc visit, void *arg)
{
    Py_VISIT(self->process);
    Py_VISIT(self->conn);
    Py_VISIT(self->exchange);
    Py_VISIT(self->stall);
    Py_VISIT(self->clock);
    Py_VISIT(self->held);
    Py_VISIT(self->slow);
    Py_VISIT(self->fail);
    Py_VISIT(self->batch);
    Py_VISIT(self->call_soon);
    Py_VISIT(self->pending);
    return 0;
}

static int
Tap_clear(Tap *self)
{
    Py_CLEAR(self->process);
    Py_CLEAR(self->conn);
    Py_CLEAR(self->exchange);
    Py_CLEAR(self->stall);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->held);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->fail);
    Py_CLEAR(self->batch);
    Py_CLEAR(self->call_soon);
    Py_CLEAR(self->pending);
    return 0;
}

static void
Tap_dealloc(Tap *self)
{
    PyObject_GC_UnTrack(self);
    Tap_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Tap_init(Tap *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"process", "conn",  "exchange", "stall",     "clock",      "held",
                            "slow",    "fail",  "batch",    "call_soon", "high_water", NULL};
    PyObject *process, *conn, *exchange, *stall, *clock, *held, *slow, *fail, *batch, *call_soon;
    Py_ssize_t high_water;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO!OOO!On", names, &process, &conn,
                                     &exchange, &stall, &clock, &PyList_Type, &held, &slow,
                                     &fail, &BatchType, &batch, &call_soon, &high_water))
        return -1;
    if (process != Py_None && !PyCallable_Check(process)) {
        PyErr_SetString(PyExc_TypeError, "process must be callable or None");
        return -1;
    }
    PyObject *pending = PyList_New(0);
    if (pending == NULL)
        return -1;
    Tap_clear(self);
    Py_INCREF(process);
    self->process = process;
    Py_INCREF(conn);
    self->conn = conn;
    Py_INCREF(exchange);
    self->exchange = exchange;
    Py_INCREF(stall);
    self->stall = stall;
    Py_INCREF(clock);
    self->clock = clock;
    Py_INCREF(held);
    self->held = held;
    Py_INCREF(slow);
    self->slow = slow;
    Py_INCREF(fail);
    self->fail = fail;
    Py_INCREF(batch);
    self->batch = batch;
    Py_INCREF(call_soon);
    self->call_soon = call_soon;
    self->pending = pending;
    self->pending_bytes = 0;
    self->queued = 0;
    self->high_water = high_water;
    self->frames_in = self->frames_out = self->bytes_out = self->pieces = 0;
    self->active = 1;
    self->paused = 0;
    self->on_slow = 0;
    self->feeding = 0;
    self->closed = 0;
    return 0;
}

/* An attribute's truth (-1: an error). */
static int
truth_of(PyObject *owner, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(owner, name);
    if (value == NULL)
        return -1;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* Hold `framed` with the connection's own writes: ConnectionIO._send itself (the turn told at
 * the first, what is held sent now past the high-water mark). */
static int
hold(Tap *t, PyObject *framed)
{
    PyObject *done = PyObject_CallMethodOneArg(t->conn, s_send, framed);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    return 0;
}

/* The connection's transport when it takes writes (ConnectionIO.send_held's and write's
 * check: there is one and it is not closing), in *transport (a new reference): 1; 0 when it
 * does not; -1 on an error. */
static int
open_transport(Tap *t, PyObject **transport)
{
    *transport = PyObject_GetAttr(t->conn, s_transport);
    if (*transport == NULL)
        return -1;
    int open = -1;
    if (*transport == Py_None)
        open = 0;
    else {
        PyObject *closing = PyObject_CallMethodNoArgs(*transport, s_is_closing);
        if (closing != NULL) {
            int no = PyObject_IsTrue(closing);
            Py_DECREF(closing);
            open = no < 0 ? -1 : !no;
        }
    }
    if (open != 1)
        Py_CLEAR(*transport);
    return open;
}

/* The transport's write buffer's size (-1: an error). */
static Py_ssize_t
write_buffer_size(PyObject *transport)
{
    PyObject *size = PyObject_CallMethodNoArgs(transport, s_get_write_buffer_size);
    if (size == NULL)
        return -1;
    Py_ssize_t buffered = PyLong_AsSsize_t(size);
    Py_DECREF(size);
    return buffered;
}

/* Send the chunks the tap holds in the batch (ConnectionIO.send_held): nothing when the
 * connection has ended. */
static int
tap_send(Tap *t)
{
    PyObject *pending = t->pending;
    if (pending == NULL || PyList_GET_SIZE(pending) == 0)
        return 0;
    Py_ssize_t count = PyList_GET_SIZE(pending);
    PyObject *data;
    if (count == 1) {
        data = PyList_GET_ITEM(pending, 0);
        Py_INCREF(data);
    }
    else {
        data = PyBytes_FromStringAndSize(NULL, t->pending_bytes);
        if (data == NULL)
            return -1;
        char *out = PyBytes_AS_STRING(data);
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *part = PyList_GET_ITEM(pending, i);
            memcpy(out, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part));
            out += PyBytes_GET_SIZE(part);
        }
    }
    if (PyList_SetSlice(pending, 0, PY_SSIZE_T_MAX, NULL) < 0) {
        Py_DECREF(data);
        return -1;
    }
    t->pending_bytes = 0;
    PyObject *transport;
    int rc = open_transport(t, &transport);
    if (rc == 1) {
        PyObject *written = PyObject_CallMethodOneArg(transport, s_write, data);
        rc = written == NULL ? -1 : 0;
        Py_XDECREF(written);
        Py_DECREF(transport);
    }
    Py_DECREF(data);
    return rc;
}

/* Hold `framed` for the end of the loop's turn in the loop's Batch, sent with the other taps'
 * chunks by one callback (ConnectionIO._send, without the turn's Python hold); sent now when
 * what the tap holds and the transport's buffer pass the high-water mark, so that writing
 * pauses when it would have. When the connection holds writes of its own (made in Python in
 * this turn, before the relay began), the chunk is held after them instead, in order. */
static int
batch_hold(Tap *t, PyObject *transport, PyObject *framed)
{
    if (PyList_GET_SIZE(t->held) != 0) {
        if (tap_send(t) < 0)
            return -1;
        return hold(t, framed);
    }
    Batch *batch = (Batch *)t->batch;
    if (PyList_Append(t->pending, framed) < 0)
        return -1;
    t->pending_bytes += PyBytes_GET_SIZE(framed);
    if (!t->queued) {
        if (PyList_Append(batch->taps, (PyObject *)t) < 0)
            return -1;
        t->queued = 1;
        if (!batch->scheduled) {
            if (batch->flush_cb == NULL) {
                batch->flush_cb = PyObject_GetAttr((PyObject *)batch, s_flush);
                if (batch->flush_cb == NULL)
                    return -1;
            }
            PyObject *handle = PyObject_CallOneArg(t->call_soon, batch->flush_cb);
            if (handle == NULL)
                return -1;
            Py_DECREF(handle);
            batch->scheduled = 1;
        }
    }
    Py_ssize_t buffered = write_buffer_size(transport);
    if (buffered == -1 && PyErr_Occurred())
        return -1;
    if (t->pending_bytes + buffered > t->high_water)
        return tap_send(t);
    return 0;
}

/* The chunked coding's size line for n bytes ("%x\r\n", as the Python step's framing). */
static int
chunk_size_line(char *out, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    char reversed[2 * sizeof n];
    int count = 0;
    do {
        reversed[count++] = digits[n & 15];
        n >>= 4;
    } while (n);
    for (int i = 0; i < count; i++)
        out[i] = reversed[count - 1 - i];
    out[count] = '\r';
    out[count + 1] = '\n';
    return count + 2;
}

/* Exchange.write_now and ConnectionIO.write for `pcm` (not empty): nothing once the answer
 * is complete or the caller gone, or the connection is ending; else one chunk of the
 * chunked coding, held. */
static int
write_chunk(Tap *t, PyObject *pcm)
{
    int no = truth_of(t->exchange, s_response_complete);
    if (no != 0)
        return no < 0 ? -1 : 0;
    no = truth_of(t->exchange, s_disconnected);
    if (no != 0)
        return no < 0 ? -1 : 0;
    no = truth_of(t->conn, s_lingering);
    if (no != 0)
        return no < 0 ? -1 : 0;
    PyObject *transport;
    int rc = open_transport(t, &transport);
    if (rc != 1)
        return rc;
    rc = -1;
    Py_ssize_t n = PyBytes_GET_SIZE(pcm);
    char size[24];
    int size_len = chunk_size_line(size, (size_t)n);
    PyObject *framed = PyBytes_FromStringAndSize(NULL, size_len + n + 2);
    if (framed == NULL)
        goto done;
    char *out = PyBytes_AS_STRING(framed);
    memcpy(out, size, size_len);
    memcpy(out + size_len, PyBytes_AS_STRING(pcm), n);
    out[size_len + n] = '\r';
    out[size_len + n + 1] = '\n';
    rc = batch_hold(t, transport, framed);
    Py_DECREF(framed);
done:
    Py_DECREF(transport);
    return rc;
}

/* The kernel raised: the relay ends with the error (as the Python step's `except
 * Exception`); anything that is not an Exception goes on up. */
static int
kernel_failed(Tap *t)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL)
        PyException_SetTraceback(value, traceback);
    t->active = 0;
    PyObject *told = PyObject_CallOneArg(t->fail, value != NULL ? value : Py_None);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    if (told == NULL)
        return -1;
    Py_DECREF(told);
    return 0;
}

/* One piece of the relayed body (DirectRelay.body). */
static int
tap_step(Tap *t, PyObject *data)
{
    t->pieces++;
    if (t->on_slow || !PyBytes_CheckExact(data) || (PyBytes_GET_SIZE(data) & 1)) {
        t->on_slow = 1;
        if (tap_send(t) < 0) /* what it holds goes before what the Python step writes */
            return -1;
        PyObject *done = PyObject_CallOneArg(t->slow, data);
        if (done == NULL)
            return -1;
        Py_DECREF(done);
        return 0;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (n == 0)
        return 0;
    if (!t->paused) { /* the caller's slowness is not the upstream's silence */
        PyObject *now = PyObject_CallNoArgs(t->clock);
        if (now == NULL)
            return -1;
        int rc = PyObject_SetAttr(t->stall, s_since, now);
        Py_DECREF(now);
        if (rc < 0 || PyObject_SetAttr(t->stall, s_waiting, Py_True) < 0)
            return -1;
    }
    PyObject *pcm;
    if (t->process == Py_None) {
        Py_INCREF(data);
        pcm = data;
    }
    else {
        pcm = PyObject_CallOneArg(t->process, data);
        if (pcm == NULL)
            return kernel_failed(t);
        if (!PyBytes_CheckExact(pcm)) {
            Py_DECREF(pcm);
            PyErr_SetString(PyExc_TypeError, "the kernel returned no bytes");
            return kernel_failed(t);
        }
    }
    t->frames_in += n >> 1;
    Py_ssize_t out = PyBytes_GET_SIZE(pcm);
    t->frames_out += out >> 1;
    int rc = 0;
    if (out) {
        t->bytes_out += out;
        rc = write_chunk(t, pcm);
    }
    Py_DECREF(pcm);
    return rc;
}

/* tap_step, the Tap's references kept while it runs: what it calls (the turn's hold, a send,
 * the Python step) may end the relay, and with it the Tap (close()). */
static int
tap_feed(Tap *t, PyObject *data)
{
    if (!t->active)
        return 0;
    t->feeding = 1;
    int rc = tap_step(t, data);
    t->feeding = 0;
    if (t->closed)
        Tap_clear(t);
    return rc;
}

static PyObject *
Tap_tp_call(PyObject *self, PyObject *args, PyObject *kwds)
{
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "a Tap takes no keywords");
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) != 1) {
        PyErr_SetString(PyExc_TypeError, "a Tap takes one piece of body");
        return NULL;
    }
    if (tap_feed((Tap *)self, PyTuple_GET_ITEM(args, 0)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Tap_counts(Tap *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(LLL)", self->frames_in, self->frames_out, self->bytes_out);
}

static PyObject *
Tap_get_pending(Tap *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->pending_bytes);
}

static PyObject *
Tap_get_pieces(Tap *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(self->pieces);
}

static PyObject *
Tap_get_bool(Tap *self, void *which)
{
    char value = which == (void *)0 ? self->active : which == (void *)1 ? self->paused
                                                                        : self->on_slow;
    return PyBool_FromLong(value);
}

static int
Tap_set_bool(Tap *self, PyObject *value, void *which)
{
    if (value == NULL || which == (void *)2) {
        PyErr_SetString(PyExc_AttributeError, "cannot set or delete this attribute");
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    if (truth < 0)
        return -1;
    if (which == (void *)0)
        self->active = (char)truth;
    else
        self->paused = (char)truth;
    return 0;
}

static PyGetSetDef Tap_getset[] = {
    {"active", (getter)Tap_get_bool, (setter)Tap_set_bool,
     "False once the relay has ended: pieces are dropped", (void *)0},
    {"paused", (getter)Tap_get_bool, (setter)Tap_set_bool,
     "the caller's write buffer is full: no stall mark", (void *)1},
    {"on_slow", (getter)Tap_get_bool, (setter)Tap_set_bool,
     "a piece went to the Python step, and so do the rest", (void *)2},
    {"pieces", (getter)Tap_get_pieces, NULL, "the pieces handed to the step while active",
     NULL},
    {"pending", (getter)Tap_get_pending, NULL, "bytes held in the batch for the turn's end",
     NULL},
    {NULL},
};

static PyObject *
Tap_close(Tap *self, PyObject *Py_UNUSED(ignored))
{
    self->active = 0;
    self->closed = 1;
    if (!self->feeding)
        Tap_clear(self);
    Py_RETURN_NONE;
}

static PyObject *
Tap_send_method(Tap *self, PyObject *Py_UNUSED(ignored))
{
    if (tap_send(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Tap_methods[] = {
    {"send", (PyCFunction)Tap_send_method, METH_NOARGS,
     "send the chunks held in the batch now (before anything else is written after them)"},
    {"close", (PyCFunction)Tap_close, METH_NOARGS,
     "end the step: pieces are dropped, and what it refers to let go (the relay among them)"},
    {"counts", (PyCFunction)Tap_counts, METH_NOARGS,
     "(frames in, frames out, bytes out) of the pieces this step converted itself"},
    {NULL},
};

static PyTypeObject TapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "providers._relay.Tap",
    .tp_doc = PyDoc_STR("Tap(process, conn, exchange, stall, clock, held, turn, slow, fail, "
                        "high_water): one relayed stream's chunk step"),
    .tp_basicsize = sizeof(Tap),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tap_init,
    .tp_dealloc = (destructor)Tap_dealloc,
    .tp_traverse = (traverseproc)Tap_traverse,
    .tp_clear = (inquiry)Tap_clear,
    .tp_call = Tap_tp_call,
    .tp_methods = Tap_methods,
    .tp_getset = Tap_getset,
};

/* ------------------------------------------------------------------------------ Body */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *chunks;    /* the pieces kept for the reader (a list) */
    Py_ssize_t buffered; /* their bytes */
    char complete;       /* the response has ended: a piece now is an error */
    PyObject *tap;       /* a Tap the pieces go to instead, or None */
} Body;

static int
Body_traverse(Body *self, visitproc visit, void *arg)
{
    Py_VISIT(self->chunks);
    Py_VISIT(self->tap);
    return 0;
}

static int
Body_clear(Body *self)
{
    Py_CLEAR(self->chunks);
    Py_CLEAR(self->tap);
    return 0;
}

static void
Body_dealloc(Body *self)
{
    PyObject_GC_UnTrack(self);
    Body_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Body_vectorcall(Body *self, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames);

static int
Body_init(Body *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"chunks", NULL};
    PyObject *chunks;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!", names, &PyList_Type, &chunks))
        return -1;
    Body_clear(self);
    Py_INCREF(chunks);
    self->chunks = chunks;
    Py_INCREF(Py_None);
    self->tap = Py_None;
    self->buffered = 0;
    self->complete = 0;
    self->vectorcall = (vectorcallfunc)Body_vectorcall;
    return 0;
}

static PyObject *
body_piece(Body *self, PyObject *piece)
{
    if (self->complete) {
        PyErr_SetString(PyExc_ValueError, "data after the end of the response");
        return NULL;
    }
    PyObject *tap = self->tap;
    if (tap != NULL && Py_TYPE(tap) == &TapType) {
        Py_INCREF(tap); /* the step may untap (and so drop the Body's reference) */
        int rc = tap_feed((Tap *)tap, piece);
        Py_DECREF(tap);
        if (rc < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (self->chunks == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Body not initialised");
        return NULL;
    }
    Py_ssize_t n = PyObject_Length(piece);
    if (n < 0)
        return NULL;
    if (PyList_Append(self->chunks, piece) < 0)
        return NULL;
    self->buffered += n;
    Py_RETURN_NONE;
}

static PyObject *
Body_vectorcall(Body *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "a Body takes one piece");
        return NULL;
    }
    return body_piece(self, args[0]);
}

static PyObject *
Body_get_complete(Body *self, void *closure)
{
    return PyBool_FromLong(self->complete);
}

static int
Body_set_complete(Body *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete complete");
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    if (truth < 0)
        return -1;
    self->complete = (char)truth;
    return 0;
}

static PyObject *
Body_get_tap(Body *self, void *closure)
{
    PyObject *tap = self->tap != NULL ? self->tap : Py_None;
    Py_INCREF(tap);
    return tap;
}

static int
Body_set_tap(Body *self, PyObject *value, void *closure)
{
    if (value == NULL)
        value = Py_None;
    if (value != Py_None && Py_TYPE(value) != &TapType) {
        PyErr_SetString(PyExc_TypeError, "tap must be a Tap or None");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->tap, value);
    return 0;
}

static PyMemberDef Body_members[] = {
    {"chunks", T_OBJECT, offsetof(Body, chunks), READONLY, "the pieces kept for the reader"},
    {"buffered", T_PYSSIZET, offsetof(Body, buffered), 0, "their bytes"},
    {NULL},
};

static PyGetSetDef Body_getset[] = {
    {"complete", (getter)Body_get_complete, (setter)Body_set_complete,
     "the response has ended: a piece now is an error", NULL},
    {"tap", (getter)Body_get_tap, (setter)Body_set_tap,
     "a Tap the pieces go to instead of the list, or None", NULL},
    {NULL},
};

static PyTypeObject BodyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "providers._relay.Body",
    .tp_doc = PyDoc_STR("Body(chunks): a response parser's body callback"),
    .tp_basicsize = sizeof(Body),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Body, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Body_init,
    .tp_dealloc = (destructor)Body_dealloc,
    .tp_traverse = (traverseproc)Body_traverse,
    .tp_clear = (inquiry)Body_clear,
    .tp_members = Body_members,
    .tp_getset = Body_getset,
};

/* ----------------------------------------------------------------------------- Batch */

static int
Batch_traverse(Batch *self, visitproc visit, void *arg)
{
    Py_VISIT(self->taps);
    Py_VISIT(self->flush_cb);
    return 0;
}

static int
Batch_clear(Batch *self)
{
    Py_CLEAR(self->taps);
    Py_CLEAR(self->flush_cb);
    return 0;
}

static void
Batch_dealloc(Batch *self)
{
    PyObject_GC_UnTrack(self);
    Batch_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Batch_init(Batch *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", names))
        return -1;
    PyObject *taps = PyList_New(0);
    if (taps == NULL)
        return -1;
    Batch_clear(self);
    self->taps = taps;
    self->scheduled = 0;
    return 0;
}

/* The end of the loop's turn: every tap's chunks held sent, in the order the taps began to
 * hold. A send that fails does not keep the others from theirs; the first error is raised
 * after (the loop's exception handler logs it). */
static PyObject *
Batch_flush(Batch *self, PyObject *Py_UNUSED(ignored))
{
    self->scheduled = 0;
    PyObject *taps = self->taps;
    if (taps == NULL || PyList_GET_SIZE(taps) == 0)
        Py_RETURN_NONE;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    self->taps = fresh;
    PyObject *type = NULL, *value = NULL, *traceback = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(taps); i++) {
        Tap *t = (Tap *)PyList_GET_ITEM(taps, i);
        t->queued = 0;
        if (tap_send(t) < 0 && type == NULL)
            PyErr_Fetch(&type, &value, &traceback);
        else
            PyErr_Clear();
    }
    Py_DECREF(taps);
    if (type != NULL) {
        PyErr_Restore(type, value, traceback);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Batch_get_scheduled(Batch *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->scheduled);
}

static PyMethodDef Batch_methods[] = {
    {"flush", (PyCFunction)Batch_flush, METH_NOARGS,
     "send every tap's chunks held (called by the loop at the end of its turn)"},
    {NULL},
};

static PyGetSetDef Batch_getset[] = {
    {"scheduled", (getter)Batch_get_scheduled, NULL, "whether the loop is due to flush", NULL},
    {NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "providers._relay.Batch",
    .tp_doc = PyDoc_STR("Batch(): the chunks the taps of one event loop hold for its turn's end"),
    .tp_basicsize = sizeof(Batch),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Batch_init,
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_traverse = (traverseproc)Batch_traverse,
    .tp_clear = (inquiry)Batch_clear,
    .tp_methods = Batch_methods,
    .tp_getset = Batch_getset,
};

/* ---------------------------------------------------------------------------- module */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "providers._relay",
    "A relayed stream's chunk step in C (see providers/_relay.c).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__relay(void)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&s_disconnected, "disconnected"},
        {&s_response_complete, "response_complete"},
        {&s_transport, "transport"},
        {&s_lingering, "_lingering"},
        {&s_send, "_send"},
        {&s_since, "since"},
        {&s_waiting, "waiting"},
        {&s_is_closing, "is_closing"},
        {&s_get_write_buffer_size, "get_write_buffer_size"},
        {&s_write, "write"},
        {&s_flush, "flush"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (*names[i].slot == NULL) {
            *names[i].slot = PyUnicode_InternFromString(names[i].text);
            if (*names[i].slot == NULL)
                return NULL;
        }
    }
    if (PyType_Ready(&TapType) < 0 || PyType_Ready(&BodyType) < 0 ||
        PyType_Ready(&BatchType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&TapType);
    if (PyModule_AddObject(m, "Tap", (PyObject *)&TapType) < 0) {
        Py_DECREF(&TapType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&BodyType);
    if (PyModule_AddObject(m, "Body", (PyObject *)&BodyType) < 0) {
        Py_DECREF(&BodyType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&BatchType);
    if (PyModule_AddObject(m, "Batch", (PyObject *)&BatchType) < 0) {
        Py_DECREF(&BatchType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
