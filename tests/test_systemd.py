"""na64_online.systemd: sd_notify datagrams on a real unix socket; the watchdog's cadence and WATCHDOG_PID."""

from __future__ import annotations

import os
import socket

from na64_online.systemd import SystemdNotifier


def receiver(address) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def test_messages_reach_a_file_socket_and_the_watchdog_pings_at_half_its_period(tmp_path):
    sock = receiver(str(tmp_path / "notify"))
    now = [100.0]
    notifier = SystemdNotifier(str(tmp_path / "notify"), watchdog_usec=4_000_000, clock=lambda: now[0])
    try:
        assert notifier.ready("serving 2 readout node(s)")
        assert sock.recv(100) == b"READY=1\nSTATUS=serving 2 readout node(s)"
        assert notifier.watchdog() and sock.recv(100) == b"WATCHDOG=1"
        now[0] += 1.9
        assert not notifier.watchdog()  # half of 4 s not yet passed
        now[0] += 0.2
        assert notifier.watchdog() and sock.recv(100) == b"WATCHDOG=1"
        assert notifier.stopping() and sock.recv(100) == b"STOPPING=1"
    finally:
        notifier.close()
        sock.close()


def test_abstract_socket_and_environment(tmp_path):
    name = f"na64-test-{os.getpid()}"
    sock = receiver(b"\0" + name.encode())
    try:
        env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
        notifier = SystemdNotifier.from_environment(env)
        assert notifier.watchdog_interval_s == 1.0 and notifier.watchdog() and sock.recv(100) == b"WATCHDOG=1"
        other = SystemdNotifier.from_environment({**env, "WATCHDOG_PID": "1"})  # another process's watchdog
        assert other.watchdog_interval_s is None and not other.watchdog()
        notifier.close()
    finally:
        sock.close()
    outside = SystemdNotifier.from_environment({})
    assert not outside.enabled and not outside.ready() and not outside.watchdog()
    gone = SystemdNotifier(str(tmp_path / "nobody-listens"))
    assert not gone.ready() and gone.failed == 1  # counted, never raised
