/* streaming._rtp_rx: the load tester's receive side in C.
 *
 * The light viewers (streaming/light_viewer.py) only count what they
 * receive, from the clear RTP header: at 1,000 viewers x ~230 packets/s a
 * Python function call per datagram is most of a core. Here one call
 * drains a socket with recvmmsg(2) and counts every datagram in C; only
 * what Python must see comes back as bytes: STUN and DTLS (first byte
 * outside 128..191, RFC 7983) for aioice/aiortc, and 1 RTP packet in
 * `sample_every` for the SRTP check. streaming/rtp_count.py is the
 * reference implementation (and the fallback when this module is not
 * built); tests/streaming/test_rtp_count.py checks both agree.
 *
 * RtpCounter(kinds, sample_every)   per viewer
 *     kinds: bytes of 128, payload type -> 0 unknown, 1 audio, 2 video
 *     feed(data) -> data | None      count one datagram; the datagram back if Python must see it
 *     drain(fd) -> list[bytes] | None   recvmmsg(MSG_DONTWAIT) until empty, counting
 *     streams() -> [(ssrc, kind, packets, bytes, first_seq, ext_highest)]
 *     rtcp, malformed, recv_errors, first_video_at (CLOCK_MONOTONIC s, as time.monotonic(); 0: none)
 * Poller()                          one epoll set of counters' sockets
 *     add(fd, counter), remove(fd), poll(max_rounds) -> list[(fd, bytes)] | None, close()
 *
 * Everything runs with the GIL held: recvmmsg with MSG_DONTWAIT never
 * blocks, and holding it keeps the module's receive buffers and the
 * Poller's registrations single-threaded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64           /* datagrams per recvmmsg call */
#define MAX_DATAGRAM 2048  /* as the Python path's recv(2048): larger ones are truncated */
#define MAX_EVENTS 256

enum { KIND_UNKNOWN = 0, KIND_AUDIO = 1, KIND_VIDEO = 2 };
static const char *KIND_NAMES[] = {"?", "audio", "video"};

typedef struct {
    uint32_t ssrc;
    int kind;
    long long packets;
    long long bytes;
    long long first_seq;
    long long ext_highest; /* extended highest sequence number, RFC 3550 A.1 */
} Stream;

typedef struct {
    PyObject_HEAD
    unsigned char kinds[128];
    Stream *streams;
    Py_ssize_t n_streams;
    Py_ssize_t cap_streams;
    long long rtcp;
    long long malformed;   /* empty, or too short for its RTP/RTCP header: dropped */
    long long recv_errors; /* recvmmsg errors other than "nothing queued" */
    long long sample_every;
    long long until_check;
    double first_video_at;
} RtpCounter;

/* one set of receive buffers for the module: only used with the GIL held */
static unsigned char rx_buffers[BATCH][MAX_DATAGRAM];
static struct iovec rx_iov[BATCH];
static struct mmsghdr rx_msgs[BATCH];

static double monotonic_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* what time.monotonic() reads on Linux */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static Stream *find_stream(RtpCounter *c, uint32_t ssrc, int *created) {
    for (Py_ssize_t i = 0; i < c->n_streams; i++) {
        if (c->streams[i].ssrc == ssrc) {
            *created = 0;
            return &c->streams[i];
        }
    }
    if (c->n_streams == c->cap_streams) {
        Py_ssize_t cap = c->cap_streams ? c->cap_streams * 2 : 4;
        Stream *grown = PyMem_Realloc(c->streams, (size_t)cap * sizeof(Stream));
        if (grown == NULL) return NULL;
        c->streams = grown;
        c->cap_streams = cap;
    }
    *created = 1;
    Stream *s = &c->streams[c->n_streams++];
    memset(s, 0, sizeof(*s));
    s->ssrc = ssrc;
    return s;
}

/* Count one datagram: 1 if Python must see it, 0 if counted (or dropped), -1 on no memory. */
static int count_datagram(RtpCounter *c, const unsigned char *d, Py_ssize_t n) {
    if (n < 1) {
        c->malformed++;
        return 0;
    }
    if (d[0] < 128 || d[0] > 191) return 1; /* STUN, DTLS (RFC 7983 s7): aioice's and aiortc's */
    if (n < 2) {
        c->malformed++;
        return 0;
    }
    if (d[1] >= 192 && d[1] <= 223) { /* RTCP packet types 192..223 (RFC 5761 s4) */
        c->rtcp++;
        return 0;
    }
    if (n < 12) {
        c->malformed++;
        return 0;
    }
    uint32_t ssrc = (uint32_t)d[8] << 24 | (uint32_t)d[9] << 16 | (uint32_t)d[10] << 8 | d[11];
    long long seq = (long long)(d[2] << 8 | d[3]);
    int created;
    Stream *s = find_stream(c, ssrc, &created);
    if (s == NULL) return -1;
    if (created) {
        s->kind = c->kinds[d[1] & 0x7F];
        s->first_seq = seq;
        s->ext_highest = seq;
        if (s->kind == KIND_VIDEO && c->first_video_at == 0.0) c->first_video_at = monotonic_s();
    } else {
        long long delta = (seq - s->ext_highest) & 0xFFFF;
        if (delta < 0x8000) s->ext_highest += delta; /* newer (or equal): across the 16-bit wrap */
    }
    s->packets++;
    s->bytes += n;
    if (--c->until_check == 0) {
        c->until_check = c->sample_every;
        return 1;
    }
    return 0;
}

static int counter_init(RtpCounter *self, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"kinds", "sample_every", NULL};
    Py_buffer kinds;
    long long sample_every;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*L", keywords, &kinds, &sample_every)) return -1;
    if (kinds.len != 128) {
        PyBuffer_Release(&kinds);
        PyErr_SetString(PyExc_ValueError, "kinds: 128 bytes, one per payload type (0 unknown, 1 audio, 2 video)");
        return -1;
    }
    for (int i = 0; i < 128; i++) {
        unsigned char k = ((const unsigned char *)kinds.buf)[i];
        self->kinds[i] = k <= KIND_VIDEO ? k : KIND_UNKNOWN;
    }
    PyBuffer_Release(&kinds);
    if (sample_every < 1) sample_every = 1;
    self->sample_every = self->until_check = sample_every;
    return 0;
}

static void counter_dealloc(RtpCounter *self) {
    PyMem_Free(self->streams);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *counter_feed(RtpCounter *self, PyObject *arg) {
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    int back = count_datagram(self, data.buf, data.len);
    PyBuffer_Release(&data);
    if (back < 0) return PyErr_NoMemory();
    if (back) return Py_NewRef(arg);
    Py_RETURN_NONE;
}

/* Drain fd into the counter; datagrams for Python are appended to *out as
 * bytes (tagged (fd, bytes) when tag_fd). Returns 0, or -1 with an exception. */
static int drain_fd(RtpCounter *c, int fd, PyObject **out, int tag_fd) {
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            rx_iov[i].iov_base = rx_buffers[i];
            rx_iov[i].iov_len = MAX_DATAGRAM;
            memset(&rx_msgs[i].msg_hdr, 0, sizeof(rx_msgs[i].msg_hdr));
            rx_msgs[i].msg_hdr.msg_iov = &rx_iov[i];
            rx_msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(fd, rx_msgs, BATCH, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) c->recv_errors++; /* e.g. ICMP refused, closed */
            return 0;
        }
        for (int i = 0; i < got; i++) {
            Py_ssize_t len = (Py_ssize_t)rx_msgs[i].msg_len;
            int back = count_datagram(c, rx_buffers[i], len);
            if (back < 0) {
                PyErr_NoMemory();
                return -1;
            }
            if (!back) continue;
            PyObject *item = tag_fd ? Py_BuildValue("(iy#)", fd, (const char *)rx_buffers[i], len)
                                    : PyBytes_FromStringAndSize((const char *)rx_buffers[i], len);
            if (item == NULL) return -1;
            if (*out == NULL && (*out = PyList_New(0)) == NULL) {
                Py_DECREF(item);
                return -1;
            }
            int failed = PyList_Append(*out, item);
            Py_DECREF(item);
            if (failed) return -1;
        }
        if (got < BATCH) return 0;
    }
}

static PyObject *counter_drain(RtpCounter *self, PyObject *arg) {
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0) return NULL;
    PyObject *out = NULL;
    if (drain_fd(self, fd, &out, 0) < 0) {
        Py_XDECREF(out);
        return NULL;
    }
    if (out == NULL) Py_RETURN_NONE;
    return out;
}

static PyObject *counter_streams(RtpCounter *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *list = PyList_New(self->n_streams);
    if (list == NULL) return NULL;
    for (Py_ssize_t i = 0; i < self->n_streams; i++) {
        Stream *s = &self->streams[i];
        PyObject *item = Py_BuildValue("(ksLLLL)", (unsigned long)s->ssrc, KIND_NAMES[s->kind], s->packets,
                                       s->bytes, s->first_seq, s->ext_highest);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyMethodDef counter_methods[] = {
    {"feed", (PyCFunction)counter_feed, METH_O, "Count one datagram; return it if Python must see it, else None."},
    {"drain", (PyCFunction)counter_drain, METH_O,
     "Read the socket (fd or object with fileno()) until empty, counting; the datagrams Python must see, or None."},
    {"streams", (PyCFunction)counter_streams, METH_NOARGS,
     "[(ssrc, kind, packets, bytes, first_seq, ext_highest)], in order of first arrival."},
    {NULL, NULL, 0, NULL},
};

static PyObject *counter_get_first_video_at(RtpCounter *self, void *closure) {
    return PyFloat_FromDouble(self->first_video_at);
}

#define LL_GETTER(field)                                                  \
    static PyObject *counter_get_##field(RtpCounter *self, void *closure) { \
        return PyLong_FromLongLong(self->field);                          \
    }
LL_GETTER(rtcp)
LL_GETTER(malformed)
LL_GETTER(recv_errors)
LL_GETTER(sample_every)

static PyGetSetDef counter_getset[] = {
    {"first_video_at", (getter)counter_get_first_video_at, NULL, "time.monotonic() of the first video packet; 0: none", NULL},
    {"rtcp", (getter)counter_get_rtcp, NULL, "RTCP datagrams received", NULL},
    {"malformed", (getter)counter_get_malformed, NULL, "datagrams too short for their header, dropped", NULL},
    {"recv_errors", (getter)counter_get_recv_errors, NULL, "socket errors while draining", NULL},
    {"sample_every", (getter)counter_get_sample_every, NULL, "1 RTP packet in this many is handed back", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RtpCounterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "streaming._rtp_rx.RtpCounter",
    .tp_doc = "One viewer's receive counters, fed from its socket in C (see the module docstring).",
    .tp_basicsize = sizeof(RtpCounter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)counter_init,
    .tp_dealloc = (destructor)counter_dealloc,
    .tp_methods = counter_methods,
    .tp_getset = counter_getset,
};

/* --- Poller: one epoll set, each socket drained into its counter ------------------------ */

typedef struct {
    PyObject_HEAD
    int epfd;
    PyObject *counters; /* dict fd -> RtpCounter */
} Poller;

static PyObject *poller_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Poller *self = (Poller *)type->tp_alloc(type, 0);
    if (self != NULL) self->epfd = -1; /* never close fd 0 if __init__ did not run */
    return (PyObject *)self;
}

static int poller_init(Poller *self, PyObject *args, PyObject *kwds) {
    if (!PyArg_ParseTuple(args, "")) return -1;
    if (self->epfd >= 0) close(self->epfd); /* __init__ called again */
    Py_CLEAR(self->counters);
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->counters = PyDict_New();
    return self->counters == NULL ? -1 : 0;
}

static void poller_dealloc(Poller *self) {
    if (self->epfd >= 0) close(self->epfd);
    Py_XDECREF(self->counters);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int poller_open(Poller *self) {
    if (self->epfd < 0 || self->counters == NULL) {
        PyErr_SetString(PyExc_ValueError, "Poller is closed");
        return 0;
    }
    return 1;
}

static PyObject *poller_add(Poller *self, PyObject *args) {
    int fd;
    PyObject *counter;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &RtpCounterType, &counter)) return NULL;
    if (!poller_open(self)) return NULL;
    PyObject *key = PyLong_FromLong(fd);
    if (key == NULL) return NULL;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)fd};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 &&
        (errno != EEXIST || epoll_ctl(self->epfd, EPOLL_CTL_MOD, fd, &ev) < 0)) {
        Py_DECREF(key);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int failed = PyDict_SetItem(self->counters, key, counter);
    Py_DECREF(key);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

static PyObject *poller_remove(Poller *self, PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "remove(fd): not a file descriptor");
        return NULL;
    }
    if (!poller_open(self)) return NULL;
    epoll_ctl(self->epfd, EPOLL_CTL_DEL, (int)fd, NULL); /* already closed: the kernel dropped it */
    if (PyDict_DelItem(self->counters, arg) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError)) return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static PyObject *poller_poll(Poller *self, PyObject *args) {
    int max_rounds = 1000;
    if (!PyArg_ParseTuple(args, "|i", &max_rounds)) return NULL;
    if (!poller_open(self)) return NULL;
    struct epoll_event events[MAX_EVENTS];
    PyObject *out = NULL;
    /* level-triggered: a socket still holding datagrams is ready again next round;
       bounded, so a flood cannot keep the caller here for ever */
    for (int round = 0; round < max_rounds; round++) {
        int ready = epoll_wait(self->epfd, events, MAX_EVENTS, 0);
        if (ready <= 0) break; /* none ready, or EINTR: the caller polls again */
        for (int i = 0; i < ready; i++) {
            int fd = (int)events[i].data.u64;
            PyObject *key = PyLong_FromLong(fd);
            if (key == NULL) goto error;
            PyObject *counter = PyDict_GetItemWithError(self->counters, key); /* borrowed */
            Py_DECREF(key);
            if (counter == NULL) {
                if (PyErr_Occurred()) goto error;
                epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL);
                continue;
            }
            if (drain_fd((RtpCounter *)counter, fd, &out, 1) < 0) goto error;
        }
    }
    if (out == NULL) Py_RETURN_NONE;
    return out;
error:
    Py_XDECREF(out);
    return NULL;
}

static PyObject *poller_close(Poller *self, PyObject *Py_UNUSED(ignored)) {
    if (self->epfd >= 0) {
        close(self->epfd);
        self->epfd = -1;
    }
    Py_CLEAR(self->counters);
    Py_RETURN_NONE;
}

static PyMethodDef poller_methods[] = {
    {"add", (PyCFunction)poller_add, METH_VARARGS, "add(fd, counter): drain fd into counter when readable."},
    {"remove", (PyCFunction)poller_remove, METH_O, "remove(fd); a closed or unknown fd is fine."},
    {"poll", (PyCFunction)poller_poll, METH_VARARGS,
     "poll(max_rounds=1000) -> [(fd, datagram)] Python must see, or None; never blocks."},
    {"close", (PyCFunction)poller_close, METH_NOARGS, "Close the epoll set (idempotent)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "streaming._rtp_rx.Poller",
    .tp_doc = "One epoll set of viewer sockets, each drained into its RtpCounter (see the module docstring).",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = poller_new,
    .tp_init = (initproc)poller_init,
    .tp_dealloc = (destructor)poller_dealloc,
    .tp_methods = poller_methods,
};

static struct PyModuleDef rtp_rx_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "streaming._rtp_rx",
    .m_doc = "The load tester's receive side: recvmmsg and RTP counting per viewer in C.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__rtp_rx(void) {
    if (PyType_Ready(&RtpCounterType) < 0 || PyType_Ready(&PollerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&rtp_rx_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "RtpCounter", (PyObject *)&RtpCounterType) < 0 ||
        PyModule_AddObjectRef(m, "Poller", (PyObject *)&PollerType) < 0 ||
        PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 || PyModule_AddIntConstant(m, "MAX_DATAGRAM", MAX_DATAGRAM) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
