"""Small socket-level helpers shared by the SCP and the SCU.

The patches of pynetdicom internals below are written for pynetdicom 3.0.4 (setup.cfg allows 3.0.x);
tests/test_netutil_patches.py fails, naming the internal, when one of them changes.
"""

from __future__ import annotations

import socket
import time

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider


def _tune_socket(event: evt.Event) -> None:
    """Tune the association's socket for request/response traffic.

    - Nagle's algorithm off: without it each C-STORE response can wait ~40 ms for the
      peer's delayed ACK.
    - Quick ACKs, re-armed after every read (Linux resets them): a peer that keeps Nagle
      on (DCMTK does unless TCP_NODELAY=1 is in its environment, so Orthanc and most
      PACS) writes a PDU's header and body separately and holds the second write until
      the first is acknowledged; a delayed ACK costs each C-STORE ~40 ms. Measured with
      the node sending a 96 kB SR to storescp: 67 -> 25 ms per C-STORE.
    - The adaptive DUL poll below, and the guard against a stolen DIMSE response
      (``_ResponseKeepingAssociation``).
    """
    wrapper = getattr(event.assoc.dul, "socket", None)
    sock = getattr(wrapper, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if _QUICKACK is not None and not getattr(wrapper, "_quickack", False):
            read = wrapper.recv

            def recv(nr_bytes: int):
                data = read(nr_bytes)
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                except OSError:
                    pass
                return data

            wrapper.recv = recv
            wrapper._quickack = True
    dul = event.assoc.dul
    if isinstance(dul, DULServiceProvider) and not isinstance(dul, _AdaptivePollDUL):
        dul.__class__ = _AdaptivePollDUL
    if type(event.assoc) is Association:
        event.assoc.__class__ = _ResponseKeepingAssociation


class _ResponseKeepingAssociation(Association):
    """pynetdicom's association with the response its own send_*() waits for kept, not dropped.

    A send_*() call pauses the association's reactor (clears a checkpoint, waits until the
    reactor says it is paused), sends the request and waits on the DIMSE queue for the
    response. The pause handshake has a window: the reactor flags itself paused, passes the
    still-open checkpoint, and the sender, seeing the flag, goes on while the reactor makes one
    more round, in which it can take the response off the queue. pynetdicom 3.0.4 then logs
    "Received unexpected C-STORE service message", drops it, and the sender waits out the
    DIMSE timeout (30 s) and aborts: a C-MOVE sub-operation failed (0xB000) or a send retried.
    Seen under CPU load in about 1 of 15 C-MOVEs. A response taken while a send_*() is waiting
    (checkpoint cleared) goes back on the queue for it.
    """

    def _serve_request(self, msg, context_id: int) -> None:
        if not msg.is_valid_request and msg.is_valid_response and not self._reactor_checkpoint.is_set():
            self.dimse.msg_queue.put((context_id, msg))
            return
        super()._serve_request(msg, context_id)


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _AdaptivePollDUL(DULServiceProvider):
    """pynetdicom's DUL reactor with a poll interval that follows the traffic.

    The reactor sleeps a fixed 1 ms between polls when it has nothing to do. That sleep
    bounds the per-message latency, so while PDUs flow it polls every 0.2 ms (roughly
    doubling C-STORE throughput); once the association has been quiet for ``QUIET_S`` it
    polls every ``IDLE_DELAY_S``, so that an open but idle association (a PACS keeps one
    for a second after its last send) costs 0.08 instead of 0.18 of a core while the
    engine needs both (the rest is pynetdicom's association thread, which polls every ms).
    """

    BUSY_DELAY_S = 0.0002
    IDLE_DELAY_S = 0.004
    QUIET_S = 0.1

    @property
    def _run_loop_delay(self) -> float:
        last = getattr(self, "_last_activity", None)
        if last is None or time.monotonic() - last < self.QUIET_S:
            return self.BUSY_DELAY_S
        return self.IDLE_DELAY_S

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        # pynetdicom's __init__ assigns its fixed delay; the property decides instead.
        pass

    def _process_recv_primitive(self) -> bool:
        sent = super()._process_recv_primitive()
        if sent:
            self._last_activity = time.monotonic()
        return sent

    def _is_transport_event(self) -> bool:
        received = super()._is_transport_event()
        if received:
            self._last_activity = time.monotonic()
        return received


NODELAY_HANDLERS = [(evt.EVT_CONN_OPEN, _tune_socket)]


def stall_guard(timeout_s: float, max_pdu_bytes: int):
    """EVT_CONN_OPEN handler guarding the node against two kinds of hostile peers.

    - A peer that stops in the middle of a PDU is dropped after ``timeout_s``: pynetdicom
      reads a PDU once select() reports data, then blocks until all of it has arrived, and
      accepted sockets have no timeout of their own.
    - A PDU declaring more than ``max_pdu_bytes`` is refused before it is read: pynetdicom
      reads the declared length into memory whatever it is (a 4 GiB header would be
      buffered). The read fails as a lost connection would, so the association is aborted.
    """
    def handler(event: evt.Event) -> None:
        wrapper = getattr(event.assoc.dul, "socket", None)
        sock = getattr(wrapper, "socket", None)
        if sock is not None:
            try:
                sock.settimeout(timeout_s)
            except OSError:
                pass
        if wrapper is not None and not getattr(wrapper, "_pdu_guarded", False):
            read = wrapper.recv

            def recv(nr_bytes: int):
                if nr_bytes > max_pdu_bytes:
                    raise OSError(f"peer declared a {nr_bytes}-byte PDU (limit {max_pdu_bytes}): refused")
                return read(nr_bytes)

            wrapper.recv = recv
            wrapper._pdu_guarded = True

    return handler
