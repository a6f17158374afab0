"""Read receipts for a WebSocket server's replies, from ping/pong: what the slow-consumer rule measures."""

from __future__ import annotations

from collections import deque


class ReadReceipts:
    """Which of a connection's replies the client has read, learned from ping/pong.

    WebSocket frames arrive in order, and a client answers a ping only once it has read
    everything before it; so the pong for ping ``k`` proves every reply sent before ping ``k``
    was read. The age of the oldest reply not yet proven read is what the slow-consumer rule
    measures: kernel buffers (megabytes on loopback) play no part. Memory is one entry per
    outstanding ping, not one per reply.
    """

    def __init__(self):
        self._epoch = 0  # pings sent so far; a reply sent now is covered by ping number ``_epoch``
        self._unread: deque[tuple[int, float]] = deque()  # (epoch, send time of its first reply)
        self._last_ping = -float("inf")

    def sent(self, now: float) -> None:
        """A reply was sent at ``now``."""
        if not self._unread or self._unread[-1][0] != self._epoch:
            self._unread.append((self._epoch, now))

    def ping_due(self, now: float, interval: float) -> int | None:
        """The number of a ping to send now (replies are unread, none asked for lately), else None."""
        if not self._unread or self._unread[-1][0] != self._epoch or now - self._last_ping < interval:
            return None
        self._last_ping = now
        self._epoch += 1
        return self._epoch - 1

    def pong(self, payload: bytes) -> None:
        """A pong arrived; payloads that are not our 8-byte ping numbers are ignored."""
        if len(payload) != 8:
            return
        number = int.from_bytes(payload, "big")
        while self._unread and self._unread[0][0] <= number < self._epoch:
            self._unread.popleft()

    def oldest_unread_age(self, now: float) -> float:
        """Seconds since the oldest reply not yet proven read was sent (0 when all are read)."""
        return now - self._unread[0][1] if self._unread else 0.0
