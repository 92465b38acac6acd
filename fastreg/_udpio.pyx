# cython: language_level=3
"""Batched UDP I/O: recvmmsg(2) and sendmmsg(2) on a non-blocking socket.

uvloop delivers one datagram per callback and sends one per sendto: per
registration (two requests, two responses) that is four system calls plus
the Python objects uvloop builds around each. A worker under load finds
dozens of datagrams waiting on each wake-up; reading them with one
recvmmsg and sending the answers with one sendmmsg takes two system calls
per batch, and turns each peer address into its (host, port) once, from a
small cache, instead of once per datagram.

`UdpBatchSocket(fileno, batch=64)` wraps a bound, non-blocking UDP socket it
does not own (the caller keeps the socket object and closes it):

    recv()            -> list of (data: bytes, host: str, port: int); empty
                         when nothing is waiting. Errors a peer can cause
                         (ICMP reports) are counted in `errors`, not raised.
    send(items)       -> the number of items sent; items are
                         (data: bytes, (host, port)). Stops at EAGAIN (the
                         caller keeps the rest and waits for writability);
                         an item the kernel refuses outright (bad address,
                         too large) is skipped and counted in `errors`.

IPv4 and IPv6 (host strings as Python's socket module writes them, without
brackets). The pure twin is the event loop's own datagram transport
(transport/udp.py), which the worker uses when this module is not built.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdlib cimport malloc, free, calloc
from libc.string cimport memset, memcpy

import socket as _socket


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    struct iovec:
        void *iov_base
        size_t iov_len
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags, void *timeout)
    int sendmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags)
    int AF_INET
    int AF_INET6
    int MSG_DONTWAIT
    int MSG_TRUNC

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        unsigned int s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        sa_family_t sin6_family
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id
    unsigned short ntohs(unsigned short)
    unsigned short htons(unsigned short)

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    int inet_pton(int af, const char *src, void *dst)

cdef enum:
    MAX_DATAGRAM = 65536
    ADDR_CACHE_MAX = 4096


cdef class UdpBatchSocket:
    cdef int fd
    cdef unsigned int batch
    cdef char *buffers
    cdef iovec *rx_iov
    cdef iovec *tx_iov
    cdef mmsghdr *rx_msgs
    cdef mmsghdr *tx_msgs
    cdef sockaddr_storage *rx_names
    cdef sockaddr_storage *tx_names
    cdef dict _peer_of_raw      # raw sockaddr bytes -> (host, port)
    cdef dict _raw_of_peer      # (host, port) -> raw sockaddr bytes
    cdef public unsigned long long errors
    cdef public unsigned long long truncated

    def __cinit__(self, int fileno, unsigned int batch=64):
        if batch < 1 or batch > 1024:
            raise ValueError("batch must be 1..1024")
        self.fd = fileno
        self.batch = batch
        self.buffers = <char *> malloc(<size_t> batch * MAX_DATAGRAM)
        self.rx_iov = <iovec *> calloc(batch, sizeof(iovec))
        self.tx_iov = <iovec *> calloc(batch, sizeof(iovec))
        self.rx_msgs = <mmsghdr *> calloc(batch, sizeof(mmsghdr))
        self.tx_msgs = <mmsghdr *> calloc(batch, sizeof(mmsghdr))
        self.rx_names = <sockaddr_storage *> calloc(batch, sizeof(sockaddr_storage))
        self.tx_names = <sockaddr_storage *> calloc(batch, sizeof(sockaddr_storage))
        if (self.buffers == NULL or self.rx_iov == NULL or self.tx_iov == NULL or self.rx_msgs == NULL
                or self.tx_msgs == NULL or self.rx_names == NULL or self.tx_names == NULL):
            raise MemoryError()
        cdef unsigned int i
        for i in range(batch):
            self.rx_iov[i].iov_base = self.buffers + <size_t> i * MAX_DATAGRAM
            self.rx_iov[i].iov_len = MAX_DATAGRAM
        self._peer_of_raw = {}
        self._raw_of_peer = {}
        self.errors = 0
        self.truncated = 0

    def __dealloc__(self):
        free(self.buffers)
        free(self.rx_iov)
        free(self.tx_iov)
        free(self.rx_msgs)
        free(self.tx_msgs)
        free(self.rx_names)
        free(self.tx_names)

    cdef object _peer(self, sockaddr_storage *name, socklen_t length):
        raw = PyBytes_FromStringAndSize(<char *> name, length)
        peer = self._peer_of_raw.get(raw)
        if peer is not None:
            return peer
        cdef char text[64]
        cdef sockaddr_in *v4
        cdef sockaddr_in6 *v6
        if name.ss_family == AF_INET:
            v4 = <sockaddr_in *> name
            inet_ntop(AF_INET, &v4.sin_addr, text, sizeof(text))
            peer = (text.decode("ascii"), ntohs(v4.sin_port))
        elif name.ss_family == AF_INET6:
            v6 = <sockaddr_in6 *> name
            inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof(text))
            peer = (text.decode("ascii"), ntohs(v6.sin6_port))
        else:
            return None
        if len(self._peer_of_raw) >= ADDR_CACHE_MAX:
            self._peer_of_raw.clear()  # a flood of sources: start over rather than grow
        self._peer_of_raw[raw] = peer
        return peer

    cdef int _name_of(self, object peer, sockaddr_storage *out, socklen_t *length) except -1:
        raw = self._raw_of_peer.get(peer)
        if raw is None:
            host, port = peer[0], peer[1]
            memset(out, 0, sizeof(sockaddr_storage))
            encoded = host.encode("ascii")
            if b":" in encoded:
                if inet_pton(AF_INET6, encoded, &(<sockaddr_in6 *> out).sin6_addr) != 1:
                    return 0
                (<sockaddr_in6 *> out).sin6_family = AF_INET6
                (<sockaddr_in6 *> out).sin6_port = htons(port)
                raw = PyBytes_FromStringAndSize(<char *> out, sizeof(sockaddr_in6))
            else:
                if inet_pton(AF_INET, encoded, &(<sockaddr_in *> out).sin_addr) != 1:
                    return 0
                (<sockaddr_in *> out).sin_family = AF_INET
                (<sockaddr_in *> out).sin_port = htons(port)
                raw = PyBytes_FromStringAndSize(<char *> out, sizeof(sockaddr_in))
            if len(self._raw_of_peer) >= ADDR_CACHE_MAX:
                self._raw_of_peer.clear()
            self._raw_of_peer[(host, port)] = raw
        cdef const char *data = raw
        length[0] = <socklen_t> len(raw)
        memcpy(out, data, length[0])
        return 1

    def recv(self):
        """Every datagram waiting, up to `batch`, as (data, host, port)."""
        cdef unsigned int i
        cdef int n
        for i in range(self.batch):
            self.rx_msgs[i].msg_hdr.msg_name = &self.rx_names[i]
            self.rx_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
            self.rx_msgs[i].msg_hdr.msg_iov = &self.rx_iov[i]
            self.rx_msgs[i].msg_hdr.msg_iovlen = 1
            self.rx_msgs[i].msg_hdr.msg_control = NULL
            self.rx_msgs[i].msg_hdr.msg_controllen = 0
            self.rx_msgs[i].msg_hdr.msg_flags = 0
        while True:
            n = recvmmsg(self.fd, self.rx_msgs, self.batch, MSG_DONTWAIT, NULL)
            if n >= 0:
                break
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return []
            # an ICMP error queued on the socket (port unreachable for a
            # response we sent): reading it clears it; count and go on.
            self.errors += 1
            return []
        out = []
        for i in range(<unsigned int> n):
            if self.rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                self.truncated += 1  # larger than any datagram we accept: dropped
                continue
            peer = self._peer(&self.rx_names[i], self.rx_msgs[i].msg_hdr.msg_namelen)
            if peer is None:
                self.errors += 1
                continue
            out.append((PyBytes_FromStringAndSize(<char *> self.rx_iov[i].iov_base, self.rx_msgs[i].msg_len),
                        peer[0], peer[1]))
        return out

    def send(self, list items, Py_ssize_t start=0):
        """Send items[start:] (each (data, (host, port))); returns how many of
        them are done (sent, or refused by the kernel and counted)."""
        cdef Py_ssize_t total = len(items) - start
        cdef Py_ssize_t done = 0
        cdef unsigned int count, i
        cdef int n
        cdef const char *data
        cdef socklen_t namelen
        kept = []  # keep the bytes alive while the kernel reads them
        while done < total:
            count = 0
            del kept[:]
            while count < self.batch and done + count < total:
                item = items[start + done + count]
                payload = item[0]
                kept.append(payload)
                if not self._name_of(item[1], &self.tx_names[count], &namelen):
                    # not an address we can send to: skip it (counted)
                    self.errors += 1
                    kept.pop()
                    if count == 0:
                        done += 1
                        continue
                    break
                data = payload
                self.tx_iov[count].iov_base = <void *> data
                self.tx_iov[count].iov_len = len(payload)
                memset(&self.tx_msgs[count], 0, sizeof(mmsghdr))
                self.tx_msgs[count].msg_hdr.msg_name = &self.tx_names[count]
                self.tx_msgs[count].msg_hdr.msg_namelen = namelen
                self.tx_msgs[count].msg_hdr.msg_iov = &self.tx_iov[count]
                self.tx_msgs[count].msg_hdr.msg_iovlen = 1
                count += 1
            if count == 0:
                continue
            n = sendmmsg(self.fd, self.tx_msgs, count, MSG_DONTWAIT)
            if n < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN:
                    return done
                # the first message was refused (too large, unreachable): skip it
                self.errors += 1
                done += 1
                continue
            done += n
        return done
