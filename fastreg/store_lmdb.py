"""The location table in LMDB: one environment shared by every worker process.

Layout (named databases of one environment directory)::

    aor       AOR utf-8                      -> codec record (msgpack, versioned)
    expiry    8-byte BE int(expires_at) || AOR utf-8 -> b""   (one entry per distinct second)
    nonce     replay key (8-byte BE expiry || nonce id) -> nc (4-byte BE) || request fingerprint (8 bytes)
    authfail  throttle key                   -> FailureState (struct ">Qdd")
    meta      b"format"                      -> b"1"
    stats     b"w" + worker index (8 digits) -> that worker's counters (fastreg.stats; created on first use)
    calls     the proxy's ongoing calls and per-user counts (fastreg.linetracker; created on first use)

One REGISTER is one write transaction (`save`): read the record, apply
RFC 3261 10.3 (`bindings.apply_register`), check and store the replay nc,
write the record and fix the expiry index, commit: all or nothing.  LMDB
serialises writers across processes with its own lock; readers never block.

Durability (``durability=``), what each setting risks:

* ``"sync"``: every commit is flushed to disk (msync/fdatasync of the data,
  then the meta page) before `save` returns, so the 200 OK is sent for what
  is on disk; nothing committed is lost, even on power loss.  Costs hundreds
  of µs per commit (group commit, many REGISTERs per transaction, is the
  worker's job).
* ``"periodic"`` (default): commits are not flushed (MDB_NOSYNC |
  MDB_NOMETASYNC); the worker calls `sync()` every ~200 ms.  A crash of a
  fastreg process loses nothing committed (the pages are in the OS page
  cache).  A power loss or kernel crash loses the commits since the last
  `sync()`, and can leave the environment *damaged*: without a flush the
  kernel may write the new meta page before the pages it points to.  With
  ``writemap=True`` (see below) that is possible on any file
  system; with ``writemap=False`` only where the file system reorders
  writes (LMDB's documented MDB_NOSYNC caveat).  Recovery after such a crash,
  if the table fails to open or reads raise lmdb.CorruptedError: delete the
  location directory; devices re-register within one registration interval.
* ``"none"``: like periodic, but never flushed explicitly: the window is
  whatever the kernel's writeback leaves (typically up to ~30 s), with the
  same power-loss caveat.

In every mode the bindings survive a restart of fastreg.

``writemap=True`` (`location.writemap`, on by default in the configuration; this class defaults to off) writes pages straight into the shared memory map
instead of through write(2): a write transaction costs about a third
(measured ~4 µs instead of ~13 µs for get+put+commit without flush, and less
than half with ``sync``).  The data file then shows the whole map size
(sparse).  Every process that opens the environment for writing must use
the same setting (LMDB forbids mixing); read-only opens are unaffected.

Processes: open the environment *after* fork, in each process (LMDB forbids
inheriting an open environment, and py-lmdb refuses a second open of the
same files in one process).  ``readonly=True`` (for ``fastreg contacts``
while the server runs) needs the environment to exist and write access to
its lock file (the reader table).

When the map is full, a write raises `LocationFull` (503, Retry-After 60):
the transaction is aborted, everything committed stays readable, and writes
succeed again once the sweeper has freed pages or the map is made larger
(``map_size_mb``; a larger value on the next open grows the file).  Deleting
needs free pages too (copy on write): when even a one-AOR purge cannot
commit, `purge_expired` grows the map by a small step (logged as an error)
so that the table can recover without a restart; the other processes adopt
the new size on their next transaction.  Sizing: an AOR with one binding
(a Path entry, a User-Agent) takes about 370 bytes with its index entry
(measured: 22,951 such AORs filled 8 MiB), so the default 1024 MiB holds
about 2.9 million; add ~100 bytes per used nonce still within its lifetime,
and keep generous headroom.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import lmdb

from fastreg.bindings import (
    is_replayed_retransmission,
    request_fingerprint,
    Binding,
    SaveRequest,
    SaveResult,
    apply_to_current,
    current,
    is_retransmission,
)
from fastreg.codec import RecordFormatError, decode_bindings, encode_bindings
from fastreg.errors import LocationFull, ParseError, ReplayedCredentials
from fastreg.failures import FailureState, entry_is_over
from fastreg.uri import contacts_equal

__all__ = ["LmdbLocation", "LmdbFailureCounter", "SweeperLock", "DURABILITY_MODES"]

log = logging.getLogger(__name__)

DURABILITY_MODES = ("sync", "periodic", "none")
TABLE_FORMAT = b"1"  # the layout above; the records carry their own version too

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_FAIL = struct.Struct(">Qdd")
_pack_u64 = _U64.pack
_pack_u32 = _U32.pack
_unpack_u32 = _U32.unpack


class LmdbLocation:
    """`LocationService` over LMDB; also owns the environment for `LmdbFailureCounter`."""

    def __init__(self, path: str, map_size_mb: int = 1024, durability: str = "periodic",
                 readonly: bool = False, writemap: bool = False) -> None:
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY_MODES)}, not {durability!r}")
        self.path = path
        self.durability = durability
        self.readonly = readonly
        if not readonly:
            os.makedirs(path, exist_ok=True)
        synced = durability == "sync"
        self.env = lmdb.open(
            path,
            map_size=int(map_size_mb) * 1024 * 1024,
            subdir=True,
            readonly=readonly,
            create=not readonly,
            sync=synced,
            metasync=synced,
            lock=True,
            max_readers=512,
            max_dbs=8,
            writemap=writemap and not readonly,
            readahead=False,  # random access: no point reading ahead
            meminit=False,
        )
        try:
            self._open_dbs()
        except BaseException:
            self.env.close()
            raise
        self._max_key = self.env.max_key_size()

    def _open_dbs(self) -> None:
        env = self.env
        create = not self.readonly
        names = (b"aor", b"expiry", b"nonce", b"authfail", b"meta")
        if create:
            with env.begin(write=True) as txn:
                dbs = {n: env.open_db(n, txn=txn, create=True) for n in names}
                meta = dbs[b"meta"]
                fmt = txn.get(b"format", db=meta)
                if fmt is None:
                    txn.put(b"format", TABLE_FORMAT, db=meta)
                    fmt = TABLE_FORMAT
        else:
            # in a read-only environment a handle opened inside a read txn dies with it:
            # let py-lmdb open each one in a transaction of its own
            try:
                dbs = {n: env.open_db(n, create=False) for n in names}
            except lmdb.NotFoundError:
                raise RecordFormatError(f"{self.path} is not a fastreg location table") from None
            with env.begin() as txn:
                fmt = txn.get(b"format", db=dbs[b"meta"])
        if fmt != TABLE_FORMAT:
            raise RecordFormatError(f"location table format {fmt!r} in {self.path} is not {TABLE_FORMAT!r}")
        self._aor = dbs[b"aor"]
        self._expiry = dbs[b"expiry"]
        self._nonce = dbs[b"nonce"]
        self.authfail_db = dbs[b"authfail"]

    # ------------------------------------------------------------------ save

    def _aor_key(self, aor: str) -> bytes:
        key = aor.encode("utf-8", "surrogateescape")
        if len(key) + 8 > self._max_key:
            raise ParseError("Address-of-record too long")
        return key

    def save(self, req: SaveRequest) -> SaveResult:
        key = self._aor_key(req.aor)
        rk = req.replay_key
        if rk is not None and not 8 <= len(rk) <= self._max_key:
            raise ValueError("replay_key must be the 8-byte expiry plus an id, within the LMDB key size")
        try:
            return self._write(self._save_txn, key, req)
        except lmdb.MapFullError:
            raise LocationFull() from None

    def _read_txn(self) -> lmdb.Transaction:
        """A read transaction; adopts a map size grown by another process."""
        try:
            return self.env.begin()
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            return self.env.begin()

    def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(txn, *args) in a write transaction and commit; abort on any exception.
        A map grown by another process is adopted and fn run again (fn must be pure
        apart from the transaction)."""
        env = self.env
        for attempt in (0, 1):
            try:
                txn = env.begin(write=True)
            except lmdb.MapResizedError:
                if attempt:
                    raise
                env.set_mapsize(0)
                continue
            try:
                out = fn(txn, *args)
                txn.commit()
                return out
            except lmdb.MapResizedError:
                txn.abort()
                if attempt:
                    raise
                env.set_mapsize(0)
            except BaseException:
                txn.abort()
                raise
        raise AssertionError("unreachable")

    def _save_txn(self, txn: lmdb.Transaction, key: bytes, req: SaveRequest) -> SaveResult:
        raw = txn.get(key, db=self._aor)
        if raw is None:
            existing: list[Binding] = []
            live = existing
        else:
            existing = decode_bindings(req.aor, raw)
            now = req.now
            live = [b for b in existing if b.expires_at > now]
            if is_retransmission(live, req):
                return SaveResult(current(live, now), True, False)
        rk = req.replay_key
        if rk is not None:
            stored = txn.get(rk, db=self._nonce)
            if stored is not None:
                stored_nc = _unpack_u32(stored[:4])[0]
                if is_replayed_retransmission(stored_nc, stored[4:], req):
                    return SaveResult(current(live, req.now), True, False)
                if req.replay_nc <= stored_nc:
                    raise ReplayedCredentials()
            txn.put(rk, _pack_u32(req.replay_nc) + request_fingerprint(req), db=self._nonce)
        result = apply_to_current(live, req)
        new = result.bindings
        if result.changed or len(new) != len(existing):
            self._write_record(txn, key, existing, new)
        return result

    def _write_record(self, txn: lmdb.Transaction, key: bytes, old: Any, new: tuple[Binding, ...]) -> None:
        if new:
            txn.put(key, encode_bindings(new), db=self._aor)
        else:
            txn.delete(key, db=self._aor)
        exp = self._expiry
        if len(old) <= 1 and len(new) <= 1:
            # one device per AOR, the usual case: the same as the sets below, without them
            o = int(old[0].expires_at) if old else None
            n = int(new[0].expires_at) if new else None
            if o != n:
                if o is not None:
                    txn.delete(_pack_u64(o) + key, db=exp)
                if n is not None:
                    txn.put(_pack_u64(n) + key, b"", db=exp)
            return
        old_t = {int(b.expires_at) for b in old}
        new_t = {int(b.expires_at) for b in new}
        if old_t != new_t:
            for t in old_t - new_t:
                txn.delete(_pack_u64(t) + key, db=exp)
            for t in new_t - old_t:
                txn.put(_pack_u64(t) + key, b"", db=exp)

    # ------------------------------------------------------------ the others

    def lookup(self, aor: str, now: float) -> tuple[Binding, ...]:
        key = aor.encode("utf-8", "surrogateescape")
        if len(key) + 8 > self._max_key:
            return ()
        with self._read_txn() as txn:
            raw = txn.get(key, db=self._aor)
        if raw is None:
            return ()
        return current(decode_bindings(aor, raw), now)

    def remove(self, aor: str, contact: str | None = None) -> int:
        """Admin: remove all bindings of `aor` (also an unreadable record, counted as 1),
        or those whose contact is 19.1.4-equal to `contact`. Returns how many."""
        key = self._aor_key(aor)

        def txn_fn(txn: lmdb.Transaction) -> int:
            raw = txn.get(key, db=self._aor)
            if raw is None:
                return 0
            try:
                old = decode_bindings(aor, raw)
            except RecordFormatError:
                if contact is not None:
                    raise
                # the way out for an unreadable record: drop it whole (it counts as one);
                # its index entries go when the sweeper reaches them
                txn.delete(key, db=self._aor)
                log.warning("removed the unreadable location record of %s", aor)
                return 1
            if contact is None:
                keep: tuple[Binding, ...] = ()
            else:
                keep = tuple(b for b in old if not contacts_equal(b.contact, contact))
            if len(keep) != len(old):
                self._write_record(txn, key, old, keep)
            return len(old) - len(keep)

        try:
            return self._write(txn_fn)
        except lmdb.MapFullError:
            raise LocationFull() from None

    def purge_expired(self, now: float, limit: int = 1000) -> int:
        """Remove bindings with expires_at <= now, at most `limit` AORs in one write
        transaction (call again while it returns > 0), and replay entries with expiry < now
        (at most `limit`). Returns the number of bindings removed.

        Deleting needs free pages too (LMDB copies on write).  When the map is so full
        that even a one-AOR purge fails, the map is grown once by max(1 MiB, 1/32)
        and an error is logged: without that, a full table could never recover
        (every save and every purge would fail until a restart with a larger map).
        """
        lim = max(1, limit)
        grown = False
        while True:
            try:
                return self._write(self._purge_txn, now, lim)
            except lmdb.MapFullError:
                if lim > 1:
                    lim = max(1, lim // 16)
                    continue
                if grown or not self._grow_map():
                    raise LocationFull() from None
                grown = True

    def _grow_map(self) -> bool:
        size = self.env.info()["map_size"]
        new = size + max(1 << 20, size // 32)
        try:
            self.env.set_mapsize(new)
        except lmdb.Error as exc:
            log.error("location table %s is full and could not grow: %s", self.path, exc)
            return False
        log.error("location table %s is full: grown from %d to %d bytes so that the sweeper can "
                  "free space; raise location.map_size_mb", self.path, size, new)
        return True

    def _purge_txn(self, txn: lmdb.Transaction, now: float, limit: int) -> int:
        bound = int(now)  # entries of second T hold bindings with T <= expires_at < T+1
        aors: list[bytes] = []
        seen: set[bytes] = set()
        cur = txn.cursor(db=self._expiry)
        if cur.first():
            for k in cur.iternext(values=False):
                if _U64.unpack_from(k)[0] > bound or len(aors) >= limit:
                    break
                aor_key = bytes(k[8:])
                if aor_key not in seen:
                    seen.add(aor_key)
                    aors.append(aor_key)
        removed = 0
        for aor_key in aors:
            raw = txn.get(aor_key, db=self._aor)
            if raw is None:
                # an index entry without a record (should not happen): drop the stale entries
                self._drop_index_upto(txn, aor_key, bound)
                continue
            aor = aor_key.decode("utf-8", "surrogateescape")
            try:
                old = decode_bindings(aor, raw)
            except RecordFormatError as exc:
                log.error("purge: unreadable record of %s left in place, index entries dropped: %s", aor, exc)
                self._drop_index_upto(txn, aor_key, bound)
                continue
            keep = tuple(b for b in old if b.expires_at > now)
            if len(keep) != len(old):
                self._write_record(txn, aor_key, old, keep)
                removed += len(old) - len(keep)
        # used nonces: keys start with their expiry, so the expired ones come first
        cur = txn.cursor(db=self._nonce)
        n = 0
        if cur.first():
            while n < limit:
                k = cur.key()
                if len(k) < 8 or _U64.unpack_from(k)[0] >= now:
                    break
                n += 1
                if not cur.delete():  # delete moves to the next entry
                    break
        return removed

    def _drop_index_upto(self, txn: lmdb.Transaction, aor_key: bytes, bound: int) -> None:
        stale = []
        cur = txn.cursor(db=self._expiry)
        if cur.first():
            for k in cur.iternext(values=False):
                if _U64.unpack_from(k)[0] > bound:
                    break
                if k[8:] == aor_key:
                    stale.append(bytes(k))
        for k in stale:
            txn.delete(k, db=self._expiry)

    def iter_all(self, now: float) -> Iterator[Binding]:
        """Every current binding, AOR by AOR in key order, from one read snapshot.
        Unreadable records are logged and skipped."""
        with self._read_txn() as txn:
            for k, v in txn.cursor(db=self._aor):
                aor = bytes(k).decode("utf-8", "surrogateescape")
                try:
                    bindings = decode_bindings(aor, v)
                except RecordFormatError as exc:
                    log.error("unreadable location record of %s skipped: %s", aor, exc)
                    continue
                yield from current(bindings, now)

    def sync(self) -> None:
        """Flush committed transactions to disk (the `periodic` worker timer calls this)."""
        if not self.readonly:
            self.env.sync(True)

    def close(self) -> None:
        self.env.close()

    # ------------------------------------------------------- for diagnostics

    def counts(self) -> dict[str, int]:
        """Entries per named database (tests, stats)."""
        with self._read_txn() as txn:
            return {
                "aor": txn.stat(self._aor)["entries"],
                "expiry": txn.stat(self._expiry)["entries"],
                "nonce": txn.stat(self._nonce)["entries"],
                "authfail": txn.stat(self.authfail_db)["entries"],
            }

    def reader_check(self) -> int:
        """Clear the reader slots of processes that died holding one (a killed
        worker's slot would otherwise pin an old snapshot, so that LMDB could not
        reuse the pages freed since, until the table fills). Returns how many."""
        return self.env.reader_check()

    # ------------------------------------------------ worker stats (``stats`` db)
    #
    # A small named database beside the tables: key -> opaque bytes (the
    # workers' counters, fastreg.stats encodes them). Opened on first use, so
    # that tables created before it existed still open read-only.

    def _stats(self, create: bool) -> Any:
        db = getattr(self, "_stats_db", None)
        if db is None:
            try:
                db = self.env.open_db(b"stats", create=create and not self.readonly)
            except lmdb.NotFoundError:
                return None
            self._stats_db = db
        return db

    def put_stats(self, key: bytes, value: bytes) -> None:
        """Store one entry (LocationFull when the map is full)."""

        def txn_fn(txn: lmdb.Transaction) -> None:
            txn.put(key, value, db=db)

        try:
            db = self._stats(create=True)
            self._write(txn_fn)
        except lmdb.MapFullError:
            raise LocationFull() from None

    def delete_stats(self, keep: Callable[[bytes], bool]) -> int:
        """Delete the stats entries whose key `keep(key)` refuses; returns how many
        (LocationFull when the map is full)."""

        def txn_fn(txn: lmdb.Transaction) -> int:
            dead = [bytes(k) for k in txn.cursor(db=db).iternext(values=False) if not keep(bytes(k))]
            for k in dead:
                txn.delete(k, db=db)
            return len(dead)

        try:
            db = self._stats(create=True)
            return self._write(txn_fn)
        except lmdb.MapFullError:
            raise LocationFull() from None

    def read_stats(self) -> list[tuple[bytes, bytes]]:
        db = self._stats(create=False)
        if db is None:
            return []
        with self._read_txn() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)]

    def __enter__(self) -> LmdbLocation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LmdbFailureCounter:
    """The throttle's `FailureCounter` (fastreg.throttle) in the `authfail` db of a location table.

    `update` is an atomic read-modify-write in one write transaction, across
    every process sharing the environment (`fn` must be pure and quick: it runs
    while holding LMDB's writer lock).  `purge` drops the entries for which
    `throttle.entry_is_over(state, now, window_s)`: pass the throttle's
    `window_s` (the default is the throttle's default).  Values are
    struct ">Qdd" (count, window_start, blocked_until); an unreadable value
    reads as no entry and is purged.
    """

    def __init__(self, env_owner: LmdbLocation, window_s: float = 60.0) -> None:
        self._owner = env_owner
        self._env = env_owner.env
        self._db = env_owner.authfail_db
        self.window_s = window_s

    @staticmethod
    def _decode(raw: bytes) -> FailureState | None:
        try:
            return FailureState(*_FAIL.unpack(raw))
        except struct.error:
            return None

    def get(self, key: bytes) -> FailureState | None:
        with self._owner._read_txn() as txn:
            raw = txn.get(key, db=self._db)
        return None if raw is None else self._decode(raw)

    def update(self, key: bytes, fn: Callable[[FailureState | None], FailureState | None]) -> FailureState | None:
        db = self._db

        def txn_fn(txn: lmdb.Transaction) -> FailureState | None:
            raw = txn.get(key, db=db)
            new = fn(None if raw is None else self._decode(raw))
            if new is None:
                if raw is not None:
                    txn.delete(key, db=db)
            else:
                txn.put(key, _FAIL.pack(new.count, new.window_start, new.blocked_until), db=db)
            return new

        try:
            return self._owner._write(txn_fn)
        except lmdb.MapFullError:
            raise LocationFull() from None

    def purge(self, now: float) -> int:
        window_s = self.window_s
        db = self._db

        def txn_fn(txn: lmdb.Transaction) -> int:
            dead = []
            for k, v in txn.cursor(db=db):
                state = self._decode(v)
                if state is None or entry_is_over(state, now, window_s):
                    dead.append(bytes(k))
            for k in dead:
                txn.delete(k, db=db)
            return len(dead)

        return self._owner._write(txn_fn)

    def __len__(self) -> int:
        with self._owner._read_txn() as txn:
            return txn.stat(self._db)["entries"]


class SweeperLock:
    """Exactly one process runs the sweeper: an exclusive, non-blocking flock on
    ``<state_dir>/sweeper.lock``.

    `acquired` tells whether this process holds it; `try_acquire()` tries again
    (a process whose sweeper died lets another take over).  The lock goes with
    `close()` or with the process.  Create it after fork: a forked child shares
    the parent's open file description, and so its lock.
    """

    FILENAME = "sweeper.lock"

    def __init__(self, state_dir: str) -> None:
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(state_dir, self.FILENAME)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._acquired = False
        self.try_acquire()

    @property
    def acquired(self) -> bool:
        return self._acquired

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it (non-blocking); True when held."""
        if self._fd is None:
            raise ValueError("SweeperLock is closed")
        if not self._acquired:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self._acquired = True
            try:
                os.ftruncate(self._fd, 0)
                os.write(self._fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None
            self._acquired = False

    def __enter__(self) -> SweeperLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
