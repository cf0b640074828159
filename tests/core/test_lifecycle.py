"""The transition table, events in the same transaction, deadlines and restart-resume."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ztpd.errors import IllegalTransition
from ztpd.identity import Identity
from ztpd.lifecycle import (
    DEFAULT_TIMEOUTS,
    IN_PROGRESS,
    Lifecycle,
    State,
    Trigger,
    next_state,
    retire_trigger,
)
from ztpd.store import Events, Nodes, Store

from .conftest import TIMEOUTS, FakeClock

S, T = State, Trigger

# The specification, written out independently of ztpd/lifecycle.py's table: every legal
# (state, trigger) pair and where it leads. Anything not listed must be refused.
LIVE = [s for s in State if s not in (S.FAILED, S.RETIRED)]
PRE_DEPLOY = [S.DISCOVERED, S.INSPECTED, S.UNMATCHED, S.AWAITING_APPROVAL, S.MATCHED]
EXPECTED: dict[tuple[State, Trigger], State] = {
    **{(s, T.INSPECT): S.INSPECTING for s in PRE_DEPLOY},
    (S.INSPECTING, T.INSPECTED): S.INSPECTED,
    (S.INSPECTED, T.MATCH): S.MATCHED,
    (S.INSPECTED, T.NO_MATCH): S.UNMATCHED,
    (S.INSPECTED, T.HOLD): S.AWAITING_APPROVAL,
    (S.UNMATCHED, T.MATCH): S.MATCHED,
    (S.UNMATCHED, T.HOLD): S.AWAITING_APPROVAL,
    (S.AWAITING_APPROVAL, T.APPROVE): S.MATCHED,
    (S.AWAITING_APPROVAL, T.NO_MATCH): S.UNMATCHED,
    (S.MATCHED, T.DEPLOY): S.DEPLOYING,
    (S.DEPLOYING, T.DEPLOYED): S.DEPLOYED,
    (S.DEPLOYED, T.CONFIGURE): S.CONFIGURING,
    (S.CONFIGURING, T.CONFIGURED): S.READY,
    **{(s, T.FAIL): S.FAILED for s in LIVE},
    **{(s, T.TIMEOUT): S.FAILED for s in (S.INSPECTING, S.DEPLOYING, S.CONFIGURING, S.RETIRING)},
    **{(s, T.REPROVISION): S.MATCHED for s in (S.DEPLOYED, S.CONFIGURING, S.READY, S.FAILED)},
    **{(s, T.RETIRE): S.RETIRED for s in State if s != S.RETIRED},
    **{(s, T.WIPE): S.RETIRING for s in State if s not in (S.RETIRED, S.RETIRING)},
}
ALL_PAIRS = [(s, t) for s in State for t in Trigger if t != T.RETRY]


@pytest.mark.parametrize(("state", "trigger"), ALL_PAIRS, ids=lambda v: str(v))
def test_table_matches_specification(state: State, trigger: Trigger) -> None:
    if (state, trigger) in EXPECTED:
        assert next_state(state, trigger) == EXPECTED[(state, trigger)]
    else:
        with pytest.raises(IllegalTransition, match=f"not allowed for a node in state {state}"):
            next_state(state, trigger)


@pytest.mark.parametrize(
    ("wipe", "trigger"),
    [(None, T.RETIRE), ("none", T.RETIRE), ("metadata", T.WIPE), ("full", T.WIPE)],
)
def test_retire_with_a_wipe_goes_through_retiring(wipe: str | None, trigger: Trigger) -> None:
    assert retire_trigger(wipe) == trigger
    assert next_state(S.DEPLOYED, retire_trigger(wipe)) in (S.RETIRED, S.RETIRING)


@pytest.mark.parametrize("failed_in", [S.INSPECTING, S.DEPLOYING, S.MATCHED, S.READY])
def test_retry_reenters_the_state_it_failed_in(failed_in: State) -> None:
    assert next_state(S.FAILED, T.RETRY, failed_from=failed_in) == failed_in
    with pytest.raises(IllegalTransition):
        next_state(S.FAILED, T.RETRY, failed_from=None)
    for other in State:
        if other != S.FAILED:
            with pytest.raises(IllegalTransition):
                next_state(other, T.RETRY, failed_from=failed_in)


def new_node(nodes: Nodes, mac: str = "52:54:00:00:00:01") -> int:
    return nodes.observe(Identity.of([mac]), cause="test").id


def walk(lc: Lifecycle, node_id: int, *triggers: Trigger) -> None:
    for t in triggers:
        lc.fire(node_id, t, cause=f"test-{t}")


def test_happy_path_records_every_transition(
    lifecycle: Lifecycle, nodes: Nodes, store: Store
) -> None:
    nid = new_node(nodes)
    walk(lifecycle, nid, T.INSPECT, T.INSPECTED)
    lifecycle.fire(nid, T.MATCH, cause="match", profile="k3s-server")
    walk(lifecycle, nid, T.DEPLOY, T.DEPLOYED, T.CONFIGURE, T.CONFIGURED)
    node = nodes.get(nid)
    assert node.state == "ready"
    assert node.profile == "k3s-server"
    moves = [(e.from_state, e.to_state, e.cause) for e in Events(store).list(node_id=nid)]
    assert moves == [
        (None, "discovered", "test"),
        ("discovered", "inspecting", "test-inspect"),
        ("inspecting", "inspected", "test-inspected"),
        ("inspected", "matched", "match"),
        ("matched", "deploying", "test-deploy"),
        ("deploying", "deployed", "test-deployed"),
        ("deployed", "configuring", "test-configure"),
        ("configuring", "ready", "test-configured"),
    ]


def test_illegal_transition_changes_nothing(
    lifecycle: Lifecycle, nodes: Nodes, store: Store
) -> None:
    nid = new_node(nodes)
    before = Events(store).list()
    with pytest.raises(IllegalTransition, match=r"'deploy' is not allowed .* discovered"):
        lifecycle.fire(nid, T.DEPLOY, cause="test")
    assert nodes.get(nid).state == "discovered"
    assert Events(store).list() == before


def test_failure_records_state_and_reason_and_retry_resumes(
    lifecycle: Lifecycle, nodes: Nodes, store: Store
) -> None:
    nid = new_node(nodes)
    walk(lifecycle, nid, T.INSPECT, T.INSPECTED, T.MATCH, T.DEPLOY)
    lifecycle.fire(nid, T.FAIL, cause="installer", reason="disk /dev/sda not found")
    node = nodes.get(nid)
    assert (node.state, node.failed_from, node.reason) == (
        "failed",
        "deploying",
        "disk /dev/sda not found",
    )
    last = Events(store).list(node_id=nid)[-1]
    assert last.detail["reason"] == "disk /dev/sda not found"
    lifecycle.fire(nid, T.RETRY, cause="operator")
    node = nodes.get(nid)
    assert (node.state, node.failed_from, node.reason) == ("deploying", None, None)
    assert node.deadline is not None


def test_state_change_and_event_commit_together(
    lifecycle: Lifecycle, nodes: Nodes, store: Store
) -> None:
    """If writing the event fails, the state change is rolled back with it."""
    nid = new_node(nodes)
    store.conn.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON events "
        "WHEN NEW.to_state = 'inspecting' BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        lifecycle.fire(nid, T.INSPECT, cause="test")
    assert nodes.get(nid).state == "discovered"


def test_events_are_append_only(store: Store, nodes: Nodes) -> None:
    new_node(nodes)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.conn.execute("UPDATE events SET cause = 'rewritten'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.conn.execute("DELETE FROM events")


@pytest.mark.parametrize("state", sorted(IN_PROGRESS))
def test_in_progress_states_time_out_with_reason(
    state: str, lifecycle: Lifecycle, nodes: Nodes, clock: FakeClock, store: Store
) -> None:
    nid = new_node(nodes)
    path = {
        "inspecting": [T.INSPECT],
        "deploying": [T.INSPECT, T.INSPECTED, T.MATCH, T.DEPLOY],
        "configuring": [T.INSPECT, T.INSPECTED, T.MATCH, T.DEPLOY, T.DEPLOYED, T.CONFIGURE],
        "retiring": [T.WIPE],
    }[state]
    walk(lifecycle, nid, *path)
    # retiring's limit is the lifecycle's default when the configured timeouts name none.
    limit = TIMEOUTS.get(state, DEFAULT_TIMEOUTS.get(state))
    assert limit is not None
    assert nodes.get(nid).deadline == clock.now + limit
    clock.advance(limit - 1)
    assert lifecycle.expire_due() == []
    clock.advance(1)
    [t] = lifecycle.expire_due()
    node = nodes.get(nid)
    assert (t.to_state, node.state, node.failed_from) == ("failed", "failed", state)
    assert node.reason == f"timed out in {state}"
    assert node.deadline is None
    last = Events(store).list(node_id=nid)[-1]
    assert (last.cause, last.detail["reason"]) == ("timeout", f"timed out in {state}")


def test_leaving_an_in_progress_state_clears_its_deadline(
    lifecycle: Lifecycle, nodes: Nodes, clock: FakeClock
) -> None:
    nid = new_node(nodes)
    walk(lifecycle, nid, T.INSPECT, T.INSPECTED)
    assert nodes.get(nid).deadline is None
    clock.advance(TIMEOUTS["inspecting"] * 10)
    assert lifecycle.expire_due() == []
    assert nodes.get(nid).state == "inspected"


def test_deadlines_resume_after_restart(tmp_path: Path, clock: FakeClock) -> None:
    """A deadline is stored with the node: a new process on the same database enforces it."""
    db = tmp_path / "ztpd.db"
    first = Store(db, clock=clock)
    nid = new_node(Nodes(first))
    Lifecycle(first, TIMEOUTS).fire(nid, T.INSPECT, cause="boot")
    first.close()
    clock.advance(TIMEOUTS["inspecting"] + 5)  # ztpd was down meanwhile
    second = Store(db, clock=clock)
    lc = Lifecycle(second, TIMEOUTS)
    assert lc.next_deadline() is not None
    [t] = lc.expire_due()
    assert t.node.reason == "timed out in inspecting"
    assert lc.next_deadline() is None
    second.close()


def test_expect_guards_against_a_state_that_moved_on(lifecycle: Lifecycle, nodes: Nodes) -> None:
    nid = new_node(nodes)
    lifecycle.fire(nid, T.INSPECT, cause="boot")
    with pytest.raises(IllegalTransition, match="is inspecting, not discovered"):
        lifecycle.fire(nid, T.FAIL, cause="late", expect="discovered")
    assert nodes.get(nid).state == "inspecting"


def test_listeners_see_committed_transitions_and_cannot_break_them(
    lifecycle: Lifecycle, nodes: Nodes
) -> None:
    seen: list[tuple[str, str]] = []
    lifecycle.subscribe(lambda t: seen.append((t.from_state, t.to_state)))

    def broken(t: object) -> None:
        raise RuntimeError("listener bug")

    lifecycle.subscribe(broken)
    nid = new_node(nodes)
    t = lifecycle.fire(nid, T.INSPECT, cause="boot")
    assert t.node.state == "inspecting"
    assert seen == [("discovered", "inspecting")]
    assert nodes.get(nid).state == "inspecting"
