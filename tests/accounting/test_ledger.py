"""The ledger's rules, one at a time: states by threshold and holding, shares between owners, energy
scaled to the counter, gaps not counted, the idle streak."""

from __future__ import annotations

import pytest

from gpumon.accounting.ledger import Ledger, Owner, Reading

A, B = Owner("ml", "a", "c"), Owner("ml", "b", "c")


def ledger() -> Ledger:
    return Ledger(0.05, bucket_s=60.0, max_gap_s=3.0, max_pending_s=90.0)


def poll(led: Ledger, t: float, activity: float, *, held: bool = True, owners: tuple[Owner, ...] = (A,),
         power: float = 100.0, energy: float | None = None) -> None:
    led.add(Reading(0, "GPU-a", 1000.0 + t, activity, "sm_active", held, owners, power, energy))


def seconds(led: Ledger, owner: Owner | None, state: str) -> float:
    return sum(a.seconds for k, a in led.totals.items() if k[2] == owner and k[3] == state)


def test_states_by_threshold_and_holding() -> None:
    led = ledger()
    poll(led, 0, 0.5)
    poll(led, 1, 0.5)  # active
    poll(led, 2, 0.04)  # idle, held
    poll(led, 3, 0.0, held=False, owners=())  # idle, free
    poll(led, 4, 0.05, held=False, owners=())  # at the threshold: active, though nobody is known to hold it
    assert [seconds(led, None, s) for s in ("active", "idle_held", "idle_free")] == [2.0, 1.0, 1.0]
    assert seconds(led, A, "active") == 1.0 and seconds(led, Owner(), "active") == 1.0


def test_a_shared_gpu_splits_each_second_evenly() -> None:
    led = ledger()
    poll(led, 0, 0.8, owners=(A, B))
    poll(led, 1, 0.8, owners=(A, B))
    assert seconds(led, A, "active") == seconds(led, B, "active") == 0.5
    sm = {k[2]: a.sm_seconds for k, a in led.totals.items()}
    assert sm[A] == sm[B] == pytest.approx(0.4) and sm[None] == pytest.approx(0.8)


def test_time_without_a_poll_is_not_accounted() -> None:
    led = ledger()
    poll(led, 0, 0.5)
    poll(led, 10, 0.5)  # ten seconds without a poll: a hung GPU, or gpumon stopped
    poll(led, 11, 0.5)
    assert seconds(led, None, "active") == 1.0


def test_energy_follows_the_power_and_is_scaled_to_the_counter() -> None:
    led = ledger()
    poll(led, 0, 0.5, energy=10_000.0)
    poll(led, 1, 0.5, owners=(A,), power=100.0, energy=10_000.0)
    poll(led, 2, 0.5, owners=(B,), power=300.0, energy=10_000.0)
    assert sum(a.joules for a in led.totals.values()) == 0.0  # waiting for the counter to move
    poll(led, 3, 0.5, owners=(B,), power=100.0, energy=10_000.0 + 1000.0)  # it drew 1000 J since
    joules = {k[2]: a.joules for k, a in led.totals.items()}
    # The power said 100 + 300 J; the counter says 1000 J over those two seconds: scaled by 2.5. The
    # third second's 100 J waits for the next reading.
    assert joules[A] == pytest.approx(250.0) and joules[B] == pytest.approx(750.0)
    assert joules[None] == pytest.approx(1000.0)


def test_without_a_counter_the_power_is_the_energy() -> None:
    led = ledger()
    poll(led, 0, 0.5)
    poll(led, 1, 0.5, power=200.0)
    assert {k[2]: a.joules for k, a in led.totals.items()} == {None: 200.0, A: 200.0}


def test_the_idle_streak() -> None:
    led = ledger()
    for t, activity in enumerate([0.5, 0.0, 0.0, 0.0, 0.5, 0.0]):
        poll(led, t, activity)
        if t == 3:
            assert led.streak("GPU-a") == 3.0
    assert led.streak("GPU-a") == 1.0


def test_unwritten_increments_are_handed_out_once() -> None:
    led = ledger()
    poll(led, 0, 0.5)
    poll(led, 1, 0.5)
    buckets = led.take_unwritten()
    assert sum(a.seconds for (_, k), a in buckets.items() if k[2] is None) == 1.0
    assert {b for b, _ in buckets} == {960}  # the 60 s bucket the poll at 1001 s falls in
    assert led.take_unwritten() == {}
