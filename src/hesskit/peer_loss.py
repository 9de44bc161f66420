"""What a surviving rank says when a ``torch.distributed`` peer is lost, in one line.

A collective that makes no progress ends after the process group's timeout (hesskit sets
it from ``--collective-timeout``; gloo raises "Timed out waiting ... for recv"), and one
whose peer crashed ends within a second or two ("Connection reset by peer", "Connection
closed by peer"). Both reach :func:`peer_lost`, which turns torch's message into a
:class:`~hesskit.errors.PeerLostError` naming the lost rank and the way on (``--resume``
from the last checkpoint):

* with two ranks the lost one is the other;
* with more, the survivors hold a roll call in the process group's key-value store: each
  survivor writes its rank, waits :data:`ROLL_CALL_SECONDS`, and names the ranks that did
  not answer (a stopped or crashed process cannot).

Nothing here runs while the collectives succeed.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import torch.distributed as dist

from hesskit.errors import PeerLostError

ROLL_CALL_SECONDS = 3.0
"""How long survivors wait for each other's answer before naming the silent ranks."""

_CRASH_SIGNS = ("connection reset", "connection closed", "broken pipe", "connection refused",
                "end of file", "socket closed")
_TIMEOUT_SIGNS = ("timed out", "timeout")

_timeout_s: float | None = None


def set_collective_timeout(seconds: float) -> None:
    """Remember the bound the process group was created with (for the message)."""
    global _timeout_s
    _timeout_s = seconds


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error``, raised by a collective, says a peer hung or went away."""
    text = str(error).lower()
    return any(sign in text for sign in (*_CRASH_SIGNS, *_TIMEOUT_SIGNS))


def peer_lost(error: BaseException) -> PeerLostError:
    """The one-line error for a collective that failed because a peer was lost."""
    text = str(error).lower()
    me, ranks = dist.get_rank(), dist.get_world_size()
    lost = _silent_ranks(me, ranks)
    who = (f"rank {lost[0]}" if len(lost) == 1 else
           f"ranks {', '.join(map(str, lost))}" if lost else "a peer")
    resume = ("rerun every rank with --resume to continue from the last checkpoint "
              "(docs/distributed.md)")
    if any(sign in text for sign in _CRASH_SIGNS):
        return PeerLostError(f"rank {me} lost {who}: its connection closed (the process "
                             f"crashed or was killed; see its own output); {resume}")
    bound = f"{_timeout_s:g} s" if _timeout_s is not None else "the collective timeout"
    return PeerLostError(f"rank {me} lost {who}: no progress in a collective for {bound} "
                         f"(--collective-timeout; the peer hung or was stopped); {resume}")


def _silent_ranks(me: int, ranks: int) -> list[int]:
    """The ranks that did not answer the roll call (the other one, with two ranks; none
    when the store itself does not answer, e.g. it lived in the lost process)."""
    others = [rank for rank in range(ranks) if rank != me]
    if len(others) <= 1:
        return others
    answer: list[list[int]] = []
    caller = threading.Thread(target=lambda: answer.append(_roll_call(me, others)),
                              daemon=True)  # a store in a stopped process never replies
    caller.start()
    caller.join(timeout=3 * ROLL_CALL_SECONDS)
    return answer[0] if answer else []


def _roll_call(me: int, others: list[int]) -> list[int]:
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=ROLL_CALL_SECONDS))
        store.set(f"hesskit/alive/{me}", "1")
        time.sleep(ROLL_CALL_SECONDS)
        return [rank for rank in others if not store.check([f"hesskit/alive/{rank}"])]
    except Exception:  # the store timed out or went away: name no rank
        return []
