/* streaming._fanout: one lane packet to every viewer in one C call.
 *
 * Per viewer (an "entry"): write the 12-byte RTP header (RFC 3550 s5.1)
 * with the viewer's SSRC, payload type and sequence offset, copy the
 * payload, SRTP-protect in place with the viewer's session (libsrtp's
 * srtp_protect, reached through the function pointer pylibsrtp exposes:
 * no second copy of libsrtp is linked here), then send:
 *
 *   - a connected socket of its own (per-connection ICE sockets): send();
 *   - a shared socket (one UDP port for every peer): the datagram joins
 *     that socket's batch, and each batch goes to the kernel in sendmmsg(2)
 *     calls of up to UIO_MAXIOV datagrams once every entry is protected.
 *
 * A send that would block (EAGAIN/ENOBUFS) drops that datagram for that
 * viewer and reports its key, so the caller can resynchronize it (video
 * waits for the next keyframe); any other error is counted and skipped.
 * One viewer's failure never stops the others.
 *
 * Sockets are dup()ed when added and closed when removed, so a socket that
 * aiortc/aioice close while an entry still exists can never be replaced by
 * another file under the same descriptor number.
 *
 * The GIL is released while protecting and sending: everything touched is
 * this object's memory and the payload's pinned buffer. Callers use one
 * Fanout from one thread (the event loop's).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define BUFFER_SIZE 2048   /* a packet (<= 1484 B) plus libsrtp's trailer (tag + MKI) */
#define MAX_PACKET 1484    /* streaming/rtp_source.py MAX_PACKET_SIZE */
#define MAX_GROUPS 8       /* shared sockets per lane: one per ICE address */
#define BATCH_MAX 1024     /* UIO_MAXIOV: most datagrams one sendmmsg takes */

typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

typedef struct {
    long long key;
    void *srtp;
    int fd;                /* our dup: connected, or the shared socket */
    int shared;            /* 1: sendto addr through the group's batch */
    int group;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint32_t ssrc;
    uint16_t seq_off;
    uint8_t pt;
    unsigned long long packets, octets, errors, would_block;
    int len;               /* this packet's protected length; -1: nothing to send */
    unsigned char buf[BUFFER_SIZE];
} Entry;

typedef struct {
    int orig_fd;           /* the caller's descriptor (identity of the socket) */
    int fd;                /* our dup */
    int refs;
    struct mmsghdr *msgs;
    struct iovec *iov;
    Entry **owners;
    Py_ssize_t count, capacity;
} Group;

typedef struct {
    PyObject_HEAD
    protect_fn protect;
    Entry **entries;
    Py_ssize_t size, capacity;
    Group groups[MAX_GROUPS];
    int ngroups;
    unsigned long long batches, syscalls;
} Fanout;

static void group_free(Group *g) {
    if (g->fd >= 0) close(g->fd);
    PyMem_Free(g->msgs);
    PyMem_Free(g->iov);
    PyMem_Free(g->owners);
    memset(g, 0, sizeof(*g));
    g->fd = -1;
}

static int group_reserve(Group *g, Py_ssize_t n) {
    if (n <= g->capacity) return 0;
    Py_ssize_t cap = g->capacity ? g->capacity : 64;
    while (cap < n) cap *= 2;
    struct mmsghdr *msgs = PyMem_Realloc(g->msgs, cap * sizeof(*msgs));
    if (!msgs) return -1;
    g->msgs = msgs;
    struct iovec *iov = PyMem_Realloc(g->iov, cap * sizeof(*iov));
    if (!iov) return -1;
    g->iov = iov;
    Entry **owners = PyMem_Realloc(g->owners, cap * sizeof(*owners));
    if (!owners) return -1;
    g->owners = owners;
    g->capacity = cap;
    return 0;
}

static int group_for(Fanout *self, int orig_fd) {
    for (int i = 0; i < self->ngroups; i++)
        if (self->groups[i].refs > 0 && self->groups[i].orig_fd == orig_fd) {
            self->groups[i].refs++;
            return i;
        }
    int slot = -1;
    for (int i = 0; i < self->ngroups; i++)
        if (self->groups[i].refs == 0) { slot = i; break; }
    if (slot < 0) {
        if (self->ngroups == MAX_GROUPS) {
            PyErr_SetString(PyExc_OSError, "too many shared sockets on one lane");
            return -1;
        }
        slot = self->ngroups++;
        memset(&self->groups[slot], 0, sizeof(Group));
        self->groups[slot].fd = -1;
    }
    Group *g = &self->groups[slot];
    int fd = dup(orig_fd);
    if (fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    g->orig_fd = orig_fd;
    g->fd = fd;
    g->refs = 1;
    return slot;
}

static void group_release(Fanout *self, int slot) {
    Group *g = &self->groups[slot];
    if (--g->refs == 0) group_free(g);
}

static Py_ssize_t find(Fanout *self, long long key) {
    for (Py_ssize_t i = 0; i < self->size; i++)
        if (self->entries[i]->key == key) return i;
    return -1;
}

/* The index of `key`'s entry, or -1 with KeyError set. */
static Py_ssize_t find_or_raise(Fanout *self, long long key) {
    Py_ssize_t i = find(self, key);
    if (i < 0) PyErr_Format(PyExc_KeyError, "%lld", key);
    return i;
}

static int parse_addr(PyObject *addr, struct sockaddr_storage *out, socklen_t *outlen) {
    /* (host, port) or IPv6's (host, port, flowinfo, scope_id): numeric host only */
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2) {
        PyErr_SetString(PyExc_TypeError, "addr must be (host, port) or None");
        return -1;
    }
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    if (!host) return -1;
    long port = PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (port == -1 && PyErr_Occurred()) return -1;
    if (port < 1 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *outlen = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *outlen = sizeof(*v6);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not a numeric IP address: %s", host);
    return -1;
}

static int Fanout_init(Fanout *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"protect", NULL};
    unsigned long long protect;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "K", kwlist, &protect)) return -1;
    if (!protect) {
        PyErr_SetString(PyExc_ValueError, "protect must be srtp_protect's address");
        return -1;
    }
    self->protect = (protect_fn)(uintptr_t)protect;
    return 0;
}

static void Fanout_dealloc(Fanout *self) {
    for (Py_ssize_t i = 0; i < self->size; i++) {
        Entry *e = self->entries[i];
        if (!e->shared && e->fd >= 0) close(e->fd);
        PyMem_Free(e);
    }
    PyMem_Free(self->entries);
    for (int i = 0; i < self->ngroups; i++)
        if (self->groups[i].refs > 0 || self->groups[i].fd >= 0) group_free(&self->groups[i]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Fanout_add(Fanout *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", "srtp", "fd", "addr", "ssrc", "pt", "seq_off", NULL};
    long long key;
    unsigned long long srtp;
    int fd;
    PyObject *addr;
    unsigned int ssrc;
    int pt, seq_off;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LKiOIii", kwlist, &key, &srtp, &fd, &addr, &ssrc, &pt,
                                     &seq_off))
        return NULL;
    if (!srtp || fd < 0 || pt < 0 || pt > 127) {
        PyErr_SetString(PyExc_ValueError, "add(): srtp, fd or pt out of range");
        return NULL;
    }
    if (find(self, key) >= 0) {
        PyErr_Format(PyExc_KeyError, "%lld already added", key);
        return NULL;
    }
    Entry *e = PyMem_Calloc(1, sizeof(Entry));
    if (!e) return PyErr_NoMemory();
    e->key = key;
    e->srtp = (void *)(uintptr_t)srtp;
    e->ssrc = ssrc;
    e->pt = (uint8_t)pt;
    e->seq_off = (uint16_t)seq_off;
    e->len = -1;
    if (addr == Py_None) {
        e->fd = dup(fd);
        if (e->fd < 0) {
            PyMem_Free(e);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    } else {
        if (parse_addr(addr, &e->addr, &e->addrlen) < 0) {
            PyMem_Free(e);
            return NULL;
        }
        int g = group_for(self, fd);
        if (g < 0) {
            PyMem_Free(e);
            return NULL;
        }
        e->shared = 1;
        e->group = g;
        e->fd = self->groups[g].fd;
    }
    if (self->size == self->capacity) {
        Py_ssize_t cap = self->capacity ? self->capacity * 2 : 64;
        Entry **entries = PyMem_Realloc(self->entries, cap * sizeof(*entries));
        if (!entries) {
            if (e->shared) group_release(self, e->group);
            else close(e->fd);
            PyMem_Free(e);
            return PyErr_NoMemory();
        }
        self->entries = entries;
        self->capacity = cap;
    }
    if (e->shared && group_reserve(&self->groups[e->group], self->size + 1) < 0) {
        group_release(self, e->group);
        PyMem_Free(e);
        return PyErr_NoMemory();
    }
    self->entries[self->size++] = e;
    Py_RETURN_NONE;
}

static PyObject *counts_of(Entry *e) {
    return Py_BuildValue("(KKKK)", e->packets, e->octets, e->errors, e->would_block);
}

static PyObject *Fanout_remove(Fanout *self, PyObject *arg) {
    long long key = PyLong_AsLongLong(arg);
    if (key == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t i = find_or_raise(self, key);
    if (i < 0) return NULL;
    Entry *e = self->entries[i];
    PyObject *counts = counts_of(e);
    if (e->shared) group_release(self, e->group);
    else close(e->fd);
    PyMem_Free(e);
    self->entries[i] = self->entries[--self->size];
    return counts;
}

static PyObject *Fanout_counts(Fanout *self, PyObject *arg) {
    long long key = PyLong_AsLongLong(arg);
    if (key == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t i = find_or_raise(self, key);
    if (i < 0) return NULL;
    return counts_of(self->entries[i]);
}

static PyObject *Fanout_set_pt(Fanout *self, PyObject *args) {
    long long key;
    int pt;
    if (!PyArg_ParseTuple(args, "Li", &key, &pt)) return NULL;
    Py_ssize_t i = find_or_raise(self, key);
    if (i < 0) return NULL;
    if (pt < 0 || pt > 127) {
        PyErr_SetString(PyExc_ValueError, "pt out of range");
        return NULL;
    }
    self->entries[i]->pt = (uint8_t)pt;
    Py_RETURN_NONE;
}

/* The group's datagrams to the kernel, BATCH_MAX at a time; returns how
 * many would block (dropped, their entries marked len -2). */
static Py_ssize_t send_batch(Fanout *self, Group *g, int octets) {
    Py_ssize_t done = 0;
    while (done < g->count) {
        int n = (int)((g->count - done) < BATCH_MAX ? (g->count - done) : BATCH_MAX);
        int r = sendmmsg(g->fd, g->msgs + done, (unsigned)n, MSG_DONTWAIT);
        self->syscalls++;
        if (r > 0) {
            for (int k = 0; k < r; k++) {
                Entry *e = g->owners[done + k];
                e->packets++;
                e->octets += (unsigned long long)octets;
            }
            done += r;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            for (Py_ssize_t k = done; k < g->count; k++) {
                g->owners[k]->would_block++;
                g->owners[k]->len = -2;
            }
            return g->count - done;
        }
        /* the first unsent datagram failed on its own (e.g. an ICMP error): skip it */
        g->owners[done]->errors++;
        done++;
    }
    return 0;
}

/* send(payload, marker, seq, ts) -> None, or a list of the keys whose send would block */
static PyObject *Fanout_send(Fanout *self, PyObject *args) {
    Py_buffer payload;
    int marker;
    unsigned int seq, ts;
    if (!PyArg_ParseTuple(args, "y*iII", &payload, &marker, &seq, &ts)) return NULL;
    if (payload.len + 12 > MAX_PACKET) {
        PyBuffer_Release(&payload);
        PyErr_SetString(PyExc_ValueError, "packet larger than MAX_PACKET");
        return NULL;
    }
    int size = (int)payload.len + 12;
    int blocked = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < self->ngroups; i++) self->groups[i].count = 0;
    uint32_t ts_n = htonl(ts);
    for (Py_ssize_t i = 0; i < self->size; i++) {
        Entry *e = self->entries[i];
        unsigned char *b = e->buf;
        b[0] = 0x80;
        b[1] = (unsigned char)((marker ? 0x80 : 0) | e->pt);
        uint16_t s = htons((uint16_t)(seq + e->seq_off));
        memcpy(b + 2, &s, 2);
        memcpy(b + 4, &ts_n, 4);
        uint32_t ssrc = htonl(e->ssrc);
        memcpy(b + 8, &ssrc, 4);
        memcpy(b + 12, payload.buf, (size_t)payload.len);
        int len = size;
        if (self->protect(e->srtp, b, &len) != 0) {
            e->errors++;
            e->len = -1;
            continue;
        }
        e->len = len;
        if (e->shared) {
            Group *g = &self->groups[e->group];
            Py_ssize_t k = g->count++;
            g->iov[k].iov_base = b;
            g->iov[k].iov_len = (size_t)len;
            memset(&g->msgs[k].msg_hdr, 0, sizeof(struct msghdr));
            g->msgs[k].msg_hdr.msg_name = &e->addr;
            g->msgs[k].msg_hdr.msg_namelen = e->addrlen;
            g->msgs[k].msg_hdr.msg_iov = &g->iov[k];
            g->msgs[k].msg_hdr.msg_iovlen = 1;
            g->owners[k] = e;
            continue;
        }
        ssize_t r;
        do {
            r = send(e->fd, b, (size_t)len, MSG_DONTWAIT);
        } while (r < 0 && errno == EINTR);
        self->syscalls++;
        if (r >= 0) {
            e->packets++;
            e->octets += (unsigned long long)(size - 12);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
            e->would_block++;
            e->len = -2;
            blocked++;
        } else {
            e->errors++;
        }
    }
    for (int i = 0; i < self->ngroups; i++) {
        Group *g = &self->groups[i];
        if (g->count == 0) continue;
        self->batches++;
        blocked += (int)send_batch(self, g, size - 12);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&payload);
    if (!blocked) Py_RETURN_NONE;
    PyObject *keys = PyList_New(0);
    if (!keys) return NULL;
    for (Py_ssize_t i = 0; i < self->size; i++) {
        Entry *e = self->entries[i];
        if (e->len != -2) continue;
        e->len = -1;
        PyObject *k = PyLong_FromLongLong(e->key);
        if (!k || PyList_Append(keys, k) < 0) {
            Py_XDECREF(k);
            Py_DECREF(keys);
            return NULL;
        }
        Py_DECREF(k);
    }
    return keys;
}

static Py_ssize_t Fanout_len(Fanout *self) { return self->size; }

static PyObject *Fanout_stats(Fanout *self, PyObject *Py_UNUSED(ignored)) {
    int groups = 0;
    for (int i = 0; i < self->ngroups; i++) groups += self->groups[i].refs > 0;
    return Py_BuildValue("{s:n,s:i,s:K,s:K}", "entries", self->size, "shared_sockets", groups, "batches",
                         self->batches, "syscalls", self->syscalls);
}

static PyMethodDef Fanout_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Fanout_add, METH_VARARGS | METH_KEYWORDS,
     "add(key, srtp, fd, addr, ssrc, pt, seq_off): a viewer's copy of the lane. srtp: the address of its "
     "outbound srtp_t; fd: its connected socket (addr None) or the shared socket (addr (host, port)); the "
     "socket is dup()ed. KeyError if key is there; ValueError/OSError on bad arguments."},
    {"remove", (PyCFunction)Fanout_remove, METH_O,
     "remove(key) -> (packets, octets, errors, would_block): drop a viewer (KeyError if absent)."},
    {"counts", (PyCFunction)Fanout_counts, METH_O, "counts(key) -> (packets, octets, errors, would_block)."},
    {"set_pt", (PyCFunction)Fanout_set_pt, METH_VARARGS, "set_pt(key, pt): the payload type it now uses."},
    {"send", (PyCFunction)Fanout_send, METH_VARARGS,
     "send(payload, marker, seq, ts) -> None | list[key]: the lane's packet (payload after the 12-byte "
     "header, marker 0/non-zero, lane seq and 90 kHz/48 kHz ts) to every viewer; the keys returned had "
     "their datagram dropped because the socket would block."},
    {"stats", (PyCFunction)Fanout_stats, METH_NOARGS, "stats() -> dict: entries, shared sockets, batches, syscalls."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Fanout_as_sequence = {
    .sq_length = (lenfunc)Fanout_len,
};

static PyTypeObject FanoutType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streaming._fanout.Fanout",
    .tp_doc = PyDoc_STR("Fanout(protect): one lane's viewers, protected and sent in one call (see module doc)."),
    .tp_basicsize = sizeof(Fanout),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Fanout_init,
    .tp_dealloc = (destructor)Fanout_dealloc,
    .tp_methods = Fanout_methods,
    .tp_as_sequence = &Fanout_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "streaming._fanout",
    "One lane packet to every viewer in one C call: header rewrite, SRTP protect, send/sendmmsg.", -1, NULL,
};

PyMODINIT_FUNC PyInit__fanout(void) {
    if (PyType_Ready(&FanoutType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&FanoutType);
    if (PyModule_AddObject(m, "Fanout", (PyObject *)&FanoutType) < 0) {
        Py_DECREF(&FanoutType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "BATCH_MAX", BATCH_MAX);
    return m;
}
