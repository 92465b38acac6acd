"""The registrar's two-step path (sans-IO): with `defer_commit`, an authenticated REGISTER
that changes bindings stops before the write (RegistrationPending) and
`SipCore.complete_register` writes it, refuses it, or grants another expiry."""

from __future__ import annotations

import pytest

from fastreg import parser
from fastreg.errors import SipError
from fastreg.registrar import RegistrationPending

from test_registrar import NOW, SRC, Client, contacts, make_core

CONTACT = "Contact: <sip:alice@192.0.2.10:5062>"


def pending_of(client, headers, **kw):
    with pytest.raises(RegistrationPending) as stopped:
        client.register(headers, **kw)
    return stopped.value.pending


def complete(core, pending, now=NOW, **kw):
    return parser.parse_message(core.complete_register(pending, SRC, now, **kw))


def test_without_defer_commit_nothing_changes():
    core, location, _ = make_core()
    assert core.registrar.defer_commit is False
    assert Client(core).register([CONTACT]).status_code == 200
    assert len(location.lookup("sip:alice@fastreg.local", NOW)) == 1


def test_pending_registration_is_written_only_by_complete():
    core, location, counters = make_core(max_expires=7200)
    core.registrar.defer_commit = True
    pending = pending_of(Client(core), [CONTACT, "Expires: 3000"])
    assert pending.username == "alice" and pending.save.aor == "sip:alice@fastreg.local"
    assert location.lookup("sip:alice@fastreg.local", NOW) == ()  # nothing written yet
    r = complete(core, pending, NOW + 1)
    assert r.status_code == 200 and contacts(r) == [("sip:alice@192.0.2.10:5062", {"expires": "3000"})]
    assert pending.changed and len(pending.bindings) == 1 and counters.registrations_applied == 1
    assert counters.responses["2xx"] == 1


def test_complete_with_a_granted_expiry_capped_at_max_expires():
    core, location, _ = make_core(max_expires=3600)
    core.registrar.defer_commit = True
    r = complete(core, pending_of(Client(core), [CONTACT]), expires=120)
    assert contacts(r) == [("sip:alice@192.0.2.10:5062", {"expires": "120"})]
    client = Client(core, call_id="other@host")
    r = complete(core, pending_of(client, ["Contact: <sip:alice@192.0.2.99>"]), expires=99999)
    assert ("sip:alice@192.0.2.99", {"expires": "3600"}) in contacts(r)


def test_complete_with_a_refusal_writes_nothing():
    core, location, counters = make_core()
    core.registrar.defer_commit = True
    pending = pending_of(Client(core), [CONTACT])
    r = complete(core, pending, refusal=SipError("Not Today", status=403))
    assert (r.status_code, r.reason) == (403, "Not Today")
    assert location.lookup("sip:alice@fastreg.local", NOW) == () and not pending.changed


def test_remove_all_reports_what_it_removed_when_asked():
    core, location, _ = make_core()
    client = Client(core)
    assert client.register([CONTACT, "Contact: <sip:alice@192.0.2.11>"]).status_code == 200
    core.registrar.defer_commit = True
    pending = pending_of(client, ["Contact: *", "Expires: 0"])
    r = complete(core, pending, want_removed=True)
    assert r.status_code == 200 and contacts(r) == []
    assert sorted(b.contact for b in pending.removed) == ["sip:alice@192.0.2.10:5062", "sip:alice@192.0.2.11"]


def test_a_query_and_a_challenge_never_stop():
    core, _, _ = make_core()
    core.registrar.defer_commit = True
    client = Client(core)
    assert client.send(client.raw(headers=[CONTACT])).status_code == 401  # no credentials
    assert client.register([]).status_code == 200  # no Contact: a query
