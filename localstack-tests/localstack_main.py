"""Starts LocalStack's runtime (`python -m localstack.runtime.main`) bound to loopback only.

LocalStack 4.14's default (twisted) gateway server ignores the host part of GATEWAY_LISTEN
for IPv4 and listens on 0.0.0.0 (`TCP4ServerEndpoint(reactor, port)`, marked "TODO:
interface = host?" in localstack/runtime/server/twisted.py). An unauthenticated AWS emulator
has no business on every interface of a shared machine, so this launcher gives twisted's
IPv4 server endpoints a default interface, LOGFERRY_LOCALSTACK_BIND (the GATEWAY_LISTEN host,
set by localstack.sh), and then runs LocalStack's own entry point unchanged.
"""

import os

from twisted.internet import endpoints

_BIND = os.environ.get("LOGFERRY_LOCALSTACK_BIND", "")
_original_init = endpoints.TCP4ServerEndpoint.__init__


def _init(self, reactor, port, backlog=50, interface=""):
    _original_init(self, reactor, port, backlog, interface or _BIND)


if _BIND:
    endpoints.TCP4ServerEndpoint.__init__ = _init

from localstack.runtime.main import main  # noqa: E402

if __name__ == "__main__":
    main()
