"""ClaimFloors: where claims may start looking, with a clock the test moves."""

from __future__ import annotations

from embedq_server.claimfloor import ClaimFloors


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def floors(clock: Clock) -> ClaimFloors:
    return ClaimFloors(lag=1.0, full_scan_interval=10.0, clock=clock)


def test_the_first_claim_scans_from_the_start() -> None:
    clock = Clock()
    assert floors(clock).start(["m"]) == (100.0, 0)


def test_a_found_id_becomes_the_floor_only_after_the_lag() -> None:
    clock = Clock()
    f = floors(clock)
    started, _ = f.start(["m"])
    f.found(["m"], started, 50)
    clock.now += 0.5
    assert f.start(["m"])[1] == 0  # an insert numbered below 50 may still be committing
    clock.now += 0.5
    assert f.start(["m"])[1] == 50


def test_the_floor_follows_the_newest_claim_old_enough() -> None:
    clock = Clock()
    f = floors(clock)
    for oldest in (10, 20, 30):
        started, _ = f.start(["m"])
        f.found(["m"], started, oldest)
        clock.now += 0.4
    # Claims started at 100.0, 100.4 and 100.8; at 101.5 the first two are a second old.
    clock.now = 101.5
    assert f.start(["m"])[1] == 20


def test_a_full_scan_comes_round_and_the_floor_resumes_after_it() -> None:
    clock = Clock()
    f = floors(clock)
    started, _ = f.start(["m"])
    f.found(["m"], started, 50)
    clock.now += 5
    assert f.start(["m"])[1] == 50
    clock.now += 5  # ten seconds after the last full scan
    assert f.start(["m"])[1] == 0
    assert f.start(["m"])[1] == 50


def test_a_requeue_here_drops_every_floor() -> None:
    clock = Clock()
    f = floors(clock)
    for models in (["m"], ["n"]):
        started, _ = f.start(models)
        f.found(models, started, 50)
    clock.now += 2
    f.requeued()
    assert f.start(["m"])[1] == 0
    assert f.start(["n"])[1] == 0


def test_an_older_input_found_later_replaces_the_newer_floors() -> None:
    clock = Clock()
    f = floors(clock)
    started, _ = f.start(["m"])
    f.found(["m"], started, 50)
    clock.now += 0.5
    started, _ = f.start(["m"])
    f.found(["m"], started, 40)  # something older came back (another process requeued it)
    clock.now += 0.6
    assert f.start(["m"])[1] == 0  # the sample at 50 is gone; the one at 40 is too young
    clock.now += 0.5
    assert f.start(["m"])[1] == 40


def test_model_sets_keep_their_own_floors_whatever_their_order() -> None:
    clock = Clock()
    f = floors(clock)
    started, _ = f.start(["b", "a"])
    f.found(["a", "b"], started, 50)
    f.start(["a"])  # its own first full scan
    clock.now += 2
    assert f.start(["a", "b"])[1] == 50
    assert f.start(["a"])[1] == 0
