"""The pynetdicom internals that dicom_node/netutil.py patches are still there, as the patches assume.

netutil subclasses Association and DULServiceProvider, overriding private methods and reading private
attributes, and wraps the association socket's ``recv``. A pynetdicom release that renames or reshapes
one of them would not break anything loudly: the patch would silently stop applying (or break the
reactor). These checks fail first, naming the internal that changed. No network is used.
"""

from __future__ import annotations

import inspect
import queue
import socket
import threading

import pynetdicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE, DIMSEPrimitive
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from dicom_node.netutil import _AdaptivePollDUL, _ResponseKeepingAssociation
from dicom_node.status import SUCCESS


def _changed(internal: str, assumption: str) -> str:
    return (f"pynetdicom {pynetdicom.__version__}: {internal} {assumption}. dicom_node/netutil.py patches it: "
            "revisit the patch for this pynetdicom version, then the pynetdicom pin in setup.cfg.")


@pytest.fixture
def assoc() -> Association:
    """A requestor-side association, built but never started (no thread, no socket)."""
    return Association(AE(), "requestor")


# (owner, method, parameter names the override or wrapper is written for)
METHODS = [
    (Association, "_serve_request", ["self", "msg", "context_id"]),
    (DULServiceProvider, "_process_recv_primitive", ["self"]),
    (DULServiceProvider, "_is_transport_event", ["self"]),
    (AssociationSocket, "recv", ["self", "nr_bytes"]),
]


@pytest.mark.parametrize("owner, name, params", METHODS, ids=[f"{o.__name__}.{n}" for o, n, _ in METHODS])
def test_patched_method_exists_with_the_assumed_signature(owner, name, params):
    internal = f"{owner.__module__}.{owner.__qualname__}.{name}"
    func = inspect.getattr_static(owner, name, None)
    assert inspect.isfunction(func), _changed(internal, "is gone or no longer a plain method")
    found = list(inspect.signature(func).parameters)
    assert found == params, _changed(internal, f"takes {found}, not {params}")


@pytest.mark.parametrize("name", ["_process_recv_primitive", "_is_transport_event"])
def test_dul_hooks_still_report_activity_as_a_bool(name):
    # _AdaptivePollDUL counts a True return as traffic
    internal = f"pynetdicom.dul.DULServiceProvider.{name}"
    func = inspect.getattr_static(DULServiceProvider, name, None)
    assert inspect.isfunction(func), _changed(internal, "is gone or no longer a plain method")
    returns = inspect.signature(func).return_annotation
    assert returns in (bool, "bool"), _changed(internal, f"returns {returns!r}, not a bool meaning 'had work'")
    assert f"self.{name}()" in inspect.getsource(DULServiceProvider.run_reactor), _changed(
        internal, "is no longer called by DULServiceProvider.run_reactor")


def test_dul_reactor_sleeps_for_the_instance_run_loop_delay(assoc):
    # _AdaptivePollDUL turns _run_loop_delay into a property whose setter ignores __init__'s value
    internal = "pynetdicom.dul.DULServiceProvider._run_loop_delay"
    assert isinstance(vars(assoc.dul).get("_run_loop_delay"), float), _changed(
        internal, "is no longer a float assigned in DULServiceProvider.__init__")
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(DULServiceProvider.run_reactor), _changed(
        internal, "is no longer the delay DULServiceProvider.run_reactor sleeps between polls")
    assoc.dul.__class__ = _AdaptivePollDUL
    assert assoc.dul._run_loop_delay == _AdaptivePollDUL.BUSY_DELAY_S, _changed(
        internal, "can no longer be overridden by a property on a DULServiceProvider subclass")


def test_dul_reads_pdus_through_its_socket_wrappers_recv(assoc):
    # NODELAY_HANDLERS and stall_guard replace event.assoc.dul.socket.recv on the instance
    internal = "pynetdicom.dul.DULServiceProvider.socket"
    assert "socket" in vars(assoc.dul), _changed(internal, "is no longer an attribute set in __init__")
    assert "self.socket.recv(" in inspect.getsource(DULServiceProvider._read_pdu_data), _changed(
        "pynetdicom.dul.DULServiceProvider._read_pdu_data", "no longer reads the PDU with self.socket.recv()")


def test_socket_wrapper_holds_the_socket_and_lets_recv_be_replaced(assoc):
    internal = "pynetdicom.transport.AssociationSocket"
    ours, peer = socket.socketpair()
    try:
        wrapper = AssociationSocket(assoc, client_socket=ours)
        assert wrapper.socket is ours, _changed(f"{internal}.socket", "is no longer the wrapped socket.socket")
        wrapper.recv = lambda nr_bytes: bytearray(nr_bytes)
        assert wrapper.recv(3) == bytearray(3), _changed(f"{internal}.recv", "can no longer be replaced per instance")
    finally:
        ours.close()
        peer.close()
    assert hasattr(evt, "EVT_CONN_OPEN"), _changed("pynetdicom.evt.EVT_CONN_OPEN", "is gone (the patches hook it)")


def test_association_reactor_pause_and_dimse_queue(assoc):
    # _ResponseKeepingAssociation puts a response back on dimse.msg_queue while the checkpoint is cleared
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    assert isinstance(checkpoint, threading.Event), _changed(
        "pynetdicom.association.Association._reactor_checkpoint", "is no longer a threading.Event set in __init__")
    assert "self._reactor_checkpoint.clear()" in inspect.getsource(Association.send_c_store), _changed(
        "pynetdicom.association.Association._reactor_checkpoint", "is no longer cleared while send_c_store() waits")
    assert "self._serve_request(msg" in inspect.getsource(Association._run_reactor), _changed(
        "pynetdicom.association.Association._serve_request", "is no longer how _run_reactor serves a message")
    msg_queue = getattr(assoc.dimse, "msg_queue", None)
    assert isinstance(msg_queue, queue.Queue), _changed(
        "pynetdicom.dimse.DIMSEServiceProvider.msg_queue", "is no longer a queue.Queue set in __init__")
    assert "self.msg_queue.get(" in inspect.getsource(DIMSEServiceProvider.get_msg), _changed(
        "pynetdicom.dimse.DIMSEServiceProvider.get_msg", "no longer takes messages off msg_queue")


def test_dimse_primitives_say_whether_they_are_a_request_or_response():
    # _ResponseKeepingAssociation._serve_request tells a response from a request by these two
    internal = "pynetdicom.dimse_primitives.DIMSEPrimitive.is_valid_request/is_valid_response"
    for name in ("is_valid_request", "is_valid_response"):
        assert isinstance(inspect.getattr_static(DIMSEPrimitive, name, None), property), _changed(
            f"pynetdicom.dimse_primitives.DIMSEPrimitive.{name}", "is gone or no longer a property")
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.Status = SUCCESS
    assert rsp.is_valid_response and not rsp.is_valid_request, _changed(
        internal, "no longer tell a C-STORE response from a request")


def test_patched_classes_are_still_swappable(assoc):
    # _tune_socket swaps __class__ on the live objects
    for obj, cls in ((assoc, _ResponseKeepingAssociation), (assoc.dul, _AdaptivePollDUL)):
        try:
            obj.__class__ = cls
        except TypeError as exc:
            pytest.fail(_changed(f"{type(obj).__module__}.{type(obj).__qualname__}",
                                 f"no longer lets _tune_socket swap in {cls.__name__} ({exc})"))
