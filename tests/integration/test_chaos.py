"""kill -9 campaign (bench/chaos.py) with a small N: real daemons SIGKILLed at server-observed
moments (mid-part, after an acknowledgement, around Complete and the manifest, around the
after-upload action, at random), restarted, and every object verified against its source.

Trials alternate SQLite and Redis state (a real redis-server), on the real moto server over HTTP.
`python -m bench.chaos --trials 50` is the long run the README reports.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import IN_FLIGHT_BOUND, Phase, TrialPlan, plan_trial, run_campaign, trial_seeds

CAMPAIGN_SEED = 20261123
TRIALS = 5


@pytest.mark.timeout(600)
def test_every_object_verifies_after_kill_9_at_chosen_moments(tmp_path: Path) -> None:
    result = run_campaign(TRIALS, CAMPAIGN_SEED, state="mixed", workdir=tmp_path)

    assert not result.failures, result.summary()
    assert len(result.trials) == TRIALS
    assert result.objects_verified == result.objects == sum(len(plan.files) for plan in _plans())
    assert result.kills >= TRIALS, result.summary()  # at least one real SIGKILL per trial on average
    assert {trial.state for trial in result.trials} == {"sqlite", "redis"}
    assert result.data_bytes_sent >= result.file_bytes  # every byte reached the server at least once
    for trial in result.trials:  # no acknowledged part is sent again beyond what one kill can cut short
        assert trial.acked_resent_max_run <= IN_FLIGHT_BOUND, trial.acked_resent_what


def test_trial_plans_cover_every_phase_and_replay_from_their_seed() -> None:
    """The CI campaign's plans are what the summary says; a printed seed replays the same plan."""
    plans = _plans()
    assert [plan.kills[0].phase for plan in plans] == list(Phase)[:TRIALS]
    assert plan_trial(plans[0].seed, "sqlite") == plans[0]
    assert all(any(f.kind == "growing" for f in plan.files) for plan in plans)
    assert all(plan.after_upload in ("delete", "move") for plan in plans
               if any(kill.phase is Phase.AFTER_UPLOAD_ACTION for kill in plan.kills))


def _plans() -> list[TrialPlan]:
    states = ("sqlite", "redis")
    return [plan_trial(seed, states[index % 2]) for index, seed in enumerate(trial_seeds(CAMPAIGN_SEED, TRIALS))]
