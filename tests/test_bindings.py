"""fastreg.bindings: RFC 3261 10.3 steps 6-7 as pure functions."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastreg.bindings import (
    Binding,
    ContactUpdate,
    SaveRequest,
    SaveResult,
    apply_register,
    binding_matches,
    current,
    is_retransmission,
)
from fastreg.errors import StaleCSeq, TooManyContacts

AOR = "sip:alice@example.com"
T0 = 1_700_000_000.0


def cu(contact, expires=3600, q=None, instance_id=None, reg_id=None, params=()):
    return ContactUpdate(contact, expires, q, instance_id, reg_id, params)


def rq(*contacts, call_id="c1", cseq=1, branch="z9hG4bK1", now=T0, remove_all=False, max_contacts=0, **kw):
    base = dict(
        aor=AOR,
        call_id=call_id,
        cseq=cseq,
        branch=branch,
        contacts=tuple(contacts),
        remove_all=remove_all,
        path=(),
        received=("192.0.2.1", 5060),
        transport="UDP",
        user_agent="test/1",
        now=now,
        max_contacts=max_contacts,
    )
    base.update(kw)
    return SaveRequest(**base)


def contacts_of(result):
    return [b.contact for b in result.bindings]


def test_add_one_binding_records_everything():
    req = rq(
        cu("sip:alice@192.0.2.1:5060", 3600, 0.7, '<urn:uuid:00000000-0000-0000-0000-000000000001>', 1,
           (("+sip.ice", None), ("methods", "INVITE,BYE"))),
        path=("<sip:edge.example.com;lr>",),
        transport="TCP",
    )
    res = apply_register([], req)
    assert res.changed and not res.retransmission
    (b,) = res.bindings
    assert b == Binding(
        aor=AOR,
        contact="sip:alice@192.0.2.1:5060",
        expires_at=T0 + 3600,
        q=0.7,
        call_id="c1",
        cseq=1,
        branch="z9hG4bK1",
        path=("<sip:edge.example.com;lr>",),
        received=("192.0.2.1", 5060),
        transport="TCP",
        user_agent="test/1",
        instance_id="<urn:uuid:00000000-0000-0000-0000-000000000001>",
        reg_id=1,
        params=(("+sip.ice", None), ("methods", "INVITE,BYE")),
        last_modified=T0,
    )


def test_expires_zero_for_unknown_contact_adds_nothing():
    res = apply_register([], rq(cu("sip:alice@192.0.2.1", 0)))
    assert res.bindings == () and not res.changed


def test_refresh_same_call_id_higher_cseq_updates():
    first = apply_register([], rq(cu("sip:alice@192.0.2.1", 3600, q=0.5))).bindings
    res = apply_register(first, rq(cu("sip:alice@192.0.2.1", 1800), cseq=2, branch="z9hG4bK2", now=T0 + 100))
    (b,) = res.bindings
    assert (b.cseq, b.branch, b.expires_at, b.last_modified) == (2, "z9hG4bK2", T0 + 1900, T0 + 100)
    assert b.q is None  # the new Contact had no q: the binding takes the request's values
    assert res.changed


def test_refresh_matches_by_uri_equality_not_text():
    first = apply_register([], rq(cu("sip:alice@HOST.example.com;transport=udp"))).bindings
    res = apply_register(first, rq(cu("sip:alice@host.example.com;Transport=UDP;ob"), cseq=2))
    assert len(res.bindings) == 1
    assert res.bindings[0].contact == "sip:alice@host.example.com;Transport=UDP;ob"  # the new text wins


def test_different_call_id_updates_regardless_of_cseq():
    first = apply_register([], rq(cu("sip:alice@192.0.2.1"), cseq=50)).bindings
    res = apply_register(first, rq(cu("sip:alice@192.0.2.1", 60), call_id="c2", cseq=1))
    (b,) = res.bindings
    assert (b.call_id, b.cseq, b.expires_at) == ("c2", 1, T0 + 60)


@pytest.mark.parametrize("cseq", [1, 0])
def test_same_call_id_stale_cseq_refused(cseq):
    first = apply_register([], rq(cu("sip:alice@192.0.2.1"), cseq=1)).bindings
    with pytest.raises(StaleCSeq) as ei:
        apply_register(first, rq(cu("sip:alice@192.0.2.1"), cseq=cseq, branch="other"))
    assert (ei.value.status, ei.value.reason) == (400, "Invalid CSeq Number")


def test_stale_cseq_aborts_the_whole_request():
    existing = apply_register([], rq(cu("sip:a@192.0.2.1"), cu("sip:b@192.0.2.2"), cseq=5)).bindings
    existing = apply_register(existing, rq(cu("sip:b@192.0.2.2"), call_id="other", cseq=1)).bindings
    # a@ has call c1 cseq 5; b@ has call 'other'. A request of c1 cseq 3 would update b@ (other call)
    # but a@ is stale: nothing at all may change (the caller keeps `existing`)
    with pytest.raises(StaleCSeq):
        apply_register(existing, rq(cu("sip:b@192.0.2.2", 0), cu("sip:a@192.0.2.1"), cu("sip:c@192.0.2.3"),
                                    cseq=3, branch="x"))


def test_several_contacts_and_order_by_q_then_last_modified():
    res = apply_register([], rq(cu("sip:a@192.0.2.1", q=0.1), cu("sip:b@192.0.2.2"), cu("sip:c@192.0.2.3", q=0.5)))
    assert contacts_of(res) == ["sip:b@192.0.2.2", "sip:c@192.0.2.3", "sip:a@192.0.2.1"]  # None counts as 1.0
    res = apply_register(res.bindings, rq(cu("sip:d@192.0.2.4", q=0.5), call_id="c2", now=T0 + 5))
    assert contacts_of(res) == ["sip:b@192.0.2.2", "sip:d@192.0.2.4", "sip:c@192.0.2.3", "sip:a@192.0.2.1"]


def test_q_is_kept_on_refresh_when_sent_again():
    first = apply_register([], rq(cu("sip:a@192.0.2.1", q=0.3))).bindings
    res = apply_register(first, rq(cu("sip:a@192.0.2.1", q=0.3), cseq=2))
    assert res.bindings[0].q == 0.3


def test_expires_zero_removes_one_binding_and_keeps_others():
    first = apply_register([], rq(cu("sip:a@192.0.2.1"), cu("sip:b@192.0.2.2"))).bindings
    res = apply_register(first, rq(cu("sip:a@192.0.2.1", 0), cseq=2))
    assert contacts_of(res) == ["sip:b@192.0.2.2"] and res.changed


def test_expires_zero_with_stale_cseq_refused():
    first = apply_register([], rq(cu("sip:a@192.0.2.1"), cseq=4)).bindings
    with pytest.raises(StaleCSeq):
        apply_register(first, rq(cu("sip:a@192.0.2.1", 0), cseq=4, branch="b2"))


def test_contacts_of_one_request_apply_in_order_later_wins():
    res = apply_register([], rq(cu("sip:a@192.0.2.1", 100), cu("sip:a@192.0.2.1", 200)))
    assert [b.expires_at for b in res.bindings] == [T0 + 200]
    res = apply_register([], rq(cu("sip:a@192.0.2.1", 100), cu("sip:A@192.0.2.1", 200), cu("sip:a@192.0.2.1", 0)))
    assert contacts_of(res) == ["sip:A@192.0.2.1"]  # user parts differ in case: two URIs
    # a match with a binding stored before, then again in the same request: one CSeq check only
    first = apply_register([], rq(cu("sip:a@192.0.2.1"), cseq=1)).bindings
    res = apply_register(first, rq(cu("sip:a@192.0.2.1", 10), cu("sip:a@192.0.2.1", 20), cseq=2))
    assert [b.expires_at for b in res.bindings] == [T0 + 20]


# ----------------------------------------------------------- Contact: *


def _two_calls():
    b = apply_register([], rq(cu("sip:a@192.0.2.1"), call_id="c1", cseq=5)).bindings
    return apply_register(b, rq(cu("sip:b@192.0.2.2"), call_id="c2", cseq=9)).bindings


def test_star_removes_bindings_of_other_call_ids():
    res = apply_register(_two_calls(), rq(call_id="c3", cseq=1, remove_all=True))
    assert res.bindings == () and res.changed


def test_star_same_call_id_higher_cseq_removes():
    res = apply_register(_two_calls(), rq(call_id="c1", cseq=6, remove_all=True))
    assert res.bindings == ()


@pytest.mark.parametrize("cseq", [5, 4])
def test_star_same_call_id_lower_or_equal_cseq_refused(cseq):
    with pytest.raises(StaleCSeq):
        apply_register(_two_calls(), rq(call_id="c1", cseq=cseq, branch="new", remove_all=True))


def test_star_on_empty_aor():
    res = apply_register([], rq(remove_all=True))
    assert res == SaveResult((), False, False)


# ------------------------------------------------------------ expiry


def test_expired_bindings_are_dropped_first():
    old = apply_register([], rq(cu("sip:a@192.0.2.1", 60), cseq=9)).bindings
    # at T0+60 the binding is expired (expires_at <= now): a stale CSeq no longer matters
    res = apply_register(old, rq(cu("sip:a@192.0.2.1", 60), cseq=1, branch="x", now=T0 + 60))
    assert res.bindings[0].cseq == 1
    res = apply_register(old, rq(cu("sip:b@192.0.2.2"), call_id="z", now=T0 + 61))
    assert contacts_of(res) == ["sip:b@192.0.2.2"]


def test_current():
    bs = apply_register([], rq(cu("sip:a@192.0.2.1", 10, q=0.2), cu("sip:b@192.0.2.2", 20, q=0.9))).bindings
    assert [b.contact for b in current(bs, T0)] == ["sip:b@192.0.2.2", "sip:a@192.0.2.1"]
    assert [b.contact for b in current(bs, T0 + 10)] == ["sip:b@192.0.2.2"]
    assert current(bs, T0 + 20) == ()


# ---------------------------------------------------- retransmissions


def test_retransmission_detected_and_nothing_applied():
    first = apply_register([], rq(cu("sip:a@192.0.2.1"), cseq=3, branch="z9hG4bKabc")).bindings
    again = rq(cu("sip:a@192.0.2.1", 7), cu("sip:new@192.0.2.9"), cseq=3, branch="z9hG4bKabc", now=T0 + 1)
    assert is_retransmission(first, again)
    res = apply_register(first, again)
    assert res == SaveResult(first, True, False)


def test_same_cseq_other_branch_is_stale_not_retransmission():
    first = apply_register([], rq(cu("sip:a@192.0.2.1"), cseq=3, branch="z9hG4bKabc")).bindings
    with pytest.raises(StaleCSeq):
        apply_register(first, rq(cu("sip:a@192.0.2.1"), cseq=3, branch="z9hG4bKdef"))


def test_no_branch_never_retransmission():
    first = apply_register([], rq(cu("sip:a@192.0.2.1"), cseq=3, branch=None)).bindings
    assert not is_retransmission(first, rq(cu("sip:a@192.0.2.1"), cseq=3, branch=None))
    with pytest.raises(StaleCSeq):
        apply_register(first, rq(cu("sip:a@192.0.2.1"), cseq=3, branch=None))


def test_retransmission_of_an_expired_binding_is_not_one():
    first = apply_register([], rq(cu("sip:a@192.0.2.1", 10), cseq=3)).bindings
    res = apply_register(first, rq(cu("sip:a@192.0.2.1", 10), cseq=3, now=T0 + 10))
    assert not res.retransmission and res.changed


# ------------------------------------------------------------ RFC 5626

INST = "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"


def test_instance_and_reg_id_match_across_contact_change():
    first = apply_register([], rq(cu("sip:a@192.0.2.1:5060;ob", instance_id=INST, reg_id=1))).bindings
    res = apply_register(first, rq(cu("sip:a@198.51.100.7:41000;ob", instance_id=INST, reg_id=1), cseq=2))
    assert contacts_of(res) == ["sip:a@198.51.100.7:41000;ob"]


def test_other_reg_id_is_another_flow_even_with_same_uri():
    first = apply_register([], rq(cu("sip:a@192.0.2.1;ob", instance_id=INST, reg_id=1))).bindings
    res = apply_register(first, rq(cu("sip:a@192.0.2.1;ob", instance_id=INST, reg_id=2), cseq=2))
    assert sorted(b.reg_id for b in res.bindings) == [1, 2]
    # and removing flow 1 keeps flow 2
    res = apply_register(res.bindings, rq(cu("sip:a@192.0.2.1;ob", 0, instance_id=INST, reg_id=1), cseq=3))
    assert [b.reg_id for b in res.bindings] == [2]


def test_without_reg_id_falls_back_to_uri_matching():
    b = apply_register([], rq(cu("sip:a@192.0.2.1", instance_id=INST, reg_id=1))).bindings[0]
    assert binding_matches(b, cu("sip:a@192.0.2.1", instance_id=INST))
    assert not binding_matches(b, cu("sip:a@192.0.2.2", instance_id=INST))
    assert binding_matches(b, cu("sip:a@192.0.2.1"))
    assert not binding_matches(b, cu("sip:a@192.0.2.1", instance_id=INST, reg_id=2))
    assert binding_matches(b, cu("sip:zzz@192.0.2.99", instance_id=INST, reg_id=1))


# -------------------------------------------------------- max_contacts


def test_max_contacts_refuses_growth():
    first = apply_register([], rq(cu("sip:a@192.0.2.1"), cu("sip:b@192.0.2.2"), max_contacts=2)).bindings
    with pytest.raises(TooManyContacts):
        apply_register(first, rq(cu("sip:c@192.0.2.3"), cseq=2, max_contacts=2))
    with pytest.raises(TooManyContacts):
        apply_register([], rq(cu("sip:a@192.0.2.1"), cu("sip:b@192.0.2.2"), cu("sip:c@192.0.2.3"), max_contacts=2))
    # replacing one by another in the same request is fine
    res = apply_register(first, rq(cu("sip:a@192.0.2.1", 0), cu("sip:c@192.0.2.3"), cseq=2, max_contacts=2))
    assert sorted(contacts_of(res)) == ["sip:b@192.0.2.2", "sip:c@192.0.2.3"]


def test_max_contacts_lowered_still_allows_refresh_and_removal():
    three = apply_register([], rq(cu("sip:a@192.0.2.1"), cu("sip:b@192.0.2.2"), cu("sip:c@192.0.2.3"))).bindings
    res = apply_register(three, rq(cu("sip:a@192.0.2.1", 10), cseq=2, max_contacts=1))
    assert len(res.bindings) == 3
    res = apply_register(three, rq(cu("sip:a@192.0.2.1", 0), cseq=2, max_contacts=1))
    assert len(res.bindings) == 2


def test_records_are_frozen():
    b = apply_register([], rq(cu("sip:a@192.0.2.1"))).bindings[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.cseq = 5  # type: ignore[misc]
    assert dataclasses.replace(b, cseq=5).cseq == 5
    assert SaveRequest(**{f.name: getattr(rq(), f.name) for f in dataclasses.fields(SaveRequest)}) == rq()
    assert rq().replay_key is None and rq().replay_nc == 0


# ------------------------------------------------------------ property


_contact_uris = st.sampled_from(
    ["sip:a@192.0.2.1", "sip:A@192.0.2.1", "sip:a@192.0.2.1;transport=tcp", "sip:b@192.0.2.2:5070",
     "sip:a@192.0.2.1;ob", "sip:c@[2001:db8::1]"]
)
_updates = st.builds(
    ContactUpdate,
    contact=_contact_uris,
    expires=st.sampled_from([0, 0, 1, 30, 3600]),
    q=st.none() | st.sampled_from([0.1, 0.5, 1.0]),
    instance_id=st.none() | st.sampled_from([INST, "<urn:uuid:2>"]),
    reg_id=st.none() | st.sampled_from([1, 2]),
    params=st.just(()),
)
_requests = st.builds(
    rq,
    call_id=st.sampled_from(["c1", "c2", "c3"]),
    cseq=st.integers(1, 6),
    branch=st.none() | st.sampled_from(["b1", "b2"]),
    now=st.sampled_from([T0, T0 + 1, T0 + 30, T0 + 31, T0 + 100]),
    remove_all=st.booleans(),
    max_contacts=st.sampled_from([0, 0, 2, 3]),
).flatmap(lambda r: st.lists(_updates, max_size=4).map(
    lambda cs: dataclasses.replace(r, contacts=() if r.remove_all else tuple(cs))))


def _model(existing, req):
    """An independent statement of 10.3 steps 6-7: what the result must be."""
    live = [b for b in existing if b.expires_at > req.now]
    if req.branch is not None and any(
        (b.call_id, b.cseq, b.branch) == (req.call_id, req.cseq, req.branch) for b in live
    ):
        return "retransmission", live
    if req.remove_all:
        if any(b.call_id == req.call_id and req.cseq <= b.cseq for b in live):
            return StaleCSeq, None
        return "ok", []
    state = [(b, False) for b in live]
    for c in req.contacts:
        hits = [i for i, (b, _) in enumerate(state) if binding_matches(b, c)]
        if not hits:
            if c.expires > 0:
                state.append((Binding(req.aor, c.contact, req.now + c.expires, c.q, req.call_id, req.cseq,
                                      req.branch, req.path, req.received, req.transport, req.user_agent,
                                      c.instance_id, c.reg_id, c.params, req.now), True))
            continue
        exact = [i for i in hits if state[i][0].contact == c.contact or (
            c.instance_id is not None and c.reg_id is not None
            and state[i][0].instance_id is not None and state[i][0].reg_id is not None)]
        i = (exact or hits)[0]
        b, fresh = state[i]
        if not fresh and b.call_id == req.call_id and req.cseq <= b.cseq:
            return StaleCSeq, None
        if c.expires > 0:
            state[i] = (Binding(req.aor, c.contact, req.now + c.expires, c.q, req.call_id, req.cseq,
                                req.branch, req.path, req.received, req.transport, req.user_agent,
                                c.instance_id, c.reg_id, c.params, req.now), True)
        else:
            del state[i]
    out = [b for b, _ in state]
    if req.max_contacts and len(out) > req.max_contacts and len(out) > len(live):
        return TooManyContacts, None
    return "ok", out


@settings(max_examples=400, deadline=None)
@given(st.lists(_requests, min_size=1, max_size=6))
def test_apply_register_property(requests):
    state: tuple[Binding, ...] = ()
    for req in requests:
        kind, expected = _model(state, req)
        before = state
        try:
            res = apply_register(state, req)
        except (StaleCSeq, TooManyContacts) as exc:
            assert isinstance(exc, kind), (kind, exc)
            assert state == before  # all or nothing: the caller keeps what it had
            continue
        assert kind in ("ok", "retransmission"), kind
        assert res.retransmission == (kind == "retransmission")
        # never an expired binding, always sorted
        assert all(b.expires_at > req.now for b in res.bindings)
        assert list(res.bindings) == sorted(res.bindings, key=lambda b: (-(1.0 if b.q is None else b.q),
                                                                         -b.last_modified))
        assert sorted(res.bindings, key=repr) == sorted(expected, key=repr)
        if res.retransmission:
            assert not res.changed
        state = res.bindings


# -- the compiled slot stores (fastreg._cslots) build the same objects as the generated __init__ ---

from fastreg import uri as _uri_mod  # noqa: E402
from fastreg.bindings import SaveResult  # noqa: E402

_COMPILED_INIT = Binding.__init__ is not _uri_mod.pure_inits[Binding]


def _built(cls, init, args, kwargs):
    obj = object.__new__(cls)
    try:
        init(obj, *args, **kwargs)
    except TypeError as exc:
        return ("TypeError", str(exc))
    return tuple(getattr(obj, f.name) for f in dataclasses.fields(cls))


_values = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5), st.tuples())


@pytest.mark.skipif(not _COMPILED_INIT, reason="pure mode: the generated __init__ is in use")
@settings(max_examples=300, deadline=None)
@given(st.sampled_from([Binding, ContactUpdate, SaveRequest, SaveResult, _uri_mod.SipUri]), st.data())
def test_compiled_init_builds_what_the_pure_one_builds(cls, data):
    names = [f.name for f in dataclasses.fields(cls)]
    npos = data.draw(st.integers(0, len(names) + 1))
    args = tuple(data.draw(_values) for _ in range(npos))
    kw_names = data.draw(st.lists(st.sampled_from(names + ["bogus"]), unique=True, max_size=len(names)))
    kwargs = {name: data.draw(_values) for name in kw_names}
    compiled = _built(cls, cls.__init__, args, kwargs)
    assert compiled == _built(cls, _uri_mod.pure_inits[cls], args, kwargs)
    if compiled[0] != "TypeError":
        obj = cls(*args, **kwargs)  # through the class too
        assert dataclasses.replace(obj) == obj and hash(obj) == hash(dataclasses.replace(obj))


@pytest.mark.skipif(not _COMPILED_INIT, reason="pure mode: the generated __init__ is in use")
def test_compiled_slot_stores_refuse_a_foreign_object():
    with pytest.raises(TypeError):
        Binding.__init__(ContactUpdate("sip:a@h", 1, None, None, None, ()), *range(15))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ContactUpdate("sip:a@h", 1, None, None, None, ()).expires = 2
