"""What a risk report says of the fit behind it: the sampler, its checks, and SVI's caveat."""

from __future__ import annotations

from medsim.inference.diagnostics import Diagnostics
from medsim.policies.risk.provenance import SVI_CAVEAT, make_provenance, sampler_summary

SVI = Diagnostics(
    method="svi",
    applicable=False,
    chains=1,
    draws=1000,
    elbo=-4439.123,
    checks=("ELBO settled: +3.1 nats over the last 10 % (tolerance 8.5)", "guide spread: 75 coordinates"),
)
NUTS = Diagnostics(
    method="nuts",
    applicable=True,
    chains=4,
    draws=1000,
    rhat_max=1.0042,
    ess_bulk_min=812.4,
    ess_tail_min=700.0,
    divergences=0,
    ebfmi_min=0.913,
)


def test_an_svi_fit_is_named_with_its_checks_and_its_caveat():
    prov = make_provenance({"fit_diagnostics": SVI})
    summary = prov.fit.summary
    assert prov.fit.ok is True
    assert summary["method"] == "svi (variational)"
    assert summary["final ELBO (nats)"] == "-4439.12"
    assert summary["checked"].startswith("ELBO settled") and "guide spread" in summary["checked"]
    assert summary["posterior"] == SVI_CAVEAT and "too narrow" in SVI_CAVEAT


def test_an_svi_fit_with_nothing_checked_says_so():
    bare = Diagnostics(method="svi", applicable=False, chains=1, draws=10)
    summary = sampler_summary(bare)
    assert summary["checked"] == "nothing" and summary["final ELBO (nats)"] == "unknown"
    assert make_provenance({"fit_diagnostics": bare}).fit.ok is False  # nothing checked is not "passed"


def test_a_nuts_fit_reports_its_headline_figures():
    summary = make_provenance({"fit_diagnostics": NUTS}).fit.summary
    assert summary == {
        "method": "nuts",
        "chains x draws": "4 x 1000",
        "max R-hat": "1.004",
        "min bulk ESS": "812",
        "divergences": "0",
        "min E-BFMI": "0.91",
    }


def test_a_nuts_fit_without_figures_shows_them_as_unknown():
    summary = sampler_summary(Diagnostics(method="nuts", applicable=True, chains=2, draws=5))
    assert summary["max R-hat"] == "unknown" and summary["min E-BFMI"] == "unknown"


def test_a_mapping_keeps_its_own_summary_and_an_object_without_method_gives_none():
    given = {"ok": None, "problems": (), "summary": {"source": "model priors (no fit)"}}
    assert make_provenance({"fit_diagnostics": given}).fit.summary == {"source": "model priors (no fit)"}
    assert sampler_summary(object()) == {}


def test_new_patients_from_an_svi_fit_are_flagged_and_twins_or_nuts_are_not():
    def warnings(fit, population):
        return make_provenance({"fit_diagnostics": fit, "population": population}).warnings()

    assert any(w.startswith("NEW PATIENTS FROM A VARIATIONAL (SVI) FIT") for w in warnings(SVI, "population, n=1000"))
    assert warnings(SVI, "personalized 3, n=100") == ()
    assert warnings(NUTS, "population, n=1000") == ()
