"""kill -9 campaign (bench/chaos.py) with a small N: real daemons SIGKILLed at server-observed
moments (mid-part, after an acknowledgement, around Complete and the manifest, around the
after-upload action, at random), restarted, and every object verified against its source.

Trials alternate SQLite and Redis state (a real redis-server), on each of the three test servers
over HTTP: moto (with a WSGI observer), and `rclone serve s3` and Ceph RGW behind the campaign's
observing proxy. `python -m bench.chaos --trials 50 [--server rclone|rgw]` is the long run the
README reports.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import IN_FLIGHT_BOUND, SERVERS, Phase, TrialPlan, plan_trial, run_campaign, trial_seeds
from tests.support.ceph_rgw import require_ceph

CAMPAIGN_SEED = 20261123
# Per server: trials, and the phase (index in Phase) the first trial's first kill is at; the next
# trials take the next phases. moto: every moment but `random` (as before RGW and rclone joined).
# rclone: the three moments moto's five leave last, `random` included. RGW, the strict server
# (ListParts on a completed upload is 404 NoSuchKey, Complete after an abort is 500): all six.
CAMPAIGNS = {"moto": (5, 0), "rclone": (3, 3), "rgw": (6, 0)}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("server", SERVERS)
def test_every_object_verifies_after_kill_9_at_chosen_moments(tmp_path: Path, server: str) -> None:
    if server == "rgw":
        require_ceph()
    trials, first = CAMPAIGNS[server]
    seeds = trial_seeds(CAMPAIGN_SEED, trials, first=first)
    result = run_campaign(trials, CAMPAIGN_SEED, state="mixed", server=server, seeds=seeds, workdir=tmp_path)

    assert not result.failures, result.summary()
    assert len(result.trials) == trials
    assert result.objects_verified == result.objects == sum(len(plan.files) for plan in _plans(server))
    assert result.kills >= trials, result.summary()  # at least one real SIGKILL per trial on average
    assert {trial.state for trial in result.trials} == {"sqlite", "redis"}
    assert result.data_bytes_sent >= result.file_bytes  # every byte reached the server at least once
    for trial in result.trials:  # no acknowledged part is sent again beyond what one kill can cut short
        assert trial.acked_resent_max_run <= IN_FLIGHT_BOUND, trial.acked_resent_what


@pytest.mark.parametrize("server", SERVERS)
def test_trial_plans_cover_their_phases_and_replay_from_their_seed(server: str) -> None:
    """Each server's CI plans lead with the phases CAMPAIGNS says; a printed seed replays the same plan."""
    plans = _plans(server)
    trials, first = CAMPAIGNS[server]
    phases = list(Phase)
    assert [plan.kills[0].phase for plan in plans] == [phases[(first + n) % len(phases)] for n in range(trials)]
    assert plan_trial(plans[0].seed, "sqlite") == plans[0]
    assert all(any(f.kind == "growing" for f in plan.files) for plan in plans)
    assert all(plan.after_upload in ("delete", "move") for plan in plans
               if any(kill.phase is Phase.AFTER_UPLOAD_ACTION for kill in plan.kills))


def test_every_phase_leads_a_ci_trial_on_rgw_and_on_moto_or_rclone() -> None:
    """The strict server sees every kill moment; the two lenient ones share them out."""
    assert {plan.kills[0].phase for plan in _plans("rgw")} == set(Phase)
    assert {plan.kills[0].phase for server in ("moto", "rclone") for plan in _plans(server)} == set(Phase)


def _plans(server: str) -> list[TrialPlan]:
    trials, first = CAMPAIGNS[server]
    states = ("sqlite", "redis")
    seeds = trial_seeds(CAMPAIGN_SEED, trials, first=first)
    return [plan_trial(seed, states[index % 2]) for index, seed in enumerate(seeds)]
