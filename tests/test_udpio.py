"""Batched UDP I/O (fastreg._udpio) over real sockets on the loopback."""

from __future__ import annotations

import socket

import pytest

_udpio = pytest.importorskip("fastreg._udpio")


def _pair(family=socket.AF_INET, host="127.0.0.1"):
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    server.setblocking(False)
    client = socket.socket(family, socket.SOCK_DGRAM)
    client.bind((host, 0))
    client.settimeout(2)
    return server, client


def test_recv_returns_every_waiting_datagram_with_its_source_then_nothing():
    server, client = _pair()
    with server, client:
        io = _udpio.UdpBatchSocket(server.fileno(), batch=4)
        assert io.recv() == []
        for n in range(6):
            client.sendto(b"msg%d" % n, server.getsockname())
        first = io.recv()
        second = io.recv()
        assert [d for d, _, _ in first + second] == [b"msg%d" % n for n in range(6)]
        assert len(first) == 4  # one batch at most
        assert {(h, p) for _, h, p in first} == {client.getsockname()}
        assert io.recv() == []


def test_send_delivers_each_item_to_its_destination():
    server, client = _pair()
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(2)
    with server, client, other:
        io = _udpio.UdpBatchSocket(server.fileno(), batch=2)
        items = [(b"a", client.getsockname()), (b"b", other.getsockname()), (b"c", client.getsockname())]
        assert io.send(items) == 3
        assert client.recv(100) == b"a"
        assert client.recv(100) == b"c"
        assert other.recv(100) == b"b"


def test_an_address_that_cannot_be_sent_to_is_skipped_and_counted():
    server, client = _pair()
    with server, client:
        io = _udpio.UdpBatchSocket(server.fileno())
        items = [(b"x", ("not-an-address", 5060)), (b"y", client.getsockname())]
        assert io.send(items) == 2
        assert io.errors == 1
        assert client.recv(100) == b"y"


def test_ipv6_sources_and_destinations():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server, client = _pair(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no ::1")
    with server, client:
        io = _udpio.UdpBatchSocket(server.fileno())
        client.sendto(b"hello", server.getsockname()[:2])
        [(data, host, port)] = _wait(io)
        assert (data, host, port) == (b"hello", "::1", client.getsockname()[1])
        assert io.send([(b"back", (host, port))]) == 1
        assert client.recv(100) == b"back"


def test_a_datagram_of_the_largest_size_arrives_whole():
    server, client = _pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    with server, client:
        io = _udpio.UdpBatchSocket(server.fileno())
        payload = bytes(range(256)) * 255  # 65,280 bytes
        client.sendto(payload, server.getsockname())
        [(data, _, _)] = _wait(io)
        assert data == payload


def _wait(io, tries=200):
    import time
    for _ in range(tries):
        got = io.recv()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError("nothing arrived")


def test_the_worker_endpoint_answers_in_batches_and_sends_on_demand():
    import asyncio

    from fastreg.stats import Counters
    from fastreg.transport.udp import UdpBatchEndpoint

    async def scenario():
        loop = asyncio.get_running_loop()
        server, client = _pair()
        client.setblocking(False)
        endpoint = UdpBatchEndpoint(loop, server, lambda data, host, port, kind: (data.upper(), (host, port)),
                                    Counters())
        for n in range(40):  # more than one batch
            client.sendto(b"ping%d" % n, server.getsockname())
        answers = []
        while len(answers) < 40:
            answers.append(await loop.sock_recv(client, 100))
        endpoint.sendto(b"extra", client.getsockname())
        extra = await loop.sock_recv(client, 100)
        endpoint.close()
        client.close()
        return answers, extra, server.fileno()

    answers, extra, fileno = asyncio.run(scenario())
    assert sorted(answers) == sorted(b"PING%d" % n for n in range(40))
    assert extra == b"extra"
    assert fileno == -1  # the endpoint closed the socket
