"""A TCP forwarder that can be stopped and started again: the tests and the
outage bench point fastreg at it instead of at PostgreSQL, so "the database
is down" can be played without stopping the PostgreSQL server other tests
share. Stopping closes the listening socket and cuts every connection
(as a server that goes away does); starting listens again on the same port."""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self.host = host
        self.port = port
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> "TcpProxy":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        self.port = listener.getsockname()[1]
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        source.close()  # the other pump closes its own source
        with self._lock:
            self._sockets.discard(source)


def main() -> None:
    """python tests/tcpproxy.py --listen 127.0.0.1:6432 --target 127.0.0.1:5432
    SIGUSR1 stops it (every connection cut, new ones refused), SIGUSR2 starts it again,
    SIGTERM ends it. Used by bench/pg_outage.sh."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(description="a TCP forwarder that can be stopped and started (SIGUSR1/SIGUSR2)")
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--target", required=True, help="HOST:PORT")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    thost, _, tport = args.target.rpartition(":")
    proxy = TcpProxy((thost, int(tport)), host, int(port)).start()
    signal.signal(signal.SIGUSR1, lambda *_: proxy.stop())
    signal.signal(signal.SIGUSR2, lambda *_: proxy.running or proxy.start())
    signal.signal(signal.SIGTERM, lambda *_: (proxy.stop(), exit(0)))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
