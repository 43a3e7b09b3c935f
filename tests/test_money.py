"""Money on the laptop's side: refusals before renting (budget, finish action, provider), what the
plan says each finish choice costs, the records of the host's decisions, and the backup limits."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kohyawrap.errors import UsageError
from kohyawrap.forecast import build_forecast, compare_forecasts, finish_choices, require_budget
from kohyawrap.hosts.facts import HostFacts, parse_facts
from kohyawrap.hosts.local import LocalHost
from kohyawrap.launcher import watchdog
from kohyawrap.launcher.budget import Budget
from kohyawrap.launcher.fetch import Puller
from kohyawrap.launcher.follow import Follower
from kohyawrap.launcher.manifest import (
    FinishRecord,
    FollowState,
    HostRecord,
    HostStop,
    HubPush,
    RunManifest,
    StopReason,
)
from kohyawrap.launcher.money import check_money, check_provider
from kohyawrap.launcher.reconnect import Reconnector
from kohyawrap.launcher.report import SilentReporter
from kohyawrap.launcher.request import TrainRequest, build_run_plan
from kohyawrap.launcher.runplan import MoneyOptions
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.models import Event, Progress, RunSpec
from kohyawrap.presets import load_catalog
from tests.fixtures.cli import run_cli
from tests.test_forecast import make_dataset
from tests.test_hosts_facts import ONE_4090

NOW = datetime(2026, 11, 28, 10, 15, tzinfo=timezone.utc)


def spec(gpu: str = "rtx4090", model: str = "sd15") -> RunSpec:
    return RunSpec(
        gpu=gpu, model=model, base_model="runwayml/stable-diffusion-v1-5", output_name="柴犬"
    )


# ---------------------------------------------------------------------------------------------
# Before renting: the budget


def test_plan_over_budget_names_the_cheapest_preset_that_fits(tmp_path: Path, capsys) -> None:
    from kohyawrap.dataset.scan import read_training_dir

    data = make_dataset(tmp_path / "data")
    tdir = read_training_dir(data, caption_extension=".txt")
    chosen = build_forecast(spec("h100", "sdxl"), tdir)
    others = compare_forecasts(spec("h100", "sdxl"), tdir)
    fitting = sorted(
        (f for f in others if f.estimate.fits and f.estimate.gpu != "h100"),
        key=lambda f: f.estimate.dollars,
    )
    budget = (fitting[0].estimate.dollars + chosen.estimate.dollars) / 2
    assert fitting[0].estimate.dollars < budget < chosen.estimate.dollars
    with pytest.raises(UsageError, match="over --max-dollars") as refused:
        require_budget(chosen, budget, others)
    assert f"--gpu {fitting[0].estimate.gpu}" in str(refused.value.hint)
    require_budget(chosen, chosen.estimate.dollars, others)  # exactly the budget: fine

    args = ["plan", "--gpu", "h100", "--model", "sdxl", "--dataset", str(data)]
    code, text = run_cli([*args, "--max-dollars", f"{budget:.4f}"], capsys)
    assert code == 2 and f"--gpu {fitting[0].estimate.gpu}" in text and "Traceback" not in text
    code, text = run_cli([*args, "--max-dollars", "0.0001"], capsys)
    assert code == 2 and "no GPU preset fits both the VRAM and the budget" in text
    code, text = run_cli([*args, "--max-dollars", "1000", "--json"], capsys)
    assert code == 0
    costs = {(c["action"], c["provider"]): c for c in json.loads(text)["finish_choices"]}
    assert costs[("destroy", "runpod")]["dollars_per_day"] == 0.0
    assert costs[("none", "any")]["dollars_per_day"] == pytest.approx(
        chosen.estimate.price_per_hour * 24
    )


def test_train_refuses_a_plan_over_budget_before_connecting(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    request = TrainRequest(
        spec=spec(), dataset=data, money=MoneyOptions(max_dollars=0.0001, price_per_hour=0.7)
    )
    with pytest.raises(UsageError, match=r"over --max-dollars \$0\.00"):
        build_run_plan(request, target="gpu-box", home="/root", now=NOW)
    forced = dataclasses.replace(request, force=True)  # the limit still stops it during the run
    assert build_run_plan(forced, target="gpu-box", home="/root", now=NOW).money.max_dollars


def test_finish_choices_use_the_sourced_disk_prices() -> None:
    rules = load_catalog().rules
    choices = {(c.action, c.provider): c for c in finish_choices(0.7, 40, rules)}
    runpod = rules.number("stopped_disk_runpod_usd_gb_month")
    assert choices[("stop", "runpod")].dollars_per_day == pytest.approx(40 * runpod / 30)
    assert choices[("stop", "vast")].dollars_per_day == pytest.approx(
        40 * rules.number("stopped_disk_vast_usd_gb_month") / 30
    )
    assert choices[("none", "any")].dollars_per_day == pytest.approx(0.7 * 24)
    assert choices[("destroy", "vast")].dollars_per_day == 0.0


def test_the_plan_states_each_finish_choice_and_the_traps(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    facts = dataclasses.replace(
        parse_facts(ONE_4090, label="box"), provider="vast", provider_id="4242"
    )
    money = MoneyOptions(max_dollars=50, on_finish="stop")
    no_saves = spec()
    no_saves = dataclasses.replace(no_saves, overrides=(("save_every_n_epochs", 0),))
    plan = build_run_plan(
        TrainRequest(spec=no_saves, dataset=data, money=money),
        target="box",
        home="/root",
        now=NOW,
        facts=facts,
    )
    text = "\n".join(plan.notes)
    disk_gb = (facts.disk_total_bytes or 0) / 1e9
    per_day = disk_gb * load_catalog().rules.number("stopped_disk_vast_usd_gb_month") / 30
    assert f"stop ~${per_day:.2f}/day" in text and "Vast.ai instance" in text
    assert "a stopped Vast.ai instance still bills its disk" in text
    assert "would keep nothing" in text


# ---------------------------------------------------------------------------------------------
# Before anything is started: the finish action


@pytest.mark.parametrize(
    ("money", "message"),
    [
        (MoneyOptions(on_finish="destory"), "did you mean 'destroy'"),
        (MoneyOptions(on_finish="shutdwon"), "did you mean 'shutdown'"),
        (MoneyOptions(push_to_hub="not a repo"), "not a Hugging Face repo id"),
        (MoneyOptions(push_to_hub="../x"), "not a Hugging Face repo id"),
    ],
)
def test_money_options_that_can_never_work(money: MoneyOptions, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_money(money)


def test_money_options_that_work() -> None:
    for action in ("none", "stop", "destroy", "shutdown", "touch ~/done", "poweroff-now.sh"):
        check_money(MoneyOptions(on_finish=action, push_to_hub="me/lora"))


def facts_for(env: str) -> HostFacts:
    return parse_facts(ONE_4090 + env, label="box")


def test_providers_are_read_from_the_host_facts() -> None:
    runpod = facts_for("RUNPOD_POD_ID=abc123\nRUNPODCTL=/usr/bin/runpodctl\n")
    assert (runpod.provider, runpod.provider_id, runpod.provider_tool) == (
        "runpod", "abc123", "/usr/bin/runpodctl"
    )  # fmt: skip
    vast = facts_for("VAST_CONTAINER_ID=4242\nVAST_API_KEY=yes\n")
    assert (vast.provider, vast.provider_id) == ("vast", "4242")
    assert facts_for("VAST_CONTAINER_ID=4242\nVAST_API_KEY=\n").provider == "none"
    old = {k: v for k, v in runpod.to_json().items() if not k.startswith("provider")}
    assert HostFacts.from_json(old).provider == "none", "facts recorded before providers"
    assert HostFacts.from_json(runpod.to_json()) == runpod


@pytest.mark.parametrize(
    ("env", "money", "message"),
    [
        ("", MoneyOptions(on_finish="destroy"), "needs a RunPod pod or a Vast.ai instance"),
        ("", MoneyOptions(on_finish="stop", provider="runpod"), "does not show its RunPod pod id"),
        ("RUNPOD_POD_ID=p1\n", MoneyOptions(on_finish="destroy"), "needs runpodctl"),
        ("RUNPOD_POD_ID=p1\nRUNPODCTL=/x\n", MoneyOptions(on_finish="stop", provider="none"),
         "needs a RunPod pod"),
    ],
)  # fmt: skip
def test_stop_and_destroy_need_a_provider_that_can(
    env: str, money: MoneyOptions, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        check_provider(money, facts_for(env))


def test_what_every_provider_can_do_is_accepted() -> None:
    check_provider(MoneyOptions(on_finish="destroy"), facts_for("RUNPOD_POD_ID=p\nRUNPODCTL=/r\n"))
    check_provider(
        MoneyOptions(on_finish="stop"), facts_for("VAST_CONTAINER_ID=1\nVAST_API_KEY=yes\n")
    )
    check_provider(MoneyOptions(on_finish="shutdown"), facts_for(""))
    check_provider(MoneyOptions(on_finish="touch /tmp/x"), facts_for(""))


# ---------------------------------------------------------------------------------------------
# During the run: the laptop is the backup


def test_laptop_budget_waits_for_the_host_first() -> None:
    budget = Budget(price_per_hour=3600.0, started_at=0.0, launched_at=10.0, max_dollars=20.0)
    assert budget.spent(10.0) == pytest.approx(10.0), "set-up before the launch is paid time"
    assert budget.over(25.0) is None, "over, but the host gets its grace to stop it"
    reason, message = budget.over(20.0 + budget.grace_seconds + 1) or (None, "")
    assert reason is StopReason.BUDGET and "the host did not stop it" in message


# ---------------------------------------------------------------------------------------------
# After: the host's records, read back (a hostile host changes nothing)


def test_host_decisions_are_read_back_and_kept_in_the_manifest(tmp_path: Path) -> None:
    run = tmp_path / "run 柴犬"
    (run / "watchdog").mkdir(parents=True)
    stop = {"reason": "budget", "graceful": True, "spent": 0.42, "message": "saved; stopped",
            "after": "柴犬-000003.safetensors", "at": 1.5}  # fmt: skip
    (run / "watchdog" / "stop.json").write_text(json.dumps(stop, ensure_ascii=False, indent=1))
    (run / "watchdog" / "hub.json").write_text(json.dumps({"repo": "me/x", "files": {"a": "b"}}))
    (run / "watchdog" / "finish.json").write_text('{"asked": "destroy", "action": 7}')  # bad
    report = watchdog.read_report(LocalHost(), str(run))
    assert report.stop == HostStop(StopReason.BUDGET, True, 0.42, "saved; stopped",
                                   "柴犬-000003.safetensors", 1.5)  # fmt: skip
    assert report.hub == HubPush("me/x", {"a": "b"})
    assert report.finish is None, "not a finish record: ignored"
    (run / "watchdog" / "stop.json").write_text('{"reason": "rm -rf /", "graceful": 1}')
    (run / "watchdog" / "hub.json").write_text("[" * 100_000)
    hostile = watchdog.read_report(LocalHost(), str(run))
    assert hostile == watchdog.HostReport()


def test_manifest_keeps_the_host_records_through_json(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    plan = build_run_plan(
        TrainRequest(spec=spec(), dataset=data, money=MoneyOptions(on_finish="destroy",
                     push_to_hub="me/x", idle_minutes=5, provider="runpod")),
        target="box", home="/root", now=NOW,
    )  # fmt: skip
    m = RunManifest(
        run_id=plan.run_id,
        plan=plan,
        host=HostRecord("box"),
        host_stop=HostStop(StopReason.DEADLINE, False, 1.0, "deadline"),
        hub=HubPush("me/x", {"柴犬.safetensors": "ab" * 32}),
        finish=FinishRecord("destroy", "stop", "refused", "watchdog", "runpod", False, "",
                            ("柴犬.safetensors (not verified)",), "ok", 3.0),
    )  # fmt: skip
    again = RunManifest.from_json(json.loads(json.dumps(m.to_json())))
    assert again == m
    assert again.plan.money.push_to_hub == "me/x" and again.plan.money.idle_minutes == 5
    old = m.to_json()
    for key in ("host_stop", "hub", "finish"):
        del old[key]
    for key in ("idle_minutes", "provider", "push_to_hub", "hub_private"):
        del old["plan"]["money"][key]
    older = RunManifest.from_json(old)
    assert older.finish is None and older.plan.money.idle_minutes == 30.0


def test_watchdog_config_carries_the_plan_and_the_set_up_spent(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    money = MoneyOptions(price_per_hour=0.7, max_dollars=9, max_hours=2, on_finish="destroy")
    plan = build_run_plan(
        TrainRequest(spec=spec(), dataset=data, money=money), target="b", home="/r", now=NOW
    )
    config = watchdog.config_of(plan, spent_before_launch=0.123456789, poll_seconds=30)
    assert config["poll_seconds"] == watchdog.HOST_POLL_LIMIT
    assert (config["price_per_hour"], config["max_dollars"], config["max_hours"]) == (0.7, 9, 2)
    assert config["spent_before_launch"] == 0.123457 and config["on_finish"] == "destroy"
    from kohyawrap.hostside.watchdog import Config

    assert set(config) <= set(Config.__dataclass_fields__), "the host reads every key"


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class _Seen(SilentReporter):
    def __init__(self) -> None:
        self.money: list[tuple[int, float, float | None]] = []

    def event(self, event: Event, dollars_so_far: float, dollars_projected: float | None) -> None:
        if isinstance(event, Progress):
            self.money.append((event.step, dollars_so_far, dollars_projected))


def test_live_dollars_include_the_set_up_already_paid(tmp_path: Path) -> None:
    """Spent and projected dollars count from the connect (set-up is paid time), not the launch."""
    remote = tmp_path / "host run"
    remote.mkdir()
    frames = "".join(
        f"\rsteps:  {n}%|#   | {n}/100 [00:{n:02d}<01:00,  1.00s/it, avr_loss=0.1]" for n in (1, 30)
    )
    (remote / "run.log").write_text(frames + "\n")
    (remote / "exit_code").write_text("0\n")
    host, clock, seen = LocalHost(), _Clock(1000.0), _Seen()
    budget = Budget(price_per_hour=36.0, started_at=400.0, launched_at=700.0)  # 300 s of set-up
    run = RunDir(tmp_path / "local run")
    run.path.mkdir()
    follower = Follower(
        host=host, run=run, run_dir=str(remote), reporter=seen, clock=clock, settings={},
        budget=budget, puller=Puller(host, run, str(remote), seen, {}, {}),
        reconnector=Reconnector(host, seen, clock, 1), state=FollowState(),
    )  # fmt: skip
    assert follower.poll_once() is not None
    step, spent, projected = seen.money[-1]
    assert step == 30
    assert spent == pytest.approx(36.0 * (1000 - 400) / 3600)  # the set-up's 300 s included
    assert projected == pytest.approx(spent + 36.0 * 70 * 1.0 / 3600)  # 70 steps left at 1 s
