"""`run_experiment` with prompts: steering/{language}.json, the summary's rates and the report section."""

from __future__ import annotations

import json

from tl_culture.experiment.config import ExperimentConfig
from tl_culture.experiment.run import run_experiment
from tl_culture.experiment.rundir import RunDir
from tl_culture.report.write import report_stage


def test_run_measures_steering(tmp_path, tiny_hf_model):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat\nder Hund\nкошка\n", encoding="utf-8")
    cfg = ExperimentConfig(out=str(tmp_path / "run"), seq_len=32, max_tokens=300, top_rate=0.1, progress=False,
                           evaluate=False, prompts=str(prompts), steer_tokens=3, control_seeds=2)
    res = run_experiment(cfg, model=tiny_hf_model, reporter=report_stage)
    run = RunDir.open(tmp_path / "run")
    steering = run.read_steering()
    measured = [g for g in res.languages.groups if bool(res.languages.mask(g).any())]
    assert sorted(steering) == sorted(measured) and measured
    summary = json.loads(run.summary_path.read_text(encoding="utf-8"))
    for g, ev in steering.items():
        assert ev.n_prompts == 3 and ev.modes == ["greedy"]
        assert len(ev.outputs) == 3 * (1 + 1 + 2)
        assert summary["steering"][g]["steered_rate"] == ev.to_dict()["steered_rate"]
        assert "set(" in ev.meta["intervention"] and len(ev.meta["control"]) == 2
        # baselines are shared: the same texts for every target
        base = [o["text"] for o in ev.outputs if o["condition"] == "baseline"]
        assert base == [o["text"] for o in steering[measured[0]].outputs if o["condition"] == "baseline"]
    assert res.steering.keys() == steering.keys()
    ctl = res.steering[measured[0]].meta["control"]
    assert all("random~" in c for c in ctl)
    assert "selected" in res.steering[measured[0]].meta["control_excludes"]
    html = run.report_path.read_text(encoding="utf-8")
    assert 'id="steering"' in html and "steered − control" in html
