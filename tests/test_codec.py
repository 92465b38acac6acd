"""fastreg.codec: versioned msgpack records of bindings."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastreg.bindings import Binding
from fastreg.codec import FORMAT_VERSION, RecordFormatError, decode_bindings, encode_bindings

AOR = "sip:alice@example.com"

_text = st.text(max_size=30)
_opt_text = st.none() | _text
_time = st.floats(min_value=0, max_value=2**40, allow_nan=False)
_bindings = st.builds(
    Binding,
    aor=st.just(AOR),
    contact=_text,
    expires_at=_time,
    q=st.none() | st.floats(min_value=0, max_value=1, allow_nan=False),
    call_id=_text,
    cseq=st.integers(0, 2**32 - 1),
    branch=_opt_text,
    path=st.lists(_text, max_size=3).map(tuple),
    received=st.tuples(_text, st.integers(0, 65535)),
    transport=st.sampled_from(["UDP", "TCP", "TLS", "WS", "WSS", "SCTP"]),
    user_agent=_opt_text,
    instance_id=_opt_text,
    reg_id=st.none() | st.integers(0, 2**31 - 1),
    params=st.lists(st.tuples(_text, _opt_text), max_size=3).map(tuple),
    last_modified=_time,
)


@settings(max_examples=300)
@given(st.lists(_bindings, max_size=5))
def test_round_trip(bindings):
    data = encode_bindings(bindings)
    assert isinstance(data, bytes)
    assert decode_bindings(AOR, data) == bindings


def test_record_starts_with_version():
    b = Binding(AOR, "sip:a@192.0.2.1", 10.0, 0.5, "c", 1, "z9", ("<sip:p;lr>",), ("192.0.2.1", 5060),
                "UDP", None, None, None, (("ob", None),), 1.0)
    rec = msgpack.unpackb(encode_bindings([b]))
    assert rec[0] == FORMAT_VERSION == 1
    assert len(rec) == 2 and len(rec[1]) == 15
    assert decode_bindings(AOR, encode_bindings([])) == []


def test_int_times_decode_as_float():
    b = Binding(AOR, "sip:a@192.0.2.1", 10, None, "c", 1, None, (), ("h", 1), "UDP", None, None, None, (), 3)
    (d,) = decode_bindings(AOR, encode_bindings([b]))
    assert type(d.expires_at) is float and type(d.last_modified) is float and d == b


def test_surrogate_escaped_text_round_trips():
    ua = b"Phone \xff\xfe".decode("utf-8", "surrogateescape")
    b = Binding(AOR, "sip:a@192.0.2.1", 10.0, None, "c", 1, None, (), ("h", 1), "UDP", ua, None, None, (), 3.0)
    assert decode_bindings(AOR, encode_bindings([b]))[0].user_agent == ua


def test_newer_version_is_refused_with_its_number():
    data = msgpack.packb([2, ["whatever"]])
    with pytest.raises(RecordFormatError) as ei:
        decode_bindings(AOR, data)
    assert ei.value.version == 2
    assert "newer" in str(ei.value)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        1,
        [],
        {"v": 1},
        [0],
        [-1],
        ["1"],
        [True],
        [1.0],
        [1, 5],
        [1, []],
        [1, ["sip:a", 1.0]],  # too short
        [1, ["sip:a", 1.0, None, "c", 1, None, [], "h", 1, "UDP", None, None, None, [], 1.0, "extra"]],
        [1, [5, 1.0, None, "c", 1, None, [], "h", 1, "UDP", None, None, None, [], 1.0]],  # contact not str
        [1, ["sip:a", "x", None, "c", 1, None, [], "h", 1, "UDP", None, None, None, [], 1.0]],
        [1, ["sip:a", 1.0, "q", "c", 1, None, [], "h", 1, "UDP", None, None, None, [], 1.0]],
        [1, ["sip:a", 1.0, None, "c", 1.5, None, [], "h", 1, "UDP", None, None, None, [], 1.0]],
        [1, ["sip:a", 1.0, None, "c", True, None, [], "h", 1, "UDP", None, None, None, [], 1.0]],
        [1, ["sip:a", 1.0, None, "c", 1, None, [3], "h", 1, "UDP", None, None, None, [], 1.0]],
        [1, ["sip:a", 1.0, None, "c", 1, None, "p", "h", 1, "UDP", None, None, None, [], 1.0]],
        [1, ["sip:a", 1.0, None, "c", 1, None, [], "h", "1", "UDP", None, None, None, [], 1.0]],
        [1, ["sip:a", 1.0, None, "c", 1, None, [], "h", 1, "UDP", None, None, "r", [], 1.0]],
        [1, ["sip:a", 1.0, None, "c", 1, None, [], "h", 1, "UDP", None, None, None, [["a"]], 1.0]],
        [1, ["sip:a", 1.0, None, "c", 1, None, [], "h", 1, "UDP", None, None, None, [["a", 1]], 1.0]],
        [1, ["sip:a", 1.0, None, "c", 1, None, [], "h", 1, "UDP", None, None, None, ["ab"], 1.0]],
        [1, ["sip:a", 1.0, None, "c", 1, None, [], "h", 1, "UDP", None, None, None, [], None]],
        [1, {"contact": "sip:a"}],
    ],
)
def test_malformed_records_refused(obj):
    with pytest.raises(RecordFormatError):
        decode_bindings(AOR, msgpack.packb(obj))


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\x91", b"\xdc\xff\xff", b"\x92\x01\x9f", b"\x91\x01\x00"])
def test_garbage_bytes_refused(data):
    with pytest.raises(RecordFormatError):
        decode_bindings(AOR, data)


_valid = encode_bindings([
    Binding(AOR, "sip:a@192.0.2.1;ob", 1e9, 0.5, "call", 7, "z9hG4bK", ("<sip:edge;lr>",), ("192.0.2.1", 5060),
            "UDP", "UA/1", "<urn:uuid:1>", 1, (("x", "y"), ("z", None)), 1e9),
    Binding(AOR, "sip:b@192.0.2.2", 1e9, None, "call", 7, None, (), ("192.0.2.2", 5060),
            "TCP", None, None, None, (), 1e9),
])


@settings(max_examples=500)
@given(st.data())
def test_corrupt_bytes_raise_only_record_format_error(data):
    raw = bytearray(_valid)
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "random"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "insert":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    else:
        raw = bytearray(data.draw(st.binary(max_size=64)))
    try:
        out = decode_bindings(AOR, bytes(raw))
    except RecordFormatError:
        return
    # whatever decodes is well typed
    for b in out:
        assert type(b.contact) is str and type(b.expires_at) is float and type(b.cseq) is int
        assert type(b.received) is tuple and type(b.received[1]) is int


# -- the compiled twins (fastreg._ccodec) agree with the pure functions -------------------------

from fastreg import codec as codec_mod  # noqa: E402

_COMPILED_CODEC = codec_mod.decode_bindings is not codec_mod.pure_decode_bindings
needs_ccodec = pytest.mark.skipif(not _COMPILED_CODEC, reason="pure mode: the compiled twins are not in use")


def _decoded(fn, data):
    try:
        return ("ok", fn(AOR, data))
    except RecordFormatError as exc:
        return ("error", str(exc), exc.version)


@needs_ccodec
@settings(max_examples=300)
@given(st.lists(_bindings, max_size=5), st.sampled_from([list, tuple, iter]))
def test_compiled_encode_agrees(bindings, container):
    expected = codec_mod.pure_encode_bindings(list(bindings))
    assert codec_mod.encode_bindings(container(bindings)) == expected
    assert _decoded(codec_mod.decode_bindings, expected) == _decoded(codec_mod.pure_decode_bindings, expected)


@needs_ccodec
def test_compiled_encode_takes_odd_values_as_the_pure_one():
    b = Binding(AOR, "sip:a", 5, 1, "c", 1, None, (), ["h", 1], "UDP", None, None, None, (), 7)  # ints, a list
    assert codec_mod.encode_bindings([b]) == codec_mod.pure_encode_bindings([b])
    bad = Binding(AOR, "sip:a", "x", None, "c", 1, None, (), ("h", 1), "UDP", None, None, None, (), 7)
    for fn in (codec_mod.encode_bindings, codec_mod.pure_encode_bindings):
        with pytest.raises(ValueError):
            fn([bad])


@needs_ccodec
@pytest.mark.parametrize("obj", [
    None, 1, [], [0], [True], [1.0], [2], [1, 5], [1, []],
    [1, ["sip:a", 1, None, "c", 1, None, [], "h", 1, "UDP", None, None, None, [], 1]],  # ints for times
    [1, ["sip:a", 1.0, 1, "c", 1, "b", ["p"], "h", 1, "UDP", "ua", "i", 3, [["a", None], ["b", "c"]], 1.0]],
    [1, ["sip:a", 1.0, None, "c", 1, None, [], "h", 1, "UDP", None, None, None, [["a", 1]], 1.0]],
    [1, ["sip:a", 1.0, None, "c", True, None, [], "h", 1, "UDP", None, None, None, [], 1.0]],
    [1, ["sip:a", True, None, "c", 1, None, [], "h", 1, "UDP", None, None, None, [], 1.0]],
    [1, ["sip:a", 1.0, None, "c", 1, None, [], "h", 1, "UDP", None, None, None, [], 1.0], "x"],
])
def test_compiled_decode_agrees_on_odd_records(obj):
    data = msgpack.packb(obj)
    assert _decoded(codec_mod.decode_bindings, data) == _decoded(codec_mod.pure_decode_bindings, data)


@needs_ccodec
@settings(max_examples=500)
@given(st.data())
def test_compiled_decode_agrees_on_corrupt_bytes(data):
    raw = bytearray(_valid)
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    raw = bytes(raw[: data.draw(st.integers(0, len(raw)))])
    assert _decoded(codec_mod.decode_bindings, raw) == _decoded(codec_mod.pure_decode_bindings, raw)
