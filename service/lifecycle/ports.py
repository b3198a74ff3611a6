"""Before Ray starts: are our ports free, and if not, who holds them and what to do (one line).

An earlier segserve session that is stopping (its supervisor was killed, so it drains and stops on its
own) or a Ray process left over from a killed one frees the port within seconds: we wait for those,
bounded, and name anything else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from service.lifecycle.processes import Holder, holder, listeners, port_in_use

UNSEEN_SETTLE_S = 3.0
"""How long a busy port with no visible holder is looked at again before it is reported: a server that
is stopping frees it between our bind test and the look at who holds it."""


@dataclass(frozen=True)
class PortCheck:
    label: str  # HTTP, gRPC, metrics
    host: str
    port: int
    flag: str  # the command-line option that changes it

    def in_use(self) -> bool:
        return port_in_use(self.host, self.port)


def check_ports(checks: list[PortCheck], wait_stale_s: float, say: Callable[[str], None]) -> str | None:
    """None when every port is free; else one line naming the port, its holder and what to do. Waits
    up to ``wait_stale_s`` while only a stopping or left-over segserve/Ray session holds them."""
    deadline = time.monotonic() + wait_stale_s
    settle_until = time.monotonic() + min(wait_stale_s, UNSEEN_SETTLE_S)
    waiting_for: set[int] = set()
    while True:
        busy = [c for c in checks if c.in_use()]
        if not busy:
            return None
        check = busy[0]
        holders = [holder(pid) for pid in listeners(check.port)]
        if not holders and time.monotonic() < settle_until:
            time.sleep(0.25)  # its holder let go between the two looks, or is letting go: look again
            continue
        # A session we are waiting for lets go of its sockets as its processes end: a holder that is
        # gone, or none listed while the port is not yet free, is that too.
        stale = all(h.kind in ("stopping", "leftover", "gone") for h in holders) and bool(
            holders or waiting_for
        )
        if not stale or time.monotonic() >= deadline:
            return busy_message(check, holders, waited=stale)
        sids = {h.sid for h in holders if h.sid} - waiting_for
        if sids:
            waiting_for |= sids
            say(
                f"the {check.label} port {check.port} is held by an earlier segserve session that is "
                f"stopping ({', '.join(h.describe() for h in holders)}); waiting for it "
                f"(up to {wait_stale_s:.0f} s) ..."
            )
        time.sleep(0.25)


def busy_message(check: PortCheck, holders: list[Holder], waited: bool = False) -> str:
    where = f"the {check.label} port {check.port}"
    other = f"or choose another port with {check.flag}"
    if not holders:
        return f"{where} is in use by another program (not visible to this user); stop it {other}"
    h = holders[0]
    if h.kind == "running":
        return (
            f"{where} is in use by a running segserve serve (session {h.sid}): stop it first "
            f"(Ctrl-C in its terminal, or: kill -INT {h.supervisor}) {other}"
        )
    if h.kind in ("stopping", "leftover", "gone"):
        state = "still stopping after the wait" if waited else "stopping"
        return (
            f"{where} is held by {h.describe()} of an earlier segserve/Ray session ({state}); "
            f"end that session with: pkill -KILL -s {h.sid}   {other}"
        )
    return f"{where} is in use by {h.describe()}; stop it {other}"


def wait_free(checks: list[PortCheck], timeout_s: float) -> list[int]:
    """Ports still in use after waiting up to ``timeout_s`` for them to be freed."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = [c.port for c in checks if c.in_use()]
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.1)
