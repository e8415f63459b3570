"""One regionlock instance per TCP port: a system-wide lock that dies with the process holding it.

Workers share the DeviceCheck port with SO_REUSEPORT, so without a lock a second `regionlock serve` on the
same port would silently join the first and answer some of its gateways. Before binding, each instance binds
an abstract AF_UNIX socket named after the port (`regionlock:tcp:<port>`) and keeps it listening for its
life: the kernel frees the name when the process dies, however it dies. A second instance fails to bind the
name, connects to it and reads the holder's pid with SO_PEERCRED to name it in its one-line refusal.

The lock is per port, not per host:port: 0.0.0.0:P and 127.0.0.1:P overlap, and SO_REUSEPORT lets the same
user bind both. A port 0 is locked on the port actually chosen, once it is known.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading


class AddressInUse(Exception):
    """A listener address held by another process: the one line that refuses the start (exit code 2)."""


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def _lock_name(port: int) -> bytes:
    return b"\0regionlock:tcp:%d" % port


def holder_pid(port: int) -> int | None:
    """The pid of the regionlock process holding `port`'s lock, or None if none holds it (or it can't tell)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(_lock_name(port))
            creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
    pid: int = struct.unpack("3i", creds)[0]
    return pid


class InstanceLock:
    """The locks of one instance's listeners; held until close() or the end of the process."""

    def __init__(self, accept_in_thread: bool = True) -> None:
        self._sockets: list[socket.socket] = []
        self._accept_in_thread = accept_in_thread

    def claim(self, name: str, address: str, port: int | None = None) -> None:
        """Lock the port of `address` (or `port`, the one chosen for a port 0), or raise AddressInUse."""
        port = port_of(address) if port is None else port
        if port == 0:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(_lock_name(port))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            pid = holder_pid(port)
            holder = f"regionlock process {pid}" if pid is not None else "another regionlock process"
            raise AddressInUse(f"{name} {address}: port {port} is in use by {holder}") from None
        sock.listen(16)
        sock.setblocking(False)
        self._sockets.append(sock)
        if self._accept_in_thread:
            threading.Thread(target=self._accept_forever, args=(sock,), daemon=True, name="instance-lock").start()

    def _accept_forever(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed
            conn.close()

    def drain(self) -> None:
        """Accept and close the connections of refused instances (without a thread: the supervisor's loop)."""
        for sock in self._sockets:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    break
                conn.close()

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


def check_bindable(name: str, address: str, reuse_port: bool) -> socket.socket:
    """Bind a TCP socket as the listener will (SO_REUSEADDR, SO_REUSEPORT among siblings) and return it, bound
    but not listening; a port held by any other process (regionlock or not) raises AddressInUse."""
    host, _, port = address.rpartition(":")
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare or bare in ("", "*") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("::" if bare in ("", "*") else bare, int(port)))
    except OSError as exc:
        sock.close()
        raise AddressInUse(f"{name} {address}: can't listen there ({exc.strerror or exc})") from None
    return sock
