"""Reading a chaos schedule (`nodefence.hwsim.chaos.schedule`) in tests: its episodes, start to
end."""

from __future__ import annotations

from nodefence.hwsim.chaos.schedule import END_ACTION, ChaosSettings, Step


def episodes(steps: list[Step]) -> dict[int, tuple[Step, Step]]:
    """Every episode's (starting step, ending step), by episode number."""
    starts = {s.episode: s for s in steps if s.action in END_ACTION}
    ends = {s.episode: s for s in steps if s.action in END_ACTION.values()}
    assert set(starts) == set(ends), "an episode without its start or its end"
    return {ep: (start, ends[ep]) for ep, start in starts.items()}


def assert_every_episode_ends_in_the_run(
    steps: list[Step], settings: ChaosSettings, seconds: float
) -> dict[int, tuple[Step, Step]]:
    """Each episode ends with the action that ends its start's, after the warm-up and before
    the run's quiet tail (`settings`, a run of `seconds`); returns `episodes(steps)`."""
    found = episodes(steps)
    for start, end in found.values():
        assert end.action is END_ACTION[start.action]
        assert settings.warmup <= start.at < end.at <= seconds - settings.tail
    return found
