# cython: language_level=3
"""Compiled digest check and nonces: the twins of DigestAuthenticator.verify,
new_nonce and _nonce_issued_at in auth.py.

Every authenticated REGISTER checks its nonce (an HMAC-SHA256) and computes
three or four MD5s, and every 401 signs a new nonce. In Python each of those
is a hash object, an f-string and an encode; here the hash input goes
straight from the str's ASCII data into C digest functions and the hex comes
out into a C buffer. auth.py installs these functions in place of its own
methods when the compiled scanner is in use (the same rule as
fastreg.parser); its pure methods stay the readable reference, and
tests/test_auth.py compares the two on generated input.

Same results, same AuthOutcome values, the same "unknown user costs the
same" structure (the same number of hashes on every path) and a
constant-time comparison of the response (fr_memeq).

MD5 and SHA-256 are the short C implementations below rather than
OpenSSL's: building fastreg needs no OpenSSL headers (a plain `pip install`
on a machine without libssl-dev keeps working), and for inputs of one or
two blocks the difference in speed is a fraction of the call overhead.
tests/test_auth.py checks them against hashlib.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_FromStringAndSize
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

cdef extern from *:
    """
    /* MD5 (RFC 1321) and SHA-256 (FIPS 180-4) for short inputs: the digest
       check needs a few of each per REGISTER. Self-contained so that building
       fastreg needs no OpenSSL headers; tests/test_auth.py checks both against
       hashlib. */
    #include <stdint.h>
    #include <string.h>

    typedef struct { uint32_t s[4]; uint64_t len; unsigned char buf[64]; size_t n; } fr_md5;
    typedef struct { uint32_t s[8]; uint64_t len; unsigned char buf[64]; size_t n; } fr_sha256;

    #define FR_ROL(x, c) (((x) << (c)) | ((x) >> (32 - (c))))
    #define FR_ROR(x, c) (((x) >> (c)) | ((x) << (32 - (c))))

    static const uint32_t fr_md5_k[64] = {
        0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
        0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
        0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
        0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
        0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
        0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
        0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
        0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391};
    static const unsigned char fr_md5_r[64] = {
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
        5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
        4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
        6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21};

    static void fr_md5_block(uint32_t *s, const unsigned char *p) {
        uint32_t m[16], a = s[0], b = s[1], c = s[2], d = s[3], f, t;
        int i, g;
        for (i = 0; i < 16; i++)
            m[i] = (uint32_t)p[4 * i] | ((uint32_t)p[4 * i + 1] << 8) | ((uint32_t)p[4 * i + 2] << 16)
                   | ((uint32_t)p[4 * i + 3] << 24);
        /* the four rounds as four loops (no branch per step) */
    #define FR_MD5_STEP(F, G) \
            f = (F); g = (G); t = d; d = c; c = b; \
            b = b + FR_ROL(a + f + fr_md5_k[i] + m[g], fr_md5_r[i]); a = t;
        for (i = 0; i < 16; i++) { FR_MD5_STEP((b & c) | (~b & d), i) }
        for (; i < 32; i++) { FR_MD5_STEP((d & b) | (~d & c), (5 * i + 1) & 15) }
        for (; i < 48; i++) { FR_MD5_STEP(b ^ c ^ d, (3 * i + 5) & 15) }
        for (; i < 64; i++) { FR_MD5_STEP(c ^ (b | ~d), (7 * i) & 15) }
        s[0] += a; s[1] += b; s[2] += c; s[3] += d;
    }

    static void fr_md5_init(fr_md5 *h) {
        h->s[0] = 0x67452301; h->s[1] = 0xefcdab89; h->s[2] = 0x98badcfe; h->s[3] = 0x10325476;
        h->len = 0; h->n = 0;
    }

    static void fr_md5_update(fr_md5 *h, const void *data, size_t n) {
        const unsigned char *p = (const unsigned char *)data;
        h->len += n;
        while (n > 0) {
            size_t take = 64 - h->n < n ? 64 - h->n : n;
            if (h->n == 0 && n >= 64) { fr_md5_block(h->s, p); p += 64; n -= 64; continue; }
            memcpy(h->buf + h->n, p, take); h->n += take; p += take; n -= take;
            if (h->n == 64) { fr_md5_block(h->s, h->buf); h->n = 0; }
        }
    }

    static void fr_md5_final(fr_md5 *h, unsigned char *out) {
        uint64_t bits = h->len * 8;
        unsigned char pad[72];
        size_t padlen = (h->n < 56 ? 56 - h->n : 120 - h->n), i;
        memset(pad, 0, sizeof pad);
        pad[0] = 0x80;
        for (i = 0; i < 8; i++) pad[padlen + i] = (unsigned char)(bits >> (8 * i));
        fr_md5_update(h, pad, padlen + 8);
        for (i = 0; i < 4; i++) {
            out[4 * i] = (unsigned char)h->s[i]; out[4 * i + 1] = (unsigned char)(h->s[i] >> 8);
            out[4 * i + 2] = (unsigned char)(h->s[i] >> 16); out[4 * i + 3] = (unsigned char)(h->s[i] >> 24);
        }
    }

    static const uint32_t fr_sha256_k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

    static void fr_sha256_block(uint32_t *s, const unsigned char *p) {
        uint32_t w[64], a, b, c, d, e, f, g, h, t1, t2;
        int i;
        for (i = 0; i < 16; i++)
            w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) | ((uint32_t)p[4 * i + 2] << 8)
                   | (uint32_t)p[4 * i + 3];
        for (i = 16; i < 64; i++) {
            uint32_t s0 = FR_ROR(w[i - 15], 7) ^ FR_ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = FR_ROR(w[i - 2], 17) ^ FR_ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        a = s[0]; b = s[1]; c = s[2]; d = s[3]; e = s[4]; f = s[5]; g = s[6]; h = s[7];
        for (i = 0; i < 64; i++) {
            t1 = h + (FR_ROR(e, 6) ^ FR_ROR(e, 11) ^ FR_ROR(e, 25)) + ((e & f) ^ (~e & g)) + fr_sha256_k[i] + w[i];
            t2 = (FR_ROR(a, 2) ^ FR_ROR(a, 13) ^ FR_ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        s[0] += a; s[1] += b; s[2] += c; s[3] += d; s[4] += e; s[5] += f; s[6] += g; s[7] += h;
    }

    static void fr_sha256_init(fr_sha256 *h) {
        static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                       0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
        memcpy(h->s, iv, sizeof iv);
        h->len = 0; h->n = 0;
    }

    static void fr_sha256_update(fr_sha256 *h, const void *data, size_t n) {
        const unsigned char *p = (const unsigned char *)data;
        h->len += n;
        while (n > 0) {
            size_t take = 64 - h->n < n ? 64 - h->n : n;
            if (h->n == 0 && n >= 64) { fr_sha256_block(h->s, p); p += 64; n -= 64; continue; }
            memcpy(h->buf + h->n, p, take); h->n += take; p += take; n -= take;
            if (h->n == 64) { fr_sha256_block(h->s, h->buf); h->n = 0; }
        }
    }

    static void fr_sha256_final(fr_sha256 *h, unsigned char *out) {
        uint64_t bits = h->len * 8;
        unsigned char pad[72];
        size_t padlen = (h->n < 56 ? 56 - h->n : 120 - h->n), i;
        memset(pad, 0, sizeof pad);
        pad[0] = 0x80;
        for (i = 0; i < 8; i++) pad[padlen + i] = (unsigned char)(bits >> (56 - 8 * i));
        fr_sha256_update(h, pad, padlen + 8);
        for (i = 0; i < 8; i++) {
            out[4 * i] = (unsigned char)(h->s[i] >> 24); out[4 * i + 1] = (unsigned char)(h->s[i] >> 16);
            out[4 * i + 2] = (unsigned char)(h->s[i] >> 8); out[4 * i + 3] = (unsigned char)h->s[i];
        }
    }

    /* constant time: the time depends on n only */
    static int fr_memeq(const void *a, const void *b, size_t n) {
        const volatile unsigned char *x = (const volatile unsigned char *)a, *y = (const volatile unsigned char *)b;
        unsigned char d = 0;
        size_t i;
        for (i = 0; i < n; i++) d |= x[i] ^ y[i];
        return d == 0;
    }
    """
    ctypedef struct fr_md5:
        pass
    ctypedef struct fr_sha256:
        pass
    void fr_md5_init(fr_md5 *h) nogil
    void fr_md5_update(fr_md5 *h, const void *data, size_t n) nogil
    void fr_md5_final(fr_md5 *h, unsigned char *out) nogil
    void fr_sha256_init(fr_sha256 *h) nogil
    void fr_sha256_update(fr_sha256 *h, const void *data, size_t n) nogil
    void fr_sha256_final(fr_sha256 *h, unsigned char *out) nogil
    int fr_memeq(const void *a, const void *b, size_t n) nogil


# Bound by auth.py (it imports this module): its value classes and constants.
cdef object _AuthOutcome = None
cdef object _OK = None
cdef object _MALFORMED = None
cdef object _UNSUPPORTED = None
cdef object _REALM_MISMATCH = None
cdef object _BAD_NONCE = None
cdef object _STALE = None
cdef object _WRONG = None
cdef object _MISSING_OUTCOME = None
cdef object _HEX_DIGITS = None
cdef long _FUTURE_SKEW_S = 0
cdef object _tuple_new = tuple.__new__
cdef object _pure_nonce_issued_at = None

cdef enum:
    NONCE_LENGTH = 43
    NONCE_RAW_BYTES = 32
    NONCE_HEAD_BYTES = 16
    NONCE_MAC_BYTES = 16
    NONCE_RANDOM_BYTES = 8


def bind(outcome_class, status_class, missing_outcome, hex_digits, future_skew_s, pure_nonce_issued_at):
    """auth.py hands over its value classes, constants and the pure nonce check."""
    global _AuthOutcome, _OK, _MALFORMED, _UNSUPPORTED, _REALM_MISMATCH, _BAD_NONCE, _STALE, _WRONG
    global _MISSING_OUTCOME, _HEX_DIGITS, _FUTURE_SKEW_S, _pure_nonce_issued_at
    _pure_nonce_issued_at = pure_nonce_issued_at
    _AuthOutcome = outcome_class
    _OK = status_class.OK
    _MALFORMED = status_class.MALFORMED
    _UNSUPPORTED = status_class.UNSUPPORTED
    _REALM_MISMATCH = status_class.REALM_MISMATCH
    _BAD_NONCE = status_class.BAD_NONCE
    _STALE = status_class.STALE
    _WRONG = status_class.WRONG
    _MISSING_OUTCOME = missing_outcome
    _HEX_DIGITS = hex_digits
    _FUTURE_SKEW_S = future_skew_s


cdef inline object _outcome(status, username, nonce, nc, issued_at, expires_at, algorithm, reason):
    # AuthOutcome(...) without the namedtuple's Python-level __new__: the same tuple
    return _tuple_new(_AuthOutcome, (status, username, nonce, nc, issued_at, expires_at, algorithm, reason))


# -- HMAC-SHA256 under fixed keys ---------------------------------------------------

cdef struct _Pads:
    fr_sha256 inner
    fr_sha256 outer


cdef class MacKeys:
    """HMAC-SHA256 (RFC 2104) pad states of each key, hashed once (as auth._HmacSha256)."""

    cdef _Pads *pads
    cdef Py_ssize_t n

    def __cinit__(self, keys):
        cdef unsigned char block[64]
        cdef unsigned char ipad[64]
        cdef unsigned char opad[64]
        cdef Py_ssize_t i, j, klen
        cdef bytes k
        keys = [bytes(key) for key in keys]
        self.n = len(keys)
        self.pads = <_Pads *>malloc(sizeof(_Pads) * (self.n if self.n > 0 else 1))
        if self.pads == NULL:
            raise MemoryError()
        for i in range(self.n):
            k = keys[i]
            klen = PyBytes_GET_SIZE(k)
            for j in range(64):
                block[j] = 0
            if klen > 64:
                _sha256(<const unsigned char *>PyBytes_AS_STRING(k), klen, block)
            else:
                memcpy(block, PyBytes_AS_STRING(k), klen)
            for j in range(64):
                ipad[j] = block[j] ^ 0x36
                opad[j] = block[j] ^ 0x5C
            fr_sha256_init(&self.pads[i].inner)
            fr_sha256_update(&self.pads[i].inner, ipad, 64)
            fr_sha256_init(&self.pads[i].outer)
            fr_sha256_update(&self.pads[i].outer, opad, 64)

    def __dealloc__(self):
        free(self.pads)

    def digest(self, Py_ssize_t index, bytes msg):
        """HMAC-SHA256 of `msg` under key number `index` (for the tests)."""
        cdef unsigned char out[32]
        if not 0 <= index < self.n:
            raise IndexError(index)
        self._mac(index, <const unsigned char *>PyBytes_AS_STRING(msg), PyBytes_GET_SIZE(msg),
                  NULL, 0, out)
        return PyBytes_FromStringAndSize(<char *>out, 32)

    cdef void _mac(self, Py_ssize_t index, const unsigned char *a, size_t alen,
                   const unsigned char *b, size_t blen, unsigned char *out) noexcept:
        """HMAC of a || b."""
        cdef fr_sha256 ctx = self.pads[index].inner
        cdef unsigned char inner[32]
        fr_sha256_update(&ctx, a, alen)
        if blen:
            fr_sha256_update(&ctx, b, blen)
        fr_sha256_final(&ctx, inner)
        ctx = self.pads[index].outer
        fr_sha256_update(&ctx, inner, 32)
        fr_sha256_final(&ctx, out)


cdef void _sha256(const unsigned char *data, size_t n, unsigned char *out) noexcept:
    cdef fr_sha256 ctx
    fr_sha256_init(&ctx)
    fr_sha256_update(&ctx, data, n)
    fr_sha256_final(&ctx, out)


# -- nonces ---------------------------------------------------------------------------

cdef const char *_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


cdef inline int _b64url_value(Py_UCS4 c) noexcept:
    if c >= u'A' and c <= u'Z':
        return <int>c - 65  # 'A'
    if c >= u'a' and c <= u'z':
        return <int>c - 97 + 26  # 'a'
    if c >= u'0' and c <= u'9':
        return <int>c - 48 + 52  # '0'
    if c == u'-':
        return 62
    if c == u'_':
        return 63
    return -1


def new_nonce(self, now, random_bytes=None):
    """A nonce stamped with int(now), signed with keys[0]."""
    cdef unsigned char raw[NONCE_RAW_BYTES + 32]
    cdef char text[NONCE_LENGTH + 2]
    cdef MacKeys keys = self._ckeys
    cdef bytes head
    cdef const unsigned char *p
    cdef Py_ssize_t i, o
    cdef unsigned int v
    if random_bytes is None:
        random_bytes = self._rng(NONCE_RANDOM_BYTES)
    if len(random_bytes) != NONCE_RANDOM_BYTES:
        raise ValueError(f"random_bytes: need exactly {NONCE_RANDOM_BYTES} bytes")
    # as the pure one: to_bytes raises OverflowError for a time outside 0..2**64-1,
    # and the concatenation takes any bytes-like random part
    head = int(now).to_bytes(8, "big") + random_bytes
    realm_b = <bytes>self._realm_b
    keys._mac(0, <const unsigned char *>PyBytes_AS_STRING(head), NONCE_HEAD_BYTES,
              <const unsigned char *>PyBytes_AS_STRING(realm_b), PyBytes_GET_SIZE(realm_b), raw + NONCE_HEAD_BYTES)
    memcpy(raw, PyBytes_AS_STRING(head), NONCE_HEAD_BYTES)
    # base64url without padding: 10 groups of 3 bytes, then 2 bytes -> 3 characters
    o = 0
    i = 0
    while i + 3 <= NONCE_RAW_BYTES:
        v = (raw[i] << 16) | (raw[i + 1] << 8) | raw[i + 2]
        text[o] = _B64URL[(v >> 18) & 63]
        text[o + 1] = _B64URL[(v >> 12) & 63]
        text[o + 2] = _B64URL[(v >> 6) & 63]
        text[o + 3] = _B64URL[v & 63]
        o += 4
        i += 3
    v = (raw[i] << 16) | (raw[i + 1] << 8)
    text[o] = _B64URL[(v >> 18) & 63]
    text[o + 1] = _B64URL[(v >> 12) & 63]
    text[o + 2] = _B64URL[(v >> 6) & 63]
    return PyUnicode_FromStringAndSize(text, NONCE_LENGTH)


cdef object _issued_at(object self, object nonce):
    """issued_at of a nonce signed by one of our keys, else None (never raises).
    The pure one decodes with binascii after mapping the alphabet; any character
    outside base64url leaves fewer than 43 data characters there, too few for
    32 bytes, so both answer None for it."""
    cdef unsigned char raw[NONCE_RAW_BYTES]
    cdef unsigned char mac[32]
    cdef int vals[NONCE_LENGTH]
    cdef Py_ssize_t i, o
    cdef int v
    cdef unsigned int w
    cdef uint64_t issued = 0
    cdef MacKeys keys
    if type(nonce) is not str:
        return _pure_nonce_issued_at(self, nonce)  # (not what the parser makes: its rules)
    if PyUnicode_GET_LENGTH(nonce) != NONCE_LENGTH:
        return None
    cdef str s = <str>nonce
    for i in range(NONCE_LENGTH):
        v = _b64url_value(s[i])
        if v < 0:
            return None
        vals[i] = v
    if vals[NONCE_LENGTH - 1] & 3:
        return None  # not the canonical spelling of the last 4 bits (_CANONICAL_LAST)
    o = 0
    i = 0
    while i + 4 <= NONCE_LENGTH:
        w = (vals[i] << 18) | (vals[i + 1] << 12) | (vals[i + 2] << 6) | vals[i + 3]
        raw[o] = (w >> 16) & 255
        raw[o + 1] = (w >> 8) & 255
        raw[o + 2] = w & 255
        o += 3
        i += 4
    w = (vals[i] << 18) | (vals[i + 1] << 12) | (vals[i + 2] << 6)
    raw[o] = (w >> 16) & 255
    raw[o + 1] = (w >> 8) & 255
    keys = self._ckeys
    realm_b = <bytes>self._realm_b
    for i in range(keys.n):
        keys._mac(i, raw, NONCE_HEAD_BYTES, <const unsigned char *>PyBytes_AS_STRING(realm_b),
                  PyBytes_GET_SIZE(realm_b), mac)
        if fr_memeq(mac, raw + NONCE_HEAD_BYTES, NONCE_MAC_BYTES):
            for o in range(8):
                issued = (issued << 8) | raw[o]
            return issued
    return None


def nonce_issued_at(self, nonce):
    """issued_at of a nonce signed by one of our keys, else None (never raises)."""
    return _issued_at(self, nonce)


# -- the digest -----------------------------------------------------------------------

cdef struct _Hash:
    bint sha
    fr_md5 md5
    fr_sha256 sha256


cdef inline void _h_init(_Hash *h, bint sha) noexcept:
    h.sha = sha
    if sha:
        fr_sha256_init(&h.sha256)
    else:
        fr_md5_init(&h.md5)


cdef inline void _h_bytes(_Hash *h, const char *p, size_t n) noexcept:
    if h.sha:
        fr_sha256_update(&h.sha256, p, n)
    else:
        fr_md5_update(&h.md5, p, n)


cdef inline int _h_str(_Hash *h, object s) except -1:
    """Feed s as the pure one's f-string does, then encodes: UTF-8 with
    surrogateescape (its UnicodeEncodeError), anything else formatted first."""
    if type(s) is str and PyUnicode_IS_ASCII(s):
        _h_bytes(h, <const char *>PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s))
    else:
        b = (s if type(s) is str else format(s, "")).encode("utf-8", "surrogateescape")
        _h_bytes(h, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    return 0


cdef inline void _h_colon(_Hash *h) noexcept:
    _h_bytes(h, b":", 1)


cdef Py_ssize_t _h_hex(_Hash *h, char *out) noexcept:
    """Finish: lower-case hex into out (64 bytes room), returns its length."""
    cdef unsigned char md[32]
    cdef Py_ssize_t n, i
    cdef const char *digits = b"0123456789abcdef"
    if h.sha:
        fr_sha256_final(&h.sha256, md)
        n = 32
    else:
        fr_md5_final(&h.md5, md)
        n = 16
    for i in range(n):
        out[2 * i] = digits[md[i] >> 4]
        out[2 * i + 1] = digits[md[i] & 15]
    return 2 * n


def verify(self, creds, method, now, user):
    """Check `creds` (the parsed Authorization header, or None) of a
    request with `method`, for `user` = the directory's record for the
    credentials' username (None if there is no such user). Never raises
    on anything a client can send. (The twin of auth.py's pure verify.)"""
    cdef _Hash h
    cdef char ha1_hex[64]
    cdef char ha2_hex[64]
    cdef char expected[64]
    cdef Py_ssize_t ha1_len = 0, ha2_len, exp_len, given_len
    cdef bint sha, secret_usable, equal
    if creds is None or creds.scheme.lower() != "digest":
        return _MISSING_OUTCOME
    params = creds.params
    cdef dict p = dict(params)
    username = p.get("username")
    if len(p) != len(params):
        return _outcome(_MALFORMED, username, None, 0, 0, 0, None, "repeated digest parameter")
    realm = p.get("realm")
    nonce = p.get("nonce")
    uri = p.get("uri")
    response = p.get("response")
    if username is None or realm is None or nonce is None or uri is None or response is None:
        return _outcome(_MALFORMED, username, nonce, 0, 0, 0, None,
                        "digest needs username, realm, nonce, uri and response")

    algorithm = p.get("algorithm")
    if algorithm is None:
        variant = self._default_variant
    else:
        variant = self._variants.get(algorithm.lower())
    if variant is None:
        return _outcome(_UNSUPPORTED, username, nonce, 0, 0, 0, algorithm, "unsupported digest algorithm")
    vname = variant.name
    userhash = p.get("userhash")
    if userhash is not None and userhash.lower() != "false":
        return _outcome(_UNSUPPORTED, username, nonce, 0, 0, 0, vname, "userhash is not supported")

    cdef bint sess = variant.sess
    qop = p.get("qop")
    cnonce = p.get("cnonce")
    if qop is not None:
        if qop.lower() != "auth":
            return _outcome(_UNSUPPORTED, username, nonce, 0, 0, 0, vname, "unsupported qop")
        nc_text = p.get("nc")
        if nc_text is None or cnonce is None:
            return _outcome(_MALFORMED, username, nonce, 0, 0, 0, vname, "qop=auth needs nc and cnonce")
        if len(nc_text) != 8 or nc_text.strip(_HEX_DIGITS):
            return _outcome(_MALFORMED, username, nonce, 0, 0, 0, vname, "nc must be 8 hex digits")
        nc = int(nc_text, 16)
    else:
        nc_text = None
        nc = 0
        if sess and cnonce is None:
            return _outcome(_MALFORMED, username, nonce, 0, 0, 0, vname, "a -sess algorithm needs cnonce")

    if realm != self.realm:
        return _outcome(_REALM_MISMATCH, username, nonce, nc, 0, 0, vname, "credentials for another realm")

    issued_at = _issued_at(self, nonce)
    if issued_at is None:
        return _outcome(_BAD_NONCE, username, nonce, nc, 0, 0, vname, "nonce not issued here")
    ttl = self.nonce_ttl_s
    expires_at = issued_at + ttl

    # The digest. Every path below computes the same number of hashes for
    # a known and an unknown user (stored-HA1 users save one).
    sha = variant.base != "MD5"
    secret_usable = True
    ha1 = None
    if user is not None and user.username == username:
        ha1 = user.ha1 if not sha else user.ha1_sha256
        if ha1 is not None:
            ha1 = ha1.lower()
            password = None
        else:
            password = user.password
            if password is None:
                password, secret_usable = self._dummy_password, False
    else:
        password, secret_usable = self._dummy_password, False
    try:
        if ha1 is None:
            _h_init(&h, sha)
            _h_str(&h, username)
            _h_colon(&h)
            _h_str(&h, realm)
            _h_colon(&h)
            _h_str(&h, password)
            ha1_len = _h_hex(&h, ha1_hex)
        else:
            # a stored HA1 as the pure one uses it: its text, whatever its length
            ha1_b = (<str>ha1).encode("utf-8", "surrogateescape")
        if sess:
            _h_init(&h, sha)
            if ha1 is None:
                _h_bytes(&h, ha1_hex, ha1_len)
            else:
                _h_bytes(&h, PyBytes_AS_STRING(ha1_b), PyBytes_GET_SIZE(ha1_b))
            _h_colon(&h)
            _h_str(&h, nonce)
            _h_colon(&h)
            _h_str(&h, cnonce)
            ha1_len = _h_hex(&h, ha1_hex)
            ha1 = None  # from here on the session HA1 in ha1_hex
        _h_init(&h, sha)
        _h_str(&h, method)
        _h_colon(&h)
        _h_str(&h, uri)
        ha2_len = _h_hex(&h, ha2_hex)
        _h_init(&h, sha)
        if ha1 is None:
            _h_bytes(&h, ha1_hex, ha1_len)
        else:
            _h_bytes(&h, PyBytes_AS_STRING(ha1_b), PyBytes_GET_SIZE(ha1_b))
        _h_colon(&h)
        _h_str(&h, nonce)
        _h_colon(&h)
        if nc_text is not None:
            _h_str(&h, nc_text)
            _h_colon(&h)
            _h_str(&h, cnonce)
            _h_colon(&h)
            _h_str(&h, qop)
            _h_colon(&h)
        _h_bytes(&h, ha2_hex, ha2_len)
        exp_len = _h_hex(&h, expected)
    except UnicodeEncodeError:
        return _outcome(_MALFORMED, username, nonce, nc, 0, 0, vname, "credentials are not valid text")
    given = response.lower()
    # compare_digest semantics: a non-ASCII response equals nothing; different lengths differ
    if PyUnicode_IS_ASCII(given) and PyUnicode_GET_LENGTH(given) == exp_len:
        equal = fr_memeq(expected, PyUnicode_DATA(given), exp_len)
    else:
        equal = False
    if not (equal and secret_usable):
        return _outcome(_WRONG, username, nonce, nc, issued_at, expires_at, vname, "wrong credentials")
    if now - issued_at > ttl or issued_at - now > _FUTURE_SKEW_S:
        return _outcome(_STALE, username, nonce, nc, issued_at, expires_at, vname, "nonce expired")
    return _outcome(_OK, username, nonce, nc, issued_at, expires_at, vname, "")


def hexdigest(str algorithm, bytes data):
    """The lower-case hex digest of `data` by the C code above, "MD5" or
    "SHA-256" (for the tests, which compare it with hashlib)."""
    cdef _Hash h
    cdef char out[64]
    cdef Py_ssize_t n
    if algorithm not in ("MD5", "SHA-256"):
        raise ValueError(algorithm)
    _h_init(&h, algorithm == "SHA-256")
    _h_bytes(&h, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    n = _h_hex(&h, out)
    return out[:n].decode("ascii")
