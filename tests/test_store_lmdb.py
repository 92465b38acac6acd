"""The location stores: LmdbLocation (and MemoryLocation through the same semantic tests).

Multi-process tests use the spawn start method: LMDB environments must never
be inherited across fork, and py-lmdb refuses to open the same environment
twice in one process, so every second opener is another process.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastreg.bindings import ContactUpdate, SaveRequest, SaveResult, apply_register, current
from fastreg.codec import RecordFormatError, decode_bindings
from fastreg.errors import LocationFull, ParseError, ReplayedCredentials, StaleCSeq, TooManyContacts
from fastreg.location import LocationService, MemoryLocation
from fastreg.store_lmdb import LmdbFailureCounter, LmdbLocation, SweeperLock
from fastreg.throttle import FailureState

AOR = "sip:alice@example.com"
T0 = 1_700_000_000.0


def cu(contact, expires=3600, q=None, instance_id=None, reg_id=None, params=()):
    return ContactUpdate(contact, expires, q, instance_id, reg_id, params)


def rq(*contacts, aor=AOR, call_id="c1", cseq=1, branch="z9hG4bK1", now=T0, remove_all=False, **kw):
    base = dict(aor=aor, call_id=call_id, cseq=cseq, branch=branch, contacts=tuple(contacts),
                remove_all=remove_all, path=("<sip:edge.example.com;lr>",), received=("192.0.2.1", 5060),
                transport="UDP", user_agent="test/1", now=now)
    base.update(kw)
    return SaveRequest(**base)


def rk(expiry: int, nonce: bytes = b"nonce-1") -> bytes:
    return int(expiry).to_bytes(8, "big") + nonce


def nonce_count(store) -> int:
    return store.nonce_count() if isinstance(store, MemoryLocation) else store.counts()["nonce"]


def index_entries(loc: LmdbLocation) -> set[bytes]:
    with loc.env.begin() as txn:
        return {bytes(k) for k, _ in txn.cursor(db=loc._expiry)}


def expected_index(loc: LmdbLocation) -> set[bytes]:
    out = set()
    with loc.env.begin() as txn:
        for k, v in txn.cursor(db=loc._aor):
            for b in decode_bindings(bytes(k).decode(), bytes(v)):
                out.add(int(b.expires_at).to_bytes(8, "big") + bytes(k))
    return out


def assert_index_consistent(store) -> None:
    if isinstance(store, LmdbLocation):
        assert index_entries(store) == expected_index(store)


@pytest.fixture(params=["memory", "lmdb"])
def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryLocation()
    else:
        s = LmdbLocation(str(tmp_path / "location"), map_size_mb=16)
    yield s
    if request.param == "lmdb":
        assert_index_consistent(s)
    s.close()


@pytest.fixture
def loc(tmp_path):
    s = LmdbLocation(str(tmp_path / "location"), map_size_mb=16)
    yield s
    s.close()


# ------------------------------------------------------- shared semantics


def test_implements_protocol(store):
    assert isinstance(store, LocationService)


def test_save_and_lookup(store):
    res = store.save(rq(cu("sip:alice@192.0.2.1:5060", 3600, 0.5), cu("sip:alice@192.0.2.2", 60)))
    assert res.changed and not res.retransmission
    got = store.lookup(AOR, T0)
    assert got == res.bindings
    assert [b.contact for b in got] == ["sip:alice@192.0.2.2", "sip:alice@192.0.2.1:5060"]
    assert got[1].path == ("<sip:edge.example.com;lr>",) and got[1].received == ("192.0.2.1", 5060)
    assert store.lookup(AOR, T0 + 60) == (got[1],)  # expired at expires_at
    assert store.lookup("sip:nobody@example.com", T0) == ()


def test_refresh_remove_and_star(store):
    store.save(rq(cu("sip:a@192.0.2.1"), cu("sip:b@192.0.2.2")))
    store.save(rq(cu("sip:a@192.0.2.1", 100), cseq=2, now=T0 + 10))
    assert {b.contact: b.expires_at for b in store.lookup(AOR, T0 + 10)} == {
        "sip:a@192.0.2.1": T0 + 110, "sip:b@192.0.2.2": T0 + 3600}
    assert_index_consistent(store)
    store.save(rq(cu("sip:b@192.0.2.2", 0), cseq=3))
    assert [b.contact for b in store.lookup(AOR, T0)] == ["sip:a@192.0.2.1"]
    res = store.save(rq(call_id="other", cseq=1, remove_all=True))
    assert res.bindings == () and res.changed
    assert store.lookup(AOR, T0) == ()
    assert list(store.iter_all(T0)) == []


def test_stale_cseq_changes_nothing(store):
    store.save(rq(cu("sip:a@192.0.2.1"), cseq=5))
    store.save(rq(cu("sip:b@192.0.2.2"), call_id="c2", cseq=1))
    before = store.lookup(AOR, T0)
    with pytest.raises(StaleCSeq):
        store.save(rq(cu("sip:b@192.0.2.2", 0), cu("sip:c@192.0.2.3"), cu("sip:a@192.0.2.1"), cseq=5, branch="x"))
    with pytest.raises(StaleCSeq):
        store.save(rq(cseq=4, branch="y", remove_all=True))
    assert store.lookup(AOR, T0) == before


def test_too_many_contacts_changes_nothing(store):
    store.save(rq(cu("sip:a@192.0.2.1"), max_contacts=1))
    with pytest.raises(TooManyContacts):
        store.save(rq(cu("sip:b@192.0.2.2"), cseq=2, max_contacts=1))
    assert [b.contact for b in store.lookup(AOR, T0)] == ["sip:a@192.0.2.1"]


def test_retransmission_answered_without_change(store):
    first = store.save(rq(cu("sip:a@192.0.2.1"), cseq=7, branch="z9hG4bKr", replay_key=rk(T0 + 300), replay_nc=1))
    again = store.save(rq(cu("sip:a@192.0.2.1"), cseq=7, branch="z9hG4bKr", now=T0 + 1,
                          replay_key=rk(T0 + 300), replay_nc=1))
    # a retransmission carries the same (nonce, nc): it is answered, not refused as a replay
    assert again.retransmission and not again.changed
    assert again.bindings == first.bindings


def test_replay_refused_and_higher_nc_accepted(store):
    key = rk(T0 + 300)
    store.save(rq(cu("sip:a@192.0.2.1"), cseq=1, branch="b1", replay_key=key, replay_nc=1))
    before = store.lookup(AOR, T0)
    # the same (nonce, nc) on a new request: refused, nothing applied
    with pytest.raises(ReplayedCredentials):
        store.save(rq(cu("sip:evil@203.0.113.1"), cseq=2, branch="b2", replay_key=key, replay_nc=1))
    with pytest.raises(ReplayedCredentials):
        store.save(rq(cu("sip:evil@203.0.113.1"), call_id="x", cseq=9, branch="b3", replay_key=key, replay_nc=0))
    assert store.lookup(AOR, T0) == before
    # Linphone refreshes with nc=2 on the same nonce: legitimate
    res = store.save(rq(cu("sip:a@192.0.2.1", 600), cseq=2, branch="b4", replay_key=key, replay_nc=2))
    assert res.changed and res.bindings[0].expires_at == T0 + 600
    with pytest.raises(ReplayedCredentials):
        store.save(rq(cu("sip:a@192.0.2.1"), cseq=3, branch="b5", replay_key=key, replay_nc=2))
    # another nonce is independent; no replay key means not checked
    store.save(rq(cu("sip:a@192.0.2.1"), cseq=3, branch="b6", replay_key=rk(T0 + 300, b"nonce-2"), replay_nc=1))
    store.save(rq(cu("sip:a@192.0.2.1"), cseq=4, branch="b7"))
    assert nonce_count(store) == 2


def test_replay_nc_not_consumed_by_a_refused_request(store):
    key = rk(T0 + 300)
    store.save(rq(cu("sip:a@192.0.2.1"), cseq=5))
    with pytest.raises(StaleCSeq):
        store.save(rq(cu("sip:a@192.0.2.1"), cseq=5, branch="other", replay_key=key, replay_nc=1))
    assert nonce_count(store) == 0  # all or nothing: the nc was not stored either
    store.save(rq(cu("sip:a@192.0.2.1"), cseq=6, branch="b", replay_key=key, replay_nc=1))
    assert nonce_count(store) == 1


def test_replay_key_must_carry_its_expiry(store):
    with pytest.raises(ValueError):
        store.save(rq(cu("sip:a@192.0.2.1"), replay_key=b"short", replay_nc=1))


def test_remove(store):
    store.save(rq(cu("sip:a@192.0.2.1"), cu("sip:b@192.0.2.2"), cu("sip:c@192.0.2.3")))
    store.save(rq(cu("sip:z@192.0.2.9"), aor="sip:bob@example.com"))
    assert store.remove(AOR, "sip:B@192.0.2.2") == 0  # user parts are case-sensitive
    assert store.remove(AOR, "sip:b@192.0.2.2;foo=bar") == 1  # 19.1.4 equality
    assert_index_consistent(store)
    assert sorted(b.contact for b in store.lookup(AOR, T0)) == ["sip:a@192.0.2.1", "sip:c@192.0.2.3"]
    assert store.remove(AOR) == 2
    assert store.remove(AOR) == 0
    assert store.lookup(AOR, T0) == ()
    assert [b.aor for b in store.lookup("sip:bob@example.com", T0)] == ["sip:bob@example.com"]


def test_iter_all(store):
    store.save(rq(cu("sip:a@192.0.2.1", 10), cu("sip:b@192.0.2.2", 100)))
    store.save(rq(cu("sip:z@192.0.2.9", 50), aor="sip:bob@example.com"))
    assert sorted((b.aor, b.contact) for b in store.iter_all(T0 + 20)) == [
        (AOR, "sip:b@192.0.2.2"), ("sip:bob@example.com", "sip:z@192.0.2.9")]


def test_purge_expired_bindings_and_nonces(store):
    store.save(rq(cu("sip:a@192.0.2.1", 60), cu("sip:b@192.0.2.2", 60), replay_key=rk(T0 + 30), replay_nc=1))
    store.save(rq(cu("sip:x@192.0.2.7", 60), aor="sip:bob@example.com", replay_key=rk(T0 + 90, b"n2"), replay_nc=1))
    store.save(rq(cu("sip:y@192.0.2.8", 3600), aor="sip:carol@example.com"))
    # b is refreshed before it expires: the index still has its old second, the record does not
    store.save(rq(cu("sip:b@192.0.2.2", 600), cseq=2, branch="b2", now=T0 + 30))
    assert nonce_count(store) == 2
    assert store.purge_expired(T0 + 59) == 0
    assert store.purge_expired(T0 + 60) == 2  # a@ and bob's x@ (expires_at <= now)
    assert nonce_count(store) == 1  # the nonce that expired at T0+30 (< now)
    assert [b.contact for b in store.lookup(AOR, T0 + 60)] == ["sip:b@192.0.2.2"]
    assert store.lookup("sip:bob@example.com", T0) == ()
    assert_index_consistent(store)
    assert store.purge_expired(T0 + 60) == 0
    assert store.purge_expired(T0 + 1000) == 1
    assert nonce_count(store) == 0
    assert sorted(b.aor for b in store.iter_all(T0)) == ["sip:carol@example.com"]


def test_purge_limit(store):
    for i in range(10):
        store.save(rq(cu(f"sip:u@192.0.2.{i}", 10 + i), aor=f"sip:u{i}@example.com"))
    total = 0
    while True:
        n = store.purge_expired(T0 + 100, limit=3)
        assert n <= 3
        if not n:
            break
        total += n
    assert total == 10 and list(store.iter_all(T0)) == []


_ops = st.lists(
    st.builds(
        lambda contacts, call_id, cseq, branch, dt, remove_all, max_contacts, nc: (
            contacts, call_id, cseq, branch, dt, remove_all, max_contacts, nc),
        st.lists(st.builds(cu, st.sampled_from(["sip:a@192.0.2.1", "sip:b@192.0.2.2", "sip:A@192.0.2.1;ob"]),
                           st.sampled_from([0, 1, 5, 60])), max_size=3),
        st.sampled_from(["c1", "c2"]),
        st.integers(1, 4),
        st.sampled_from(["b1", "b2", None]),
        st.sampled_from([0, 1, 5, 61]),
        st.booleans(),
        st.sampled_from([0, 2]),
        st.none() | st.integers(1, 3),
    ),
    min_size=1,
    max_size=8,
)


@pytest.fixture(scope="module")
def prop_lmdb(tmp_path_factory):
    s = LmdbLocation(str(tmp_path_factory.mktemp("prop") / "location"), map_size_mb=64)
    yield s
    s.close()


@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_store_is_all_or_nothing_and_agrees_with_apply_register(prop_lmdb, ops):
    """Random REGISTER sequences through both stores: every save either applies exactly
    what apply_register computes or changes nothing; the LMDB index stays exact."""
    global _example
    _example += 1
    aor = f"sip:prop{_example}@example.com"
    mem = MemoryLocation()
    lm = prop_lmdb
    now = T0
    model: tuple = ()
    nonces: dict[bytes, tuple[int, tuple]] = {}  # replay key -> (nc, the REGISTER that used it)
    for contacts, call_id, cseq, branch, dt, remove_all, max_contacts, nc in ops:
        now += dt
        key = None if nc is None else rk(T0 + 10_000, aor.encode())
        req = rq(*([] if remove_all else contacts), aor=aor, call_id=call_id, cseq=cseq, branch=branch, now=now,
                 remove_all=remove_all, max_contacts=max_contacts, replay_key=key, replay_nc=nc or 0)
        outcomes = []
        for s in (mem, lm):
            before = s.lookup(aor, now)
            try:
                res = s.save(req)
                outcomes.append(("ok", res))
            except (StaleCSeq, TooManyContacts, ReplayedCredentials) as exc:
                outcomes.append((type(exc), None))
                assert s.lookup(aor, now) == before
        assert outcomes[0] == outcomes[1]
        kind, res = outcomes[0]
        # what the pure rules say, with the replay rule on top: the same
        # (nonce, nc) by the same REGISTER (Call-ID, CSeq, branch) is its
        # retransmission; by another REGISTER, a replay.
        used = nonces.get(key) if key is not None else None
        same_request = used is not None and branch is not None and used == (nc, (call_id, cseq, branch))
        try:
            expected = apply_register(model, req)
            if not expected.retransmission and same_request:
                expected = SaveResult(current(model, now), True, False)
            elif not expected.retransmission and used is not None and nc <= used[0]:
                expected = ReplayedCredentials
        except (StaleCSeq, TooManyContacts) as exc:
            expected = type(exc)
            if same_request:
                expected = SaveResult(current(model, now), True, False)
            elif used is not None and nc <= used[0]:
                expected = ReplayedCredentials
        if kind == "ok":
            assert res == expected
            assert all(b.expires_at > now for b in res.bindings)
            model = res.bindings
            if key is not None and not res.retransmission:
                nonces[key] = (nc, (call_id, cseq, branch))
        else:
            assert kind is expected
        assert mem.lookup(aor, now) == lm.lookup(aor, now) == current(model, now)
    assert_index_consistent(lm)


_example = 0


# ------------------------------------------------------------ LMDB only


def test_persistence_across_reopen(tmp_path):
    path = str(tmp_path / "loc")
    s = LmdbLocation(path)
    s.save(rq(cu("sip:a@192.0.2.1", 3600, 0.25, "<urn:uuid:1>", 1, (("ob", None),)), replay_key=rk(T0 + 300),
              replay_nc=1))
    saved = s.lookup(AOR, T0)
    s.close()
    s = LmdbLocation(path)
    try:
        got = s.lookup(AOR, T0 + 1000)
        assert got == saved and got[0].expires_at - (T0 + 1000) == 2600  # remaining expiry
        with pytest.raises(ReplayedCredentials):
            s.save(rq(cu("sip:a@192.0.2.1"), cseq=2, replay_key=rk(T0 + 300), replay_nc=1))
        assert_index_consistent(s)
    finally:
        s.close()


@pytest.mark.parametrize("durability", ["sync", "periodic", "none"])
def test_durability_modes(tmp_path, durability):
    path = str(tmp_path / "loc")
    s = LmdbLocation(path, durability=durability)
    s.save(rq(cu("sip:a@192.0.2.1")))
    s.sync()
    s.close()
    s = LmdbLocation(path, durability=durability, writemap=False)
    assert len(s.lookup(AOR, T0)) == 1
    s.close()


def test_bad_durability(tmp_path):
    with pytest.raises(ValueError):
        LmdbLocation(str(tmp_path / "loc"), durability="always")


def test_aor_too_long(loc):
    with pytest.raises(ParseError):
        loc.save(rq(cu("sip:a@192.0.2.1"), aor="sip:" + "x" * 600 + "@example.com"))
    assert loc.lookup("sip:" + "x" * 600 + "@example.com", T0) == ()


def test_corrupt_record(loc, caplog):
    loc.save(rq(cu("sip:a@192.0.2.1", 60)))
    loc.save(rq(cu("sip:b@192.0.2.1", 60), aor="sip:bob@example.com"))
    with loc.env.begin(write=True) as txn:
        txn.put(AOR.encode(), b"\x93garbage", db=loc._aor)
    with pytest.raises(RecordFormatError):
        loc.lookup(AOR, T0)
    with pytest.raises(RecordFormatError):
        loc.save(rq(cu("sip:a@192.0.2.1"), cseq=2))
    assert [b.aor for b in loc.iter_all(T0)] == ["sip:bob@example.com"]  # skipped, logged
    assert loc.purge_expired(T0 + 100) == 1  # bob's; alice's unreadable record keeps its data...
    assert index_entries(loc) == set()  # ...but leaves the index, so the sweeper does not spin on it
    assert "unreadable" in caplog.text
    with pytest.raises(RecordFormatError):
        loc.remove(AOR, "sip:a@192.0.2.1")
    assert loc.remove(AOR) == 1  # the admin's way out
    assert loc.lookup(AOR, T0) == ()
    loc.save(rq(cu("sip:a@192.0.2.1"), cseq=2))
    assert len(loc.lookup(AOR, T0)) == 1


def test_foreign_table_format(tmp_path):
    path = str(tmp_path / "loc")
    LmdbLocation(path).close()
    env = lmdb.open(path, max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"99", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(RecordFormatError):
        LmdbLocation(path)


def test_readonly_needs_an_existing_table(tmp_path):
    with pytest.raises(lmdb.Error):
        LmdbLocation(str(tmp_path / "nothing"), readonly=True)


def test_map_full_raises_location_full_and_env_stays_usable(tmp_path):
    s = LmdbLocation(str(tmp_path / "loc"), map_size_mb=1)
    try:
        long_path = tuple(f"<sip:proxy{i}.example.com;lr;x={'p' * 200}>" for i in range(4))
        saved = []
        with pytest.raises(LocationFull) as ei:
            for i in range(100_000):
                aor = f"sip:user{i}@example.com"
                s.save(rq(cu(f"sip:user{i}@192.0.2.1", 60), aor=aor, path=long_path))
                saved.append(aor)
        assert ei.value.status == 503 and ("Retry-After", "60") in ei.value.headers
        assert len(saved) > 100
        # everything committed before still reads back
        for aor in saved[:: max(1, len(saved) // 50)]:
            assert len(s.lookup(aor, T0)) == 1
        assert sum(1 for _ in s.iter_all(T0)) == len(saved)
        # the failed write committed nothing
        assert s.lookup(f"sip:user{len(saved)}@example.com", T0) == ()
        assert_index_consistent(s)
        # the sweeper frees space (in small transactions), then writes work again
        removed = 0
        while n := s.purge_expired(T0 + 60, limit=50):
            removed += n
        assert removed == len(saved)
        for i in range(20):
            s.save(rq(cu("sip:again@192.0.2.1"), aor=f"sip:again{i}@example.com", path=long_path))
        assert len(s.lookup("sip:again19@example.com", T0)) == 1
    finally:
        s.close()


# ------------------------------------------------- several processes

_CHILD_STORES: dict[str, LmdbLocation] = {}


def _child_keep_open_and_lookup(path: str, aor: str) -> tuple[list[str], int]:
    """Runs in a pool process that keeps its environment open between calls."""
    if path not in _CHILD_STORES:
        _CHILD_STORES[path] = LmdbLocation(path, map_size_mb=1)
    store = _CHILD_STORES[path]
    return [b.contact for b in store.lookup(aor, T0)], store.env.info()["map_size"]


def _child_kept_save(path: str, aor: str) -> int:
    return len(_CHILD_STORES[path].save(rq(cu("sip:kept@192.0.2.1"), aor=aor, call_id="kept")).bindings)


def _spawn_pool(n=1):
    return concurrent.futures.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))


def _child_save(path: str, aor: str, contact: str) -> int:
    s = LmdbLocation(path, map_size_mb=16)
    try:
        res = s.save(rq(cu(contact), aor=aor, call_id=f"child-{os.getpid()}"))
        return len(res.bindings)
    finally:
        s.close()


def _child_readonly(path: str, aor: str) -> tuple:
    s = LmdbLocation(path, readonly=True)
    try:
        contacts = [b.contact for b in s.lookup(aor, T0)]
        everything = sorted(b.aor for b in s.iter_all(T0))
        try:
            s.save(rq(cu("sip:ro@192.0.2.1"), aor=aor, call_id="ro"))
            refused = False
        except lmdb.Error:
            refused = True
        return contacts, everything, refused
    finally:
        s.close()


def _child_sweeper_lock(state_dir: str) -> bool:
    lock = SweeperLock(state_dir)
    try:
        return lock.acquired
    finally:
        lock.close()


def _child_count_failures(path: str, key: bytes, n: int) -> None:
    s = LmdbLocation(path, map_size_mb=16)
    counter = LmdbFailureCounter(s)

    def bump(state):
        if state is None:
            return FailureState(1, T0, 0.0)
        return FailureState(state.count + 1, state.window_start, state.blocked_until)

    try:
        for _ in range(n):
            counter.update(key, bump)
    finally:
        s.close()


def test_second_process_writes_first_reads(tmp_path):
    path = str(tmp_path / "loc")
    s = LmdbLocation(path, map_size_mb=16)
    try:
        s.save(rq(cu("sip:parent@192.0.2.1")))
        with _spawn_pool() as pool:
            assert pool.submit(_child_save, path, AOR, "sip:child@192.0.2.2").result(timeout=60) == 2
            assert pool.submit(_child_save, path, "sip:bob@example.com", "sip:b@192.0.2.3").result(timeout=60) == 1
        assert sorted(b.contact for b in s.lookup(AOR, T0)) == ["sip:child@192.0.2.2", "sip:parent@192.0.2.1"]
        assert [b.contact for b in s.lookup("sip:bob@example.com", T0)] == ["sip:b@192.0.2.3"]
        assert_index_consistent(s)
    finally:
        s.close()


def test_readonly_open_while_a_writer_is_open(tmp_path):
    path = str(tmp_path / "loc")
    s = LmdbLocation(path, map_size_mb=16)
    try:
        s.save(rq(cu("sip:a@192.0.2.1")))
        s.save(rq(cu("sip:b@192.0.2.2"), aor="sip:bob@example.com"))
        with _spawn_pool() as pool:
            contacts, everything, refused = pool.submit(_child_readonly, path, AOR).result(timeout=60)
        assert contacts == ["sip:a@192.0.2.1"]
        assert everything == [AOR, "sip:bob@example.com"]
        assert refused
        s.save(rq(cu("sip:c@192.0.2.3"), cseq=2))  # the writer goes on
        assert len(s.lookup(AOR, T0)) == 2
    finally:
        s.close()


def test_sweeper_lock_is_exclusive_across_processes(tmp_path):
    state = str(tmp_path / "state")
    first = SweeperLock(state)
    assert first.acquired
    with _spawn_pool() as pool:
        assert pool.submit(_child_sweeper_lock, state).result(timeout=60) is False
        second = SweeperLock(state)  # another open file description, even in this process
        assert not second.acquired
        first.close()
        assert not first.acquired
        assert pool.submit(_child_sweeper_lock, state).result(timeout=60) is True
        assert second.try_acquire() and second.acquired
        assert pool.submit(_child_sweeper_lock, state).result(timeout=60) is False
        second.close()


def test_sweeper_lock_released_when_its_process_dies(tmp_path):
    state = str(tmp_path / "state")
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_hold_lock_forever, args=(state,))
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(state, "held")):
            assert proc.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        lock = SweeperLock(state)
        assert not lock.acquired and not lock.try_acquire()
    finally:
        proc.kill()
        proc.join(30)
    assert lock.try_acquire() and lock.acquired
    lock.close()


def _hold_lock_forever(state_dir: str) -> None:
    lock = SweeperLock(state_dir)
    assert lock.acquired
    open(os.path.join(state_dir, "held"), "w").close()
    time.sleep(600)


def test_failure_counter(loc):
    counter = LmdbFailureCounter(loc, window_s=60)
    key = b"192.0.2.1\x00alice"
    assert counter.get(key) is None
    st1 = counter.update(key, lambda s: FailureState(1, T0, 0.0))
    assert st1 == FailureState(1, T0, 0.0) == counter.get(key)
    counter.update(key, lambda s: FailureState(s.count + 1, s.window_start, T0 + 120))
    assert counter.get(key) == FailureState(2, T0, T0 + 120)
    assert counter.update(key, lambda s: None) is None
    assert counter.get(key) is None
    assert counter.update(key, lambda s: None) is None  # deleting nothing is fine

    def boom(state):
        raise RuntimeError("policy bug")

    counter.update(key, lambda s: FailureState(1, T0, 0.0))
    with pytest.raises(RuntimeError):
        counter.update(key, boom)
    assert counter.get(key) == FailureState(1, T0, 0.0)  # aborted

    counter.update(b"blocked", lambda s: FailureState(0, T0 + 120, T0 + 120))
    assert len(counter) == 2
    assert counter.purge(T0 + 59) == 0
    assert counter.purge(T0 + 60) == 1  # the window of `key` is over, it never blocked
    assert counter.get(b"blocked") is not None
    assert counter.purge(T0 + 180) == 1
    assert len(counter) == 0


def test_failure_counter_update_is_atomic_across_processes(tmp_path):
    path = str(tmp_path / "loc")
    s = LmdbLocation(path, map_size_mb=16)
    try:
        key = b"198.51.100.7\x00bob"
        with _spawn_pool(2) as pool:
            futures = [pool.submit(_child_count_failures, path, key, 300) for _ in range(2)]
            for f in futures:
                f.result(timeout=120)
        assert LmdbFailureCounter(s).get(key).count == 600
    finally:
        s.close()


def test_map_grown_by_one_process_is_adopted_by_another(tmp_path):
    path = str(tmp_path / "loc")
    s = LmdbLocation(path, map_size_mb=1)
    big_path = tuple(f"<sip:proxy{i}.example.com;lr;x={'p' * 200}>" for i in range(4))
    try:
        s.save(rq(cu("sip:first@192.0.2.1", 100_000), aor="sip:first@example.com"))
        with _spawn_pool() as pool:
            assert pool.submit(_child_keep_open_and_lookup, path, "sip:first@example.com").result(60) == (
                ["sip:first@192.0.2.1"], 1 << 20)
            n = 0
            with pytest.raises(LocationFull):
                while True:
                    s.save(rq(cu("sip:u@192.0.2.1", 60), aor=f"sip:fill{n}@example.com", path=big_path))
                    n += 1
            while s.purge_expired(T0 + 60, limit=100):
                pass
            assert s.env.info()["map_size"] > 1 << 20  # the sweeper grew the map
            # write more than the old map could hold, so that the child's mapping is too small
            for i in range(n * 5 // 4):
                try:
                    s.save(rq(cu("sip:u@192.0.2.1", 100_000), aor=f"sip:more{i}@example.com", path=big_path))
                except LocationFull:
                    while s.purge_expired(T0 + 60, limit=100):
                        pass
                    s._grow_map()
            last = f"sip:more{n * 5 // 4 - 1}@example.com"
            contacts, child_map_size = pool.submit(_child_keep_open_and_lookup, path, last).result(60)
            assert contacts == ["sip:u@192.0.2.1"]
            assert child_map_size == s.env.info()["map_size"] > 1 << 20  # adopted the grown map
            assert pool.submit(_child_kept_save, path, "sip:kept@example.com").result(60) == 1
        assert len(s.lookup("sip:kept@example.com", T0)) == 1
        assert_index_consistent(s)
    finally:
        s.close()
