"""Packet loss and delay in user space, for kernels without the netem qdisc: NFQUEUE and a delayer.

``tc qdisc add ... netem`` needs CONFIG_NET_SCH_NETEM; where the kernel lacks it, an iptables
rule (``-j NFQUEUE``, iptables-legacy: the nft backend needs CONFIG_NFT_QUEUE as well) hands
each matching packet to a netlink socket instead, and the packet waits in the kernel until
user space gives its verdict. ``Delayer`` is that user space: for every packet it draws a
verdict now (drop, with the loss probability) or an accept due after a delay drawn
uniformly from ``delay_s +- jitter_s``, as netem's ``loss 20% delay 200ms 100ms`` does for
each packet leaving an interface. Verdicts go out when they are due, in any order, so a
later packet may overtake an earlier one, as with netem's jitter.

It speaks nfnetlink_queue itself (linux/netfilter/nfnetlink_queue.h): bind a queue, ask for
packet metadata only (never payload), read packet ids, send verdicts. One thread serves the
queues of several network namespaces: each socket is made inside its namespace (``make``
is called there), because a netlink queue belongs to the namespace its socket lives in.
The rule must use ``--queue-bypass``, so packets pass untouched whenever no delayer listens.
"""

from __future__ import annotations

import contextlib
import heapq
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_META = 1
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, seq, port id
_NFGEN = struct.Struct("=BBH")  # family, version, queue number (big-endian, packed below)
_ATTR = struct.Struct("=HH")
# Packets waiting for a verdict, per queue: a minute of a few hundred packets a second in
# flight for up to 300 ms needs a few hundred; past the limit the kernel would drop them.
QUEUE_MAXLEN = 8192
RECV_BUFFER = 4 << 20  # bytes of queued packet notices the socket holds before the kernel drops some
POLL_CAP_S = 0.05  # the thread looks at its stop flag at least this often


def _attr(kind: int, payload: bytes) -> bytes:
    body = _ATTR.pack(_ATTR.size + len(payload), kind) + payload
    return body + b"\0" * (-len(body) % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    nfgen = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", queue)
    body = nfgen + attrs
    return _NLMSG.pack(_NLMSG.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def _config(queue: int, command: int | None = None, params: bool = False) -> bytes:
    attrs = b""
    if command is not None:
        attrs += _attr(NFQA_CFG_CMD, struct.pack(">BBH", command, 0, socket.AF_INET))
    if params:
        attrs += _attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))
        attrs += _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", QUEUE_MAXLEN))
    return _message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK)


def verdict_message(queue: int, packet_id: int, verdict: int) -> bytes:
    return _message(NFQNL_MSG_VERDICT, queue, _attr(NFQA_VERDICT_HDR, struct.pack(">II", verdict, packet_id)))


def packet_ids(data: bytes) -> list[int]:
    """The ids of the queued packets in one netlink read (other messages are skipped)."""
    ids: list[int] = []
    at = 0
    while at + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _port = _NLMSG.unpack_from(data, at)
        if length < _NLMSG.size:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            attr_at, end = at + _NLMSG.size + _NFGEN.size, at + length
            while attr_at + _ATTR.size <= end:
                attr_len, attr_type = _ATTR.unpack_from(data, attr_at)
                if attr_len < _ATTR.size:
                    break
                if attr_type & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from(">I", data, attr_at + _ATTR.size)[0])
                    break
                attr_at += (attr_len + 3) & ~3
        at += (length + 3) & ~3
    return ids


def _expect_ack(sock: socket.socket, what: str) -> None:
    data = sock.recv(65536)
    length, kind, *_ = _NLMSG.unpack_from(data, 0)
    if kind == NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", data, _NLMSG.size)
        if error:
            raise OSError(-error, f"nfnetlink_queue refused {what}")


def open_queue(queue: int) -> socket.socket:
    """A netlink socket bound to NFQUEUE ``queue`` of the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        with contextlib.suppress(OSError):  # SO_RCVBUFFORCE needs CAP_NET_ADMIN, which root has
            sock.setsockopt(socket.SOL_SOCKET, 33, RECV_BUFFER)  # SO_RCVBUFFORCE
        sock.bind((0, 0))
        sock.send(_config(queue, NFQNL_CFG_CMD_BIND))
        _expect_ack(sock, f"binding queue {queue}")
        sock.send(_config(queue, params=True))
        _expect_ack(sock, f"the parameters of queue {queue}")
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class QueueStats:
    """What a delayer did to the packets of one queue."""

    packets: int = 0
    dropped: int = 0
    delay_sum_s: float = 0.0
    delay_min_s: float = float("inf")
    delay_max_s: float = 0.0

    @property
    def loss(self) -> float:
        return self.dropped / self.packets if self.packets else 0.0

    @property
    def mean_delay_s(self) -> float:
        delayed = self.packets - self.dropped
        return self.delay_sum_s / delayed if delayed else 0.0

    def delayed(self, delay_s: float) -> None:
        self.delay_sum_s += delay_s
        self.delay_min_s = min(self.delay_min_s, delay_s)
        self.delay_max_s = max(self.delay_max_s, delay_s)


class Delayer:
    """Drops each queued packet with ``loss``, lets the rest through after ``delay_s +- jitter_s``."""

    def __init__(self, loss: float, delay_s: float, jitter_s: float, rng: random.Random, queue: int = 0) -> None:
        self.loss, self.delay_s, self.jitter_s, self.rng, self.queue = loss, delay_s, jitter_s, rng, queue
        self.stats: dict[str, QueueStats] = {}
        self._socks: dict[str, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._due: list[tuple[float, int, str, int]] = []  # (when, order, namespace, packet id)
        self._order = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def add(self, name: str, make: Callable[[Callable[[], socket.socket]], socket.socket]) -> None:
        """Serve the queue of namespace ``name``; ``make(open)`` calls ``open`` inside it."""
        sock = make(lambda: open_queue(self.queue))
        sock.setblocking(False)
        self._socks[name] = sock
        self.stats[name] = QueueStats()
        self._selector.register(sock, selectors.EVENT_READ, name)

    def start(self) -> Delayer:
        self._thread = threading.Thread(target=self._run, name="netqueue-delayer", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop, accept whatever still waits, unbind and close every queue."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for _when, _order, name, packet_id in self._due:
            self._verdict(name, packet_id, NF_ACCEPT)
        self._due.clear()
        for sock in self._socks.values():
            with contextlib.suppress(OSError):
                sock.send(_config(self.queue, NFQNL_CFG_CMD_UNBIND))
            self._selector.unregister(sock)
            sock.close()
        self._socks.clear()
        self._selector.close()

    def _verdict(self, name: str, packet_id: int, verdict: int) -> None:
        with contextlib.suppress(OSError):  # a packet the kernel gave up on is already gone
            self._socks[name].send(verdict_message(self.queue, packet_id, verdict))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    _when, _order, name, packet_id = heapq.heappop(self._due)
                    self._verdict(name, packet_id, NF_ACCEPT)
                wait = min(POLL_CAP_S, self._due[0][0] - now) if self._due else POLL_CAP_S
                for key, _events in self._selector.select(max(wait, 0.0)):
                    self._read(key.data, key.fileobj)
        except BaseException as exc:  # noqa: BLE001 - kept for the test to raise
            self.error = exc

    def _read(self, name: str, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == 105:  # ENOBUFS: the kernel dropped notices; those packets are lost
                    continue
                raise
            stats = self.stats[name]
            now = time.monotonic()
            for packet_id in packet_ids(data):
                stats.packets += 1
                if self.rng.random() < self.loss:
                    stats.dropped += 1
                    self._verdict(name, packet_id, NF_DROP)
                    continue
                delay = max(0.0, self.rng.uniform(self.delay_s - self.jitter_s, self.delay_s + self.jitter_s))
                stats.delayed(delay)
                self._order += 1
                heapq.heappush(self._due, (now + delay, self._order, name, packet_id))
