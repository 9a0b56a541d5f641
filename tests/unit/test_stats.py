import random

from router.estimates import TaskEstimate
from router.stats import Breaker, PeakEwma, RetryBudget, Window, nearest_rank
from tests.fakes import FakeClock


def test_peak_ewma_jumps_up_at_once_and_decays_slowly() -> None:
    clock = FakeClock()
    ewma = PeakEwma(0.1, decay_s=10.0, clock=clock)
    ewma.observe(1.0)
    assert ewma.value == 1.0  # a slow answer counts in full immediately
    clock.advance(1.0)
    ewma.observe(0.1)
    assert 0.9 < ewma.value < 1.0  # forgiven gradually
    clock.advance(60.0)
    ewma.observe(0.1)
    assert abs(ewma.value - 0.1) < 0.01


def test_retry_budget_allows_a_ratio_of_traffic_plus_a_floor() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_s=0.0, clock=clock)
    for _ in range(10):
        budget.deposit()
    assert [budget.try_withdraw() for _ in range(3)] == [True, True, False]
    floor = RetryBudget(ratio=0.0, min_per_s=2.0, clock=clock)
    assert [floor.try_withdraw() for _ in range(3)] == [True, True, False]
    clock.advance(0.5)
    assert floor.try_withdraw()  # the floor refills at min_per_s
    assert not floor.try_withdraw()


def test_breaker_opens_after_consecutive_failures_and_probes_back() -> None:
    clock = FakeClock()
    breaker = Breaker(failures_to_open=3, base_ejection_s=1.0, max_ejection_s=4.0, clock=clock)
    assert not breaker.failure()
    assert not breaker.failure()
    assert breaker.failure()
    assert breaker.state == "open"
    assert not breaker.allows()
    clock.advance(1.0)
    assert breaker.state == "half_open"
    assert breaker.allows()
    breaker.on_pick()
    assert not breaker.allows()  # one trial at a time
    assert breaker.failure()  # the trial failed: reopened, for longer
    clock.advance(1.0)
    assert breaker.state == "open"
    clock.advance(1.0)
    breaker.on_pick()
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.allows()


def test_breaker_ejection_backoff_is_capped() -> None:
    clock = FakeClock()
    breaker = Breaker(failures_to_open=1, base_ejection_s=1.0, max_ejection_s=4.0, clock=clock)
    for _ in range(6):
        breaker.eject()
    clock.advance(3.9)
    assert breaker.state == "open"
    clock.advance(0.2)
    assert breaker.state == "half_open"


def test_success_resets_consecutive_failures() -> None:
    breaker = Breaker(failures_to_open=2)
    breaker.failure()
    breaker.success()
    assert not breaker.failure()


def test_tier_latency_uses_the_expectation_until_observed() -> None:
    latency = TaskEstimate(ttft_s=0.2, token_s=0.05)
    assert latency.ttft(0.95) == 0.2
    assert latency.token_s(0.5) == 0.05
    for ms in range(1, 101):
        latency.observe_first(ms / 1000)
    assert latency.ttft(0.5) == 0.051
    assert latency.ttft(0.95) == 0.096
    latency.observe_rest(tokens=11, seconds=0.5)
    assert latency.token_s(0.5) == 0.05  # 10 tokens after the first in 0.5 s
    latency.observe_rest(tokens=1, seconds=0.5)  # one token: no rate to learn
    assert latency.token_s(0.99) == 0.05


def test_a_quantile_follows_each_new_observation_and_the_window_slides() -> None:
    latency = TaskEstimate(ttft_s=0.2, token_s=0.05, size=3)
    for seconds in (0.01, 0.02, 0.03):
        latency.observe_first(seconds)
    assert latency.ttft(0.99) == 0.03
    latency.observe_first(0.5)  # asked before: the answer must not be the old order's
    assert latency.ttft(0.99) == 0.5
    assert latency.ttft(0.0) == 0.02  # 0.01 left the window


def test_a_window_answers_as_sorting_its_live_values_would() -> None:
    clock = FakeClock()
    window = Window(size=50, max_age_s=10.0, clock=clock)
    rng = random.Random(7)
    for step in range(2000):
        # Repeated values too: the one that leaves must be removed once, not all of it.
        window.observe(rng.choice([0.5, 1.0, rng.random()]))
        clock.advance(rng.random() * 0.5)
        if step % 7 == 0:
            live = sorted(window.values())
            for q in (0.0, 0.5, 0.95, 1.0):
                assert window.quantile(q) == (nearest_rank(live, q) if live else None)
    clock.advance(11.0)
    assert window.quantile(0.5) is None  # everything aged out
    window.observe(float("nan"))
    assert len(window) == 0
