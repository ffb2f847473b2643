"""Which path a worker takes to each peer: direct on the site network, or
the relay through the facility, decided once per peer and remembered.

A grid worker may reach a peer of its own site directly, but a node behind
a firewall, on another subnet or at a site that isolates its nodes only
answers through the relay. Finding that out can cost a connect timeout, so
the answer is kept for the life of the worker: one bad node costs one
timeout, not one per transfer. Concurrent connects to a peer whose path is
not known yet wait for the one decision in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("gridhub.tunnel.direct_peers")


@dataclass(frozen=True)
class Choice:
    """``direct``: the peer's site-local address (``tls://ip:port``), or
    None for the relay; ``why`` says why, for the log and for tests;
    ``failed``: a direct attempt was made and did not work."""

    direct: str | None
    why: str
    failed: bool = False


@dataclass
class PeerStats:
    """What happened on the way to one peer (see ``direct_peers.summary``)."""

    path: str = "undecided"
    why: str = ""
    direct_connects: int = 0
    relay_connects: int = 0
    failed_direct: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PeerChoices:
    """The remembered choice per peer; ``get(peer, decide)`` makes one with
    ``decide()`` when there is none yet.

    A decision runs as its own task: a caller cancelled by its own timeout
    (distributed retries a connect in slices of its connect timeout) does
    not cancel it, so its outcome, a timeout included, is still kept.
    A decision that raises (say the relay to the peer is down too) is not
    kept: the next connect asks again.
    """

    known: dict[str, Choice] = field(default_factory=dict)
    stats: dict[str, PeerStats] = field(default_factory=dict)
    _pending: dict[str, asyncio.Task] = field(default_factory=dict)

    async def get(self, peer: str, decide: Callable[[], Awaitable[Choice]]) -> Choice:
        choice = self.known.get(peer)
        if choice is not None:
            return choice
        task = self._pending.get(peer)
        if task is None:
            task = asyncio.ensure_future(self._decide(peer, decide))
            self._pending[peer] = task
        return await asyncio.shield(task)

    async def _decide(self, peer: str, decide: Callable[[], Awaitable[Choice]]) -> Choice:
        try:
            choice = await decide()
        except Exception as e:  # whatever it was: the relay this time, ask again next time
            log.info("peer %s: relay for now, could not ask for its direct address: %r", peer, e)
            return Choice(None, f"not decided: {e!r}")
        finally:
            self._pending.pop(peer, None)
        self._keep(peer, choice)
        return choice

    def fall_back(self, peer: str, why: str) -> None:
        """The direct path to ``peer`` worked once and failed now: the relay
        from now on."""
        self._keep(peer, Choice(None, why, failed=True))

    def count(self, peer: str, direct: bool) -> None:
        st = self.stats.setdefault(peer, PeerStats())
        if direct:
            st.direct_connects += 1
        else:
            st.relay_connects += 1

    def _keep(self, peer: str, choice: Choice) -> None:
        self.known[peer] = choice
        st = self.stats.setdefault(peer, PeerStats())
        st.path = "direct" if choice.direct else "relay"
        st.why = choice.why
        if choice.failed:
            st.failed_direct += 1
            log.warning("peer %s: %s; using the relay for this peer from now on", peer, choice.why)
        elif choice.direct:
            log.info("peer %s: direct at %s (%s)", peer, choice.direct, choice.why)
        else:
            log.info("peer %s: relay (%s)", peer, choice.why)
