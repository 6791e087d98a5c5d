"""The test suite's network guard (conftest.no_network): tests run offline, on local data only."""
import socket

import pytest
from conftest import NETWORK_ATTEMPTS


def test_remote_lookup_and_connection_are_refused_and_recorded():
    with pytest.raises(OSError, match="must not use the network"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with socket.socket() as sock, pytest.raises(OSError, match="must not use the network"):
        sock.connect(("10.1.2.3", 80))
    assert NETWORK_ATTEMPTS == ["huggingface.co", "10.1.2.3"]  # the guard fails the test on teardown...
    NETWORK_ATTEMPTS.clear()  # ...which this test, having provoked them, does not want


def test_this_machine_stays_reachable():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname(), timeout=1)
    client.close()
    server.close()
    assert not NETWORK_ATTEMPTS
